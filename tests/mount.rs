//! `keibi mount` for real: a FUSE mount driven with plain `std::fs`, checked byte for byte and
//! attribute by attribute, then unmounted, remounted and verified.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use keibi::testing::noise;
use mounted::{Mount, fuse_available, keibi};
use nix::unistd::{Whence, lseek};

fn assert_file(path: &Path, want: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got.len(), want.len(), "{}: length", path.display());
    assert!(got == want, "{}: content differs", path.display());
    assert_eq!(
        fs::metadata(path).expect("stat").len(),
        want.len() as u64,
        "{}: st_size",
        path.display()
    );
}

#[test]
fn file_contents_follow_every_write_and_truncate() {
    if !fuse_available("file_contents_follow_every_write_and_truncate") {
        return;
    }
    let m = Mount::new();
    let root = m.path();

    // Write, read, overwrite in the middle, append, truncate down and up.
    let a = root.join("a.bin");
    let mut data = noise(1_300_000, 1);
    fs::write(&a, &data).expect("write");
    assert_file(&a, &data);
    let mut f = OpenOptions::new().write(true).open(&a).expect("open");
    f.seek(SeekFrom::Start(700_000)).expect("seek");
    f.write_all(b"overwritten").expect("overwrite");
    drop(f);
    data[700_000..700_011].copy_from_slice(b"overwritten");
    assert_file(&a, &data);
    let mut f = OpenOptions::new().append(true).open(&a).expect("append");
    f.write_all(b"tail").expect("append");
    drop(f);
    data.extend_from_slice(b"tail");
    assert_file(&a, &data);
    let f = OpenOptions::new().write(true).open(&a).expect("open");
    f.set_len(524_289).expect("truncate down");
    drop(f);
    data.truncate(524_289);
    assert_file(&a, &data);
    OpenOptions::new()
        .write(true)
        .open(&a)
        .expect("open")
        .set_len(600_000)
        .expect("extend");
    data.resize(600_000, 0);
    assert_file(&a, &data);
    fs::write(&a, b"short").expect("O_TRUNC rewrite");
    assert_file(&a, b"short");

    // Opened with O_TRUNC, then written past a gap and grown in the same open: the gap and
    // the growth read zeros, never the content from before the truncate.
    let b = root.join("b.bin");
    fs::write(&b, noise(700_000, 2)).expect("write");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&b)
        .expect("open with O_TRUNC");
    f.seek(SeekFrom::Start(50_000)).expect("seek");
    f.write_all(b"x").expect("write past a gap");
    f.set_len(600_000).expect("grow");
    let mut want = vec![0u8; 600_000];
    want[50_000] = b'x';
    let mut got = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut got).expect("read");
    assert!(got == want, "the open file reads zeros around its one byte");
    drop(f);
    assert_file(&b, &want);

    // Empty files stay empty.
    File::create(root.join("empty")).expect("create");
    assert_file(&root.join("empty"), b"");

    m.stop();
}

#[test]
fn namespace_operations_and_attributes_behave_as_posix_says() {
    if !fuse_available("namespace_operations_and_attributes_behave_as_posix_says") {
        return;
    }
    let m = Mount::new();
    let root = m.path();
    fs::write(root.join("empty"), b"").expect("create");
    fs::write(root.join("a.bin"), b"short").expect("create");

    // Directories, rename of files and directories, unlink, rmdir.
    fs::create_dir_all(root.join("d1/d2/d3")).expect("mkdir -p");
    fs::write(root.join("d1/d2/d3/f"), b"deep").expect("write");
    fs::rename(root.join("d1/d2"), root.join("moved")).expect("rename dir");
    assert_file(&root.join("moved/d3/f"), b"deep");
    assert!(!root.join("d1/d2").exists());
    fs::rename(root.join("a.bin"), root.join("moved/a.bin")).expect("rename file");
    assert_file(&root.join("moved/a.bin"), b"short");
    fs::write(root.join("victim"), b"old").expect("write");
    fs::rename(root.join("moved/a.bin"), root.join("victim")).expect("rename over");
    assert_file(&root.join("victim"), b"short");
    assert_eq!(
        fs::remove_dir(root.join("moved"))
            .expect_err("not empty")
            .raw_os_error(),
        Some(nix::libc::ENOTEMPTY)
    );
    fs::remove_file(root.join("moved/d3/f")).expect("unlink");
    fs::remove_dir(root.join("moved/d3")).expect("rmdir");
    fs::remove_dir(root.join("moved")).expect("rmdir");
    assert_eq!(
        fs::metadata(root.join("moved")).expect_err("gone").kind(),
        std::io::ErrorKind::NotFound
    );
    let mut names: Vec<_> = fs::read_dir(root)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["d1", "empty", "victim"]);

    // Directory link counts follow subdirectories.
    assert_eq!(fs::metadata(root.join("d1")).expect("stat").nlink(), 2);
    fs::create_dir(root.join("d1/sub")).expect("mkdir");
    assert_eq!(fs::metadata(root.join("d1")).expect("stat").nlink(), 3);

    // Symlinks.
    std::os::unix::fs::symlink("victim", root.join("link")).expect("symlink");
    assert_eq!(
        fs::read_link(root.join("link")).expect("readlink"),
        Path::new("victim")
    );
    assert_file(&root.join("link"), b"short");
    assert!(
        fs::symlink_metadata(root.join("link"))
            .expect("lstat")
            .file_type()
            .is_symlink()
    );

    // chmod, exec bits, utimens.
    let v = root.join("victim");
    fs::set_permissions(&v, fs::Permissions::from_mode(0o751)).expect("chmod");
    assert_eq!(
        fs::metadata(&v).expect("stat").permissions().mode() & 0o7777,
        0o751
    );
    let when = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(&v)
        .expect("open")
        .set_modified(when)
        .expect("utimens");
    let md = fs::metadata(&v).expect("stat");
    assert_eq!(md.modified().expect("mtime"), when);
    assert_eq!(md.mtime_nsec(), 123_456_789);

    // A fifo, a long name, and a name one byte too long.
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    assert!(
        fs::metadata(root.join("fifo"))
            .expect("stat")
            .file_type()
            .is_fifo()
    );
    let long = "n".repeat(255);
    fs::write(root.join(&long), b"long name").expect("255-byte name");
    assert_file(&root.join(&long), b"long name");
    let too_long = "n".repeat(256);
    assert_eq!(
        fs::write(root.join(&too_long), b"x")
            .expect_err("256")
            .raw_os_error(),
        Some(nix::libc::ENAMETOOLONG)
    );

    // Hard links are refused, by design.
    assert_eq!(
        fs::hard_link(&v, root.join("hard"))
            .expect_err("link")
            .raw_os_error(),
        Some(nix::libc::EPERM)
    );
    m.stop();
}

#[test]
fn deep_trees_are_created_read_and_renamed() {
    if !fuse_available("deep_trees_are_created_read_and_renamed") {
        return;
    }
    let m = Mount::new();
    let root = m.path();
    // A deep tree: 300 nested directories (a path of 1,500 bytes), a file at the bottom,
    // then the whole chain renamed at its top.
    let mut deep = root.join("deep");
    for i in 0..300 {
        deep.push(format!("l{:03}", i % 1000));
    }
    fs::create_dir_all(&deep).expect("mkdir -p deep");
    fs::write(deep.join("bottom"), b"at the bottom").expect("write deep");
    fs::rename(root.join("deep"), root.join("deeper")).expect("rename the top");
    let moved: std::path::PathBuf = deep
        .strip_prefix(root.join("deep"))
        .map(|rest| root.join("deeper").join(rest))
        .expect("prefix");
    assert_file(&moved.join("bottom"), b"at the bottom");

    m.stop();
}

#[test]
fn sparse_and_large_files_read_back_exactly() {
    if !fuse_available("sparse_and_large_files_read_back_exactly") {
        return;
    }
    let m = Mount::new();
    let p = m.path().join("sparse");
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .expect("create");
    // Past 4 GiB: offsets that do not fit in 32 bits.
    let far = (5u64 << 30) + 12_345;
    f.seek(SeekFrom::Start(far)).expect("seek");
    f.write_all(b"far away").expect("write");
    f.seek(SeekFrom::Start(3)).expect("seek");
    f.write_all(b"near").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(fs::metadata(&p).expect("stat").len(), far + 8);
    let mut f = File::open(&p).expect("open");
    let mut buf = vec![0u8; 16];
    f.seek(SeekFrom::Start(far - 8)).expect("seek");
    f.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"\0\0\0\0\0\0\0\0far away");
    let mut head = vec![0u8; 1 << 20];
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_exact(&mut head).expect("read hole");
    assert_eq!(&head[..7], b"\0\0\0near");
    assert!(head[7..].iter().all(|&b| b == 0), "a hole reads as zeros");
    // SEEK_HOLE and SEEK_DATA find the hole, a chunk at a time (cp, tar and rsync skip it).
    let chunk = i64::try_from(keibi::limits::CHUNK_BYTES).expect("small");
    let far_chunk = i64::try_from(far).expect("small") / chunk * chunk;
    assert_eq!(lseek(&f, 0, Whence::SeekHole).expect("SEEK_HOLE"), chunk);
    assert_eq!(lseek(&f, 9, Whence::SeekData).expect("SEEK_DATA"), 9);
    assert_eq!(
        lseek(&f, chunk, Whence::SeekData).expect("SEEK_DATA"),
        far_chunk
    );
    let end = i64::try_from(far + 8).expect("small");
    assert_eq!(
        lseek(&f, far_chunk, Whence::SeekHole).expect("SEEK_HOLE"),
        end
    );
    assert_eq!(
        lseek(&f, end, Whence::SeekData),
        Err(nix::errno::Errno::ENXIO)
    );
    drop(f);
    // Holes take no blocks, so cp sees the file as sparse and copies it sparse, in moments.
    let blocks = fs::metadata(&p).expect("stat").blocks();
    assert!(
        blocks * 512 <= 2 << 20,
        "{blocks} blocks for two chunks of data"
    );
    let out_dir = tempfile::tempdir().expect("dir");
    let copy = out_dir.path().join("copy");
    let cp = std::process::Command::new("cp")
        .arg("--sparse=auto")
        .arg(&p)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    let meta = fs::metadata(&copy).expect("stat copy");
    assert_eq!(meta.len(), far + 8);
    assert!(meta.blocks() * 512 <= 2 << 20, "the copy is not sparse");
    let mut tail = vec![0u8; 16];
    let mut copied = File::open(&copy).expect("open copy");
    copied.seek(SeekFrom::Start(far - 8)).expect("seek");
    copied.read_exact(&mut tail).expect("read copy");
    assert_eq!(&tail, b"\0\0\0\0\0\0\0\0far away");
    // The hole is not stored: 5 GiB of zeros would be 10,240 chunk references but one
    // deduplicated zero chunk at most.
    let (code, out, err) = keibi(m.home(), &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["stored_bytes"].as_u64().expect("stored") < 1 << 20,
        "{out}"
    );
    m.stop();
}

#[test]
fn read_after_write_through_the_page_cache_and_mmap() {
    if !fuse_available("read_after_write_through_the_page_cache_and_mmap") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::at(home.path(), mnt.path());
    let p = m.path().join("mapped");
    let data = noise(3 * 1024 * 1024 + 17, 2);
    fs::write(&p, &data).expect("write");

    // A reader that keeps its file open sees a write made through another descriptor.
    let mut reader = File::open(&p).expect("open");
    let mut writer = OpenOptions::new().write(true).open(&p).expect("open");
    writer.seek(SeekFrom::Start(10)).expect("seek");
    writer.write_all(b"fresh").expect("write");
    let mut got = [0u8; 5];
    reader.seek(SeekFrom::Start(10)).expect("seek");
    reader.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"fresh");
    drop((reader, writer));
    let mut want = data.clone();
    want[10..15].copy_from_slice(b"fresh");

    // Private and shared mappings, by a real program (Python's mmap module): a private
    // mapping reads the file and its writes stay private; writes through a shared mapping
    // reach the file on msync, and on munmap and close without one.
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(MMAP_SCRIPT)
        .arg(&p)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), want.len(), "private mapping length");
    assert!(out.stdout == want, "a private mapping reads the file");
    want[1_000_000..1_000_004].copy_from_slice(b"mmap");
    want[2_000_000..2_000_006].copy_from_slice(b"munmap");
    assert_file(&p, &want);
    m.stop();

    let m = Mount::at(home.path(), mnt.path());
    assert_file(&m.path().join("mapped"), &want);
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Reads the file through a private mapping (and scribbles on the private copy, which must
/// not reach the file), prints what it read, then writes through a shared mapping: once
/// followed by msync and checked with a separate read, once left to munmap and close.
const MMAP_SCRIPT: &str = r#"
import mmap, os, sys
path = sys.argv[1]
with open(path, "rb") as f:
    private = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    content = private[:]
    private[0:7] = b"private"
    private.close()
with open(path, "r+b") as f:
    shared = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED)
    shared[1000000:1000004] = b"mmap"
    shared.flush()
    with open(path, "rb") as g:
        g.seek(1000000)
        assert g.read(4) == b"mmap", "msync reached the file"
    shared[2000000:2000006] = b"munmap"
    shared.close()
sys.stdout.buffer.write(content)
"#;

#[test]
fn files_persist_across_remounts_and_verify_clean() {
    if !fuse_available("files_persist_across_remounts_and_verify_clean") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::at(home.path(), mnt.path());
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("dir{}/file{i}", i % 4), noise(i * 37_001, i as u64)))
        .collect();
    for (name, data) in &files {
        let p = m.path().join(name);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, data).expect("write");
    }
    fs::write(m.path().join("script.sh"), b"#!/bin/sh\necho ran\n").expect("write");
    fs::set_permissions(
        m.path().join("script.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");

    // While mounted, status, verify and gc go through the control socket.
    let (code, out, err) = keibi(home.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("mount:     {}", m.path().display())),
        "{out}"
    );
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no problems"), "{out}");
    let (code, out, err) = keibi(home.path(), &["gc"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gc: deleted"), "{out}");

    // A second mount of the same store is refused with a clear message.
    let other = tempfile::tempdir().expect("mnt2");
    let (code, _, err) = mounted::keibi(
        home.path(),
        &["mount", other.path().to_str().expect("utf8")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("in use by another keibi process"), "{err}");
    m.stop();

    let m = Mount::at(home.path(), mnt.path());
    for (name, data) in &files {
        assert_file(&m.path().join(name), data);
    }
    let out = std::process::Command::new(m.path().join("script.sh"))
        .output()
        .expect("exec from the mount");
    assert_eq!(out.stdout, b"ran\n");
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn sigterm_commits_open_files_and_kill_keeps_every_fsynced_byte() {
    if !fuse_available("sigterm_commits_open_files_and_kill_keeps_every_fsynced_byte") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");

    // SIGTERM while a file is open for writing: the mount detaches, keeps serving the open
    // file, and commits it when it is closed.
    let mut m = Mount::at(home.path(), mnt.path());
    let first = noise(2_000_000, 7);
    let mut f = File::create(m.path().join("open-at-sigterm")).expect("create");
    f.write_all(&first[..1_000_000]).expect("write");
    m.send(nix::sys::signal::Signal::SIGTERM);
    f.write_all(&first[1_000_000..])
        .expect("write after detach");
    drop(f);
    let status = m.wait_exit();
    assert!(status.success(), "{}", m.log_text());

    // kill -9 after fsync: the fsynced bytes survive; the store verifies clean.
    let m = Mount::at(home.path(), mnt.path());
    assert_file(&m.path().join("open-at-sigterm"), &first);
    // Several whole chunks: sealed while written, without the write-ahead log, and
    // persisted by the fsync before its record.
    let synced = noise(3 * 524_288 + 700_000, 8);
    let mut f = File::create(m.path().join("fsynced")).expect("create");
    f.write_all(&synced).expect("write");
    f.sync_all().expect("fsync");
    let mut small = OpenOptions::new()
        .write(true)
        .open(m.path().join("open-at-sigterm"))
        .expect("open");
    small.seek(SeekFrom::Start(5)).expect("seek");
    small.write_all(b"journaled").expect("write");
    small.sync_data().expect("fdatasync");
    let mut want = first.clone();
    want[5..14].copy_from_slice(b"journaled");
    m.kill();
    drop((f, small));

    let m = Mount::at(home.path(), mnt.path());
    assert_file(&m.path().join("fsynced"), &synced);
    assert_file(&m.path().join("open-at-sigterm"), &want);
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_mountpoint_that_is_not_a_directory_is_refused() {
    let home = tempfile::tempdir().expect("home");
    let file = home.path().join("plain-file");
    fs::write(&file, b"x").expect("write");
    let (code, _, err) = keibi(home.path(), &["mount", file.to_str().expect("utf8")]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a directory"), "{err}");
    let (code, _, err) = keibi(home.path(), &["mount", "/no/such/dir"]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/dir"), "{err}");
}

/// Process ids whose parent is `pid` and whose command is `name`.
fn children_named(pid: u32, name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let parent = stat[close + 1..].split_whitespace().nth(1);
        if comm == name && parent == Some(pid.to_string().as_str()) {
            if let Ok(p) = stat[..open].trim().parse() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_dead_mount_left_behind_is_cleared_by_the_next_mount() {
    if !fuse_available("a_dead_mount_left_behind_is_cleared_by_the_next_mount") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::at(home.path(), mnt.path());
    fs::write(m.path().join("kept"), b"committed before the crash").expect("write");
    // The root's attributes cached again: the dead mount will answer its stat from them.
    fs::metadata(m.path()).expect("stat the root");
    // Kill the auto_unmount watcher first, then the mount: the mount stays behind, dead.
    let watchers = children_named(m.pid(), "fusermount3");
    assert!(!watchers.is_empty(), "no fusermount3 watcher found");
    for w in watchers {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill watcher");
    }
    m.kill_keeping_dead_mount();
    let err = fs::metadata(mnt.path().join("kept")).expect_err("dead mount");
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOTCONN), "{err}");

    let m = Mount::at(home.path(), mnt.path());
    assert_file(&m.path().join("kept"), b"committed before the crash");
    assert!(m.log_text().contains("detaching it"), "{}", m.log_text());
    m.stop();
}

//! A full disk: the commit that cannot be stored fails with `NoSpace`, and nothing written is
//! lost: the data stays staged and reads back. Runs on a small tmpfs it mounts itself (needs
//! root); skipped, with the reason printed, where it cannot mount. The store work runs in a
//! child process so that the tmpfs is unmounted whatever happens to it. A store whose disk
//! filled up opens again: RocksDB's recovery needs room for a table, which the reserve file
//! beside the store gives back.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keibi::gc::GcPlan;
use keibi::id::ROOT_INO;
use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Batch, Cf, Durability};
use keibi::testing::{self, ME, noise};
use keibi::vfs::{Error, OpenFlags, Vfs};

const CHILD_ENV: &str = "KEIBI_TEST_FULL_DISK_DIR";

/// Unmounts the tmpfs in every outcome.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `data` to `fh` in 1 MiB pieces and fsyncs, until the disk is full: how much went
/// through before the error.
fn write_until_full(vfs: &Vfs, fh: u64, data: &[u8]) -> (usize, Error) {
    let mut written = 0;
    for piece in data.chunks(1 << 20) {
        match vfs.write(fh, written as u64, piece) {
            Ok(_) => written += piece.len(),
            Err(e) => return (written, e),
        }
    }
    let e = vfs
        .fsync(fh)
        .expect_err("the data is larger than the free space");
    (written, e)
}

/// The child's part: fill the disk through the vfs and check what comes back.
fn fill_disk(home: &Path) {
    let fx = testing::rocks(home).expect("fixture");
    let (attr, fh) = fx
        .vfs
        .create(ROOT_INO, b"big", 0o644, ME, OpenFlags::default())
        .expect("create");
    let data = noise(96 << 20, 3);
    let (written, failure) = write_until_full(&fx.vfs, fh, &data);
    assert!(
        matches!(
            failure,
            Error::NoSpace(_) | Error::Store(keibi::store::Error::NoSpace(_))
        ),
        "expected a no-space error, got {failure:?}"
    );
    assert!(
        written > 0,
        "some writes went through before the disk filled"
    );
    let back = fx
        .vfs
        .read(fh, 0, u32::try_from(written).expect("size"))
        .expect("staged data stays readable");
    assert!(
        back == data[..written],
        "data written before the disk filled is intact"
    );
    assert_eq!(
        fx.vfs.getattr(attr.ino).expect("getattr").size,
        written as u64
    );
}

/// Runs `child` on a fresh 48 MiB tmpfs, in a child process that runs only `test` (this test
/// binary again), so that the tmpfs is unmounted whatever happens to the store. Skipped,
/// saying what goes `untested`, where no tmpfs can be mounted.
fn on_a_small_tmpfs(test: &str, untested: &str, child: fn(&Path)) {
    on_a_tmpfs(test, "48m", untested, child);
}

/// [`on_a_small_tmpfs`] with a tmpfs of `size`.
fn on_a_tmpfs(test: &str, size: &str, untested: &str, child: fn(&Path)) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_fs) = Tmpfs::mount(dir.path(), size) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root): {untested} untested");
        return;
    };
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "{test} failed in its child ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_fails_the_commit_and_loses_nothing() {
    on_a_small_tmpfs(
        "a_full_disk_fails_the_commit_and_loses_nothing",
        "full-disk behaviour",
        |dir| fill_disk(&dir.join("home")),
    );
}

/// The child's part: logged writes the database has not flushed, a disk filled to the last
/// byte by something else, then the store opened again.
fn fill_then_reopen(dir: &Path) {
    let path = dir.join("store");
    let values: Vec<(Vec<u8>, Vec<u8>)> = (0..512u32)
        .map(|i| (i.to_be_bytes().to_vec(), noise(4096, u64::from(i))))
        .collect();
    {
        let db = RocksBackend::open(&path, true).expect("create");
        let mut batch = Batch::new();
        for (k, v) in &values {
            batch.put(Cf::Meta, k.clone(), v.clone());
        }
        // In the write-ahead log and the memtable only: recovery writes it into a table.
        db.write(batch, Durability::Buffered).expect("write");
    }
    assert!(
        dir.join("store.reserve").exists(),
        "no reserve beside the store"
    );
    fill_up(&dir.join("filler"));
    let db = RocksBackend::open(&path, false).expect("a store on a full disk opens again");
    for (k, v) in &values {
        assert_eq!(db.get(Cf::Meta, k).expect("get").as_ref(), Some(v));
    }
}

#[test]
fn a_store_whose_disk_filled_up_opens_again() {
    on_a_small_tmpfs(
        "a_store_whose_disk_filled_up_opens_again",
        "reopening a full store",
        fill_then_reopen,
    );
}

/// Fills the filesystem of `path` to the last byte with a file at `path`.
fn fill_up(path: &Path) {
    let filler = noise(1 << 20, 9);
    let mut f = std::fs::File::create(path).expect("filler");
    let full = (0..4096).find_map(|_| std::io::Write::write_all(&mut f, &filler).err());
    assert!(full.is_some(), "the filesystem never filled up");
}

/// Reads the whole file `ino` through `vfs`.
fn read_back(vfs: &Vfs, ino: u64, len: usize) -> Vec<u8> {
    let fh = vfs.open(ino, OpenFlags::default()).expect("open");
    let mut back = Vec::with_capacity(len);
    while back.len() < len {
        let part = vfs.read(fh, back.len() as u64, 1 << 20).expect("read");
        assert!(!part.is_empty(), "short file");
        back.extend_from_slice(&part);
    }
    vfs.release(fh).expect("release");
    back
}

/// The child's part: chunks of a file being written wait in RocksDB's memory when another
/// program fills the disk, so RocksDB's flush fails and it stops taking writes. Once that
/// program's file is gone RocksDB resumes on its own (it polls every 5 s), the commit goes
/// through when tried again, without a restart, and nothing written is lost.
fn fill_free_then_write(dir: &Path) {
    let fx = testing::rocks(&dir.join("home")).expect("fixture");
    let (attr, fh) = fx
        .vfs
        .create(ROOT_INO, b"big", 0o644, ME, OpenFlags::default())
        .expect("create");
    // Less than one chunk memtable: its chunks are stored, but only in memory.
    let data = noise(24 << 20, 3);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        fx.vfs.write(fh, (i as u64) << 20, piece).expect("write");
    }
    let ballast = dir.join("ballast");
    fill_up(&ballast);
    let stopped = fx.backend.flush();
    assert!(
        matches!(stopped, Err(keibi::store::Error::NoSpace(_))),
        "RocksDB flushed into a full disk: {stopped:?}"
    );
    assert!(
        fx.vfs.fsync(fh).is_err(),
        "a commit went through a stopped store"
    );
    std::fs::remove_file(&ballast).expect("remove ballast");
    let start = Instant::now();
    let resumed = loop {
        match fx.vfs.fsync(fh) {
            Ok(()) => break Ok(start.elapsed()),
            Err(e) if start.elapsed() > Duration::from_secs(30) => break Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let took = resumed.expect("the commit goes through within 30 s of freeing space");
    eprintln!("the store took writes again {took:?} after space was freed");
    fx.vfs.release(fh).expect("release");
    assert_eq!(
        fx.vfs.getattr(attr.ino).expect("getattr").size,
        data.len() as u64
    );
    assert!(
        read_back(&fx.vfs, attr.ino, data.len()) == data,
        "the file reads back whole after the disk filled and emptied"
    );
}

#[test]
fn a_store_takes_writes_again_once_space_is_freed() {
    on_a_tmpfs(
        "a_store_takes_writes_again_once_space_is_freed",
        "256m",
        "resuming after a full disk",
        fill_free_then_write,
    );
}

/// The child's part: files written until the store refuses, which it does at its floor of
/// free space, before the disk is full: RocksDB never stops, so removing files and a gc
/// give the space back through the store itself, and writes go on at once.
fn fill_to_the_floor_then_empty(dir: &Path) {
    let fx = testing::rocks(&dir.join("home")).expect("fixture");
    // Leave the store 400 MiB of a 2 GiB filesystem (so it keeps 128 MiB free).
    let ballast = dir.join("ballast");
    let space = fx.backend.disk_space().expect("space").expect("a disk");
    let leave = 400u64 << 20;
    let status = Command::new("fallocate")
        .args(["-l", &(space.available - leave).to_string()])
        .arg(&ballast)
        .status()
        .expect("fallocate");
    assert!(status.success(), "fallocate failed");
    let mut files = Vec::new();
    let refused = loop {
        assert!(files.len() < 64, "the store never refused a file");
        let data = noise(32 << 20, 100 + files.len() as u64);
        let name = format!("f{}", files.len());
        let (attr, fh) = fx
            .vfs
            .create(ROOT_INO, name.as_bytes(), 0o644, ME, OpenFlags::default())
            .expect("create");
        let wrote = data
            .chunks(1 << 20)
            .enumerate()
            .try_for_each(|(i, piece)| fx.vfs.write(fh, (i as u64) << 20, piece).map(|_| ()));
        let closed = fx.vfs.release(fh);
        match wrote.and(closed) {
            Ok(()) => files.push((name, attr.ino, data)),
            Err(e) => break (name, e),
        }
    };
    let (failed, e) = refused;
    let text = e.to_string();
    assert!(text.contains("keeps 128 MiB free"), "{text}");
    let left = fx
        .backend
        .disk_space()
        .expect("space")
        .expect("a disk")
        .available;
    assert!(
        left >= 100 << 20,
        "the store took the disk down to {left} bytes free"
    );
    // RocksDB takes writes: the files go, and gc frees their chunks.
    let _ = fx.vfs.unlink(ROOT_INO, failed.as_bytes());
    let (kept_name, kept_ino, kept) = files.remove(0);
    for (name, _, _) in &files {
        fx.vfs
            .unlink(ROOT_INO, name.as_bytes())
            .expect("unlink at the floor");
    }
    let report = GcPlan::compute(&fx.chunks, &|| fx.vfs.staged_chunks())
        .and_then(GcPlan::execute)
        .expect("gc at the floor");
    assert!(report.deleted_chunks > 0, "{report:?}");
    // At once (past the store's 100 ms between looks at the disk), a new file goes in.
    std::thread::sleep(Duration::from_millis(150));
    let data = noise(32 << 20, 99);
    let (attr, fh) = fx
        .vfs
        .create(ROOT_INO, b"after", 0o644, ME, OpenFlags::default())
        .expect("create after");
    fx.vfs.write(fh, 0, &data).expect("write after gc");
    fx.vfs.release(fh).expect("commit after gc");
    assert!(
        read_back(&fx.vfs, attr.ino, data.len()) == data,
        "after differs"
    );
    assert!(
        read_back(&fx.vfs, kept_ino, kept.len()) == kept,
        "{kept_name} differs"
    );
}

#[test]
fn a_disk_the_store_filled_is_emptied_through_the_store() {
    on_a_tmpfs(
        "a_disk_the_store_filled_is_emptied_through_the_store",
        "2g",
        "the store's floor of free space",
        fill_to_the_floor_then_empty,
    );
}

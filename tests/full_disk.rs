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

use keibi::id::ROOT_INO;
use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Batch, Cf, Durability};
use keibi::testing::{self, ME, noise};
use keibi::vfs::{Error, OpenFlags};

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

/// The child's part: fill the disk through the vfs and check what comes back.
fn fill_disk(home: &Path) {
    let fx = testing::rocks(home).expect("fixture");
    let (attr, fh) = fx
        .vfs
        .create(ROOT_INO, b"big", 0o644, ME, OpenFlags::default())
        .expect("create");
    let data = noise(96 << 20, 3);
    let mut written = 0usize;
    let mut failure = None;
    for piece in data.chunks(1 << 20) {
        match fx.vfs.write(fh, written as u64, piece) {
            Ok(_) => written += piece.len(),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = match failure {
        Some(e) => e,
        None => fx
            .vfs
            .fsync(fh)
            .expect_err("96 MiB cannot fit in a 48 MiB filesystem"),
    };
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
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(_fs) = Tmpfs::mount(dir.path(), "48m") else {
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
    let filler = noise(1 << 20, 9);
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let full = (0..1024).find_map(|_| std::io::Write::write_all(&mut f, &filler).err());
    assert!(full.is_some(), "the tmpfs never filled up");
    drop(f);
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

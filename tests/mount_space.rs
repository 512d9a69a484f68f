//! A mount and the disk space of its store: a full disk fails writers with ENOSPC, loses
//! nothing committed and takes writes again once space comes back; the automatic gc gives
//! back the space of removed files on its own.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::fs::{self, File};
use std::io::Write;
use std::time::{Duration, Instant};

use keibi::testing::noise;
use mounted::{Mount, fuse_available, keibi};

/// Unmounts a tmpfs in every outcome.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_writer_with_enospc_and_loses_nothing_committed() {
    if !fuse_available("a_full_disk_fails_the_writer_with_enospc_and_loses_nothing_committed") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=260m", "tmpfs"])
        .arg(home.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_disk_...: cannot mount a tmpfs for the store (needs root)");
        return;
    }
    let _tmpfs = Tmpfs(home.path().to_path_buf());
    // Something else on the same disk, removed once the disk is full.
    let ballast = home.path().join("ballast");
    fs::write(&ballast, noise(200 << 20, 20)).expect("ballast");
    let mut m = Mount::at(home.path(), mnt.path());
    let keep = noise(1_500_000, 21);
    fs::write(m.path().join("keep"), &keep).expect("write keep");

    // 160 MiB (80 MiB of distinct chunks) into 60 MiB of free space: a write, or at the latest
    // the fsync, fails with ENOSPC; never EIO, never a silent success.
    let mut f = File::create(m.path().join("big")).expect("create big");
    let piece = noise(1 << 20, 22);
    let mut failure = None;
    for i in 0..160u64 {
        let mut p = piece.clone();
        p[..8].copy_from_slice(&i.to_le_bytes());
        if let Err(e) = f.write_all(&p) {
            failure = Some(e);
            break;
        }
    }
    let failure = failure
        .or_else(|| f.sync_all().err())
        .expect("the disk filled up");
    assert_eq!(failure.raw_os_error(), Some(nix::libc::ENOSPC), "{failure}");
    drop(f);
    assert_eq!(fs::read(m.path().join("keep")).expect("read keep"), keep);
    // The mount is still serving: metadata answers, committed data reads.
    assert!(fs::metadata(m.path().join("big")).is_ok());
    // Removing it may fail while the store cannot write, but as a full disk, never EIO.
    if let Err(e) = fs::remove_file(m.path().join("big")) {
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
    }

    // Space given back on the disk: the same mount takes changes again, with no restart.
    fs::remove_file(&ballast).expect("remove ballast");
    let after = noise(700_000, 23);
    let start = Instant::now();
    let resumed = loop {
        let r = File::create(m.path().join("after"))
            .and_then(|mut f| f.write_all(&after).and_then(|()| f.sync_all()));
        match r {
            Ok(()) => break Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(60) => break Err(e),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    resumed.expect("the mount takes writes within 60 s of space coming back");
    eprintln!("writes resumed {:?} after space came back", start.elapsed());
    if m.path().join("big").exists() {
        fs::remove_file(m.path().join("big")).expect("remove big once there is room");
    }
    m.signal(nix::sys::signal::Signal::SIGTERM);

    let m = Mount::at(home.path(), mnt.path());
    assert_eq!(fs::read(m.path().join("keep")).expect("read keep"), keep);
    assert_eq!(fs::read(m.path().join("after")).expect("read after"), after);
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `keibi status --json` of the running mount at `home`.
fn status(home: &std::path::Path) -> serde_json::Value {
    let (code, out, err) = keibi(home, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("status json")
}

#[test]
fn the_mount_collects_the_chunks_of_removed_files_on_its_own() {
    if !fuse_available("the_mount_collects_the_chunks_of_removed_files_on_its_own") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::with_args(home.path(), mnt.path(), &["--gc-every", "1s"]);
    let kept = noise(1_200_000, 31);
    fs::write(m.path().join("kept"), &kept).expect("write kept");
    fs::write(m.path().join("gone"), noise(3 << 20, 32)).expect("write gone");
    let before = status(home.path());
    assert_eq!(before["mount"]["gc"]["every_secs"], 1, "{before}");
    let chunks = before["chunks"].as_u64().expect("chunks");
    assert_eq!(chunks, 9, "{before}");
    fs::remove_file(m.path().join("gone")).expect("remove");
    let start = Instant::now();
    let mut now = before;
    while now["chunks"].as_u64() != Some(3) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        now = status(home.path());
    }
    assert_eq!(
        now["chunks"], 3,
        "the removed file's 6 chunks are still stored: {now}"
    );
    let (code, out, err) = keibi(home.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gc:        every 1s; last run"), "{out}");
    assert_eq!(fs::read(m.path().join("kept")).expect("read kept"), kept);
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

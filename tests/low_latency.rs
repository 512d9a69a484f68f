//! `keibi mount --low-latency`: the mount requests a CPU latency of 0 while requests arrive
//! and withdraws it when they stop. Alone in its binary, so no other mount of the suite runs
//! beside it and the kernel's reading is this test's own.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use mounted::{Mount, fuse_available};

/// The CPU-latency constraint in force now (microseconds), as the kernel reports it.
fn cpu_latency_now() -> i32 {
    let mut b = [0u8; 4];
    File::open(keibi::fuse::latency::CPU_LATENCY_DEVICE)
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read the CPU-latency device");
    i32::from_ne_bytes(b)
}

/// Writes small files on `root` until the constraint reads as 0 (true) or `files` are
/// written without it (false).
fn constrained_while_writing(root: &Path, files: usize) -> bool {
    (0..files).any(|i| {
        fs::write(root.join(format!("f{i}")), b"small").expect("write");
        i % 20 == 0 && cpu_latency_now() == 0
    })
}

#[test]
fn low_latency_requests_polling_idle_only_while_requests_arrive() {
    let test = "low_latency_requests_polling_idle_only_while_requests_arrive";
    if !fuse_available(test) {
        return;
    }
    let device = keibi::fuse::latency::CPU_LATENCY_DEVICE;
    if OpenOptions::new().write(true).open(device).is_err() {
        eprintln!("SKIPPED {test}: {device} cannot be opened for writing (needs root)");
        return;
    }
    let unconstrained = cpu_latency_now();
    if unconstrained == 0 {
        eprintln!("SKIPPED {test}: another process already requests a CPU latency of 0");
        return;
    }
    // Without the option a busy mount requests nothing.
    let m = Mount::new();
    assert!(!constrained_while_writing(m.path(), 400));
    let (_, out, _) = mounted::keibi(m.home(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["mount"]["low_latency"].is_null(), "{out}");
    m.stop();

    let (home, mnt) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("mnt"),
    );
    let m = Mount::with_args(home.path(), mnt.path(), &["--low-latency"]);
    assert!(
        constrained_while_writing(m.path(), 20_000),
        "no CPU-latency request while files were being written"
    );
    // Withdrawn once requests stop (after 100 ms; a bounded wait).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_latency_now() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cpu_latency_now(), unconstrained, "request kept while idle");
    // `keibi status` says so (it asks over the control socket, not through the mount).
    let (code, out, err) = mounted::keibi(home.path(), &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let l = &v["mount"]["low_latency"];
    assert_eq!(l["held"], serde_json::Value::Bool(false), "{out}");
    assert!(l["holds"].as_u64().is_some_and(|n| n >= 1), "{out}");
    let (_, plain, _) = mounted::keibi(home.path(), &["status"]);
    assert!(
        plain.contains("--low-latency: CPU latency 0 withdrawn"),
        "{plain}"
    );
    // Held again by the next burst, and gone with the mount.
    assert!(constrained_while_writing(m.path(), 20_000));
    m.stop();
    assert_eq!(
        cpu_latency_now(),
        unconstrained,
        "request kept after unmount"
    );
}

#[test]
fn low_latency_without_root_is_refused_before_anything_is_created() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy of the binary, and directories, that an unprivileged user can reach.
    let bin = dir.path().join("keibi");
    fs::copy(mounted::keibi_bin(), &bin).expect("copy the binary");
    let (home, mnt) = (dir.path().join("home"), dir.path().join("mnt"));
    fs::create_dir(&mnt).expect("mountpoint");
    for p in [dir.path(), bin.as_path(), mnt.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        std::process::Command::new(&bin)
    };
    let out = cmd
        .arg("mount")
        .arg(&mnt)
        .arg("--home")
        .arg(&home)
        .arg("--low-latency")
        .output()
        .expect("run keibi mount");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--low-latency") && err.contains("needs root"),
        "{err}"
    );
    assert!(!home.exists(), "a home was created before the refusal");
}

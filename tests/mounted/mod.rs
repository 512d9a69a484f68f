//! A real `keibi mount` process for integration tests, and the guard that always unmounts it.
//!
//! Every test that mounts starts with [`fuse_available`]: without `/dev/fuse` it prints why it
//! is skipped and returns. A [`Mount`] unmounts (lazily) and kills its process when dropped,
//! so a failing assertion never leaves a mount behind.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Longest wait for a mount to appear or a mount process to end.
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// How long a killed mount's `auto_unmount` is given before the mount counts as left behind.
const KILLED_UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// The keibi binary under test.
pub fn keibi_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keibi")
}

/// Whether this machine can mount FUSE filesystems; prints the reason when it cannot.
pub fn fuse_available(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("SKIPPED {test}: /dev/fuse is absent on this machine, nothing can be mounted");
    false
}

/// Runs `keibi ARGS --home HOME` and returns (exit code, stdout, stderr).
pub fn keibi(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(keibi_bin())
        .args(args)
        .arg("--home")
        .arg(home)
        .output()
        .expect("run keibi");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&want.as_ref()) && l.contains(" - fuse.keibi ")
    })
}

/// A running `keibi mount` on a mountpoint of its own.
pub struct Mount {
    home: PathBuf,
    mountpoint: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Temporary home and mountpoint owned by this mount, removed after it unmounts.
    dirs: Option<(TempDir, TempDir)>,
    /// Set by [`Self::kill`]: a dead mount is left for the next mount to clear.
    keep_dead: bool,
}

impl Mount {
    /// Mounts a new store in fresh temporary directories.
    pub fn new() -> Self {
        let home = tempfile::tempdir().expect("home dir");
        let mnt = tempfile::tempdir().expect("mount dir");
        let mut m = Self::at(home.path(), mnt.path());
        m.dirs = Some((home, mnt));
        m
    }

    /// Mounts the store of `home` on `mountpoint` (the caller keeps both directories).
    pub fn at(home: &Path, mountpoint: &Path) -> Self {
        Self::with_args(home, mountpoint, &[])
    }

    /// As [`Self::at`], with extra arguments for `keibi mount`.
    pub fn with_args(home: &Path, mountpoint: &Path, extra: &[&str]) -> Self {
        // A killed mount may still sit there (see `kill`): canonicalize the parent instead.
        let mountpoint = match mountpoint.canonicalize() {
            Ok(p) => p,
            Err(_) => mountpoint
                .parent()
                .expect("parent")
                .canonicalize()
                .expect("mountpoint parent")
                .join(mountpoint.file_name().expect("name")),
        };
        let log = home.with_extension("mount.log");
        let err = std::fs::File::create(&log).expect("log file");
        let child = Command::new(keibi_bin())
            .arg("mount")
            .arg(&mountpoint)
            .args(extra)
            .arg("--home")
            .arg(home)
            .env("KEIBI_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn keibi mount");
        let mut m = Self {
            home: home.to_path_buf(),
            mountpoint,
            child: Some(child),
            log,
            dirs: None,
            keep_dead: false,
        };
        m.wait_mounted();
        m
    }

    /// Waits for a live mount at the mountpoint. A dead one left by a killed mount answers
    /// ENOTCONN until the new mount clears it, but only to requests that reach it: the stat
    /// of a name that is not there does (the mount caches no negative entries), while the
    /// root's attributes may still be cached.
    fn wait_mounted(&mut self) {
        let start = Instant::now();
        let probe = self.mountpoint.join(".keibi-test-liveness-probe");
        let live = |p: &Path| match std::fs::symlink_metadata(p) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        while !(is_mounted(&self.mountpoint) && live(&probe)) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("keibi mount exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < WAIT,
                "not mounted after {WAIT:?}: {}",
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The home directory of the store.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// What the mount process wrote to standard error.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The process id of the mount.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the mount process to end (after a signal or an unmount), and for its mount
    /// to disappear.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                while is_mounted(&self.mountpoint) {
                    assert!(start.elapsed() < WAIT, "still mounted {WAIT:?} after exit");
                    std::thread::sleep(POLL);
                }
                return status;
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keibi mount did not exit: {}", self.log_text());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `signal` to the mount process.
    pub fn send(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal");
    }

    /// Sends `signal` to the mount process and waits for it to end.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        self.send(signal);
        self.wait_exit()
    }

    /// Unmounts cleanly (SIGTERM) and waits; the mount must exit with success.
    pub fn stop(mut self) {
        let status = self.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(
            status.success(),
            "mount exited {status}: {}",
            self.log_text()
        );
    }

    /// Kills the mount process with SIGKILL: nothing is committed on the way out. The mount
    /// is left as a killed mount leaves it: `auto_unmount` normally removes it, and when it
    /// does not within [`KILLED_UNMOUNT_WAIT`] (fusermount3 3.14 sometimes exits without
    /// unmounting when other mounts change at the same moment), this detaches it.
    pub fn kill(mut self) {
        self.kill_process();
        // Give auto_unmount its moment: a new mount started while the old watcher is about
        // to unmount could be the one it detaches.
        let start = Instant::now();
        while is_mounted(&self.mountpoint) && start.elapsed() < KILLED_UNMOUNT_WAIT {
            std::thread::sleep(POLL);
        }
        if is_mounted(&self.mountpoint) {
            // Detached here: a dead mount can still answer stat from the attributes the
            // kernel cached, so a new mount's wait would see it as live and the test's first
            // read would get ENOTCONN.
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.mountpoint)
                .output();
            let start = Instant::now();
            while is_mounted(&self.mountpoint) && start.elapsed() < WAIT {
                std::thread::sleep(POLL);
            }
        }
        self.keep_dead = true;
    }

    /// Kills the mount process with SIGKILL and leaves whatever mount remains, dead or not,
    /// for the next `keibi mount` to deal with.
    pub fn kill_keeping_dead_mount(mut self) {
        self.kill_process();
        self.keep_dead = true;
    }

    fn kill_process(&mut self) {
        self.send(nix::sys::signal::Signal::SIGKILL);
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait for the killed mount");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let child = self.child.take();
        if child.is_some() || (!self.keep_dead && is_mounted(&self.mountpoint)) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.mountpoint)
                .output();
        }
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.dirs.take());
        // The log lies beside the home, outside its temporary directory; a failing test
        // keeps it (its messages quote it).
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Two homes, initialised, and their mounts connected to each other.
pub struct Pair {
    pub a: Mount,
    pub b: Mount,
    /// Removed after the mounts (declared after them, so dropped after).
    pub homes: (TempDir, TempDir),
    pub mnts: (TempDir, TempDir),
    /// The options B was mounted with (its listener and A as its peer).
    pub b_args: Vec<String>,
}

/// Initialises the store of `home` and returns its device id.
pub fn init(home: &Path) -> String {
    let (code, _, err) = keibi(home, &["init"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = keibi(home, &["id"]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Two new stores mounted and peered over 127.0.0.1, each mount also given `extra`.
pub fn pair(extra: &[&str]) -> Pair {
    let (ha, hb) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (ma, mb) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (ida, idb) = (init(ha.path()), init(hb.path()));
    let (pa, pb) = (
        keibi::testing::free_port().expect("free port"),
        keibi::testing::free_port().expect("free port"),
    );
    let args = |port: u16, peer: &str, peer_port: u16| {
        let mut v = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--peer".to_string(),
            format!("{peer}@127.0.0.1:{peer_port}"),
        ];
        v.extend(extra.iter().map(|a| (*a).to_string()));
        v
    };
    let aa = args(pa, &idb, pb);
    let ab = args(pb, &ida, pa);
    let a = Mount::with_args(
        ha.path(),
        ma.path(),
        &aa.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Mount::with_args(
        hb.path(),
        mb.path(),
        &ab.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    Pair {
        a,
        b,
        homes: (ha, hb),
        mnts: (ma, mb),
        b_args: ab,
    }
}

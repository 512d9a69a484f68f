//! Two real `keibi mount` processes replicating over TLS on 127.0.0.1: the failures of the
//! file-sync filesystem keibi learned from, as regression tests, then git across the mounts.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "each test binary uses part of the shared harness")]
mod mounted;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keibi::testing::wait_until;
use mounted::{Mount, Pair, fuse_available, keibi, pair};

/// A HOME for git with the git-lfs filters installed (`git lfs install --skip-repo`), so
/// that no configuration file lands in a work tree.
fn git_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("dir");
    git(home.path(), home.path(), &["lfs", "install", "--skip-repo"]);
    home
}

fn git(home: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "keibi test")
        .env("GIT_AUTHOR_EMAIL", "test@keibi.invalid")
        .env("GIT_COMMITTER_NAME", "keibi test")
        .env("GIT_COMMITTER_EMAIL", "test@keibi.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .output()
        .expect("run git (and git-lfs: tools/deps.sh installs both)");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `root` with its mode bits and content hash, by relative path.
fn listing(root: &Path) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if meta.is_dir() {
                stack.push(p);
                out.push((rel, meta.permissions().mode() & 0o7777, String::new()));
            } else if meta.is_file() {
                let hash = std::fs::read(&p).map_or_else(
                    |e| format!("unreadable: {e}"),
                    |d| blake3::hash(&d).to_hex()[..16].to_string(),
                );
                out.push((rel, meta.permissions().mode() & 0o7777, hash));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_file_appears_on_the_other_mount_after_a_failed_lookup_and_grows_after_close() {
    if !fuse_available("two mounts") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (p.a.path().to_path_buf(), p.b.path().to_path_buf());
    // B looks first and gets ENOENT; the file then appears (no cached negative entry).
    assert!(std::fs::metadata(b.join("late.txt")).is_err());
    std::fs::write(a.join("late.txt"), b"here now").expect("write");
    assert!(
        wait_until(20, || std::fs::read(b.join("late.txt"))
            .is_ok_and(|d| d == b"here now")),
        "late.txt never appeared on B: {}",
        p.b.log_text()
    );
    // A pack that gains its 20-byte trailer after the first close.
    let mut pack = vec![7u8; 3 * 1024 * 1024 + 11];
    std::fs::write(a.join("pack"), &pack).expect("write");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(a.join("pack"))
        .expect("open");
    f.write_all(&[0xAB; 20]).expect("append");
    drop(f);
    pack.extend_from_slice(&[0xAB; 20]);
    assert!(wait_until(20, || std::fs::read(b.join("pack"))
        .is_ok_and(|d| d == pack)));
    // An executable keeps its mode.
    std::fs::write(a.join("hook"), b"#!/bin/sh\necho hook ran\n").expect("write");
    std::fs::set_permissions(a.join("hook"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    assert!(wait_until(20, || std::fs::metadata(b.join("hook"))
        .is_ok_and(|m| m.permissions().mode() & 0o777 == 0o755)));
    let out = Command::new(b.join("hook"))
        .output()
        .expect("run hook on B");
    assert_eq!(out.stdout, b"hook ran\n");
    // A growing download renamed into place when complete (LFS style).
    std::fs::create_dir_all(a.join("lfs/incomplete")).expect("mkdir");
    std::fs::create_dir_all(a.join("lfs/objects")).expect("mkdir");
    let mut obj = Vec::new();
    let mut f = std::fs::File::create(a.join("lfs/incomplete/obj")).expect("create");
    for i in 0..20u8 {
        let piece = vec![i; 300 * 1024];
        f.write_all(&piece).expect("write");
        f.sync_data().expect("fsync");
        obj.extend_from_slice(&piece);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(f);
    std::fs::rename(a.join("lfs/incomplete/obj"), a.join("lfs/objects/obj")).expect("rename");
    assert!(wait_until(30, || std::fs::read(b.join("lfs/objects/obj"))
        .is_ok_and(|d| d == obj)));
    assert!(!b.join("lfs/incomplete/obj").exists());
    // 650 files closed in a burst.
    std::fs::create_dir(a.join("burst")).expect("mkdir");
    for i in 0..650 {
        std::fs::write(a.join(format!("burst/{i}")), format!("file {i}")).expect("write");
    }
    assert!(
        wait_until(60, || listing(&a.join("burst"))
            == listing(&b.join("burst"))),
        "burst did not converge: {}",
        p.b.log_text()
    );
    // The progress display ends on its own once B has caught up; bounded, so a B that
    // never catches up fails here (timeout exits 124) instead of hanging the suite.
    let watch = Command::new("timeout")
        .arg("60")
        .arg(mounted::keibi_bin())
        .args(["status", "--watch", "--home"])
        .arg(p.b.home())
        .output()
        .expect("run keibi status --watch under timeout");
    let out = String::from_utf8_lossy(&watch.stdout);
    assert_eq!(
        watch.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    assert!(out.contains("caught up"), "{out}");
    let (code, out, _) = keibi(p.b.home(), &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("connected"), "{out}");
    assert!(out.contains("X25519MLKEM768"), "{out}");
}

#[test]
fn lock_file_renames_leave_the_last_content_and_no_stale_lock() {
    if !fuse_available("lock-file renames across mounts") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (p.a.path().to_path_buf(), p.b.path().to_path_buf());
    // git's pattern: write NAME.lock, close, rename it over NAME; many times in a row, so
    // renames overtake the content of the lock files they move.
    std::fs::create_dir(a.join("gitdir")).expect("mkdir");
    let mut last = (String::new(), String::new());
    for i in 0..40 {
        last = (
            format!("[core]\n\trepositoryformatversion = 0\n# version {i}\n"),
            format!("ref: refs/heads/branch-{i}\n"),
        );
        std::fs::write(a.join("gitdir/config.lock"), &last.0).expect("write config.lock");
        std::fs::rename(a.join("gitdir/config.lock"), a.join("gitdir/config")).expect("rename");
        std::fs::write(a.join("gitdir/HEAD.lock"), &last.1).expect("write HEAD.lock");
        std::fs::rename(a.join("gitdir/HEAD.lock"), a.join("gitdir/HEAD")).expect("rename");
    }
    let settled = |root: &Path, want: &(String, String)| {
        std::fs::read_to_string(root.join("gitdir/config")).is_ok_and(|c| c == want.0)
            && std::fs::read_to_string(root.join("gitdir/HEAD")).is_ok_and(|h| h == want.1)
    };
    assert!(
        wait_until(30, || settled(&b, &last)),
        "B never showed the last config and HEAD: {}",
        p.b.log_text()
    );
    let names = |root: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join("gitdir"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Once settled, nothing moves any more: no lock file reappears later.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names(&b), vec!["HEAD", "config"], "stale files on B");
    assert!(settled(&b, &last));
    // And the other way: B takes the lock and A sees the result.
    let from_b = (
        "[core]\n# written on B\n".to_string(),
        "ref: refs/heads/b\n".to_string(),
    );
    std::fs::write(b.join("gitdir/config.lock"), &from_b.0).expect("write");
    std::fs::rename(b.join("gitdir/config.lock"), b.join("gitdir/config")).expect("rename");
    std::fs::write(b.join("gitdir/HEAD.lock"), &from_b.1).expect("write");
    std::fs::rename(b.join("gitdir/HEAD.lock"), b.join("gitdir/HEAD")).expect("rename");
    assert!(
        wait_until(30, || settled(&a, &from_b)),
        "A never showed B's config and HEAD: {}",
        p.a.log_text()
    );
    assert_eq!(names(&a), vec!["HEAD", "config"], "stale files on A");
}

/// A repository of 620 small files, an executable script and three git-lfs objects.
fn source_repository(home: &Path, s: &Path) {
    git(home, s, &["init", "-q", "-b", "main"]);
    git(home, s, &["lfs", "track", "*.bin"]);
    for d in 0..20 {
        std::fs::create_dir(s.join(format!("dir{d}"))).expect("mkdir");
        for f in 0..31 {
            std::fs::write(
                s.join(format!("dir{d}/file{f}.txt")),
                format!("directory {d} file {f}\n").repeat(40),
            )
            .expect("write");
        }
    }
    std::fs::write(s.join("build.sh"), "#!/bin/sh\necho built\n").expect("write");
    std::fs::set_permissions(s.join("build.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    // LFS objects of several chunks each, incompressible.
    for (i, mib) in [(0u64, 3usize), (1, 5), (2, 9)] {
        let data = keibi::testing::noise(mib << 20, i + 40);
        std::fs::write(s.join(format!("asset{i}.bin")), data).expect("write");
    }
    git(home, s, &["add", "."]);
    git(home, s, &["commit", "-q", "-m", "initial"]);
}

#[test]
fn git_clone_with_lfs_on_one_mount_status_and_commit_on_the_other() {
    if !fuse_available("git across mounts") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (p.a.path().to_path_buf(), p.b.path().to_path_buf());
    let home = git_home();
    let h = home.path();
    let src = tempfile::tempdir().expect("dir");
    source_repository(h, src.path());

    // A file:// URL: git copies objects instead of hard-linking them, and git-lfs fetches
    // its objects through its standalone transfer agent (incomplete/, then a rename).
    let url = format!("file://{}", src.path().display());
    git(h, &a, &["clone", "-q", &url, "repo"]);
    let ra = a.join("repo");
    let rb = b.join("repo");
    assert!(
        wait_until(120, || listing(&ra) == listing(&rb)),
        "the clone did not converge on B: {}",
        p.b.log_text()
    );
    assert_eq!(
        git(h, &rb, &["status", "--porcelain"]),
        "",
        "git status on B is not clean"
    );
    let fsck = git(h, &rb, &["lfs", "fsck"]);
    assert!(
        fsck.contains("Git LFS fsck OK"),
        "git lfs fsck on B: {fsck}"
    );
    assert_eq!(git(h, &rb, &["lfs", "ls-files"]).lines().count(), 3);
    // The work tree holds the objects themselves, not LFS pointer files.
    assert_eq!(
        std::fs::read(rb.join("asset2.bin")).expect("read on B"),
        keibi::testing::noise(9 << 20, 42)
    );
    let built = Command::new(rb.join("build.sh"))
        .output()
        .expect("run on B");
    assert_eq!(built.stdout, b"built\n");

    // A branch and a commit on B (a text change and a new LFS object), sound on A.
    git(h, &rb, &["checkout", "-q", "-b", "from-b"]);
    std::fs::write(rb.join("dir0/file0.txt"), "changed on B\n").expect("write");
    std::fs::write(rb.join("asset3.bin"), keibi::testing::noise(2 << 20, 99)).expect("write");
    git(h, &rb, &["add", "-A"]);
    git(h, &rb, &["commit", "-q", "-m", "change on B"]);
    let head_b = git(h, &rb, &["rev-parse", "HEAD"]);
    assert!(
        wait_until(60, || listing(&ra) == listing(&rb)),
        "B's commit did not converge on A: {}",
        p.a.log_text()
    );
    assert_eq!(git(h, &ra, &["rev-parse", "from-b"]), head_b);
    git(h, &ra, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(git(h, &ra, &["status", "--porcelain"]), "");
    let fsck = git(h, &ra, &["lfs", "fsck"]);
    assert!(
        fsck.contains("Git LFS fsck OK"),
        "git lfs fsck on A: {fsck}"
    );
    // Back on A: checkout main and the branch again, each clean.
    git(h, &ra, &["checkout", "-q", "main"]);
    assert!(!ra.join("asset3.bin").exists());
    git(h, &ra, &["checkout", "-q", "from-b"]);
    assert_eq!(git(h, &ra, &["status", "--porcelain"]), "");
    // Hooks cloned on A keep their exec bit on B.
    let hook = rb.join(".git/hooks/pre-commit.sample");
    assert_eq!(
        std::fs::metadata(&hook).expect("hook").permissions().mode() & 0o111,
        0o111
    );
}

/// Writes `data` to `name` on A and waits until B's mount reads it back whole.
fn write_and_wait(a: &Mount, b: &Mount, name: &str, data: &[u8]) {
    std::fs::write(a.path().join(name), data).expect("write");
    assert!(
        wait_until(30, || std::fs::read(b.path().join(name))
            .is_ok_and(|d| d == data)),
        "{name} never arrived on B: {}",
        b.log_text()
    );
}

#[test]
fn chunks_fetched_before_a_kill_are_still_there_without_any_peer() {
    if !fuse_available("fetched chunks survive a kill") {
        return;
    }
    let Pair {
        a, b, homes, mnts, ..
    } = pair(&[]);
    let data = keibi::testing::noise(5 << 20, 7);
    write_and_wait(&a, &b, "fetched.bin", &data);
    // Fetched chunks skip the write-ahead log; the fetcher persists them once its queue
    // has been dry for a moment, and status says when it has.
    assert!(
        wait_until(20, || {
            let (code, out, _) = keibi(b.home(), &["status", "--json"]);
            code == 0
                && out.contains("\"chunks_missing\": 0")
                && out.contains("\"fetched_unpersisted\": false")
        }),
        "B never persisted what it fetched: {}",
        b.log_text()
    );
    b.kill();
    a.stop();
    // B alone, with no peer to fetch from: every chunk must be in its own store.
    let b = Mount::at(homes.1.path(), mnts.1.path());
    assert_eq!(
        std::fs::read(b.path().join("fetched.bin")).expect("read on B after the kill"),
        data
    );
    b.stop();
    let (code, out, err) = keibi(homes.1.path(), &["verify"]);
    assert_eq!(code, 0, "verify after the kill: {out}{err}");
}

#[test]
fn verify_repair_on_a_mount_fetches_a_damaged_chunk_from_the_peer() {
    use keibi::store::{Backend, Batch, Cf, Durability, keys, rocks::RocksBackend};
    if !fuse_available("verify --repair through a mount") {
        return;
    }
    let Pair {
        a,
        b,
        homes,
        mnts,
        b_args,
    } = pair(&[]);
    let data = keibi::testing::noise(3 << 20, 8);
    write_and_wait(&a, &b, "f.bin", &data);
    b.stop();
    // Damage one piece of one chunk in B's store while it is not mounted.
    {
        let db = RocksBackend::open(&homes.1.path().join("store"), false).expect("open");
        let mut piece = None;
        db.scan(Cf::Chunks, &[], None, &mut |k, v| {
            if k.len() == keys::CHUNK_PIECE_KEY_BYTES {
                piece = Some((k.to_vec(), v.to_vec()));
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        })
        .expect("scan");
        let (k, mut v) = piece.expect("a chunk stored in parts");
        v[50] ^= 0x0f;
        let mut batch = Batch::new();
        batch.put(Cf::Chunks, k, v);
        db.write(batch, Durability::Synced).expect("damage");
    }
    let b = Mount::with_args(
        homes.1.path(),
        mnts.1.path(),
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (code, out, err) = keibi(b.home(), &["verify"]);
    assert_eq!(code, 1, "verify should find the damage: {out}{err}");
    assert!(out.contains("corrupt-chunk"), "{out}");
    // B's session to A may take a moment to come back after the restart.
    let mut last = String::new();
    let repaired = wait_until(30, || {
        let (code, out, err) = keibi(b.home(), &["verify", "--repair"]);
        last = format!("{out}{err}");
        code == 0
    });
    assert!(repaired, "verify --repair: {last}\n{}", b.log_text());
    assert!(last.contains("fetched 1 chunks again"), "{last}");
    assert!(last.contains("after the repair:"), "{last}");
    let (code, out, err) = keibi(b.home(), &["verify"]);
    assert_eq!(code, 0, "verify after the repair: {out}{err}");
    assert_eq!(
        std::fs::read(b.path().join("f.bin")).expect("read on B"),
        data
    );
    b.stop();
    a.stop();
}

/// The one-line answer of `sql` on the database at `db`, read only, or `None` while it
/// cannot be read.
fn query(db: &Path, sql: &str) -> Option<String> {
    let out = Command::new("sqlite3")
        .args(["-readonly", "-bail"])
        .arg(db)
        .arg(sql)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A database that a program keeps open on A: every committed transaction reaches B, where
/// it reads whole, without the program ever closing it.
#[test]
fn a_database_kept_open_on_one_mount_is_read_on_the_other() {
    if !fuse_available("a database kept open across mounts") {
        return;
    }
    let p = pair(&[]);
    let db = p.a.path().join("notes.db");
    let mut sqlite = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sqlite3");
    let stdin = sqlite.stdin.as_mut().expect("stdin");
    let mut run = |sql: &str| {
        stdin.write_all(sql.as_bytes()).expect("feed sqlite3");
        stdin.flush().expect("flush");
    };
    run("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1999) \
         INSERT INTO t SELECT i, hex(randomblob(200)) FROM n;\n");
    let on_b = p.b.path().join("notes.db");
    let count = "SELECT count(*) FROM t;";
    assert!(
        wait_until(30, || query(&on_b, count).as_deref() == Some("2000")),
        "the first transaction never reached B ({:?}): {}",
        query(&on_b, count),
        p.b.log_text()
    );
    // Rows changed in place, the file keeping its size: only the journal holds the
    // change on A until the file is committed, and sqlite3 keeps it open.
    run("UPDATE t SET v = 'changed ' || id WHERE id < 50;\n");
    let row = "SELECT v FROM t WHERE id = 7;";
    assert!(
        wait_until(30, || query(&on_b, row).as_deref() == Some("changed 7")),
        "an update of a database kept open never reached B ({:?})",
        query(&on_b, row)
    );
    assert_eq!(
        query(&on_b, "PRAGMA integrity_check;").as_deref(),
        Some("ok")
    );
    drop(sqlite.stdin.take());
    assert!(sqlite.wait().expect("sqlite3").success());
}

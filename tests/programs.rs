//! Real programs on a real mount: git (init, commit, branch, checkout, gc, fsck, clone,
//! hooks), SQLite (transactions, rollback journal and WAL, integrity check), and a running
//! program that a truncating open may not empty.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mounted::{Mount, fuse_available, keibi};

/// Runs `git ARGS` in `dir` with a fixed identity and no user configuration; returns stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "keibi test")
        .env("GIT_AUTHOR_EMAIL", "test@keibi.invalid")
        .env("GIT_COMMITTER_NAME", "keibi test")
        .env("GIT_COMMITTER_EMAIL", "test@keibi.invalid")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository outside the mount with `files` files over a few directories and commits.
fn source_repo(dir: &Path, files: usize) {
    git(dir, &["init", "-q"]);
    for i in 0..files {
        let p = dir.join(format!("src/mod{}/file{i}.txt", i % 12));
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let body = format!("file {i}\n").repeat(1 + i % 50);
        fs::write(&p, body).expect("write");
    }
    fs::write(dir.join("big.bin"), keibi::testing::noise(1_500_000, 3)).expect("write");
    fs::write(dir.join("run.sh"), "#!/bin/sh\necho run\n").expect("write");
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "first"]);
    for i in 0..files / 10 {
        fs::write(
            dir.join(format!("src/mod0/file{}.txt", i * 12)),
            format!("edit {i}\n"),
        )
        .expect("edit");
    }
    git(dir, &["commit", "-q", "-a", "-m", "second"]);
}

#[test]
fn git_works_in_the_mount() {
    if !fuse_available("git_works_in_the_mount") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::at(home.path(), mnt.path());
    let repo = m.path().join("repo");
    fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    for i in 0..30 {
        fs::write(repo.join(format!("f{i}.txt")), format!("line {i}\n")).expect("write");
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "init"]);

    // A hook: executable, and it runs.
    let hook = repo.join(".git/hooks/pre-commit");
    fs::write(
        &hook,
        "#!/bin/sh\necho hooked > \"$(git rev-parse --git-dir)/hook-ran\"\n",
    )
    .expect("hook");
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).expect("chmod");
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    fs::write(repo.join("f1.txt"), "changed on feature\n").expect("edit");
    fs::write(repo.join("new.txt"), "new\n").expect("new");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "feature work"]);
    assert_eq!(
        fs::read_to_string(repo.join(".git/hook-ran")).expect("hook ran"),
        "hooked\n"
    );
    git(&repo, &["checkout", "-q", "main"]);
    assert_eq!(
        fs::read_to_string(repo.join("f1.txt")).expect("read"),
        "line 1\n"
    );
    assert!(!repo.join("new.txt").exists());
    git(&repo, &["checkout", "-q", "feature"]);
    assert_eq!(
        fs::read_to_string(repo.join("f1.txt")).expect("read"),
        "changed on feature\n"
    );
    git(&repo, &["gc", "-q", "--aggressive"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(git(&repo, &["rev-list", "--all", "--count"]).trim(), "2");

    // A clone of a few hundred files into the mount, then a clean status and fsck.
    let src = tempfile::tempdir().expect("src");
    source_repo(src.path(), 400);
    let clone = m.path().join("clone");
    git(
        m.path(),
        &["clone", "-q", src.path().to_str().expect("utf8"), "clone"],
    );
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    git(&clone, &["fsck", "--full"]);
    let run = Command::new(clone.join("run.sh")).output().expect("exec");
    assert_eq!(run.stdout, b"run\n", "exec bit survives the clone");
    m.stop();

    // After a remount everything is still there and clean; the store verifies.
    let m = Mount::at(home.path(), mnt.path());
    let clone = m.path().join("clone");
    assert_eq!(git(&clone, &["status", "--porcelain"]), "");
    git(&clone, &["fsck", "--full"]);
    git(&m.path().join("repo"), &["fsck", "--full"]);
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

fn sqlite(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg("-batch")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sqlite3");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), sql.as_bytes())
        .expect("feed sqlite3");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sqlite_keeps_ten_thousand_rows_intact() {
    if !fuse_available("sqlite_keeps_ten_thousand_rows_intact") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::at(home.path(), mnt.path());
    for mode in ["delete", "wal"] {
        let db = m.path().join(format!("{mode}.db"));
        let mut sql = format!(
            "PRAGMA journal_mode={mode};\nCREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n"
        );
        for tx in 0..100 {
            sql.push_str("BEGIN;\n");
            for row in 0..100 {
                let id = tx * 100 + row;
                writeln!(
                    sql,
                    "INSERT INTO t VALUES ({id}, 'row {id} {}');",
                    "x".repeat(id % 200)
                )
                .expect("format");
            }
            sql.push_str("COMMIT;\n");
        }
        sqlite(&db, &sql);
        let check = sqlite(
            &db,
            "PRAGMA integrity_check;\nSELECT count(*), sum(id) FROM t;\n",
        );
        assert_eq!(check, "ok\n10000|49995000\n", "{mode}");
    }
    m.stop();
    let m = Mount::at(home.path(), mnt.path());
    for mode in ["delete", "wal"] {
        let db = m.path().join(format!("{mode}.db"));
        let check = sqlite(&db, "PRAGMA integrity_check;\nSELECT count(*) FROM t;\n");
        assert_eq!(check, "ok\n10000\n", "{mode} after remount");
    }
    m.stop();
}

#[test]
fn a_truncating_open_refused_because_the_program_runs_leaves_it_whole() {
    // open(O_RDONLY | O_TRUNC) of a running program fails with ETXTBSY. The kernel checks
    // that only after sending the open: a mount that truncated on open emptied the file
    // anyway, and the program died of SIGBUS at its next page.
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::ExitStatusExt;
    if !fuse_available("ETXTBSY") {
        return;
    }
    let m = Mount::new();
    let program = m.path().join("sleep");
    let original = fs::read("/bin/sleep").expect("read /bin/sleep");
    fs::write(&program, &original).expect("copy sleep");
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new(&program)
        .arg("30")
        .spawn()
        .expect("run the copy");
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_TRUNC)
        .open(&program);
    let refused = opened.as_ref().err().and_then(std::io::Error::raw_os_error);
    assert_eq!(refused, Some(nix::libc::ETXTBSY), "{opened:?}");
    assert_eq!(
        fs::metadata(&program).expect("stat").len(),
        original.len() as u64
    );
    assert!(
        fs::read(&program).expect("read") == original,
        "the program was changed"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the program died"
    );
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(nix::libc::SIGKILL), "{status:?}");
}

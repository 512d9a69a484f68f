//! The pjdfstest POSIX conformance suite against a real mount. Every case must pass except
//! those listed, with their reason, in `tests/pjdfstest/expected-failures.txt`.
//!
//! The suite is installed by `tools/deps.sh` (`cargo install pjdfstest`), which `tools/test.sh`
//! runs first; it exports the binary's path as `KEIBI_PJDFSTEST`.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use mounted::{Mount, fuse_available};

/// Fewer cases than this means the suite did not run through.
const CASES_MIN: usize = 390;

fn expected_failures() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/expected-failures.txt");
    std::fs::read_to_string(path)
        .expect("expected-failures.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn pjdfstest_passes_except_for_hard_links() {
    if !fuse_available("pjdfstest_passes_except_for_hard_links") {
        return;
    }
    let suite = std::env::var("KEIBI_PJDFSTEST").expect(
        "KEIBI_PJDFSTEST is not set: run the tests with `bash tools/test.sh`, which installs \
         pjdfstest (tools/deps.sh) and points KEIBI_PJDFSTEST at it",
    );
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let secondary = tempfile::tempdir().expect("secondary fs");
    let m = Mount::with_args(home.path(), mnt.path(), &["--allow-other"]);
    let dir = m.path().join("pjdfstest");
    std::fs::create_dir(&dir).expect("mkdir");
    // The suite switches to unprivileged users, which must be able to work in the directory.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/pjdfstest.toml");
    let out = Command::new(&suite)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&dir)
        .arg("-s")
        .arg(secondary.path())
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("running {suite}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let (mut ok, mut skipped) = (0, 0);
    let mut failed = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(case), Some(outcome), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        match outcome {
            "ok" => ok += 1,
            "skipped" => skipped += 1,
            "FAILED" => {
                failed.insert(case.to_string());
            }
            _ => {}
        }
    }
    eprintln!(
        "pjdfstest: {ok} ok, {} failed, {skipped} skipped",
        failed.len()
    );
    let total = ok + skipped + failed.len();
    assert!(total >= CASES_MIN, "only {total} cases ran:\n{text}");
    let expected = expected_failures();
    let unexpected: Vec<_> = failed.difference(&expected).collect();
    let now_passing: Vec<_> = expected.difference(&failed).collect();
    assert!(
        unexpected.is_empty(),
        "cases failed that must pass: {unexpected:#?}\n{text}"
    );
    assert!(
        now_passing.is_empty(),
        "listed failures now pass, remove them from expected-failures.txt: {now_passing:#?}"
    );
    m.stop();
}

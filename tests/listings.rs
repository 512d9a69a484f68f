//! Directory listings the kernel caches across opens (`FOPEN_CACHE_DIR`): a listing read
//! again must show every change made since, whether through this mount or applied from a
//! peer (which invalidates the directory's cached pages).
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "each test binary uses part of the shared harness")]
mod mounted;

use std::path::Path;

use keibi::testing::wait_until;
use mounted::{Mount, fuse_available, pair};

/// The names in `dir`, sorted; `None` when it cannot be listed.
fn names(dir: &Path) -> Option<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .ok()?;
    v.sort();
    Some(v)
}

/// What [`names`] gives for a directory holding `list`.
fn want(list: &[&str]) -> Option<Vec<String>> {
    names_of(list).into()
}

fn names_of(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// A change made on one mount, and the listing the other shows after it.
type Step<'a> = (&'a str, &'a dyn Fn(), &'a [&'a str]);

#[test]
fn a_listing_read_again_shows_changes_made_through_the_mount() {
    if !fuse_available("cached listings") {
        return;
    }
    let m = Mount::new();
    let d = m.path().join("d");
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::write(d.join("one"), b"1").expect("write");
    for _ in 0..3 {
        assert_eq!(names(&d), want(&["one"]));
    }
    std::fs::write(d.join("two"), b"2").expect("write");
    assert_eq!(names(&d), want(&["one", "two"]), "a created file");
    std::fs::rename(d.join("one"), d.join("uno")).expect("rename");
    assert_eq!(
        names(&d),
        want(&["two", "uno"]),
        "a rename within the directory"
    );
    std::fs::rename(d.join("two"), m.path().join("two")).expect("rename out");
    assert_eq!(names(&d), want(&["uno"]), "a file moved out");
    std::fs::create_dir(d.join("sub")).expect("mkdir");
    std::fs::remove_file(d.join("uno")).expect("unlink");
    assert_eq!(
        names(&d),
        want(&["sub"]),
        "a directory made, a file removed"
    );
    assert_eq!(
        names(m.path()),
        want(&["d", "two"]),
        "the root gained a file"
    );
    // 1,500 entries: the cached listing spans many pages of the kernel's cache and
    // several of the mount's listing pages.
    for i in 0..1500 {
        std::fs::write(d.join(format!("f{i:04}")), b"").expect("write");
    }
    assert_eq!(names(&d).map(|v| v.len()), Some(1501));
    std::fs::remove_file(d.join("f0777")).expect("unlink");
    let again = names(&d).expect("list");
    assert_eq!(again.len(), 1500);
    assert!(
        !again.iter().any(|n| n == "f0777"),
        "a removed entry listed"
    );
}

#[test]
fn a_listing_cached_on_one_mount_follows_changes_applied_from_the_other() {
    if !fuse_available("cached listings across mounts") {
        return;
    }
    let p = pair(&[]);
    let (a, b) = (p.a.path().join("d"), p.b.path().join("d"));
    std::fs::create_dir(&a).expect("mkdir");
    std::fs::write(a.join("one"), b"1").expect("write");
    assert!(
        wait_until(20, || names(&b) == want(&["one"])),
        "B never listed d/one: {}",
        p.b.log_text()
    );
    // B's listing is now in its kernel's cache; each change below comes from A alone.
    let steps: [Step; 4] = [
        (
            "a created file",
            &|| std::fs::write(a.join("two"), b"2").expect("write"),
            &["one", "two"],
        ),
        (
            "a rename",
            &|| std::fs::rename(a.join("one"), a.join("uno")).expect("rename"),
            &["two", "uno"],
        ),
        (
            "a removal",
            &|| std::fs::remove_file(a.join("two")).expect("unlink"),
            &["uno"],
        ),
        (
            "a new directory",
            &|| std::fs::create_dir(a.join("sub")).expect("mkdir"),
            &["sub", "uno"],
        ),
    ];
    for (what, change, after) in steps {
        assert!(names(&b).is_some(), "list d on B before {what}");
        change();
        assert!(
            wait_until(20, || names(&b) == want(after)),
            "{what} on A never showed in B's listing (last {:?}): {}",
            names(&b),
            p.b.log_text()
        );
    }
    // And a change made on B itself shows in B's own listing at once.
    std::fs::write(b.join("local"), b"3").expect("write on B");
    assert_eq!(names(&b), want(&["local", "sub", "uno"]));
    assert!(
        wait_until(20, || names(&a) == want(&["local", "sub", "uno"])),
        "B's file never showed in A's listing: {}",
        p.a.log_text()
    );
}

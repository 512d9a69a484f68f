//! Extended attributes through a real mount (`keibi mount --xattrs`): set, read, listed,
//! replaced and removed as on ext4, dropped with a file's capabilities when it is written,
//! kept across remounts and across mounts that do not serve them, and replicated between two
//! mounts.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;

use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use keibi::testing::wait_until;
use mounted::{Mount, fuse_available, keibi, pair};
use nix::libc;

fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match r {
        Ok(v) => panic!("succeeded with {v:?}"),
        Err(e) => e.raw_os_error().expect("an errno"),
    }
}

/// Sets `name` with `setxattr(2)` flags (`XATTR_CREATE`, `XATTR_REPLACE`) and returns the
/// errno, 0 for success: the `xattr` crate's `set` passes no flags, Python's `os.setxattr`
/// does.
fn set_flagged(path: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             try:\n    os.setxattr(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), int(sys.argv[4]))\n\
             except OSError as e:\n    print(e.errno); sys.exit(0)\n\
             print(0)",
        )
        .arg(path)
        .arg(name)
        .arg(value.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }))
        .arg(flags.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("an errno")
}

fn names(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = xattr::list(path)
        .expect("listxattr")
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn attributes_are_set_listed_replaced_removed_and_bounded() {
    if !fuse_available("attributes_are_set_listed_replaced_removed_and_bounded") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let f = m.path().join("f.txt");
    fs::write(&f, b"content").expect("write");
    let d = m.path().join("dir");
    fs::create_dir(&d).expect("mkdir");

    assert!(xattr::get(&f, "user.none").expect("getxattr").is_none());
    xattr::set(&f, "user.mime_type", b"text/plain").expect("setxattr");
    xattr::set(&f, "user.empty", b"").expect("setxattr empty");
    xattr::set(&f, "trusted.root_only", &[0, 1, 2, 255]).expect("setxattr trusted");
    xattr::set(&d, "user.on_a_dir", b"yes").expect("setxattr on a directory");
    assert_eq!(
        xattr::get(&f, "user.mime_type")
            .expect("getxattr")
            .as_deref(),
        Some(b"text/plain".as_slice())
    );
    assert_eq!(
        xattr::get(&f, "user.empty").expect("getxattr").as_deref(),
        Some(b"".as_slice())
    );
    assert_eq!(
        xattr::get(&f, "trusted.root_only")
            .expect("getxattr")
            .as_deref(),
        Some([0, 1, 2, 255].as_slice())
    );
    assert_eq!(
        names(&f),
        ["trusted.root_only", "user.empty", "user.mime_type"]
    );
    assert_eq!(names(&d), ["user.on_a_dir"]);

    // XATTR_CREATE and XATTR_REPLACE, as setxattr(2) says.
    assert_eq!(
        set_flagged(&f, "user.mime_type", b"x", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(
        set_flagged(&f, "user.missing", b"x", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(
        set_flagged(&f, "user.mime_type", b"text/markdown", libc::XATTR_REPLACE),
        0
    );
    assert_eq!(set_flagged(&f, "user.new", b"n", libc::XATTR_CREATE), 0);
    assert_eq!(
        xattr::get(&f, "user.mime_type")
            .expect("getxattr")
            .as_deref(),
        Some(b"text/markdown".as_slice())
    );

    // Removal; a name outside the stored namespaces; the bound on one file's attributes.
    xattr::remove(&f, "user.new").expect("removexattr");
    assert_eq!(errno(xattr::remove(&f, "user.new")), libc::ENODATA);
    assert_eq!(
        errno(xattr::set(&f, "keibi.private", b"v")),
        libc::EOPNOTSUPP
    );
    let big = vec![7u8; 40 * 1024];
    xattr::set(&f, "user.big1", &big).expect("a 40 KiB value");
    assert_eq!(errno(xattr::set(&f, "user.big2", &big)), libc::ENOSPC);
    assert!(xattr::get(&f, "user.big2").expect("getxattr").is_none());
    assert_eq!(
        xattr::get(&f, "user.big1")
            .expect("getxattr")
            .map(|v| v.len()),
        Some(big.len())
    );
    xattr::remove(&f, "user.big1").expect("removexattr");
    let (code, out, err) = keibi(home.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("; extended attributes served"), "{out}");

    m.stop();
}

#[test]
fn attributes_persist_and_outlive_a_mount_that_does_not_serve_them() {
    if !fuse_available("attributes_persist_and_outlive_a_mount_that_does_not_serve_them") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let f = m.path().join("f.txt");
    fs::write(&f, b"content").expect("write");
    xattr::set(&f, "user.mime_type", b"text/markdown").expect("setxattr");
    xattr::set(&f, "user.empty", b"").expect("setxattr empty");
    xattr::set(&f, "trusted.root_only", &[0, 1, 2, 255]).expect("setxattr trusted");

    // A content change keeps the attributes.
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| h.write_all(b" more"))
        .expect("append");
    assert_eq!(fs::read(&f).expect("read"), b"content more");
    m.stop();

    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let f = m.path().join("f.txt");
    assert_eq!(
        names(&f),
        ["trusted.root_only", "user.empty", "user.mime_type"]
    );
    assert_eq!(
        xattr::get(&f, "user.mime_type")
            .expect("getxattr")
            .as_deref(),
        Some(b"text/markdown".as_slice())
    );
    m.stop();

    // Without --xattrs the mount serves none, and what it writes keeps them.
    let m = Mount::at(home.path(), mnt.path());
    let f = m.path().join("f.txt");
    let e = xattr::list(&f)
        .map(Iterator::count)
        .expect_err("listed without --xattrs");
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
    let (code, out, err) = keibi(home.path(), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("extended attributes"), "{out}");
    fs::write(&f, b"rewritten").expect("rewrite");
    m.stop();
    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let f = m.path().join("f.txt");
    assert_eq!(fs::read(&f).expect("read"), b"rewritten");
    assert_eq!(
        xattr::get(&f, "user.mime_type")
            .expect("getxattr")
            .as_deref(),
        Some(b"text/markdown".as_slice())
    );
    m.stop();
    let (code, out, err) = keibi(home.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A `security.capability` value (`vfs_cap_data`, revision 2) granting `CAP_NET_RAW`.
fn net_raw_capability() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 1;
    const CAP_NET_RAW: u32 = 13;
    let mut v = Vec::new();
    for word in [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        1 << CAP_NET_RAW,
        0,
        0,
        0,
    ] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

#[test]
fn writing_a_file_drops_its_capabilities() {
    if !fuse_available("writing_a_file_drops_its_capabilities") {
        return;
    }
    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let f = m.path().join("tool");
    fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o755)
        .open(&f)
        .and_then(|mut h| h.write_all(b"#!/bin/sh\n"))
        .expect("create");
    let cap = net_raw_capability();
    match xattr::set(&f, "security.capability", &cap) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            eprintln!("skipped: setting file capabilities needs CAP_SETFCAP ({e})");
            return;
        }
        r => r.expect("setxattr security.capability"),
    }
    assert_eq!(
        xattr::get(&f, "security.capability")
            .expect("getxattr")
            .as_deref(),
        Some(cap.as_slice())
    );
    // The kernel asks on each write whether the file has capabilities, and removes them.
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| h.write_all(b"exit 0\n"))
        .expect("append");
    assert!(
        xattr::get(&f, "security.capability")
            .expect("getxattr")
            .is_none(),
        "capabilities survived a write"
    );
    m.stop();
}

#[test]
fn cp_preserves_attributes_into_and_out_of_the_mount() {
    if !fuse_available("cp_preserves_attributes_into_and_out_of_the_mount") {
        return;
    }
    let src = tempfile::tempdir().expect("source");
    let tree = src.path().join("tree");
    fs::create_dir_all(tree.join("sub")).expect("mkdir");
    for (name, tag) in [("a.txt", "red"), ("sub/b.bin", "green")] {
        fs::write(tree.join(name), name.as_bytes()).expect("write");
        if let Err(e) = xattr::set(tree.join(name), "user.tag", tag.as_bytes()) {
            eprintln!("skipped: the temporary directory has no user attributes ({e})");
            return;
        }
    }
    xattr::set(tree.join("sub"), "user.tag", b"blue").expect("setxattr on a directory");
    let cp = |from: &Path, to: &Path| {
        std::process::Command::new("cp")
            .args(["-r", "--preserve=mode,xattr"])
            .arg(from)
            .arg(to)
            .output()
            .expect("cp")
    };
    let tag = |p: &Path| xattr::get(p, "user.tag").expect("getxattr");

    let home = tempfile::tempdir().expect("home");
    let mnt = tempfile::tempdir().expect("mnt");
    // A mount that does not serve attributes makes cp say so.
    let m = Mount::at(home.path(), mnt.path());
    let out = cp(&tree, &m.path().join("plain"));
    assert!(
        !out.status.success(),
        "cp preserved attributes on a mount without --xattrs"
    );
    m.stop();

    let m = Mount::with_args(home.path(), mnt.path(), &["--xattrs"]);
    let into = m.path().join("copy");
    let out = cp(&tree, &into);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tag(&into.join("a.txt")).as_deref(), Some(b"red".as_slice()));
    assert_eq!(
        tag(&into.join("sub/b.bin")).as_deref(),
        Some(b"green".as_slice())
    );
    assert_eq!(tag(&into.join("sub")).as_deref(), Some(b"blue".as_slice()));
    let back = src.path().join("back");
    let out = cp(&into, &back);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tag(&back.join("sub/b.bin")).as_deref(),
        Some(b"green".as_slice())
    );
    assert_eq!(
        fs::read(back.join("sub/b.bin")).expect("read"),
        b"sub/b.bin"
    );
    m.stop();
}

#[test]
fn attributes_set_on_one_mount_are_read_and_removed_on_the_other() {
    if !fuse_available("attributes_set_on_one_mount_are_read_and_removed_on_the_other") {
        return;
    }
    let p = pair(&["--xattrs"]);
    let (a, b) = (p.a.path().join("doc.txt"), p.b.path().join("doc.txt"));
    fs::write(&a, b"shared").expect("write on A");
    assert!(wait_until(30, || fs::read(&b).ok().as_deref()
        == Some(b"shared".as_slice())));
    xattr::set(&a, "user.reviewed", b"yes").expect("setxattr on A");
    assert!(
        wait_until(20, || xattr::get(&b, "user.reviewed")
            .ok()
            .flatten()
            .as_deref()
            == Some(b"yes".as_slice())),
        "B never saw the attribute:\n{}",
        p.b.log_text()
    );
    xattr::remove(&b, "user.reviewed").expect("removexattr on B");
    assert!(
        wait_until(20, || names(&a).is_empty()),
        "A kept the attribute"
    );
    assert_eq!(fs::read(&a).expect("read on A"), b"shared");
}

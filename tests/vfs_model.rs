//! Model test: random operation sequences run against the vfs core and against a plain
//! in-memory model; contents and tree are compared after every step.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "test sizes fit in every integer type used"
)]

use std::collections::BTreeMap;

use keibi::id::ROOT_INO;
use keibi::vfs::{Error, OpenFlags, RenameMode, SetAttr, Vfs};
use proptest::prelude::*;

use keibi::testing::{self as common, ME};

const KIB: u64 = 1024;
/// Files f0..f5: f0, f1 in the root, f2, f3 in d0, f4, f5 in d1.
const FILES: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Write {
        f: usize,
        off: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    Fsync {
        f: usize,
    },
    /// Another open of the file with `O_TRUNC`, kept open until the file is closed: the
    /// truncate stays staged in the file's open state, not committed, for the operations
    /// that follow.
    OpenTruncate {
        f: usize,
    },
    Close {
        f: usize,
    },
    Rename {
        f: usize,
        g: usize,
    },
    Unlink {
        f: usize,
    },
    Mkdir {
        d: usize,
    },
    Rmdir {
        d: usize,
    },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FILES;
    prop_oneof![
        6 => (f.clone(), prop_oneof![0..1200 * KIB, Just(0), Just(512 * KIB - 3), Just(512 * KIB), Just(1024 * KIB)],
              prop_oneof![0..200 * KIB as usize, (512 * KIB as usize)..(700 * KIB as usize)], any::<u8>())
            .prop_map(|(f, off, len, byte)| Op::Write { f, off, len, byte }),
        2 => (f.clone(), prop_oneof![Just(0), 0..1300 * KIB, Just(512 * KIB)]).prop_map(|(f, size)| Op::Truncate { f, size }),
        2 => f.clone().prop_map(|f| Op::Fsync { f }),
        2 => f.clone().prop_map(|f| Op::OpenTruncate { f }),
        2 => f.clone().prop_map(|f| Op::Close { f }),
        2 => (f.clone(), f.clone()).prop_map(|(f, g)| Op::Rename { f, g }),
        1 => f.clone().prop_map(|f| Op::Unlink { f }),
        1 => (0..2usize).prop_map(|d| Op::Mkdir { d }),
        1 => (0..2usize).prop_map(|d| Op::Rmdir { d }),
        1 => Just(Op::Remount),
    ]
}

fn dir_of(f: usize) -> Option<usize> {
    match f {
        0 | 1 => None,
        2 | 3 => Some(0),
        _ => Some(1),
    }
}

#[derive(Default)]
struct Model {
    dirs: [bool; 2],
    files: BTreeMap<usize, Vec<u8>>,
}

struct Harness {
    open: BTreeMap<usize, u64>,
    /// More handles of a file (from `OpenTruncate`), released with it.
    extra: Vec<(usize, u64)>,
}

fn pattern(len: usize, byte: u8, off: u64) -> Vec<u8> {
    (0..len)
        .map(|i| byte ^ ((off as usize + i) as u8).wrapping_mul(31))
        .collect()
}

/// The inode of model file `f`, which exists.
fn file_ino(vfs: &Vfs, f: usize) -> u64 {
    vfs.lookup(parent_ino(vfs, f).expect("parent"), &name(f))
        .expect("lookup")
        .ino
}

fn parent_ino(vfs: &Vfs, f: usize) -> Result<u64, Error> {
    match dir_of(f) {
        None => Ok(ROOT_INO),
        Some(d) => vfs
            .lookup(ROOT_INO, format!("d{d}").as_bytes())
            .map(|a| a.ino),
    }
}

fn name(f: usize) -> Vec<u8> {
    format!("f{f}").into_bytes()
}

impl Harness {
    fn handle(&mut self, vfs: &Vfs, f: usize, create: bool) -> Result<u64, Error> {
        if let Some(fh) = self.open.get(&f) {
            return Ok(*fh);
        }
        let parent = parent_ino(vfs, f)?;
        let fh = match vfs.lookup(parent, &name(f)) {
            Ok(a) => vfs.open(a.ino, OpenFlags::default())?,
            Err(Error::NotFound) if create => {
                vfs.create(parent, &name(f), 0o644, ME, OpenFlags::default())?
                    .1
            }
            Err(e) => return Err(e),
        };
        self.open.insert(f, fh);
        Ok(fh)
    }

    fn close(&mut self, vfs: &Vfs, f: usize) {
        let (of_f, others): (Vec<_>, Vec<_>) = self.extra.drain(..).partition(|(g, _)| *g == f);
        self.extra = others;
        for (_, fh) in of_f {
            vfs.release(fh).expect("release");
        }
        if let Some(fh) = self.open.remove(&f) {
            vfs.release(fh).expect("release");
        }
    }

    /// Closes every handle still open, of every file.
    fn close_all(&mut self, vfs: &Vfs) {
        let open: std::collections::BTreeSet<usize> = self
            .open
            .keys()
            .chain(self.extra.iter().map(|e| &e.0))
            .copied()
            .collect();
        for f in open {
            self.close(vfs, f);
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per operation reads best in one place"
)]
fn apply(vfs: &mut Vfs, h: &mut Harness, m: &mut Model, op: &Op, remount: &dyn Fn(Vfs) -> Vfs) {
    let parent_ok = |m: &Model, f: usize| dir_of(f).is_none_or(|d| m.dirs[d]);
    match *op {
        Op::Write { f, off, len, byte } => {
            if !parent_ok(m, f) {
                assert!(h.handle(vfs, f, true).is_err());
                return;
            }
            let fh = h.handle(vfs, f, true).expect("handle");
            let data = pattern(len, byte, off);
            assert_eq!(vfs.write(fh, off, &data).expect("write") as usize, len);
            let content = m.files.entry(f).or_default();
            if len > 0 {
                let end = off as usize + len;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[off as usize..end].copy_from_slice(&data);
            }
        }
        Op::Truncate { f, size } => {
            if let Some(content) = m.files.get_mut(&f) {
                let ino = file_ino(vfs, f);
                let attr = vfs
                    .setattr(
                        ino,
                        &SetAttr {
                            size: Some(size),
                            ..SetAttr::default()
                        },
                    )
                    .expect("truncate");
                assert_eq!(attr.size, size);
                content.resize(size as usize, 0);
            }
        }
        Op::Fsync { f } => {
            if let Some(fh) = h.open.get(&f) {
                vfs.fsync(*fh).expect("fsync");
            }
        }
        Op::OpenTruncate { f } => {
            if let Some(content) = m.files.get_mut(&f) {
                let ino = file_ino(vfs, f);
                let fh = vfs
                    .open(
                        ino,
                        OpenFlags {
                            append: false,
                            truncate: true,
                        },
                    )
                    .expect("open with O_TRUNC");
                h.extra.push((f, fh));
                content.clear();
            }
        }
        Op::Close { f } => h.close(vfs, f),
        Op::Rename { f, g } => {
            let (Ok(pf), Ok(pg)) = (parent_ino(vfs, f), parent_ino(vfs, g)) else {
                return;
            };
            let r = vfs.rename(pf, &name(f), pg, &name(g), RenameMode::Replace);
            match m.files.remove(&f) {
                Some(content) => {
                    r.expect("rename");
                    if f != g {
                        // Handles follow the file; the replaced file's handle (if any) stays
                        // valid on the unlinked file: release it.
                        h.close(vfs, g);
                        if let Some(fh) = h.open.remove(&f) {
                            h.open.insert(g, fh);
                        }
                        for e in h.extra.iter_mut().filter(|e| e.0 == f) {
                            e.0 = g;
                        }
                    }
                    m.files.insert(g, content);
                }
                None => assert!(matches!(r, Err(Error::NotFound))),
            }
        }
        Op::Unlink { f } => {
            let Ok(p) = parent_ino(vfs, f) else { return };
            let r = vfs.unlink(p, &name(f));
            if m.files.remove(&f).is_some() {
                r.expect("unlink");
                h.close(vfs, f);
            } else {
                assert!(matches!(r, Err(Error::NotFound)));
            }
        }
        Op::Mkdir { d } => {
            let r = vfs.mkdir(ROOT_INO, format!("d{d}").as_bytes(), 0o755, ME);
            if m.dirs[d] {
                assert!(matches!(r, Err(Error::Exists)));
            } else {
                r.expect("mkdir");
                m.dirs[d] = true;
            }
        }
        Op::Rmdir { d } => {
            let r = vfs.rmdir(ROOT_INO, format!("d{d}").as_bytes());
            let children = m.files.keys().any(|f| dir_of(*f) == Some(d));
            match (m.dirs[d], children) {
                (false, _) => assert!(matches!(r, Err(Error::NotFound))),
                (true, true) => assert!(matches!(r, Err(Error::NotEmpty))),
                (true, false) => {
                    r.expect("rmdir");
                    m.dirs[d] = false;
                }
            }
        }
        Op::Remount => {
            h.close_all(vfs);
            vfs.shutdown().expect("shutdown");
            let old = std::mem::replace(vfs, remount_placeholder());
            *vfs = remount(old);
        }
    }
}

fn remount_placeholder() -> Vfs {
    common::mem().expect("fixture").vfs
}

fn check(vfs: &Vfs, h: &mut Harness, m: &Model) {
    let mut names: Vec<String> = vfs
        .readdir(ROOT_INO, 0)
        .expect("readdir")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = vec![".".into(), "..".into()];
    want.extend((0..2).filter(|d| m.dirs[*d]).map(|d| format!("d{d}")));
    want.extend(
        m.files
            .keys()
            .filter(|f| dir_of(**f).is_none())
            .map(|f| format!("f{f}")),
    );
    want.sort();
    assert_eq!(names, want);
    for f in 0..FILES {
        let Ok(p) = parent_ino(vfs, f) else {
            assert!(!m.files.contains_key(&f));
            continue;
        };
        match (vfs.lookup(p, &name(f)), m.files.get(&f)) {
            (Ok(attr), Some(content)) => {
                assert_eq!(attr.size, content.len() as u64, "size of f{f}");
                let fh = h.handle(vfs, f, false).expect("open");
                let got = vfs.read(fh, 0, content.len() as u32 + 10).expect("read");
                assert!(
                    got == *content,
                    "content of f{f} differs ({} vs {} bytes)",
                    got.len(),
                    content.len()
                );
            }
            (Err(Error::NotFound), None) => {}
            (got, want) => panic!("f{f}: vfs {got:?}, model has {}", want.is_some()),
        }
    }
}

fn run(ops: &[Op], vfs: Vfs, remount: &dyn Fn(Vfs) -> Vfs) {
    let mut vfs = vfs;
    let mut h = Harness {
        open: BTreeMap::new(),
        extra: Vec::new(),
    };
    let mut m = Model::default();
    for op in ops {
        apply(&mut vfs, &mut h, &mut m, op, remount);
        check(&vfs, &mut h, &m);
    }
    h.close_all(&vfs);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn vfs_matches_model_in_memory(ops in proptest::collection::vec(op(), 1..30)) {
        let fx = common::mem().expect("fixture");
        let backend = std::sync::Arc::clone(&fx.backend);
        run(&ops, fx.vfs, &move |old: Vfs| {
            drop(old);
            common::reopen_mem(&backend).expect("remount").vfs
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn vfs_matches_model_on_rocksdb(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().to_path_buf();
        let common::Fixture { vfs, .. } = common::rocks(&home).expect("fixture");
        let report_home = home.clone();
        run(&ops, vfs, &move |old: Vfs| {
            drop(old);
            common::rocks(&home).expect("fixture").vfs
        });
        let store = keibi::home::Home::new(&report_home).open().expect("open");
        let report = keibi::verify::run(store.backend.as_ref(), store.chunks.cipher(), keibi::verify::Options { sample_percent: 100, progress: false });
        prop_assert_eq!(report.findings_total, 0, "{:?}", report.findings);
    }
}

//! What a FUSE round trip costs on this machine, apart from keibi's store: mounts
//! `MOUNTPOINT` with the mount options keibi uses and serves it until it is unmounted
//! (`fusermount3 -u MOUNTPOINT`), in one of two ways:
//!
//! - `null`: a filesystem that keeps names and sizes in a map and throws file content away.
//!   Its handlers do next to nothing, so a workload on it measures the kernel, the
//!   `/dev/fuse` round trips and the wake-ups they cause: the floor under any FUSE
//!   filesystem here. It answers only what the benchmarks ask (no listings, no removal of
//!   directories).
//! - `memory`: keibi's own FUSE layer and vfs core over the store's in-memory twin, so the
//!   same workload measures keibi without RocksDB's log and the disk (the twin's ordered map
//!   costs about what RocksDB's memtable does).
//!
//! Used by `tools/bench-floor.sh`; run as root (it mounts with `allow_other`).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyEmpty, ReplyEntry, ReplyWrite, Request,
    WriteFlags,
};
use parking_lot::Mutex;

use keibi::fuse::{MountOptions, TTL};
use keibi::limits::FUSE_THREADS;

/// What the null filesystem reads back: its files hold zeros.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Names and attributes of the null filesystem.
struct Tree {
    names: HashMap<(u64, OsString), u64>,
    attrs: HashMap<u64, FileAttr>,
    next: u64,
}

/// The null filesystem: see the module doc.
struct NullFs {
    tree: Mutex<Tree>,
}

fn attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

/// The permission bits of `mode` (twelve bits: they fit).
fn perm_of(mode: u32) -> u16 {
    u16::try_from(mode & 0o7777).unwrap_or_default()
}

impl NullFs {
    fn new() -> Self {
        let root = attr(INodeNo::ROOT.0, FileType::Directory, 0o755, 0, 0);
        Self {
            tree: Mutex::new(Tree {
                names: HashMap::new(),
                attrs: HashMap::from([(1, root)]),
                next: 2,
            }),
        }
    }

    fn add(
        &self,
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        perm: u16,
        req: &Request,
    ) -> Result<FileAttr, Errno> {
        let mut t = self.tree.lock();
        let key = (parent.0, name.to_os_string());
        if t.names.contains_key(&key) {
            return Err(Errno::EEXIST);
        }
        let ino = t.next;
        t.next += 1;
        let a = attr(ino, kind, perm, req.uid(), req.gid());
        t.names.insert(key, ino);
        t.attrs.insert(ino, a);
        if let Some(p) = t.attrs.get_mut(&parent.0) {
            p.mtime = a.mtime;
            p.ctime = a.ctime;
        }
        Ok(a)
    }
}

impl Filesystem for NullFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.tree.lock();
        match t.names.get(&(parent.0, name.to_os_string())) {
            Some(ino) => reply.entry(&TTL, &t.attrs[ino], Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.lock().attrs.get(&ino.0) {
            Some(a) => reply.attr(&TTL, a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.add(parent, name, FileType::Directory, perm_of(mode), req) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.add(parent, name, FileType::RegularFile, perm_of(mode), req) {
            Ok(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(a.ino.0),
                fuser::FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(a) = self.tree.lock().attrs.get_mut(&ino.0) {
            a.size = a.size.max(offset + data.len() as u64);
            a.mtime = SystemTime::now();
        }
        reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut t = self.tree.lock();
        match t.attrs.get_mut(&ino.0) {
            Some(a) => {
                if let Some(size) = size {
                    a.size = size;
                }
                reply.attr(&TTL, a);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = self.tree.lock().attrs.get(&ino.0).map_or(0, |a| a.size);
        let n = len
            .saturating_sub(offset)
            .min(u64::from(size))
            .min(ZEROS.len() as u64);
        reply.data(&ZEROS[..usize::try_from(n).unwrap_or(0)]);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut t = self.tree.lock();
        match t.names.remove(&(parent.0, name.to_os_string())) {
            Some(ino) => {
                t.attrs.remove(&ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }
}

fn main() -> Result<(), keibi::testing::BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(mnt), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: fuse_floor null|memory MOUNTPOINT".into());
    };
    let mnt = PathBuf::from(mnt);
    match mode.as_str() {
        "null" => {
            let mut config = fuser::Config::default();
            config.mount_options = vec![
                MountOption::FSName("floor".into()),
                MountOption::DefaultPermissions,
                MountOption::NoAtime,
                MountOption::AutoUnmount,
            ];
            config.acl = fuser::SessionACL::All;
            config.n_threads = Some(FUSE_THREADS);
            config.clone_fd = true;
            fuser::Session::new(NullFs::new(), &mnt, &config)?.run()?;
        }
        "memory" => {
            let fixture = keibi::testing::mem()?;
            let opts = MountOptions {
                allow_other: true,
                xattrs: false,
            };
            keibi::fuse::session(Arc::new(fixture.vfs), &mnt, opts, None)?.run()?;
        }
        other => return Err(format!("unknown mode {other:?}: null or memory").into()),
    }
    Ok(())
}

//! The `fuser::Filesystem` implementation: one method per kernel request, each converting its
//! arguments, calling the vfs core and replying. No method keeps state of its own.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileHandle, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use nix::libc;

use super::latency::LatencyHold;
use super::reply::{
    creator, empty, entry, listing, open_flags, open_reply_flags, opendir_reply_flags, time_set,
    xattr, xattr_set,
};
use super::{TTL, errno, file_attr, kind_of_mode};
use crate::limits::FUSE_MAX_WRITE_BYTES;
use crate::vfs::{self, RenameMode, SetAttr, Vfs};

/// The filesystem served to the kernel: a thin shell around the vfs core.
pub struct KeibiFs {
    vfs: Arc<Vfs>,
    /// Told of every request under `--low-latency`.
    latency: Option<Arc<LatencyHold>>,
    /// Serve extended attributes (`--xattrs`).
    xattrs: bool,
    /// The kernel opens directories without asking (`FUSE_NO_OPENDIR_SUPPORT`), once
    /// `opendir` has answered ENOSYS.
    no_opendir: bool,
}

impl KeibiFs {
    /// A shell around `vfs`; `latency` is told of every request; `xattrs` serves extended
    /// attributes.
    #[must_use]
    pub fn new(vfs: Arc<Vfs>, latency: Option<Arc<LatencyHold>>, xattrs: bool) -> Self {
        Self {
            vfs,
            latency,
            xattrs,
            no_opendir: false,
        }
    }

    /// Called first by every request handler.
    fn request(&self) {
        if let Some(l) = &self.latency {
            l.touch();
        }
    }
}

impl fuser::Filesystem for KeibiFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Optional capabilities: ask for each one the kernel offers. Not
        // FUSE_ATOMIC_O_TRUNC: the kernel would send a read-only open's O_TRUNC before it
        // checks that the file may be written, so an open refused with ETXTBSY (the file is
        // a running program) would already have emptied it. Without it the kernel
        // truncates with a setattr after that check.
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_CACHE_SYMLINKS;
        let offered = config.capabilities() & wanted;
        // Listings need no handle (vfs::listing), so directories open without a round trip.
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if let Err(missing) = config.add_capabilities(offered) {
            tracing::debug!(?missing, "kernel lacks some FUSE capabilities");
        }
        if let Err(nearest) = config.set_max_write(FUSE_MAX_WRITE_BYTES) {
            tracing::debug!(nearest, "kernel limits max_write");
            let _ = config.set_max_write(nearest);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vfs.shutdown() {
            tracing::error!(error = %e, "committing open files at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.request();
        entry(reply, self.vfs.lookup(parent.0, name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.request();
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.request();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        match self.vfs.setattr(ino.0, &set) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.request();
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.request();
        let Some(kind) = kind_of_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let r = self.vfs.mknod(
            parent.0,
            name.as_bytes(),
            kind,
            mode & 0o7777,
            creator(req),
            u64::from(rdev),
        );
        entry(reply, r);
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
        self.request();
        let r = self
            .vfs
            .mkdir(parent.0, name.as_bytes(), mode & 0o7777, creator(req));
        entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.request();
        empty(reply, self.vfs.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.request();
        empty(reply, self.vfs.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.request();
        let r = self.vfs.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            creator(req),
        );
        entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.request();
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT (overlay filesystems) and combinations.
            reply.error(Errno::EINVAL);
            return;
        };
        let r = self.vfs.rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            mode,
        );
        empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.request();
        entry(reply, self.vfs.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.request();
        match self.vfs.open(ino.0, open_flags(flags.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), open_reply_flags(flags.0)),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.request();
        match self.vfs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.request();
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.request();
        empty(reply, self.vfs.flush(fh.0));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.request();
        empty(reply, self.vfs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.request();
        empty(reply, self.vfs.fsync(fh.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.request();
        if self.no_opendir {
            // The kernel stops asking, and caches listings across opens by itself.
            reply.error(Errno::ENOSYS);
            return;
        }
        match self.vfs.opendir(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), opendir_reply_flags()),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.request();
        listing(reply, &self.vfs, ino.0, offset);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.request();
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.request();
        empty(reply, self.vfs.sync_all());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.request();
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.request();
        // The kernel checks permissions itself (default_permissions); only existence is ours.
        empty(reply, self.vfs.getattr(ino.0).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.request();
        let r = self.vfs.create(
            parent.0,
            name.as_bytes(),
            mode & 0o7777,
            creator(req),
            open_flags(flags),
        );
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                open_reply_flags(flags),
            ),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.request();
        // Plain allocation extends the size (blocks are not reserved: chunks are written
        // when data is); keeping the size makes it a no-op. Punching holes is not offered.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let r = self.vfs.getattr(ino.0).and_then(|a| {
            let end = offset.saturating_add(length);
            if mode & libc::FALLOC_FL_KEEP_SIZE != 0 || end <= a.size {
                return Ok(());
            }
            let set = SetAttr {
                size: Some(end),
                ..SetAttr::default()
            };
            self.vfs.setattr(ino.0, &set).map(|_| ())
        });
        empty(reply, r);
    }

    // Extended attributes, with `--xattrs`. Without, ENOSYS tells the kernel once, after
    // which it answers EOPNOTSUPP itself without asking again (the defaults would log every
    // call). A size of 0 asks for the length only; a buffer too small is ERANGE.

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.request();
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        xattr(reply, size, self.vfs.getxattr(ino.0, name.as_bytes()));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.request();
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        xattr(reply, size, self.vfs.listxattr(ino.0));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.request();
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        match xattr_set(flags, position) {
            Ok(how) => empty(reply, self.vfs.setxattr(ino.0, name.as_bytes(), value, how)),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.request();
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        empty(reply, self.vfs.removexattr(ino.0, name.as_bytes()));
    }

    /// No ioctl is supported: ENOTTY, what a terminal check (`isatty`, which Python runs on
    /// every `open`) expects from a regular file. The default would log every call.
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
        self.request();
        reply.error(Errno::ENOTTY);
    }

    // SEEK_DATA/SEEK_HOLE and copy_file_range: ENOSYS makes the kernel fall back to its
    // generic code (the whole file is data; copies go through read and write).

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel answers the other kinds of seek itself).
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.request();
        let what = match whence {
            libc::SEEK_DATA => vfs::Seek::Data,
            libc::SEEK_HOLE => vfs::Seek::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(from) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.vfs.seek(fh.0, from, what) {
            Ok(at) => reply.offset(i64::try_from(at).unwrap_or(i64::MAX)),
            Err(e) => reply.error(errno::of(&e)),
        }
    }

    /// Copies by referencing whole stored chunks where it can (`Vfs::copy_range`).
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.request();
        match self
            .vfs
            .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno::of(&e)),
        }
    }
}

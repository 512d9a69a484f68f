//! Conversions between fuser's request arguments and replies and the vfs core's types, for
//! the request handlers in `ops.rs`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{
    Errno, FopenFlags, Generation, INodeNo, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyXattr,
    Request, TimeOrNow,
};
use nix::libc;

use super::{TTL, errno, file_attr, file_type};
use crate::id::Ino;
use crate::tree::Timestamp;
use crate::vfs::{self, Creator, TimeSet, Vfs, XattrSet};

/// Answers a `readdir` of directory `ino` from `offset` with as many entries as fit.
pub(super) fn listing(mut reply: ReplyDirectory, vfs: &Vfs, ino: Ino, mut offset: u64) {
    loop {
        let entries = match vfs.readdir(ino, offset) {
            Ok(e) => e,
            Err(e) => {
                reply.error(errno::of(&e));
                return;
            }
        };
        let Some(last) = entries.last().map(|e| e.offset) else {
            break;
        };
        for e in entries {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), name) {
                reply.ok();
                return;
            }
        }
        offset = last;
    }
    reply.ok();
}

pub(super) fn creator(req: &Request) -> Creator {
    Creator {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(super) fn open_flags(flags: i32) -> vfs::OpenFlags {
    vfs::OpenFlags {
        append: flags & libc::O_APPEND != 0,
        truncate: flags & libc::O_TRUNC != 0,
    }
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from(t)),
    }
}

pub(super) fn entry(reply: ReplyEntry, r: vfs::Result<vfs::Attr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno::of(&e)),
    }
}

/// Answers a `getxattr` or `listxattr` of a `size`-byte buffer with `r`.
pub(super) fn xattr(reply: ReplyXattr, size: u32, r: vfs::Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno::of(&e)),
    }
}

pub(super) fn empty(reply: ReplyEmpty, r: vfs::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno::of(&e)),
    }
}

/// How the kernel treats a file opened with `flags` (of open(2)). Its pages are kept across
/// opens: the file was not changed by anyone else. A handle that can change nothing (read
/// only, no `O_TRUNC`) has nothing to commit, so its `close` sends no `FLUSH` round trip.
pub(super) fn open_reply_flags(flags: i32) -> FopenFlags {
    let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_TRUNC == 0;
    if read_only {
        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

/// Listings the kernel caches across opens of a directory.
pub(super) fn opendir_reply_flags() -> FopenFlags {
    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
}

/// What `setxattr`'s flags ask of an existing attribute; `position` is macOS's
/// resource-fork offset, never set on Linux.
pub(super) fn xattr_set(flags: i32, position: u32) -> Result<XattrSet, Errno> {
    if position != 0 {
        return Err(Errno::EINVAL);
    }
    match flags {
        0 => Ok(XattrSet::Any),
        libc::XATTR_CREATE => Ok(XattrSet::Create),
        libc::XATTR_REPLACE => Ok(XattrSet::Replace),
        _ => Err(Errno::EINVAL),
    }
}

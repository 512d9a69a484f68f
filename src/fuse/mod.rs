//! The FUSE adapter: the only module that knows fuser. It turns kernel requests into calls on
//! the [`Vfs`] core and the core's answers (or errors, through [`errno`]) back into replies.
//!
//! Threads: fuser's session loop runs [`FUSE_THREADS`] worker threads, each reading requests from
//! its own clone of the `/dev/fuse` descriptor and calling the (synchronous, internally
//! locked) vfs core directly. The worker count bounds the requests in progress; the kernel
//! queues the rest, which is the backpressure. Shutdown: when the filesystem is unmounted
//! (`fusermount3 -u`, a signal handled by the caller, or the process dying with
//! `auto_unmount`), the loop ends and [`KeibiFs`]'s `destroy` commits every open file.
//!
//! Cache policy: entries and attributes are cached by the kernel for [`TTL`]; every local
//! change passes through this adapter, whose replies carry the new attributes, so the kernel
//! never keeps a stale nlink, ctime or size. A failed lookup is answered with ENOENT and
//! never cached (no negative dentries), so a file that appears later is found at once.
//! Page-cache data and directory listings are kept across opens; changes from peers
//! invalidate them explicitly.

pub mod errno;
pub mod latency;
mod ops;
mod reply;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::FUSE_THREADS;
use crate::tree::Kind;
use crate::vfs::{self, Vfs};

pub use ops::KeibiFs;

/// How long the kernel may cache an entry or attributes before asking again. Every local
/// change passes through the adapter, whose replies refresh the kernel's copy, and changes
/// from peers invalidate it explicitly (after their commit: the kernel drops a reply read
/// before an invalidation that overtook it); so the timeout only bounds how long a missed
/// invalidation could show stale attributes. A long one lets `git status` stat a whole tree
/// without a request per file, also after the tree has been left alone for a while: with
/// 60 s, a status after a minute's pause on 23,777 files took 0.87 s instead of 0.16-0.22 s.
pub const TTL: Duration = Duration::from_secs(3600);

/// How to mount.
#[derive(Clone, Copy, Debug, Default)]
pub struct MountOptions {
    /// Let every user reach the mount (`allow_other`), not only the one who mounted it.
    pub allow_other: bool,
    /// Serve extended attributes. Without, the kernel is told once that there are none to
    /// serve (ENOSYS) and asks no more; with, it asks on every write whether the file has
    /// capabilities to drop.
    pub xattrs: bool,
}

/// Mounts `vfs` at `mountpoint`; `latency` (from `--low-latency`) is told of every request.
/// The session serves nothing until it is run.
///
/// # Errors
/// The mount failed: the mountpoint is missing or busy, `/dev/fuse` or `fusermount3` is
/// absent, or `allow_other` is not permitted.
pub fn session(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    opts: MountOptions,
    latency: Option<Arc<latency::LatencyHold>>,
) -> io::Result<fuser::Session<KeibiFs>> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("keibi".into()),
        fuser::MountOption::Subtype("keibi".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    // fusermount3 runs auto_unmount only with allow_root or allow_other, which a user other
    // than root may ask for only when /etc/fuse.conf says `user_allow_other`. Without it
    // the mount works all the same, but a killed mount stays until `fusermount3 -u`.
    let may_allow = nix::unistd::geteuid().is_root() || fuse_conf_allows_other();
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if may_allow {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    if may_allow {
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    } else {
        tracing::warn!(
            "no auto_unmount: /etc/fuse.conf lacks user_allow_other, so a killed mount \
             stays mounted until `fusermount3 -u`"
        );
    }
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    fuser::Session::new(KeibiFs::new(vfs, latency, opts.xattrs), mountpoint, &config)
}

/// The kernel caches of a mount, invalidated through fuser's notifier when a peer's change
/// is applied. Called only from replication threads, never from a request handler (the
/// kernel would wait on the very request that waits on it).
pub struct KernelNotifier(pub fuser::Notifier);

impl crate::vfs::KernelCache for KernelNotifier {
    fn invalidate_entry(&self, parent: crate::id::Ino, name: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        if let Err(e) = self
            .0
            .inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::from_bytes(name))
        {
            invalidation_failed(&e, parent, "entry");
        }
    }
    fn invalidate_inode(&self, ino: crate::id::Ino) {
        if let Err(e) = self.0.inval_inode(fuser::INodeNo(ino), 0, 0) {
            invalidation_failed(&e, ino, "inode");
        }
    }
}

/// ENOENT only says the kernel had nothing cached; anything else leaves a stale entry or
/// attributes for up to [`TTL`], which is worth a warning.
fn invalidation_failed(e: &io::Error, ino: crate::id::Ino, what: &str) {
    if e.raw_os_error() == Some(nix::libc::ENOENT) {
        tracing::debug!(error = %e, ino, what, "kernel cache invalidation: nothing cached");
    } else {
        tracing::warn!(error = %e, ino, what, "kernel cache invalidation failed");
    }
}

/// Kernel readahead for the mount, in KiB. The default of 128 KiB splits a sequential read
/// into 128 KiB requests; 4 MiB lets the kernel ask for whole 1 MiB requests ahead of the
/// reader (1 GiB cold `dd` here: 572 MB/s at 128 KiB, 1.0 GB/s at 4 MiB).
pub const READ_AHEAD_KB: u32 = 4096;

/// Raises the kernel's readahead for the FUSE mount at `mountpoint` to [`READ_AHEAD_KB`]
/// through `/sys/class/bdi` (root only). Finds the device in `/proc/self/mountinfo`, as a
/// `stat` of the mountpoint would wait for the session to serve it.
///
/// # Errors
/// The mount is not listed, or the setting cannot be written (not root).
pub fn raise_readahead(mountpoint: &Path) -> io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = mountpoint.to_string_lossy();
    let device = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.get(4).is_some_and(|m| *m == want.as_ref()))
        .filter_map(|f| f.get(2).map(|d| (*d).to_string()))
        .next_back()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "mount not in mountinfo"))?;
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        READ_AHEAD_KB.to_string(),
    )
}

/// Detaches the mount at `mountpoint` (`fusermount3 -u -z`): it disappears from the namespace
/// at once and the session ends when the last open file on it is closed. Returns whether it
/// did; a failure is logged with fusermount3's message, for the caller to try again.
pub fn unmount_lazily(mountpoint: &Path) -> bool {
    let out = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            tracing::error!(
                mountpoint = %mountpoint.display(),
                stderr = %String::from_utf8_lossy(&o.stderr).trim(),
                "fusermount3 -u failed"
            );
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "fusermount3 could not be run");
            false
        }
    }
}

/// Whether `/etc/fuse.conf` lets users other than root ask for `allow_other`/`allow_root`.
fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|c| {
        c.lines().any(|l| {
            l.split('#')
                .next()
                .is_some_and(|l| l.trim() == "user_allow_other")
        })
    })
}

fn file_type(kind: Kind) -> fuser::FileType {
    match kind {
        Kind::File => fuser::FileType::RegularFile,
        Kind::Dir => fuser::FileType::Directory,
        Kind::Symlink => fuser::FileType::Symlink,
        Kind::Fifo => fuser::FileType::NamedPipe,
        Kind::Socket => fuser::FileType::Socket,
        Kind::CharDevice => fuser::FileType::CharDevice,
        Kind::BlockDevice => fuser::FileType::BlockDevice,
    }
}

/// The kind of a node from the file-type bits of a `mknod` mode.
fn kind_of_mode(mode: u32) -> Option<Kind> {
    match mode & nix::libc::S_IFMT {
        m if m == nix::libc::S_IFREG || m == 0 => Some(Kind::File),
        m if m == nix::libc::S_IFIFO => Some(Kind::Fifo),
        m if m == nix::libc::S_IFSOCK => Some(Kind::Socket),
        m if m == nix::libc::S_IFCHR => Some(Kind::CharDevice),
        m if m == nix::libc::S_IFBLK => Some(Kind::BlockDevice),
        _ => None,
    }
}

fn file_attr(a: &vfs::Attr) -> fuser::FileAttr {
    fuser::FileAttr {
        ino: fuser::INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.ctime.into(),
        kind: file_type(a.kind),
        // The mask keeps the permission and set-id bits, which fit in 16 bits.
        perm: u16::try_from(a.perm & 0o7777).unwrap_or(0),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // Linux device numbers in FUSE replies are 32 bits (the kernel's old encoding).
        rdev: u32::try_from(a.rdev).unwrap_or(u32::MAX),
        blksize: vfs::BLKSIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_modes_map_to_kinds() {
        use nix::libc;
        assert_eq!(kind_of_mode(libc::S_IFREG | 0o644), Some(Kind::File));
        assert_eq!(kind_of_mode(0o644), Some(Kind::File));
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o600), Some(Kind::Fifo));
        assert_eq!(kind_of_mode(libc::S_IFSOCK), Some(Kind::Socket));
        assert_eq!(kind_of_mode(libc::S_IFCHR), Some(Kind::CharDevice));
        assert_eq!(kind_of_mode(libc::S_IFBLK), Some(Kind::BlockDevice));
        assert_eq!(kind_of_mode(libc::S_IFDIR), None);
        assert_eq!(kind_of_mode(libc::S_IFLNK), None);
    }

    #[test]
    fn attributes_keep_set_id_bits_and_times() {
        let a = vfs::Attr {
            ino: 7,
            kind: Kind::File,
            size: 5,
            blocks: 1,
            atime: crate::tree::Timestamp { secs: 1, nanos: 2 },
            mtime: crate::tree::Timestamp { secs: 3, nanos: 4 },
            ctime: crate::tree::Timestamp { secs: 5, nanos: 6 },
            perm: 0o4755,
            nlink: 1,
            uid: 10,
            gid: 20,
            rdev: 0,
        };
        let f = file_attr(&a);
        assert_eq!(f.perm, 0o4755);
        assert_eq!(f.ino, fuser::INodeNo(7));
        assert_eq!(
            f.mtime,
            std::time::UNIX_EPOCH + Duration::new(3, 4),
            "mtime keeps nanoseconds"
        );
        assert_eq!(f.kind, fuser::FileType::RegularFile);
    }
}

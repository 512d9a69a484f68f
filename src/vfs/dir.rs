//! Namespace operations: lookup, node creation, unlink, rmdir, rename, links (listings are
//! in `listing.rs`).
//! Each holds the tree lock for its whole read-modify-write and writes one batch.

use std::collections::BTreeMap;

use crate::id::{FileId, Ino};
use crate::limits::{NAME_BYTES_MAX, SYMLINK_TARGET_BYTES_MAX, TREE_DEPTH_MAX};
use crate::store::{Batch, Durability, tables::Tables};
use crate::tree::{FileRecord, Kind, Timestamp, VersionVector, validate_name};

use super::file::OpenFlags;
use super::{Attr, Creator, Error, Result, SetAttr, TimeSet, Vfs};

const S_ISGID: u32 = 0o2000;

/// What kind of node to make, and its content-free attributes.
#[derive(Clone, Copy)]
struct NodeSpec<'a> {
    kind: Kind,
    perm: u32,
    rdev: u64,
    target: &'a [u8],
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it (plain `rename`).
    Replace,
    /// Fail with [`Error::Exists`] (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap the two entries (`RENAME_EXCHANGE`).
    Exchange,
}

fn dec_subdirs(r: &mut FileRecord) {
    r.subdirs = r.subdirs.saturating_sub(1);
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Error::NameTooLong);
    }
    validate_name(name).map_err(Error::Invalid)
}

/// Records changed by one namespace operation, each written once. A record is either
/// changed (a new version that replicates) or only touched: a parent directory whose
/// modification time or subdirectory count follows from its children's changes, which every
/// peer derives itself, so it keeps its version.
struct Changes(BTreeMap<FileId, (FileRecord, bool)>);

impl Changes {
    fn entry<'a>(&'a mut self, vfs: &Vfs, id: FileId, changed: bool) -> Result<&'a mut FileRecord> {
        let e = match self.0.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((vfs.live_record(id)?, false))
            }
        };
        e.1 |= changed;
        Ok(&mut e.0)
    }
    /// A record this operation changes.
    fn get<'a>(&'a mut self, vfs: &Vfs, id: FileId) -> Result<&'a mut FileRecord> {
        self.entry(vfs, id, true)
    }
    /// A parent directory this operation only touches.
    fn touch<'a>(&'a mut self, vfs: &Vfs, id: FileId) -> Result<&'a mut FileRecord> {
        self.entry(vfs, id, false)
    }
    fn write(self, tables: &Tables, batch: &mut Batch) {
        for (_, (mut r, changed)) in self.0 {
            if changed {
                tables.put_record(batch, &mut r);
            } else {
                tables.rewrite_record(batch, &r);
            }
        }
    }
}

impl Vfs {
    pub(super) fn dir_record(&self, ino: Ino) -> Result<FileRecord> {
        let r = self.record_of(ino)?;
        if r.tombstone {
            return Err(Error::NotFound);
        }
        if r.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(r)
    }

    /// Looks up `name` in directory `parent`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotDir`], [`Error::NameTooLong`].
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_BYTES_MAX {
            return Err(Error::NameTooLong);
        }
        let dir = self.dir_record(parent)?;
        let id = self.tables.lookup(dir.id, name)?.ok_or(Error::NotFound)?;
        let r = self.live_record(id)?;
        self.getattr(r.ino)
    }

    fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        node: &NodeSpec<'_>,
        who: Creator,
    ) -> Result<FileRecord> {
        let NodeSpec {
            kind,
            perm,
            rdev,
            target,
        } = *node;
        check_name(name)?;
        let _tree = self.tree.lock();
        let mut dir = self.dir_record(parent)?;
        if self.tables.lookup(dir.id, name)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Timestamp::now();
        let mut batch = Batch::new();
        let setgid_dir = dir.mode & S_ISGID != 0;
        let mut mode = perm & 0o7777;
        if kind == Kind::Dir && setgid_dir {
            mode |= S_ISGID;
        }
        let mut rec = FileRecord {
            id: Tables::new_file_id()?,
            ino: self.tables.alloc_ino(&mut batch),
            kind,
            parent: dir.id,
            name: name.to_vec(),
            mode,
            uid: who.uid,
            gid: if setgid_dir { dir.gid } else { who.gid },
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            size: if kind == Kind::Symlink {
                target.len() as u64
            } else {
                0
            },
            manifest: Vec::new(),
            target: target.to_vec(),
            subdirs: 0,
            version: VersionVector::default(),
            seq: 0,
            tombstone: false,
            origin: 0,
            xattrs: Vec::new(),
        };
        self.tables.put_record(&mut batch, &mut rec);
        Tables::put_dirent(&mut batch, dir.id, name, rec.id);
        dir.mtime = now;
        dir.ctime = now;
        if kind == Kind::Dir {
            dir.subdirs += 1;
        }
        self.tables.rewrite_record(&mut batch, &dir);
        self.tables.backend().write(batch, Durability::Buffered)?;
        Ok(rec)
    }

    /// Creates a node that is not a directory or symlink: a regular file, fifo, socket or
    /// device (`mknod`).
    ///
    /// # Errors
    /// [`Error::Exists`], [`Error::NotDir`], name errors, store errors.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: Kind,
        perm: u32,
        who: Creator,
        rdev: u64,
    ) -> Result<Attr> {
        if matches!(kind, Kind::Dir | Kind::Symlink) {
            return Err(Error::Invalid("mknod of a directory or symlink".into()));
        }
        let r = self.make_node(
            parent,
            name,
            &NodeSpec {
                kind,
                perm,
                rdev,
                target: &[],
            },
            who,
        )?;
        Ok(self.attr_of(&r))
    }

    /// Creates a directory.
    ///
    /// # Errors
    /// As [`Self::mknod`].
    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, who: Creator) -> Result<Attr> {
        let r = self.make_node(
            parent,
            name,
            &NodeSpec {
                kind: Kind::Dir,
                perm,
                rdev: 0,
                target: &[],
            },
            who,
        )?;
        Ok(self.attr_of(&r))
    }

    /// Creates a symlink to `target`.
    ///
    /// # Errors
    /// As [`Self::mknod`]; a target over 4096 bytes.
    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], who: Creator) -> Result<Attr> {
        if target.len() > SYMLINK_TARGET_BYTES_MAX {
            return Err(Error::NameTooLong);
        }
        if target.is_empty() {
            return Err(Error::NotFound);
        }
        let r = self.make_node(
            parent,
            name,
            &NodeSpec {
                kind: Kind::Symlink,
                perm: 0o777,
                rdev: 0,
                target,
            },
            who,
        )?;
        Ok(self.attr_of(&r))
    }

    /// Creates a regular file and opens it.
    ///
    /// # Errors
    /// As [`Self::mknod`].
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        who: Creator,
        flags: OpenFlags,
    ) -> Result<(Attr, u64)> {
        let r = self.make_node(
            parent,
            name,
            &NodeSpec {
                kind: Kind::File,
                perm,
                rdev: 0,
                target: &[],
            },
            who,
        )?;
        let fh = self.open(r.ino, flags)?;
        Ok((self.attr_of(&r), fh))
    }

    /// The target of symlink `ino`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything but a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let r = self.record_of(ino)?;
        if r.kind != Kind::Symlink || r.tombstone {
            return Err(Error::Invalid("not a symlink".into()));
        }
        Ok(r.target)
    }

    /// Hard links are not supported: keibi records have one name each (a decision; see
    /// ARCHITECTURE.md). Programs such as git fall back to rename.
    ///
    /// # Errors
    /// Always [`Error::NotPermitted`].
    pub fn link(&self, _ino: Ino, _parent: Ino, _name: &[u8]) -> Result<Attr> {
        Err(Error::NotPermitted("hard links are not supported"))
    }

    fn remove(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        check_name(name)?;
        // Lock order: open map, then tree.
        let open = self.open.lock();
        let _tree = self.tree.lock();
        let p = self.dir_record(parent)?;
        let id = self.tables.lookup(p.id, name)?.ok_or(Error::NotFound)?;
        let mut changes = Changes(BTreeMap::new());
        let child = changes.get(self, id)?;
        match (dir, child.kind == Kind::Dir) {
            (false, true) => return Err(Error::IsDir),
            (true, false) => return Err(Error::NotDir),
            (true, true) if self.tables.has_children(id)? => return Err(Error::NotEmpty),
            _ => {}
        }
        let now = Timestamp::now();
        child.tombstone = true;
        child.ctime = now;
        if !open.contains_key(&child.ino) {
            child.manifest.clear();
            child.size = 0;
        }
        let parent_rec = changes.touch(self, p.id)?;
        parent_rec.mtime = now;
        parent_rec.ctime = now;
        if dir {
            parent_rec.subdirs = parent_rec.subdirs.saturating_sub(1);
        }
        let mut batch = Batch::new();
        Tables::delete_dirent(&mut batch, p.id, name);
        changes.write(&self.tables, &mut batch);
        self.tables.backend().write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// Removes a non-directory.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::IsDir`], store errors.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty directory.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotDir`], [`Error::NotEmpty`], store errors.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    /// True when `ancestor` is `id` or one of its parents.
    fn is_within(&self, id: FileId, ancestor: FileId) -> Result<bool> {
        let mut cur = id;
        for _ in 0..TREE_DEPTH_MAX {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == FileId::ROOT {
                return Ok(false);
            }
            cur = self.live_record(cur)?.parent;
        }
        Err(Error::Invalid(
            "directory tree deeper than the limit".into(),
        ))
    }

    /// Renames `parent/name` to `new_parent/new_name`.
    ///
    /// # Errors
    /// POSIX rename errors: [`Error::NotFound`], [`Error::Exists`], [`Error::IsDir`],
    /// [`Error::NotDir`], [`Error::NotEmpty`], [`Error::Invalid`] (into its own subtree).
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        let open = self.open.lock();
        let _tree = self.tree.lock();
        let (sp, dp) = (self.dir_record(parent)?.id, self.dir_record(new_parent)?.id);
        let src = self.tables.lookup(sp, name)?.ok_or(Error::NotFound)?;
        let dst = self.tables.lookup(dp, new_name)?;
        if dst == Some(src) {
            return Ok(());
        }
        let mut ch = Changes(BTreeMap::new());
        let src_kind = ch.get(self, src)?.kind;
        let now = Timestamp::now();
        let mut batch = Batch::new();
        if src_kind == Kind::Dir && self.is_within(dp, src)? {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(Error::NotFound),
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists),
            (RenameMode::Exchange, Some(dst)) => {
                let dst_kind = ch.get(self, dst)?.kind;
                if dst_kind == Kind::Dir && self.is_within(sp, dst)? {
                    return Err(Error::Invalid("cannot move a directory into itself".into()));
                }
                let d = ch.get(self, dst)?;
                d.parent = sp;
                d.name = name.to_vec();
                d.ctime = now;
                Tables::put_dirent(&mut batch, sp, name, dst);
                if dst_kind == Kind::Dir && sp != dp {
                    dec_subdirs(ch.touch(self, dp)?);
                    ch.touch(self, sp)?.subdirs += 1;
                }
            }
            (RenameMode::Replace, Some(dst)) => {
                let d = ch.get(self, dst)?;
                match (src_kind == Kind::Dir, d.kind == Kind::Dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if self.tables.has_children(dst)? => return Err(Error::NotEmpty),
                    _ => {}
                }
                let was_dir = d.kind == Kind::Dir;
                d.tombstone = true;
                d.ctime = now;
                if !open.contains_key(&d.ino) {
                    d.manifest.clear();
                    d.size = 0;
                }
                if was_dir {
                    dec_subdirs(ch.touch(self, dp)?);
                }
                Tables::delete_dirent(&mut batch, sp, name);
            }
            (RenameMode::Replace | RenameMode::NoReplace, None) => {
                Tables::delete_dirent(&mut batch, sp, name);
            }
        }
        let s = ch.get(self, src)?;
        s.parent = dp;
        s.name = new_name.to_vec();
        s.ctime = now;
        Tables::put_dirent(&mut batch, dp, new_name, src);
        if src_kind == Kind::Dir && sp != dp {
            dec_subdirs(ch.touch(self, sp)?);
            ch.touch(self, dp)?.subdirs += 1;
        }
        for p in [sp, dp] {
            let r = ch.touch(self, p)?;
            r.mtime = now;
            r.ctime = now;
        }
        ch.write(&self.tables, &mut batch);
        self.tables.backend().write(batch, Durability::Buffered)?;
        Ok(())
    }

    /// Changes attributes; a size change truncates or extends (with a hole) the file.
    ///
    /// # Errors
    /// [`Error::IsDir`] or [`Error::Invalid`] for a size change of a non-file; store errors.
    pub fn setattr(&self, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let kind = self.record_of(ino)?.kind;
        if let Some(size) = set.size {
            match kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir),
                Kind::Symlink
                | Kind::Fifo
                | Kind::Socket
                | Kind::CharDevice
                | Kind::BlockDevice => {
                    return Err(Error::Invalid("size of a non-file".into()));
                }
            }
            let f = self.acquire(ino)?;
            let truncated = {
                let mut st = f.state.lock();
                st.mtime = Some(Timestamp::now());
                st.set_size(size, &self.chunks)
            };
            let committed = self.unacquire(&f);
            truncated?;
            committed?;
        } else if kind == Kind::File && (set.mtime.is_some() || set.atime.is_some()) {
            // Commit pending writes first, so their time does not override the one set here.
            let open = self.open.lock().get(&ino).cloned();
            if let Some(f) = open {
                self.commit_file(&f, super::CommitMode::Seal)?;
            }
        }
        let meta = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if meta {
            let _tree = self.tree.lock();
            let mut r = self.record_of(ino)?;
            let now = Timestamp::now();
            if let Some(m) = set.mode {
                r.mode = m & 0o7777;
            }
            if let Some(u) = set.uid {
                r.uid = u;
            }
            if let Some(g) = set.gid {
                r.gid = g;
            }
            let at = |t: TimeSet| match t {
                TimeSet::Now => now,
                TimeSet::At(t) => t,
            };
            if let Some(t) = set.atime {
                r.atime = at(t);
            }
            if let Some(t) = set.mtime {
                r.mtime = at(t);
            }
            r.ctime = now;
            let mut batch = Batch::new();
            self.tables.put_record(&mut batch, &mut r);
            self.tables.backend().write(batch, Durability::Buffered)?;
        }
        self.getattr(ino)
    }
}

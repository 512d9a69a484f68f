//! Applying records received from peers: version-vector comparison, placing a record in the
//! tree, conflicts, cycles, and invalidating the kernel's caches afterwards.
//!
//! Every rule here is a function of the records alone (never of arrival time or of which
//! peer is local), so that every peer that has seen the same versions builds the same tree:
//!
//! - newer version: it replaces the local one; older or equal: ignored (an equal version
//!   with other content, which two merges of one concurrent pair can leave, is settled by
//!   the rule for concurrent versions, without a conflict copy);
//! - concurrent versions of a file: the winner is the one with the later modification time,
//!   then the larger encoded version vector (directories: the vector alone); the loser is kept as a conflict copy whose id
//!   and name derive from the file id and the loser's version, so every peer makes the same
//!   copy. Both end with the merged version vector;
//! - a deletion concurrent with a change: the change wins (nothing written is lost);
//! - two different files that claim one name (made at once on two peers): once the sender
//!   has caught up (so the name is not about to be freed by a later record), the file with
//!   the larger id keeps the name and the other gets its conflict name;
//! - a directory move that would close a cycle: of the directories in the cycle, the one
//!   with the largest id moves to the root.
//!
//! A record this peer moves (conflict name, cycle) gets a new version of this peer, which
//! replicates: a peer that saw no clash receives the move, and two peers that made the same
//! move end with concurrent versions that say the same thing, which merge.
//!
//! Lock order: open map, then the file's staging, then the tree (as everywhere in the vfs).

use std::collections::{BTreeMap, HashSet};

use crate::id::{ChunkId, FileId, Ino};
use crate::limits::{CHUNK_BYTES, TREE_DEPTH_MAX};
use crate::store::{Batch, Durability, tables::Tables};
use crate::tree::{FileRecord, Kind, Order, Timestamp};

use super::conflict::{conflict_id, conflict_name, same_content, wins};
use super::staging::FileState;
use super::{Result, Vfs};

/// What applying one record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The tree changed.
    Applied,
    /// The record is older than (or the same as) the local version.
    Ignored,
    /// The versions were concurrent; both are kept (see the module doc).
    Conflict,
    /// Its parent directory is not here (yet): retry later.
    WaitParent,
    /// Another file holds its name, and the sender has not caught up yet: retry later.
    WaitName,
    /// The file is open here with changes not yet committed: retry after they are.
    WaitOpen,
}

impl Outcome {
    /// True when the record must be offered again later.
    #[must_use]
    pub fn waits(self) -> bool {
        matches!(self, Self::WaitParent | Self::WaitName | Self::WaitOpen)
    }
}

/// The result of [`Vfs::apply_remote`].
#[derive(Debug)]
pub struct Applied {
    /// What happened.
    pub outcome: Outcome,
    /// Chunks the new version references that this store lacks: the fetcher's work.
    pub missing: Vec<ChunkId>,
}

/// The kernel's caches of entries, attributes and pages, which a change that did not come
/// through the kernel must invalidate. The FUSE adapter implements it; without a mount
/// there is nothing to invalidate.
pub trait KernelCache: Send + Sync {
    /// Forgets the dentry `name` in directory `parent`.
    fn invalidate_entry(&self, parent: Ino, name: &[u8]);
    /// Forgets the attributes and cached pages of `ino`.
    fn invalidate_inode(&self, ino: Ino);
}

/// Kernel cache entries to drop once the locks are released.
#[derive(Default)]
struct Invalidations {
    entries: Vec<(Ino, Vec<u8>)>,
    inodes: Vec<Ino>,
}

/// One application in progress: the batch and the records it touched.
struct Work<'a> {
    vfs: &'a Vfs,
    origin: u64,
    batch: Batch,
    /// Records written in this batch, by id (read back before the store is).
    touched: BTreeMap<FileId, FileRecord>,
    inval: Invalidations,
    missing: Vec<ChunkId>,
    /// `missing` as a set: a manifest of many thousand chunks is checked in linear time.
    missing_seen: HashSet<ChunkId>,
}

impl Work<'_> {
    fn record(&self, id: FileId) -> Result<Option<FileRecord>> {
        match self.touched.get(&id) {
            Some(r) => Ok(Some(r.clone())),
            None => Ok(self.vfs.tables.record(id)?),
        }
    }

    fn live_dir(&self, id: FileId) -> Result<Option<FileRecord>> {
        Ok(self
            .record(id)?
            .filter(|r| !r.tombstone && r.kind == Kind::Dir))
    }

    /// Changes local bookkeeping of a directory (subdirs, mtime): no new version.
    fn touch_dir(&mut self, id: FileId, subdirs: i64) -> Result<()> {
        if let Some(mut d) = self.record(id)? {
            d.subdirs = u32::try_from(i64::from(d.subdirs) + subdirs).unwrap_or(0);
            let now = Timestamp::now();
            d.mtime = now;
            d.ctime = now;
            self.vfs.tables.rewrite_record(&mut self.batch, &d);
            self.inval.inodes.push(d.ino);
            self.touched.insert(id, d);
        }
        Ok(())
    }

    fn unlink_entry(&mut self, r: &FileRecord) -> Result<()> {
        Tables::delete_dirent(&mut self.batch, r.parent, &r.name);
        if let Some(p) = self.record(r.parent)? {
            self.inval.entries.push((p.ino, r.name.clone()));
        }
        if r.kind == Kind::Dir {
            self.touch_dir(r.parent, -1)?;
        } else {
            self.touch_dir(r.parent, 0)?;
        }
        Ok(())
    }

    fn link_entry(&mut self, r: &FileRecord) -> Result<()> {
        Tables::put_dirent(&mut self.batch, r.parent, &r.name, r.id);
        if let Some(p) = self.record(r.parent)? {
            self.inval.entries.push((p.ino, r.name.clone()));
        }
        self.touch_dir(r.parent, i64::from(r.kind == Kind::Dir))
    }

    /// Stores `rec` as the new version, placed at its parent and name (which the caller
    /// checked), replacing `local`.
    fn store(&mut self, rec: FileRecord, local: Option<&FileRecord>, origin: u64) -> Result<()> {
        self.store_as(rec, local, Some(origin))
    }

    /// As [`Self::store`]; `origin` `None` makes it a change of this peer (a new version
    /// that replicates), for a record this peer had to move (conflict name, cycle).
    fn store_as(
        &mut self,
        mut rec: FileRecord,
        local: Option<&FileRecord>,
        origin: Option<u64>,
    ) -> Result<()> {
        let was_live = local.is_some_and(|l| !l.tombstone);
        let moved =
            local.is_none_or(|l| l.parent != rec.parent || l.name != rec.name || l.tombstone);
        if let Some(l) = local {
            rec.ino = l.ino;
            rec.subdirs = l.subdirs;
            rec.atime = l.atime;
            rec.seq = l.seq;
        } else {
            rec.ino = self.vfs.tables.alloc_ino(&mut self.batch);
            rec.subdirs = 0;
            rec.atime = rec.mtime;
            rec.seq = 0;
        }
        if let Some(l) = local.filter(|_| was_live && (moved || rec.tombstone)) {
            self.unlink_entry(l)?;
        }
        if !rec.tombstone && (moved || !was_live) {
            self.link_entry(&rec)?;
        }
        let hole = ChunkId::of_zero_chunk();
        for c in &rec.manifest {
            if self.missing_seen.contains(c) || self.vfs.chunks.contains(c)? {
                continue;
            }
            if *c == hole {
                // A hole of a sparse file: made here, not fetched.
                self.vfs.chunks.zeros(CHUNK_BYTES)?;
                continue;
            }
            self.missing_seen.insert(*c);
            self.missing.push(*c);
        }
        self.inval.inodes.push(rec.ino);
        match origin {
            Some(origin) => self
                .vfs
                .tables
                .put_remote_record(&mut self.batch, &mut rec, origin),
            None => self.vfs.tables.put_record(&mut self.batch, &mut rec),
        }
        self.touched.insert(rec.id, rec);
        Ok(())
    }

    /// Of the directories between `parent` and the root, those that lie under `id`: empty
    /// when putting `id` under `parent` closes no cycle.
    fn cycle(&self, id: FileId, parent: FileId) -> Result<Vec<FileId>> {
        let mut chain = Vec::new();
        let mut cur = parent;
        for _ in 0..TREE_DEPTH_MAX {
            if cur == id {
                return Ok(chain);
            }
            if cur == FileId::ROOT {
                return Ok(Vec::new());
            }
            chain.push(cur);
            match self.live_dir(cur)? {
                Some(r) => cur = r.parent,
                None => return Ok(Vec::new()),
            }
        }
        Ok(chain)
    }

    /// Moves directory `id` to the root, as a change of this peer (cycle breaking): the
    /// other peers either do the same (the versions then agree) or receive it.
    fn rehome(&mut self, id: FileId) -> Result<()> {
        let Some(mut d) = self.record(id)? else {
            return Ok(());
        };
        self.unlink_entry(&d)?;
        d.parent = FileId::ROOT;
        if self.vfs.tables.lookup(FileId::ROOT, &d.name)?.is_some() {
            d.name = conflict_name(&d.name, d.id);
        }
        self.link_entry(&d)?;
        self.vfs.tables.put_record(&mut self.batch, &mut d);
        self.touched.insert(id, d);
        Ok(())
    }

    /// Places the live record `rec` (newer than `local`): checks its parent, breaks a
    /// cycle, settles a name taken by another file, then stores it.
    fn place(
        &mut self,
        mut rec: FileRecord,
        local: Option<&FileRecord>,
        settle_names: bool,
        origin: u64,
    ) -> Result<Outcome> {
        let (parent, name) = (rec.parent, rec.name.clone());
        if rec.id != FileId::ROOT {
            if self.live_dir(rec.parent)?.is_none() {
                return Ok(Outcome::WaitParent);
            }
            if rec.kind == Kind::Dir {
                let mut members = self.cycle(rec.id, rec.parent)?;
                if !members.is_empty() {
                    members.push(rec.id);
                    let top = members.iter().copied().max().unwrap_or(rec.id);
                    if top == rec.id {
                        rec.parent = FileId::ROOT;
                    } else {
                        self.rehome(top)?;
                    }
                }
            }
            if let Some(other) = self.vfs.tables.lookup(rec.parent, &rec.name)?
                && other != rec.id
                && !self
                    .touched
                    .get(&other)
                    .is_some_and(|o| o.tombstone || o.parent != rec.parent || o.name != rec.name)
            {
                if !settle_names {
                    return Ok(Outcome::WaitName);
                }
                if other > rec.id {
                    rec.name = conflict_name(&rec.name, rec.id);
                    if self.vfs.tables.lookup(rec.parent, &rec.name)?.is_some() {
                        return Ok(Outcome::WaitName);
                    }
                } else if let Some(mut o) = self.record(other)? {
                    self.unlink_entry(&o)?;
                    o.name = conflict_name(&o.name, o.id);
                    self.link_entry(&o)?;
                    self.vfs.tables.put_record(&mut self.batch, &mut o);
                    self.inval.inodes.push(o.ino);
                    self.touched.insert(other, o);
                }
            }
        }
        // Placed elsewhere than the sender said (conflict name, cycle): that is a change of
        // this peer, which goes back out so every peer ends with the same name.
        let moved_here = rec.parent != parent || rec.name != name;
        self.store_as(rec, local, (!moved_here).then_some(origin))?;
        Ok(Outcome::Applied)
    }
}

impl Vfs {
    /// Sets (or clears) the kernel caches that applied changes invalidate.
    pub fn set_kernel_cache(&self, kernel: Option<std::sync::Arc<dyn KernelCache>>) {
        *self.kernel.write() = kernel;
    }

    fn invalidate(&self, inval: &Invalidations) {
        let kernel = self.kernel.read().clone();
        if let Some(k) = kernel {
            for (parent, name) in &inval.entries {
                k.invalidate_entry(*parent, name);
            }
            for ino in &inval.inodes {
                k.invalidate_inode(*ino);
            }
        }
    }

    /// Applies `incoming`, a record (validated at the wire edge) that peer store `origin`
    /// sent. `settle_names`: the sender has caught up, so a name still held by another
    /// file is a real conflict rather than a move not yet received.
    ///
    /// # Errors
    /// Store errors. A record that cannot apply yet is not an error: see [`Outcome`].
    pub fn apply_remote(
        &self,
        origin: u64,
        incoming: &FileRecord,
        settle_names: bool,
    ) -> Result<Applied> {
        let (applied, inval) = {
            let open = self.open.lock();
            let ino = self.tables.record(incoming.id)?.map(|r| r.ino);
            let file = ino.and_then(|i| open.get(&i).cloned());
            let mut st = file.as_ref().map(|f| f.state.lock());
            let _tree = self.tree.lock();
            let mut work = Work {
                vfs: self,
                origin,
                batch: Batch::new(),
                touched: BTreeMap::new(),
                inval: Invalidations::default(),
                missing: Vec::new(),
                missing_seen: HashSet::new(),
            };
            let local = self.tables.record(incoming.id)?;
            let outcome = work.apply(
                incoming.clone(),
                local.as_ref(),
                st.as_deref(),
                settle_names,
            )?;
            let Work {
                batch,
                inval,
                missing,
                touched,
                ..
            } = work;
            if !outcome.waits() && !batch.is_empty() {
                self.tables.backend().write(batch, Durability::Buffered)?;
                if let (Some(st), Some(r)) = (st.as_deref_mut(), touched.get(&incoming.id)) {
                    // The file is open and clean: its handles now read the new version.
                    let handles = st.handles;
                    let last = st.last_read_end;
                    *st = FileState::from_record(r);
                    st.handles = handles;
                    st.last_read_end = last;
                }
            }
            (Applied { outcome, missing }, inval)
        };
        if !applied.outcome.waits() {
            self.invalidate(&inval);
        }
        Ok(applied)
    }
}

impl Work<'_> {
    fn apply(
        &mut self,
        rec: FileRecord,
        local: Option<&FileRecord>,
        st: Option<&FileState>,
        settle_names: bool,
    ) -> Result<Outcome> {
        let origin = self.origin;
        let order = local.map_or(Order::Newer, |l| rec.version.compare(&l.version));
        let dirty = st.is_some_and(|s| !s.is_clean());
        match order {
            Order::Older => Ok(Outcome::Ignored),
            Order::Equal => match local {
                Some(l) if !same_content(&rec, l) => {
                    if dirty {
                        Ok(Outcome::WaitOpen)
                    } else {
                        self.settle_equal(rec, l, settle_names, origin)
                    }
                }
                _ => Ok(Outcome::Ignored),
            },
            // Local writes not yet committed: the commit comes first, then the record is
            // compared again (and is then concurrent, so both versions are kept).
            Order::Newer | Order::Concurrent if dirty => Ok(Outcome::WaitOpen),
            Order::Newer => self.newer(rec, local, st.is_some(), settle_names, origin),
            Order::Concurrent => {
                let Some(l) = local else {
                    return Ok(Outcome::Ignored);
                };
                self.concurrent(rec, l, settle_names, origin)
            }
        }
    }

    fn newer(
        &mut self,
        mut rec: FileRecord,
        local: Option<&FileRecord>,
        open: bool,
        settle_names: bool,
        origin: u64,
    ) -> Result<Outcome> {
        if !rec.tombstone {
            return self.place(rec, local, settle_names, origin);
        }
        if let Some(l) = local.filter(|l| !l.tombstone) {
            if l.kind == Kind::Dir && self.vfs.tables.has_children(l.id)? {
                // The sender deleted a directory that holds files it has not seen: keep it,
                // with a version newer than the deletion, which goes back to the sender.
                let mut keep = l.clone();
                keep.version = l.version.merged(&rec.version);
                self.vfs.tables.put_record(&mut self.batch, &mut keep);
                self.touched.insert(keep.id, keep);
                return Ok(Outcome::Conflict);
            }
            if open {
                // Open handles keep reading the content, as after a local unlink; the
                // last close frees it.
                rec.manifest.clone_from(&l.manifest);
                rec.size = l.size;
            }
        }
        self.store(rec, local, origin)?;
        Ok(Outcome::Applied)
    }

    /// Two contents under one version vector: two peers merged one concurrent pair, each
    /// holding a different version of the other's, and each kept its own side. Each merge
    /// already copied its loser, so the winner by the concurrent rule (a live record beats
    /// a deletion) replaces the loser without a new copy, the same on both peers.
    fn settle_equal(
        &mut self,
        rec: FileRecord,
        l: &FileRecord,
        settle_names: bool,
        origin: u64,
    ) -> Result<Outcome> {
        let remote_wins = if rec.tombstone == l.tombstone {
            wins(&rec, l)
        } else {
            !rec.tombstone
        };
        if !remote_wins {
            return Ok(Outcome::Ignored);
        }
        if rec.tombstone {
            self.store(rec, Some(l), origin)?;
            return Ok(Outcome::Conflict);
        }
        let placed = self.place(rec, Some(l), settle_names, origin)?;
        Ok(if placed == Outcome::Applied {
            Outcome::Conflict
        } else {
            placed
        })
    }

    fn concurrent(
        &mut self,
        mut rec: FileRecord,
        l: &FileRecord,
        settle_names: bool,
        origin: u64,
    ) -> Result<Outcome> {
        let merged = l.version.merged(&rec.version);
        if same_content(&rec, l) {
            let mut keep = l.clone();
            keep.version = merged;
            self.vfs.tables.rewrite_record(&mut self.batch, &keep);
            self.touched.insert(keep.id, keep);
            return Ok(Outcome::Ignored);
        }
        match (l.tombstone, rec.tombstone) {
            (true, true) => {
                let mut keep = l.clone();
                keep.version = merged;
                self.vfs.tables.rewrite_record(&mut self.batch, &keep);
                self.touched.insert(keep.id, keep);
                Ok(Outcome::Ignored)
            }
            (false, true) => {
                // A change beats a concurrent deletion; the merged version goes back out.
                let mut keep = l.clone();
                keep.version = merged;
                self.vfs
                    .tables
                    .put_remote_record(&mut self.batch, &mut keep, 0);
                self.touched.insert(keep.id, keep);
                Ok(Outcome::Conflict)
            }
            (true, false) => {
                rec.version = merged;
                let placed = self.place(rec, Some(l), settle_names, origin)?;
                Ok(if placed == Outcome::Applied {
                    Outcome::Conflict
                } else {
                    placed
                })
            }
            (false, false) => self.both_live(rec, l, settle_names, origin, merged),
        }
    }

    fn both_live(
        &mut self,
        mut rec: FileRecord,
        l: &FileRecord,
        settle_names: bool,
        origin: u64,
        merged: crate::tree::VersionVector,
    ) -> Result<Outcome> {
        let remote_wins = wins(&rec, l);
        let loser = if remote_wins { l.clone() } else { rec.clone() };
        if remote_wins {
            rec.version = merged;
            let placed = self.place(rec, Some(l), settle_names, origin)?;
            if placed != Outcome::Applied {
                return Ok(placed);
            }
        } else {
            // The merged version goes back out, the sender included: a sender that merged
            // the same pair the other way (it held another version of ours) then settles
            // with it (`settle_equal`) instead of keeping its side under the same vector.
            let mut keep = l.clone();
            keep.version = merged;
            self.vfs
                .tables
                .put_remote_record(&mut self.batch, &mut keep, 0);
            self.touched.insert(keep.id, keep);
        }
        if loser.kind != Kind::Dir {
            let mut copy = loser.clone();
            copy.id = conflict_id(&loser);
            copy.name = conflict_name(&loser.name, copy.id);
            if self.live_dir(copy.parent)?.is_none() {
                copy.parent = FileId::ROOT;
            }
            if self.record(copy.id)?.is_none()
                && self.vfs.tables.lookup(copy.parent, &copy.name)?.is_none()
            {
                // Sent to every peer, the sender included: a peer that receives only the
                // merged winner (newer than its own version) learns of the copy this way.
                self.store(copy, None, 0)?;
            }
        }
        Ok(Outcome::Conflict)
    }
}

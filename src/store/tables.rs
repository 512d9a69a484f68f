//! Typed access to the tables of a keibi store: metadata, file records, dirents, the
//! sequence index and the inode map. Every record write goes through [`Tables::put_record`],
//! which keeps the sequence index consistent (one entry per record, at its latest change).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::id::{FileId, Ino, ROOT_INO};
use crate::tree::{FileRecord, Kind, Timestamp, VersionVector};

use super::{
    Backend, Batch, Cf, Durability, Error, Result, SCHEMA_VERSION, SCHEMA_VERSIONS_UPGRADED, keys,
    scan_prefix,
};

/// Typed tables over a [`Backend`]. Counters are kept in memory and written with every
/// batch that advances them.
pub struct Tables {
    backend: Arc<dyn Backend>,
    /// This store's random index id: its key in version vectors.
    index_id: u64,
    /// Next local sequence number.
    next_seq: AtomicU64,
    /// Next local inode number.
    next_ino: AtomicU64,
}

fn meta_u64(backend: &dyn Backend, key: &[u8]) -> Result<Option<u64>> {
    backend
        .get(Cf::Meta, key)?
        .map(|v| keys::le_u64(&v))
        .transpose()
}

impl Tables {
    /// Opens the tables of an initialised store, checking its schema version.
    ///
    /// # Errors
    /// [`Error::SchemaUnknown`]; a store that was never initialised; store errors.
    pub fn open(backend: Arc<dyn Backend>, path: &Path) -> Result<Self> {
        let schema = backend.get(Cf::Meta, keys::META_SCHEMA)?.ok_or_else(|| {
            Error::Malformed(format!(
                "{} is not an initialised keibi store",
                path.display()
            ))
        })?;
        let found = <[u8; 4]>::try_from(schema.as_slice())
            .map(u32::from_le_bytes)
            .map_err(|_| Error::Malformed("schema version".into()))?;
        if SCHEMA_VERSIONS_UPGRADED.contains(&found) {
            let mut b = Batch::new();
            b.put(
                Cf::Meta,
                keys::META_SCHEMA.to_vec(),
                SCHEMA_VERSION.to_le_bytes().to_vec(),
            );
            backend.write(b, Durability::Synced)?;
        } else if found != SCHEMA_VERSION {
            return Err(Error::SchemaUnknown {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let get = |k: &[u8]| {
            meta_u64(backend.as_ref(), k)?
                .ok_or_else(|| Error::Malformed("meta counter missing".into()))
        };
        let index_id = get(keys::META_INDEX_ID)?;
        let next_seq = get(keys::META_NEXT_SEQ)?;
        let next_ino = get(keys::META_NEXT_INO)?;
        Ok(Self {
            backend,
            index_id,
            next_seq: AtomicU64::new(next_seq),
            next_ino: AtomicU64::new(next_ino),
        })
    }

    /// Writes the metadata and root directory of a new store.
    ///
    /// # Errors
    /// Store errors.
    pub fn initialise(
        backend: &dyn Backend,
        index_id: u64,
        cipher_code: u8,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let now = Timestamp::now();
        let mut version = VersionVector::default();
        version.bump(index_id);
        let root = FileRecord {
            id: FileId::ROOT,
            ino: ROOT_INO,
            kind: Kind::Dir,
            parent: FileId::ROOT,
            name: Vec::new(),
            mode: 0o755,
            uid,
            gid,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            size: 0,
            manifest: Vec::new(),
            target: Vec::new(),
            subdirs: 0,
            version,
            seq: 1,
            tombstone: false,
            origin: 0,
            xattrs: Vec::new(),
        };
        let mut b = Batch::new();
        b.put(
            Cf::Meta,
            keys::META_SCHEMA.to_vec(),
            SCHEMA_VERSION.to_le_bytes().to_vec(),
        );
        b.put(
            Cf::Meta,
            keys::META_INDEX_ID.to_vec(),
            index_id.to_le_bytes().to_vec(),
        );
        b.put(
            Cf::Meta,
            keys::META_NEXT_SEQ.to_vec(),
            2u64.to_le_bytes().to_vec(),
        );
        b.put(
            Cf::Meta,
            keys::META_NEXT_INO.to_vec(),
            2u64.to_le_bytes().to_vec(),
        );
        b.put(Cf::Meta, keys::META_CIPHER.to_vec(), vec![cipher_code]);
        b.put(
            Cf::Files,
            FileId::ROOT.to_be_bytes().to_vec(),
            root.encode(),
        );
        b.put(
            Cf::Seq,
            keys::seq(1).to_vec(),
            FileId::ROOT.to_be_bytes().to_vec(),
        );
        b.put(
            Cf::Inodes,
            keys::ino(ROOT_INO).to_vec(),
            FileId::ROOT.to_be_bytes().to_vec(),
        );
        backend.write(b, Durability::Synced)
    }

    /// The backend underneath.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// This store's index id.
    #[must_use]
    pub fn index_id(&self) -> u64 {
        self.index_id
    }

    /// The record of `id`, tombstones included.
    ///
    /// # Errors
    /// Store errors; an undecodable record.
    pub fn record(&self, id: FileId) -> Result<Option<FileRecord>> {
        self.backend
            .get(Cf::Files, &id.to_be_bytes())?
            .map(|v| {
                FileRecord::decode(&v)
                    .map_err(|e| Error::Malformed(format!("record {id}: {}", e.0)))
            })
            .transpose()
    }

    /// The file id of local inode `ino`.
    ///
    /// # Errors
    /// Store errors.
    pub fn file_of_ino(&self, ino: Ino) -> Result<Option<FileId>> {
        self.backend
            .get(Cf::Inodes, &keys::ino(ino))?
            .map(|v| keys::file_id(&v))
            .transpose()
    }

    /// The child of `parent` named `name`.
    ///
    /// # Errors
    /// Store errors.
    pub fn lookup(&self, parent: FileId, name: &[u8]) -> Result<Option<FileId>> {
        self.backend
            .get(Cf::Dirents, &keys::dirent(parent, name))?
            .map(|v| keys::file_id(&v))
            .transpose()
    }

    /// Children of `parent` in name order: at most `limit`, starting after `after`.
    ///
    /// # Errors
    /// Store errors.
    pub fn children(
        &self,
        parent: FileId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, FileId)>> {
        let mut out = Vec::new();
        let mut failure = None;
        let from = match after {
            Some(name) => {
                let mut k = keys::dirent(parent, name);
                k.push(0);
                k
            }
            None => parent.to_be_bytes().to_vec(),
        };
        let end = keys::prefix_end(&parent.to_be_bytes());
        self.backend
            .scan(Cf::Dirents, &from, end.as_deref(), &mut |k, v| {
                match (keys::parse_dirent(k), keys::file_id(v)) {
                    (Ok((_, name)), Ok(child)) => out.push((name.to_vec(), child)),
                    (Err(e), _) | (_, Err(e)) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        failure.map_or(Ok(out), Err)
    }

    /// True when `dir` has at least one child.
    ///
    /// # Errors
    /// Store errors.
    pub fn has_children(&self, dir: FileId) -> Result<bool> {
        let mut any = false;
        scan_prefix(
            self.backend.as_ref(),
            Cf::Dirents,
            &dir.to_be_bytes(),
            &mut |_, _| {
                any = true;
                ControlFlow::Break(())
            },
        )?;
        Ok(any)
    }

    /// A fresh inode number, persisted with `batch`; the record given it, put in the same
    /// batch, writes its inode-map entry.
    pub fn alloc_ino(&self, batch: &mut Batch) -> Ino {
        let ino = self.next_ino.fetch_add(1, Ordering::SeqCst);
        batch.put(
            Cf::Meta,
            keys::META_NEXT_INO.to_vec(),
            (ino + 1).to_le_bytes().to_vec(),
        );
        ino
    }

    /// Adds `record` to `batch` as a new local change: bumps its version, gives it the next
    /// sequence number, moves its sequence-index entry, and writes its inode-map entry the
    /// first time it is stored.
    /// Callers serialise record writes (the vfs tree lock), so sequence order is commit order.
    pub fn put_record(&self, batch: &mut Batch, record: &mut FileRecord) {
        record.version.bump(self.index_id);
        record.origin = 0;
        self.put_sequenced(batch, record);
    }

    /// Adds `record` to `batch` as a version received from peer store `origin`: it keeps
    /// its version vector, and gets the next local sequence number (so that catch-up and
    /// other peers see it), marked as coming from `origin` so it is not sent back there.
    pub fn put_remote_record(&self, batch: &mut Batch, record: &mut FileRecord, origin: u64) {
        record.origin = origin;
        self.put_sequenced(batch, record);
    }

    /// Adds `record` to `batch` unchanged in version and sequence: for fields that are
    /// local bookkeeping (subdirectory counts) and for placing a record under a name that
    /// every peer derives the same way (conflicts), which are not changes to replicate.
    pub fn rewrite_record(&self, batch: &mut Batch, record: &FileRecord) {
        batch.put(Cf::Files, record.id.to_be_bytes().to_vec(), record.encode());
    }

    fn put_sequenced(&self, batch: &mut Batch, record: &mut FileRecord) {
        let old_seq = record.seq;
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        record.seq = seq;
        if old_seq == 0 {
            // Stored for the first time. A stored record keeps its inode (a new version
            // takes the local one's), so later versions leave the entry as it is.
            batch.put(
                Cf::Inodes,
                keys::ino(record.ino).to_vec(),
                record.id.to_be_bytes().to_vec(),
            );
        } else {
            batch.delete(Cf::Seq, keys::seq(old_seq).to_vec());
        }
        batch.put(
            Cf::Seq,
            keys::seq(seq).to_vec(),
            record.id.to_be_bytes().to_vec(),
        );
        batch.put(
            Cf::Meta,
            keys::META_NEXT_SEQ.to_vec(),
            (seq + 1).to_le_bytes().to_vec(),
        );
        batch.put(Cf::Files, record.id.to_be_bytes().to_vec(), record.encode());
    }

    /// Calls `visit` with every record (tombstones included) until it returns false.
    ///
    /// # Errors
    /// Store errors; an undecodable record.
    pub fn for_each_record(&self, visit: &mut dyn FnMut(FileRecord) -> bool) -> Result<()> {
        let mut failure = None;
        self.backend.scan(
            Cf::Files,
            &[],
            None,
            &mut |k, v| match FileRecord::decode(v) {
                Ok(r) => {
                    if visit(r) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                }
                Err(e) => {
                    failure = Some(Error::Malformed(format!(
                        "record {}: {}",
                        keys::file_id(k).map_or_else(|_| "?".into(), |id| id.to_string()),
                        e.0
                    )));
                    ControlFlow::Break(())
                }
            },
        )?;
        failure.map_or(Ok(()), Err)
    }

    /// The highest sequence number that has been handed out.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst).saturating_sub(1)
    }

    /// Records changed after sequence `after`, in sequence order: at most `limit`, each
    /// with the sequence number it is filed under.
    ///
    /// # Errors
    /// Store errors; a sequence entry whose record is missing or malformed.
    pub fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<FileRecord>> {
        let mut ids = Vec::new();
        let mut failure = None;
        let from = keys::seq(after.saturating_add(1));
        self.backend.scan(Cf::Seq, &from, None, &mut |k, v| {
            match (keys::be_u64(k), keys::file_id(v)) {
                (Ok(seq), Ok(id)) => ids.push((seq, id)),
                (Err(e), _) | (_, Err(e)) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            if ids.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut out = Vec::with_capacity(ids.len());
        for (seq, id) in ids {
            // A record rewritten since the scan moved to a later sequence: skip it here,
            // the caller meets it there.
            match self.record(id)? {
                Some(r) if r.seq == seq => out.push(r),
                Some(_) => {}
                None => {
                    return Err(Error::Malformed(format!(
                        "sequence {seq} names file {id}, which has no record"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The highest sequence number of peer store `index_id` applied here (0: none).
    ///
    /// # Errors
    /// Store errors.
    pub fn peer_applied(&self, index_id: u64) -> Result<u64> {
        Ok(meta_u64(self.backend.as_ref(), &keys::peer_applied(index_id))?.unwrap_or(0))
    }

    /// Adds the applied-sequence watermark of peer store `index_id` to `batch`.
    pub fn set_peer_applied(batch: &mut Batch, index_id: u64, seq: u64) {
        batch.put(
            Cf::Meta,
            keys::peer_applied(index_id),
            seq.to_le_bytes().to_vec(),
        );
    }

    /// Adds the dirent `parent/name → child` to `batch`.
    pub fn put_dirent(batch: &mut Batch, parent: FileId, name: &[u8], child: FileId) {
        batch.put(
            Cf::Dirents,
            keys::dirent(parent, name),
            child.to_be_bytes().to_vec(),
        );
    }

    /// Adds the removal of dirent `parent/name` to `batch`.
    pub fn delete_dirent(batch: &mut Batch, parent: FileId, name: &[u8]) {
        batch.delete(Cf::Dirents, keys::dirent(parent, name));
    }

    /// Adds the removal of `file`'s journal entries for chunk indices in `[from, to)`.
    pub fn delete_journal(batch: &mut Batch, file: FileId, from: u64, to: u64) {
        batch.delete_range(
            Cf::Journal,
            keys::journal(file, from, 0),
            keys::journal(file, to, 0),
        );
    }

    /// A fresh random file id.
    ///
    /// # Errors
    /// The system random source failed.
    pub fn new_file_id() -> Result<FileId> {
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Io("random source failed".into()))?;
        let id = u128::from_be_bytes(b);
        // Ids below 2^16 are reserved (the root is 1).
        Ok(FileId(id | (1 << 127)))
    }
}

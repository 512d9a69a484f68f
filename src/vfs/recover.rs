//! Recovery at open: folds journal entries left by a crash into chunks, and frees the
//! content of files that were deleted while open.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use crate::id::FileId;
use crate::store::{Batch, Cf, Durability, keys, tables::Tables};
use crate::tree::FileRecord;

use super::staging::FileState;
use super::{CommitMode, Error, Result, Vfs};

/// One journal entry: chunk index, offset in the chunk, bytes.
type Entry = (u64, usize, Vec<u8>);

impl Vfs {
    pub(crate) fn recover(&self) -> Result<()> {
        let mut journal: BTreeMap<FileId, Vec<Entry>> = BTreeMap::new();
        let mut bad = None;
        self.tables
            .backend()
            .scan(Cf::Journal, &[], None, &mut |k, v| match (
                keys::parse_journal(k),
                v.split_at_checked(4),
            ) {
                (Ok((file, idx, _)), Some((off, bytes))) => {
                    let off = u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as usize;
                    journal
                        .entry(file)
                        .or_default()
                        .push((idx, off, bytes.to_vec()));
                    ControlFlow::Continue(())
                }
                (Err(e), _) => {
                    bad = Some(Error::Store(e));
                    ControlFlow::Break(())
                }
                (Ok(_), None) => {
                    bad = Some(Error::Invalid(
                        "journal entry shorter than its header".into(),
                    ));
                    ControlFlow::Break(())
                }
            })?;
        if let Some(e) = bad {
            return Err(e);
        }
        for (file, entries) in journal {
            self.fold_journal(file, entries)?;
        }
        self.free_deleted_content()
    }

    fn fold_journal(&self, file: FileId, entries: Vec<Entry>) -> Result<()> {
        let record = self.tables.record(file)?;
        let Some(record) = record.filter(|r| !r.tombstone) else {
            return self.drop_journal(file);
        };
        let mut st = FileState::from_record(&record);
        for (idx, off, bytes) in entries {
            *st.journaled.entry(idx).or_default() += 1;
            if idx >= st.base.len() as u64 {
                continue;
            }
            let buf = st.load(idx, &self.chunks)?;
            let end = (off + bytes.len()).min(buf.data.len());
            if off < end {
                buf.data[off..end].copy_from_slice(&bytes[..end - off]);
            }
            buf.journal_ok = false;
            buf.dirty.add(0, buf.data.len());
        }
        self.commit_state(&mut st, CommitMode::Sync)?;
        if !st.journaled.is_empty() {
            // Entries for chunks past the end: drop them.
            self.drop_journal(file)?;
        }
        Ok(())
    }

    fn drop_journal(&self, file: FileId) -> Result<()> {
        let mut batch = Batch::new();
        Tables::delete_journal(&mut batch, file, 0, u64::MAX);
        Ok(self.tables.backend().write(batch, Durability::Synced)?)
    }

    fn free_deleted_content(&self) -> Result<()> {
        let mut doomed = Vec::new();
        let mut bad = None;
        self.tables
            .backend()
            .scan(Cf::Files, &[], None, &mut |_, v| {
                match FileRecord::decode(v) {
                    Ok(r) if r.tombstone && !r.manifest.is_empty() => doomed.push(r.id),
                    Ok(_) => {}
                    Err(e) => {
                        bad = Some(Error::Invalid(e.0));
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })?;
        if let Some(e) = bad {
            return Err(e);
        }
        for id in doomed {
            self.release_if_deleted(id)?;
        }
        Ok(())
    }
}

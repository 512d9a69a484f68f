//! In-memory twin of the RocksDB backend, for tests: one ordered map per column family
//! behind a lock. Same contract, no durability.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{Backend, Batch, Cf, Durability, Op, Result, Skim, Visit};

/// One column family: ordered keys to values.
type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`Backend`].
#[derive(Default)]
pub struct MemBackend {
    /// One map per column family; a write batch takes the write lock once, so batches are
    /// atomic to readers.
    cfs: RwLock<BTreeMap<Cf, Table>>,
}

impl MemBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for MemBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()> {
        // Copy the range out first so that `visit` may write to the store.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = {
            let cfs = self.cfs.read();
            let Some(map) = cfs.get(&cf) else {
                return Ok(());
            };
            let upper = to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec()));
            map.range((Bound::Included(from.to_vec()), upper))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (k, v) in &entries {
            if visit(k, v).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn skim(&self, cf: Cf, from: &[u8], visit: &mut dyn FnMut(&[u8]) -> Skim) -> Result<()> {
        // The keys are copied out first so that `visit` may write to the store.
        let keys: Vec<Vec<u8>> = {
            let cfs = self.cfs.read();
            let Some(map) = cfs.get(&cf) else {
                return Ok(());
            };
            map.range(from.to_vec()..).map(|(k, _)| k.clone()).collect()
        };
        let mut i = 0;
        while let Some(k) = keys.get(i) {
            match visit(k) {
                Skim::Next => i += 1,
                Skim::SkipTo(to) => i += keys[i..].partition_point(|k| *k < to),
                Skim::Stop => break,
            }
        }
        Ok(())
    }

    fn write(&self, batch: Batch, _durability: Durability) -> Result<()> {
        let mut cfs = self.cfs.write();
        for op in batch.ops() {
            match op {
                Op::Put(cf, k, v) => {
                    cfs.entry(*cf).or_default().insert(k.clone(), v.to_vec());
                }
                Op::Delete(cf, k) => {
                    if let Some(m) = cfs.get_mut(cf) {
                        m.remove(k);
                    }
                }
                Op::DeleteRange(cf, from, to) => {
                    if let Some(m) = cfs.get_mut(cf) {
                        let doomed: Vec<Vec<u8>> = m
                            .range(from.clone()..to.clone())
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            m.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn compact(&self, _cf: Cf) -> Result<()> {
        Ok(())
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        let cfs = self.cfs.read();
        Ok(cfs.get(&cf).map_or(0, |m| {
            m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
        }))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn persist(&self, _cf: Cf) -> Result<()> {
        Ok(())
    }
}

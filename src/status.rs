//! Store figures for `keibi status`: how much is stored, before and after dedup and
//! compression. Peer and replication figures join these with replication.

use std::ops::ControlFlow;

use serde::Serialize;

use crate::store::{self, Backend, Cf, keys};
use crate::tree::{FileRecord, Kind};

/// Figures of one store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreFigures {
    /// Live regular files.
    pub files: u64,
    /// Live directories (the root included).
    pub dirs: u64,
    /// Live symlinks and special nodes.
    pub other_nodes: u64,
    /// Deleted entries kept as tombstones.
    pub tombstones: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Sum of live file sizes: the bytes before dedup and compression.
    pub logical_bytes: u64,
    /// Plaintext bytes of the stored chunks: after dedup, before compression.
    pub chunk_bytes: u64,
    /// Bytes of the stored frames: after dedup and compression.
    pub stored_bytes: u64,
    /// Bytes of the database files on disk.
    pub disk_bytes: u64,
    /// The disk holding the store, when it has one.
    pub disk: Option<DiskFigures>,
}

/// The disk holding the store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskFigures {
    /// Its size.
    pub total_bytes: u64,
    /// Free for this process.
    pub available_bytes: u64,
    /// Kept free by the store: new chunks are refused below it.
    pub kept_free_bytes: u64,
}

impl StoreFigures {
    /// Scans records and the chunk index.
    ///
    /// # Errors
    /// Store errors.
    pub fn compute(backend: &dyn Backend) -> Result<Self, store::Error> {
        let mut f = Self::default();
        let mut bad = None;
        backend.scan(Cf::Files, &[], None, &mut |_, v| {
            match FileRecord::decode(v) {
                Ok(r) if r.tombstone => f.tombstones += 1,
                Ok(r) => match r.kind {
                    Kind::File => {
                        f.files += 1;
                        f.logical_bytes += r.size;
                    }
                    Kind::Dir => f.dirs += 1,
                    Kind::Symlink
                    | Kind::Fifo
                    | Kind::Socket
                    | Kind::CharDevice
                    | Kind::BlockDevice => f.other_nodes += 1,
                },
                Err(e) => {
                    bad = Some(store::Error::Malformed(e.0));
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        backend.scan(Cf::ChunkIndex, &[], None, &mut |_, v| {
            if let Ok((plain, stored)) = keys::parse_chunk_info(v) {
                f.chunks += 1;
                f.chunk_bytes += u64::from(plain);
                f.stored_bytes += u64::from(stored);
            }
            ControlFlow::Continue(())
        })?;
        for cf in Cf::ALL {
            f.disk_bytes += backend.disk_bytes(cf)?;
        }
        f.disk = backend.disk_space()?.map(|d| DiskFigures {
            total_bytes: d.total,
            available_bytes: d.available,
            kept_free_bytes: crate::chunk::free_space_floor(d.total),
        });
        bad.map_or(Ok(f), Err)
    }
}

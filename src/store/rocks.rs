//! The RocksDB backend: the only module that knows RocksDB.
//!
//! Tuning for keibi's load: chunks are 512 KiB values, so the chunk column family keeps them
//! in blob files (integrated BlobDB) where compaction does not rewrite them; all other column
//! families hold small keys and values. The column families whose keys are random (chunk
//! hashes, file ids) keep hashed memtables (see `hashed`), so every iterator asks for total
//! order. Writes are batched and only synced when the caller asks (`fsync`), never once per
//! chunk. RocksDB's background threads are owned by the `DB` handle and stop when it is
//! dropped.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DB,
    DBCompressionType, ErrorKind, Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::{Backend, Batch, Cf, DiskSpace, Durability, Error, Op, Result, Skim, Visit};

/// Values of at least this many bytes go to blob files.
const BLOB_MIN_BYTES: u64 = 4096;
/// Target size of one blob file.
const BLOB_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Share of garbage in the chunk blob files (percent of their bytes) from which `compact`
/// relocates live chunks to free it: below it the garbage stays, bounding the space taken
/// to a third more than the live chunks need, and a gc that deletes little copies nothing.
const BLOB_GARBAGE_RELOCATE_PERCENT: u64 = 25;
/// Memtable size of the chunk column family.
const CHUNK_MEMTABLE_BYTES: usize = 32 * 1024 * 1024;
/// Memtables of the chunk column family (one filling while others flush).
const CHUNK_MEMTABLES: i32 = 3;
/// Buckets of a hashed memtable ([`hashed`]), one per possible two leading bytes: 512 KiB
/// of bucket heads per memtable.
const HASHED_MEMTABLE_BUCKETS: usize = 65_536;
/// Height of a bucket's skip list: a bucket holds a handful of keys (a 32 MiB memtable of
/// small chunks about 8,000 in all).
const HASHED_BUCKET_HEIGHT: i32 = 4;
/// Background writers hand dirty pages to the kernel every this many bytes.
const BYTES_PER_SYNC: u64 = 1024 * 1024;
/// Memtable size of the metadata column families.
const META_MEMTABLE_BYTES: usize = 8 * 1024 * 1024;
/// All memtables of all column families together: past this RocksDB flushes the largest.
/// Without it eight column families could hold 400 MiB of memtables (a random-write
/// benchmark on the mount peaked at 527 MiB of RSS).
const MEMTABLES_TOTAL_BYTES: usize = 96 * 1024 * 1024;
/// Block cache shared by metadata column families.
const BLOCK_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Background flush and compaction threads.
const BACKGROUND_JOBS: i32 = 4;
/// Bytes set aside beside the database (the reserve file, `store.reserve`) and given back
/// when opening fails for lack of space: RocksDB writes the log it recovers into a table
/// before it opens, so a store whose disk filled up could not otherwise be opened again
/// (to delete files and run gc). Set aside again at the next open that has room.
const RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// A keibi store in a RocksDB database directory.
pub struct RocksBackend {
    /// The database; every column family of [`Cf::ALL`] exists.
    db: DB,
    /// The directory, for error messages.
    path: PathBuf,
}

/// Whether `cf`'s keys are spread at random over the key space (chunk hashes, random file
/// ids), so that its memtable is hashed by their leading bytes.
fn hashed(cf: Cf) -> bool {
    matches!(cf, Cf::Chunks | Cf::ChunkIndex | Cf::Files)
}

/// The bucket of a key in a hashed memtable: its first two bytes, or all of a shorter key
/// (every key is in the domain, so no key can reach past its end).
fn leading_bytes(key: &[u8]) -> &[u8] {
    &key[..key.len().min(2)]
}

fn any_key(_key: &[u8]) -> bool {
    true
}

fn cf_options(cf: Cf, cache: &rocksdb::Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    if hashed(cf) {
        // Keys at random places (hashes, random file ids) go into a memtable of small skip
        // lists, one per leading two bytes, instead of one long skip list whose every insert
        // walks a dozen levels of nodes spread over its memory: that walk was a quarter of
        // the mount's user time per small file written. Scans ask for total order
        // (`ReadOptions::set_total_order_seek`), so the buckets change no result.
        opts.set_prefix_extractor(rocksdb::SliceTransform::create(
            "keibi.lead2",
            leading_bytes,
            Some(any_key),
        ));
        opts.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
            bucket_count: HASHED_MEMTABLE_BUCKETS,
            height: HASHED_BUCKET_HEIGHT,
            branching_factor: 4,
        });
    }
    match cf {
        Cf::Chunks => {
            // Payloads are already zstd-compressed (or incompressible): no second pass.
            opts.set_compression_type(DBCompressionType::None);
            opts.set_write_buffer_size(CHUNK_MEMTABLE_BYTES);
            opts.set_max_write_buffer_number(CHUNK_MEMTABLES);
            opts.set_enable_blob_files(true);
            opts.set_min_blob_size(BLOB_MIN_BYTES);
            opts.set_blob_file_size(BLOB_FILE_BYTES);
            opts.set_blob_compression_type(DBCompressionType::None);
            // Blob garbage collection rewrites live chunks; it runs only when `keibi gc`
            // compacts after deleting (see `compact`), never behind a writer.
            opts.set_enable_blob_gc(false);
        }
        Cf::Meta
        | Cf::ChunkIndex
        | Cf::Files
        | Cf::Dirents
        | Cf::Seq
        | Cf::Inodes
        | Cf::Journal => {
            opts.set_compression_type(DBCompressionType::Lz4);
            opts.set_write_buffer_size(META_MEMTABLE_BYTES);
        }
    }
    opts
}

/// Whether reads check RocksDB's own block and blob checksums. Chunk frames are checked
/// against their BLAKE3 hash on every read, a stronger check than RocksDB's CRC32c, which
/// would be a second pass over every byte read.
fn verify_checksums(cf: Cf) -> bool {
    cf != Cf::Chunks
}

fn map_err(path: &Path, e: &rocksdb::Error) -> Error {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::Corruption => Error::Damaged(text),
        ErrorKind::IOError if text.contains("lock") || text.contains("LOCK") => Error::Locked {
            path: path.to_path_buf(),
        },
        ErrorKind::IOError if text.contains("No space left") => Error::NoSpace(text),
        ErrorKind::NotFound
        | ErrorKind::NotSupported
        | ErrorKind::InvalidArgument
        | ErrorKind::IOError
        | ErrorKind::MergeInProgress
        | ErrorKind::Incomplete
        | ErrorKind::ShutdownInProgress
        | ErrorKind::TimedOut
        | ErrorKind::Aborted
        | ErrorKind::Busy
        | ErrorKind::Expired
        | ErrorKind::TryAgain
        | ErrorKind::CompactionTooLarge
        | ErrorKind::ColumnFamilyDropped
        | ErrorKind::Unknown => Error::Io(text),
    }
}

/// The reserve file of the database at `path` ([`RESERVE_BYTES`]).
fn reserve_path(path: &Path) -> PathBuf {
    path.with_extension("reserve")
}

/// Writes the reserve file unless it is there; on a disk without room for it, logs that
/// and goes on without.
fn set_reserve_aside(path: &Path) {
    use std::io::Write;
    let reserve = reserve_path(path);
    if std::fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return;
    }
    let written = (|| {
        let mut f = std::fs::File::create(&reserve)?;
        let block = vec![0u8; 1024 * 1024];
        for _ in 0..RESERVE_BYTES / block.len() as u64 {
            f.write_all(&block)?;
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&reserve);
        tracing::warn!(
            "no room to set {} MiB aside beside {}: {e}",
            RESERVE_BYTES >> 20,
            path.display()
        );
    }
}

impl RocksBackend {
    /// Opens (creating if `create`) the database at `path` with every keibi column family.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has it open; damaged files; I/O errors;
    /// [`Error::NoSpace`] when the disk is full even with the reserve given back.
    pub fn open(path: &Path, create: bool) -> Result<Self> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(create);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.increase_parallelism(BACKGROUND_JOBS);
        db_opts.set_max_background_jobs(BACKGROUND_JOBS);
        db_opts.set_db_write_buffer_size(MEMTABLES_TOTAL_BYTES);
        db_opts.set_enable_pipelined_write(true);
        // Hashed memtables take one writer at a time: the writer that leads a write group
        // inserts for the group.
        db_opts.set_allow_concurrent_memtable_write(false);
        // Flushes write blob files of chunk frames through the page cache, so chunks written
        // a moment ago are read from memory: bypassing it saved a copy per stored byte but
        // sent every read of a freshly resealed chunk to the disk (fio's random job on the
        // mount: 130 MiB/s of disk reads, and a quarter fewer IOPS).
        db_opts.set_use_direct_io_for_flush_and_compaction(false);
        // Reads of chunk pieces lie next to each other in a blob file: let the kernel read
        // ahead, or a cold whole chunk takes one disk round trip per piece.
        db_opts.set_advise_random_on_open(false);
        db_opts.set_bytes_per_sync(BYTES_PER_SYNC);
        let cache =
            rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).map_err(|e| map_err(path, &e))?;
        let open = || {
            // RocksDB's own column family, unused. Left at its default 64 MiB memtable, that
            // would be the free space RocksDB waits for before it resumes writes after a full
            // disk (the largest memtable of any column family).
            let mut default = Options::default();
            default.set_write_buffer_size(META_MEMTABLE_BYTES);
            let descriptors = Cf::ALL
                .iter()
                .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, &cache)))
                .chain([ColumnFamilyDescriptor::new(
                    rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
                    default,
                )]);
            DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| map_err(path, &e))
        };
        let db = match open() {
            Err(Error::NoSpace(why)) if std::fs::remove_file(reserve_path(path)).is_ok() => {
                tracing::warn!(
                    "the disk holding {} is full ({why}): opening it with the space set aside",
                    path.display()
                );
                open()?
            }
            other => other?,
        };
        set_reserve_aside(path);
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Compacts every level of `h`, the bottom one too, so that deleted entries and the
    /// blobs only they referenced are dropped.
    fn compact_whole(&self, h: &rocksdb::ColumnFamily) {
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(h, None::<&[u8]>, None::<&[u8]>, &opts);
    }

    /// Whether the blob files of `h` hold at least [`BLOB_GARBAGE_RELOCATE_PERCENT`] of
    /// garbage (blobs no entry references).
    fn blob_garbage_worth_relocating(&self, h: &rocksdb::ColumnFamily) -> Result<bool> {
        let int = |name: &str| -> Result<u64> {
            Ok(self
                .db
                .property_int_value_cf(h, name)
                .map_err(|e| self.err(&e))?
                .unwrap_or(0))
        };
        let files = int("rocksdb.live-blob-file-size")?;
        let garbage = int("rocksdb.live-blob-file-garbage-size")?;
        Ok(garbage > 0
            && u128::from(garbage) * 100
                >= u128::from(files) * u128::from(BLOB_GARBAGE_RELOCATE_PERCENT))
    }

    fn handle(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| Error::Io(format!("column family {} missing", cf.name())))
    }

    fn err(&self, e: &rocksdb::Error) -> Error {
        map_err(&self.path, e)
    }
}

impl Backend for RocksBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(verify_checksums(cf));
        self.db
            .get_pinned_cf_opt(self.handle(cf)?, key, &opts)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.err(&e))
    }

    fn read_with(&self, cf: Cf, key: &[u8], read: &mut dyn FnMut(Option<&[u8]>)) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(verify_checksums(cf));
        let value = self
            .db
            .get_pinned_cf_opt(self.handle(cf)?, key, &opts)
            .map_err(|e| self.err(&e))?;
        read(value.as_deref());
        Ok(())
    }

    fn read_many(
        &self,
        cf: Cf,
        keys: &[&[u8]],
        read: &mut dyn FnMut(usize, Option<&[u8]>),
    ) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(verify_checksums(cf));
        let values = self
            .db
            .batched_multi_get_cf_opt(self.handle(cf)?, keys, false, &opts);
        for (i, value) in values.into_iter().enumerate() {
            let value = value.map_err(|e| self.err(&e))?;
            read(i, value.as_deref());
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, visit: Visit<'_>) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(verify_checksums(cf));
        // In key order across the buckets of a hashed memtable, and past the prefix of the
        // first key in the tables.
        opts.set_total_order_seek(true);
        if let Some(to) = to {
            opts.set_iterate_upper_bound(to.to_vec());
        }
        if cf == Cf::Chunks {
            // A full scan of chunks would evict the metadata blocks everyone else needs.
            opts.fill_cache(false);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.handle(cf)?, opts);
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if let ControlFlow::Break(()) = visit(k, v) {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(|e| self.err(&e))
    }

    fn skim(&self, cf: Cf, from: &[u8], visit: &mut dyn FnMut(&[u8]) -> Skim) -> Result<()> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(verify_checksums(cf));
        opts.fill_cache(cf != Cf::Chunks);
        opts.set_total_order_seek(true);
        let mut it = self.db.raw_iterator_cf_opt(self.handle(cf)?, opts);
        it.seek(from);
        while let Some(k) = it.key() {
            match visit(k) {
                Skim::Next => it.next(),
                Skim::SkipTo(to) => it.seek(&to),
                Skim::Stop => return Ok(()),
            }
        }
        it.status().map_err(|e| self.err(&e))
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.handle(*cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.handle(*cf)?, k),
                Op::DeleteRange(cf, from, to) => wb.delete_range_cf(self.handle(*cf)?, from, to),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Synced);
        opts.disable_wal(durability == Durability::Unlogged);
        self.db.write_opt(wb, &opts).map_err(|e| self.err(&e))
    }

    fn compact(&self, cf: Cf) -> Result<()> {
        let h = self.handle(cf)?;
        self.db.flush_cf(h).map_err(|e| self.err(&e))?;
        // First without blob garbage collection: deleted entries and their references go,
        // and a blob file none of whose blobs is referenced any more is deleted whole. The
        // chunks of one file are written together, so most of a deleted file's bytes are
        // freed here without copying anything.
        self.compact_whole(h);
        if cf != Cf::Chunks || !self.blob_garbage_worth_relocating(h)? {
            return Ok(());
        }
        // Then, when enough garbage is left in blob files that also hold live chunks,
        // relocate the live chunks out of every blob file: a rewrite of the whole column
        // family, paid only once a quarter of it is garbage.
        self.db
            .set_options_cf(
                h,
                &[
                    ("enable_blob_garbage_collection", "true"),
                    ("blob_garbage_collection_age_cutoff", "1.0"),
                ],
            )
            .map_err(|e| self.err(&e))?;
        self.compact_whole(h);
        self.db
            .set_options_cf(h, &[("enable_blob_garbage_collection", "false")])
            .map_err(|e| self.err(&e))
    }

    fn disk_bytes(&self, cf: Cf) -> Result<u64> {
        let h = self.handle(cf)?;
        let sst = self
            .db
            .property_int_value_cf(h, "rocksdb.total-sst-files-size")
            .map_err(|e| self.err(&e))?
            .unwrap_or(0);
        let blob = self
            .db
            .property_int_value_cf(h, "rocksdb.total-blob-file-size")
            .map_err(|e| self.err(&e))?
            .unwrap_or(0);
        Ok(sst + blob)
    }

    fn disk_space(&self) -> Result<Option<DiskSpace>> {
        super::disk_space(&self.path).map(Some).map_err(|e| {
            Error::Io(format!(
                "examining the disk of {}: {e}",
                self.path.display()
            ))
        })
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.err(&e))
    }

    fn persist(&self, cf: Cf) -> Result<()> {
        self.db.flush_cf(self.handle(cf)?).map_err(|e| self.err(&e))
    }

    fn flush(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.db
                .flush_cf(self.handle(cf)?)
                .map_err(|e| self.err(&e))?;
        }
        self.db.flush_wal(true).map_err(|e| self.err(&e))
    }
}

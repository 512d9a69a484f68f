//! Every bound in keibi, in one place.
//!
//! Each queue, channel, batch, cache and concurrent operation has its maximum here, with the
//! unit last in the name. Const assertions below keep the bounds consistent with each other.

/// Size of every chunk but a file's last one, in bytes.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// [`CHUNK_BYTES`] as a `u64`, for offset arithmetic.
pub const CHUNK_BYTES_U64: u64 = CHUNK_BYTES as u64;

/// A chunk is stored as pieces of this size, each compressed, encrypted and checkable on its
/// own: a small read of a chunk that is not cached decodes one piece, not the whole chunk.
pub const PIECE_BYTES: usize = 64 * 1024;
/// Pieces in a whole chunk.
pub const PIECES_PER_CHUNK_MAX: usize = CHUNK_BYTES / PIECE_BYTES;

/// Largest file keibi stores: the manifest of such a file stays under 32 MiB of hashes.
pub const FILE_BYTES_MAX: u64 = 1 << 40;
/// Longest manifest (chunk hashes) of one file.
pub const MANIFEST_CHUNKS_MAX: u64 = FILE_BYTES_MAX / CHUNK_BYTES_U64;
/// Longest name of one directory entry, in bytes (as Linux's `NAME_MAX`).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target, in bytes (as Linux's `PATH_MAX`).
pub const SYMLINK_TARGET_BYTES_MAX: usize = 4096;
/// Deepest directory nesting that verify and path resolution follow before calling it a cycle.
pub const TREE_DEPTH_MAX: usize = 4096;
/// Largest encoded file record, in bytes (a record of a [`FILE_BYTES_MAX`] file plus slack).
pub const RECORD_BYTES_MAX: usize = 72 * 1024 * 1024;
/// Longest extended attribute name, in bytes (as Linux's `XATTR_NAME_MAX`).
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest extended attribute value, in bytes (as Linux's `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_BYTES_MAX: usize = 64 * 1024;
/// Extended attributes of one file together: each name with its NUL plus its value. A
/// listing of them then fits Linux's `XATTR_LIST_MAX` (64 KiB); ext4 allows one block.
pub const XATTR_BYTES_PER_FILE_MAX: usize = 64 * 1024;

/// Zstd level used for chunk payloads: level 1 compresses at hundreds of MB/s per core.
pub const ZSTD_LEVEL: i32 = 1;
/// A compressed payload is kept only when it saves at least 1/8 of the plaintext.
pub const ZSTD_MIN_SAVING_DIVISOR: usize = 8;

/// Bytes of a chunk compressed first to decide whether compressing the rest pays.
pub const ZSTD_SAMPLE_BYTES: usize = 16 * 1024;

/// Bytes one chunk's overlay of small writes may hold before it becomes a full buffer: each
/// such buffer is resealed whole, so this is how many patches one reseal carries. fio's
/// mixed random job over 256 MiB ran at 4,200-4,400 IOPS each way with 64 KiB, 6,000-6,200
/// with 128 KiB and 7,000-7,150 with 256 KiB.
pub const OVERLAY_BYTES_MAX: usize = 256 * 1024;
/// Overlay bytes one open file may hold before its oldest overlays become buffers. Each
/// overlay turned into a buffer costs a whole chunk resealed, so this is what random writes
/// into a large file pay per write: fio's 4 KiB random writes over 256 MiB ran at 1,000 IOPS
/// with 8 MiB, 2,500 with 32 MiB, 2,900 with 64 MiB; its mixed job with fsyncs over 1 GiB at
/// 2,000-2,100 each way with 32 MiB and 4,100-4,300 with 64 MiB. All open files together
/// stay within [`STAGED_BYTES_TOTAL_MAX`].
pub const OVERLAY_BYTES_PER_FILE_MAX: usize = 64 * 1024 * 1024;

/// Dirty chunk buffers one open file may hold in memory before the oldest are sealed.
pub const STAGED_BUFFERS_PER_FILE_MAX: usize = 16;
/// Seal jobs queued for the seal pool; a writer blocks when the queue is full.
pub const SEAL_QUEUE_JOBS_MAX: usize = 8;
/// Chunks up to this size are sealed by the thread that hands them over: for a small file,
/// hashing and storing it takes less time than waking a seal worker and waiting for it.
pub const SEAL_INLINE_BYTES_MAX: usize = 64 * 1024;
/// Seal workers per core (two per core measured slower: they contend with RocksDB's
/// flush thread).
pub const SEAL_WORKERS_PER_CORE: usize = 1;
/// Chunks written without the write-ahead log and not yet persisted; past this the writer
/// persists them (flushes the chunk tables) itself. 4096 chunks is 2 GiB of file data.
pub const UNLOGGED_CHUNKS_MAX: usize = 4096;
/// Prefetch jobs queued for the seal pool; prefetches past this are dropped, not queued.
pub const PREFETCH_QUEUE_JOBS_MAX: usize = 4;
/// Chunks read ahead of a sequential reader.
pub const READAHEAD_CHUNKS: u64 = 2;
/// Staged bytes of all open files together (overlays, buffers, chunks being sealed) past
/// which the files holding the most are sealed, largest first, until half remains. The
/// per-file bounds above keep one file in check; this keeps many at once in check. fio with
/// 16 and 32 files written at random at once peaked at 422 and 463 MiB of RSS with 128 MiB
/// here, 477 and 591 with 256 MiB, 510 and 672 without; one file (48 MiB at most) is not
/// slowed.
pub const STAGED_BYTES_TOTAL_MAX: u64 = 128 * 1024 * 1024;
/// Writes between two checks of [`STAGED_BYTES_TOTAL_MAX`]. Each check visits every open
/// file; between two, each write can add at most a chunk (a write into a chunk just sealed
/// loads it whole), so the total can pass the bound by this many chunks.
pub const STAGED_CHECK_WRITES: u64 = 8;
/// Decoded chunks kept in the read cache (each up to [`CHUNK_BYTES`]).
pub const CHUNK_CACHE_ENTRIES_MAX: usize = 64;

/// Dirty bytes one fsync may write to the journal instead of sealing whole chunks.
pub const JOURNAL_FSYNC_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Dirty bytes in one chunk above which fsync seals the chunk instead of journaling it: at
/// least an overlay's, so an overlay's changes can always be journaled.
pub const JOURNAL_CHUNK_DIRTY_BYTES_MAX: usize = CHUNK_BYTES / 2;
/// Dirty ranges tracked per buffer; past this the buffer is sealed at the next fsync.
pub const JOURNAL_RANGES_PER_BUFFER_MAX: usize = 64;
/// Journal entries one file may have on disk before the next fsync folds them into chunks
/// (a fold reseals every chunk with entries): twice the 4 KiB writes
/// [`OVERLAY_BYTES_PER_FILE_MAX`] holds, so a file's overlays, not its journal, decide when
/// random writes are folded (at only as many, the 1 GiB job folded and ran at 3,300 IOPS
/// instead of 4,100). Entries of a chunk sealed since no longer count.
pub const JOURNAL_ENTRIES_PER_FILE_MAX: u64 = 32768;

/// Chunks deleted in one gc batch.
pub const GC_DELETE_BATCH_CHUNKS: usize = 256;
/// Chunks written during one gc run that it tracks as protected; past this the run aborts.
pub const GC_PROTECTED_CHUNKS_MAX: usize = 1 << 20;

/// Chunks one verify worker batch holds (each up to a frame of [`CHUNK_BYTES`]).
pub const VERIFY_BATCH_CHUNKS: usize = 16;
/// Batches queued between the verify reader and its workers.
pub const VERIFY_QUEUE_BATCHES_MAX: usize = 4;
/// Findings verify keeps in full; past this it only counts them.
pub const VERIFY_FINDINGS_MAX: usize = 10_000;

/// Worker threads serving FUSE requests: the requests in progress at once (the kernel
/// queues the rest).
pub const FUSE_THREADS: usize = 8;
/// Largest write request the kernel may send to the mount, in bytes.
pub const FUSE_MAX_WRITE_BYTES: u32 = 1024 * 1024;

/// Chunks one `copy_file_range` call references at most (1 GiB; the caller asks again for
/// the rest), so that a call's answer fits FUSE's 32-bit count.
pub const COPY_RANGE_CHUNKS_MAX: u64 = 2048;
/// Bytes one `copy_file_range` call copies at most where chunks cannot be referenced
/// (offsets of a different phase within a chunk, or writes not yet sealed).
pub const COPY_RANGE_BYTES_MAX: u64 = 1024 * 1024;
/// Directory entries returned by one readdir call of the vfs core.
pub const READDIR_ENTRIES_MAX: usize = 1024;
/// Listing pages kept over all directories to find where a `readdir` offset is (there are
/// no directory handles; see `vfs::listing`): at most this many times
/// [`READDIR_ENTRIES_MAX`] entries, some 10 MiB with names of 255 bytes.
pub const LISTING_PAGES_KEPT: usize = 32;

const _: () = assert!(CHUNK_BYTES.is_power_of_two());
const _: () = assert!(CHUNK_BYTES % PIECE_BYTES == 0 && PIECES_PER_CHUNK_MAX <= 255);
const _: () = assert!(CHUNK_BYTES <= u32::MAX as usize, "frame lengths are u32");
const _: () = assert!(MANIFEST_CHUNKS_MAX * 33 < RECORD_BYTES_MAX as u64);
const _: () = assert!(JOURNAL_CHUNK_DIRTY_BYTES_MAX <= JOURNAL_FSYNC_BYTES_MAX);
const _: () = assert!(STAGED_BUFFERS_PER_FILE_MAX >= 2);
const _: () = assert!(
    SEAL_INLINE_BYTES_MAX < CHUNK_BYTES,
    "full chunks go to the pool"
);
const _: () = assert!(OVERLAY_BYTES_MAX <= JOURNAL_CHUNK_DIRTY_BYTES_MAX);
const _: () = assert!(OVERLAY_BYTES_MAX < OVERLAY_BYTES_PER_FILE_MAX);

/// Longest request line accepted on the control socket, in bytes.
pub const CONTROL_REQUEST_BYTES_MAX: usize = 4096;
/// Time a control client has to send its request, in milliseconds.
pub const CONTROL_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Pause after a failed accept on the control socket, in milliseconds.
pub const CONTROL_ACCEPT_RETRY_MS: u64 = 100;
/// How often `keibi status --watch` asks the mount for its progress.
pub const STATUS_WATCH_INTERVAL_MS: u64 = 1_000;

/// Largest gRPC message either side encodes or accepts, in bytes.
pub const WIRE_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Records in one `BatchNotify`.
pub const WIRE_BATCH_RECORDS_MAX: usize = 512;
/// Encoded bytes of records the sender puts in one `BatchNotify` (leaves room under
/// [`WIRE_MESSAGE_BYTES_MAX`] for the largest single record part).
pub const WIRE_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Manifest hashes in one record part: a longer manifest is sent in parts.
pub const WIRE_MANIFEST_PART_CHUNKS: usize = 16 * 1024;
/// Chunk ids in one `StreamFile` request.
pub const WIRE_CHUNKS_PER_REQUEST_MAX: usize = 64;
/// Chunk ids in one `Announce`.
pub const WIRE_ANNOUNCE_CHUNKS_MAX: usize = 256;
/// Chunks a `StreamFile` answer reads ahead of what the connection has taken.
pub const STREAM_CHUNKS_AHEAD_MAX: usize = 2;
/// Authenticated connections handed to the gRPC server and not yet taken by it.
pub const ACCEPTED_CONNECTIONS_QUEUED_MAX: usize = 16;
/// Pause after a failed accept on the peer listener, in milliseconds.
pub const PEER_ACCEPT_RETRY_MS: u64 = 100;

/// A content change is sent once its file has been stable this long (reset by each
/// change), in milliseconds.
pub const NOTIFY_DEBOUNCE_MS: u64 = 200;
/// A file that never stops changing is sent at least this often, in milliseconds.
pub const NOTIFY_DELAY_MAX_MS: u64 = 2_000;
/// How often replication looks for open files whose changes have been quiet for the
/// debounce window, to commit them so that they are sent, in milliseconds.
pub const OPEN_FILES_COMMIT_POLL_MS: u64 = 100;
/// How often the notify worker looks for new local changes, in milliseconds.
pub const NOTIFY_POLL_MS: u64 = 20;
/// Chunks sealed ahead of a commit that are remembered for announcing to peers; a session
/// that falls further behind skips the oldest (an announcement is only a hint).
pub const ANNOUNCED_CHUNKS_KEPT_MAX: usize = 4096;
/// Records read from the sequence index at once by the notify worker.
pub const NOTIFY_SCAN_RECORDS_MAX: usize = 1024;
/// Debounced content changes held back at once; past this they are sent undebounced.
pub const NOTIFY_HELD_RECORDS_MAX: usize = 65_536;

/// Records from one sender that wait (for a parent, a name, a commit) at once; past this
/// the receiver stops acknowledging and the sender resends them after reconnecting.
pub const INBOX_WAITING_RECORDS_MAX: usize = 65_536;
/// How often waiting records are offered again, in milliseconds.
pub const INBOX_RETRY_MS: u64 = 500;

/// Concurrent `StreamFile` calls of the fetcher.
pub const FETCH_STREAMS_MAX: usize = 4;
/// Chunks `keibi verify --repair` fetches at once, each on a stream of its own: within the
/// bound of [`FETCH_STREAMS_MAX`] streams of [`FETCH_CHUNKS_PER_STREAM`] chunks in flight.
pub const REPAIR_FETCHES_MAX: usize = FETCH_STREAMS_MAX * FETCH_CHUNKS_PER_STREAM;
/// Chunks asked for in one `StreamFile` call; with [`FETCH_STREAMS_MAX`] this bounds the
/// bytes in flight to [`FETCH_BYTES_IN_FLIGHT_MAX`].
pub const FETCH_CHUNKS_PER_STREAM: usize = 8;
/// Chunk bytes requested and not yet stored, over all streams.
pub const FETCH_BYTES_IN_FLIGHT_MAX: usize =
    FETCH_STREAMS_MAX * FETCH_CHUNKS_PER_STREAM * CHUNK_BYTES;
/// Chunk ids queued for fetching; past this the fetcher rescans the tree when it runs dry.
pub const FETCH_QUEUE_CHUNKS_MAX: usize = 65_536;
/// Announced chunks (those a peer sealed for a file it is still writing) queued for
/// fetching ahead of the file's record; past this, the oldest are dropped to make room.
pub const FETCH_ANNOUNCED_CHUNKS_MAX: usize = 4096;
/// Chunks fetched ahead of their record that gc keeps unreferenced (2 GiB of chunks); past
/// this the oldest may be collected.
pub const CHUNKS_AHEAD_KEPT_MAX: usize = 4096;
/// How long gc keeps a chunk fetched ahead of its record, in seconds: a record that has not
/// come by then is not coming (its file was removed or rewritten before it was closed).
pub const CHUNK_AHEAD_KEPT_SECS: u64 = 3600;
/// How long a read of a chunk not yet fetched waits for it before failing with EIO, in
/// milliseconds.
pub const FETCH_READ_TIMEOUT_MS: u64 = 30_000;
/// Pause before asking again for a chunk that failed (bad hash, not found), in milliseconds.
pub const FETCH_RETRY_MS: u64 = 1_000;
/// Fetched chunks are persisted (flushed) once the fetcher has stored none for this long,
/// in milliseconds: one flush for a burst of fetches.
pub const FETCH_PERSIST_IDLE_MS: u64 = 500;

/// First pause before reconnecting to a peer, in milliseconds; doubled after each failure.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
/// Longest pause before reconnecting, in milliseconds.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// Time a TCP connect plus TLS handshake may take, in milliseconds.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// HTTP/2 flow-control window per stream and per connection, in bytes: with the default
/// 64 KiB, 512 KiB chunks crawl on any link with latency.
pub const HTTP2_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Interval of HTTP/2 keep-alive pings that detect a dead link, in milliseconds.
pub const KEEPALIVE_INTERVAL_MS: u64 = 5_000;
/// Configured peers.
pub const PEERS_MAX: usize = 64;

/// Largest encoded record part: a full manifest part, extended attributes (each costs at
/// most its own bytes again in protobuf framing) and the other fields.
const WIRE_RECORD_PART_BYTES_MAX: usize =
    WIRE_MANIFEST_PART_CHUNKS * 34 + 2 * XATTR_BYTES_PER_FILE_MAX + 64 * 1024;
const _: () = assert!(WIRE_RECORD_PART_BYTES_MAX < WIRE_MESSAGE_BYTES_MAX);
const _: () = assert!(WIRE_BATCH_BYTES_MAX + WIRE_RECORD_PART_BYTES_MAX < WIRE_MESSAGE_BYTES_MAX);
const _: () = assert!(CHUNK_BYTES + 1024 < WIRE_MESSAGE_BYTES_MAX);
const _: () = assert!(COPY_RANGE_CHUNKS_MAX * CHUNK_BYTES_U64 <= u32::MAX as u64);
const _: () = assert!(FETCH_CHUNKS_PER_STREAM <= WIRE_CHUNKS_PER_REQUEST_MAX);

/// New chunks are refused while the disk holding the store has less than this free (or
/// [`STORE_FREE_PERCENT_MIN`] of the disk, when that is more), so that the store itself
/// never fills the disk: removes and gc keep working, and so the space can be had back
/// through the mount. It covers what RocksDB has yet to flush (96 MiB of memtables).
pub const STORE_FREE_BYTES_MIN: u64 = 128 * 1024 * 1024;
/// The free space kept, in percent of the disk, when more than [`STORE_FREE_BYTES_MIN`].
pub const STORE_FREE_PERCENT_MIN: u64 = 1;
/// On a disk so small that [`STORE_FREE_BYTES_MIN`] would be more than this percent of it,
/// this percent is kept instead.
pub const STORE_FREE_PERCENT_MAX: u64 = 10;
/// How often the chunk store looks at the free space again while it writes: every this many
/// milliseconds or [`STORE_FREE_CHECK_BYTES`] written, whichever comes first.
pub const STORE_FREE_CHECK_MS: u64 = 100;
/// See [`STORE_FREE_CHECK_MS`].
pub const STORE_FREE_CHECK_BYTES: u64 = 16 * 1024 * 1024;

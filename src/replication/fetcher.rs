//! The fetcher: chunks that applied records reference and the store lacks, fetched by hash
//! through `StreamFile` from any connected peer.
//!
//! Sources: each request goes to the next connected peer in turn. A peer that answers that
//! it lacks a chunk is not asked for it again until every connected peer has been (then the
//! chunk counts as an error and waits [`FETCH_RETRY_MS`]), so a chunk that only a third peer
//! has is found there, and a file's chunks come from every peer that has them.
//!
//! Bounds: [`FETCH_STREAMS_MAX`] streams, each asking for at most [`FETCH_CHUNKS_PER_STREAM`]
//! chunks, so at most [`FETCH_BYTES_IN_FLIGHT_MAX`] bytes are requested and not yet stored;
//! the queue holds at most [`FETCH_QUEUE_CHUNKS_MAX`] ids (past that the fetcher rescans the
//! tree for missing chunks once the queue runs dry). A chunk is never in flight twice, and
//! a chunk the store already has is never asked for. Every chunk is checked against its hash
//! (in the wire module) before it is stored; a bad one is counted and asked for again later.
//!
//! Fetched chunks are stored without the write-ahead log and persisted once the queue has
//! been dry for [`FETCH_PERSIST_IDLE_MS`] (or by the store past
//! [`crate::limits::UNLOGGED_CHUNKS_MAX`], or by a local commit that references them); a
//! crash before that loses only chunks the rescan at the next start asks for again.
//!
//! Announced chunks (a peer's `Announce`: chunks it stored for a file it is still writing)
//! are fetched from that peer when nothing else is queued, at most
//! [`FETCH_ANNOUNCED_CHUNKS_MAX`] queued at once. They are only hints: one that fails or
//! that the peer no longer has is dropped, not retried or counted, unless a record or a
//! read has asked for it meanwhile.
//!
//! A read of a missing chunk ([`crate::chunk::Remote::fetch_now`]) puts it at the front of
//! the queue and waits for it, at most [`FETCH_READ_TIMEOUT_MS`]; it then fails (EIO), never
//! returning zeros.
//!
//! Tasks: [`FETCH_STREAMS_MAX`] tokio tasks and one rescan; they stop with the runtime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::id::{ChunkId, DeviceId};
use crate::limits::{
    FETCH_ANNOUNCED_CHUNKS_MAX, FETCH_CHUNKS_PER_STREAM, FETCH_PERSIST_IDLE_MS,
    FETCH_QUEUE_CHUNKS_MAX, FETCH_RETRY_MS, FETCH_STREAMS_MAX, WIRE_MESSAGE_BYTES_MAX,
};
use crate::vfs::Vfs;

use super::proto::replication_client::ReplicationClient;
use super::{proto, wire};

mod wait;
pub use wait::RemoteChunks;

#[cfg(doc)]
use crate::limits::{FETCH_BYTES_IN_FLIGHT_MAX, FETCH_READ_TIMEOUT_MS};

/// Counters of the fetcher, for `keibi status`.
#[derive(Default)]
pub struct FetchStats {
    /// Chunks fetched and stored.
    pub chunks: AtomicU64,
    /// Chunk bytes fetched.
    pub bytes: AtomicU64,
    /// Chunks that arrived bad (wrong hash, malformed) or that a peer did not have.
    pub errors: AtomicU64,
    /// Of `chunks`, those fetched on an announcement, before a record asked for them.
    pub announced: AtomicU64,
}

#[derive(Default)]
struct Queue {
    urgent: VecDeque<ChunkId>,
    normal: VecDeque<ChunkId>,
    queued: HashSet<ChunkId>,
    in_flight: HashSet<ChunkId>,
    /// Readers waiting for a chunk.
    waiters: HashMap<ChunkId, Vec<crossbeam_channel::Sender<Result<(), String>>>>,
    /// Chunks that failed, and when to try them again.
    retry: Vec<(Instant, ChunkId)>,
    /// Peers that answered that they lack a chunk, in this round of asking every source.
    lacked: HashMap<ChunkId, HashSet<DeviceId>>,
    /// Announced chunks, each with the peer that announced it (the one to ask).
    announced: VecDeque<(DeviceId, ChunkId)>,
    /// Chunks queued in `announced` or in flight on an announcement alone; a record or a
    /// read that asks for one removes it, so that its failure is then retried.
    speculative: HashSet<ChunkId>,
    last_error: Option<String>,
}

/// The shared fetcher; see the module doc.
pub struct Fetcher {
    vfs: Arc<Vfs>,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Connected peers to fetch from.
    sources: Mutex<Vec<(DeviceId, ReplicationClient<tonic::transport::Channel>)>>,
    /// Turns through `sources`: each request goes to the next peer.
    turn: AtomicU64,
    /// Set when ids were dropped from a full queue, or at start: rescan the tree.
    rescan: AtomicBool,
    /// Stored fetched chunks (`stats.chunks`) counted when the last persist began; the
    /// ones stored before that survive a crash.
    persisted: AtomicU64,
    /// When the last fetched chunk was stored.
    last_stored: Mutex<Instant>,
    /// Counters.
    pub stats: FetchStats,
}

impl Fetcher {
    /// A fetcher for `vfs`'s store; [`Self::start`] runs it.
    #[must_use]
    pub fn new(vfs: Arc<Vfs>) -> Arc<Self> {
        Arc::new(Self {
            vfs,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            sources: Mutex::new(Vec::new()),
            turn: AtomicU64::new(0),
            rescan: AtomicBool::new(true),
            persisted: AtomicU64::new(0),
            last_stored: Mutex::new(Instant::now()),
            stats: FetchStats::default(),
        })
    }

    /// Starts the stream tasks on the current runtime.
    pub fn start(self: &Arc<Self>) {
        for _ in 0..FETCH_STREAMS_MAX {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.run().await });
        }
    }

    /// Makes `client` (a connection to `device`) a source of chunks.
    pub fn add_source(
        &self,
        device: DeviceId,
        client: ReplicationClient<tonic::transport::Channel>,
    ) {
        let mut s = self.sources.lock();
        s.retain(|(d, _)| *d != device);
        s.push((device, client));
        drop(s);
        self.wake.notify_waiters();
    }

    /// Stops fetching from `device`.
    pub fn remove_source(&self, device: DeviceId) {
        self.sources.lock().retain(|(d, _)| *d != device);
    }

    /// Queues chunks to fetch (those already queued or in flight are skipped).
    pub fn enqueue(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut q = self.queue.lock();
        let mut any = false;
        for id in ids {
            // Wanted now: no longer a hint (an entry left in `announced` is skipped).
            q.speculative.remove(&id);
            if q.queued.contains(&id) || q.in_flight.contains(&id) {
                continue;
            }
            if q.queued.len() >= FETCH_QUEUE_CHUNKS_MAX {
                self.rescan.store(true, Ordering::SeqCst);
                break;
            }
            q.queued.insert(id);
            q.normal.push_back(id);
            any = true;
        }
        drop(q);
        if any {
            self.wake.notify_waiters();
        }
    }

    /// Queues chunks that `device` announced, to fetch from it when nothing else waits;
    /// returns how many were queued (not those queued, in flight or announced already).
    /// When the queue is full the oldest announcements make room: the newest are those
    /// whose records are still to come.
    pub fn announce(&self, device: DeviceId, ids: impl IntoIterator<Item = ChunkId>) -> usize {
        let mut q = self.queue.lock();
        let mut n = 0;
        for id in ids {
            if q.queued.contains(&id) || q.in_flight.contains(&id) || q.speculative.contains(&id) {
                continue;
            }
            if q.announced.len() >= FETCH_ANNOUNCED_CHUNKS_MAX
                && let Some((_, old)) = q.announced.pop_front()
                && !q.in_flight.contains(&old)
            {
                // (An id in flight stays a hint: a stale entry of an id announced again.)
                q.speculative.remove(&old);
            }
            q.speculative.insert(id);
            q.announced.push_back((device, id));
            n += 1;
        }
        drop(q);
        if n > 0 {
            self.wake.notify_waiters();
        }
        n
    }

    /// Chunks queued or in flight.
    #[must_use]
    pub fn pending(&self) -> (usize, usize) {
        let q = self.queue.lock();
        (q.queued.len() + q.retry.len(), q.in_flight.len())
    }

    /// True while chunks fetched since the last persist would not survive a crash.
    #[must_use]
    pub fn unpersisted(&self) -> bool {
        self.stats.chunks.load(Ordering::SeqCst) != self.persisted.load(Ordering::SeqCst)
    }

    /// The last fetch error.
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.queue.lock().last_error.clone()
    }

    fn rescan_failed(&self, error: &str) {
        self.note_error(&format!("looking for missing chunks: {error}"));
        self.rescan.store(true, Ordering::SeqCst);
    }

    fn persist_failed(&self, error: &str) {
        // Tried again at the next pause; until then a crash loses them, and the rescan at
        // startup asks for them again.
        self.note_error(&format!("persisting fetched chunks: {error}"));
    }

    /// Records `error` where `keibi status` shows it.
    fn note_error(&self, error: &str) {
        tracing::warn!("{error}");
        self.queue.lock().last_error = Some(error.to_string());
    }

    /// Takes the next ids to ask `device` for: urgent first, then queued, then due retries.
    /// An id that `device` said it lacks stays queued for another of `sources`, unless every
    /// one of them lacked it.
    fn next_ids(&self, device: DeviceId, sources: &[DeviceId]) -> Vec<ChunkId> {
        let mut q = self.queue.lock();
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = q.retry.drain(..).partition(|(t, _)| *t <= now);
        q.retry = later;
        for (_, id) in due {
            if q.queued.insert(id) {
                q.normal.push_back(id);
            }
        }
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while out.len() < FETCH_CHUNKS_PER_STREAM {
            let Some(id) = q.urgent.pop_front().or_else(|| q.normal.pop_front()) else {
                break;
            };
            if !q.queued.remove(&id) || q.in_flight.contains(&id) {
                continue;
            }
            if let Some(lacked) = q.lacked.get_mut(&id) {
                if sources.iter().all(|d| lacked.contains(d)) {
                    // The sources changed since: a new round.
                    lacked.clear();
                } else if lacked.contains(&device) {
                    skipped.push(id);
                    continue;
                }
            }
            q.in_flight.insert(id);
            out.push(id);
        }
        // Room left means nothing else is queued for `device`: its announced chunks.
        let mut i = 0;
        while out.len() < FETCH_CHUNKS_PER_STREAM && i < q.announced.len() {
            let (from, id) = q.announced[i];
            if from != device {
                i += 1;
                continue;
            }
            q.announced.remove(i);
            if q.speculative.contains(&id) && !q.in_flight.contains(&id) {
                q.in_flight.insert(id);
                out.push(id);
            }
        }
        for id in skipped.into_iter().rev() {
            q.queued.insert(id);
            q.normal.push_front(id);
        }
        out
    }

    /// `device` answered that it lacks `id`: ask the next source at once, or, when every one
    /// of `sources` lacked it, count the error and try them all again later.
    fn finish_lacking(&self, id: ChunkId, device: DeviceId, sources: &[DeviceId]) {
        let mut q = self.queue.lock();
        if q.speculative.remove(&id) {
            // Only announced, and the announcer no longer has it (a file rewritten since).
            q.in_flight.remove(&id);
            return;
        }
        if q.lacked.len() >= FETCH_QUEUE_CHUNKS_MAX && !q.lacked.contains_key(&id) {
            // Only a shortcut: turning through the sources reaches every peer without it.
            q.lacked.clear();
        }
        let lacked = q.lacked.entry(id).or_default();
        lacked.insert(device);
        if sources.iter().all(|d| lacked.contains(d)) {
            q.lacked.remove(&id);
            drop(q);
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.finish(id, &Err(format!("{device} does not have chunk {id}")));
            return;
        }
        q.in_flight.remove(&id);
        if q.queued.insert(id) {
            q.normal.push_front(id);
        }
        drop(q);
        self.wake.notify_waiters();
    }

    fn finish(&self, id: ChunkId, result: &Result<(), String>) {
        let mut q = self.queue.lock();
        q.in_flight.remove(&id);
        let hint = q.speculative.remove(&id);
        match result {
            Ok(()) => {}
            // A hint that failed is dropped; the record, if one comes, asks again.
            Err(_) if hint => {}
            Err(e) => {
                q.last_error = Some(e.clone());
                q.retry
                    .push((Instant::now() + Duration::from_millis(FETCH_RETRY_MS), id));
            }
        }
        let waiters = if result.is_ok() {
            q.lacked.remove(&id);
            q.waiters.remove(&id).unwrap_or_default()
        } else {
            Vec::new()
        };
        drop(q);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.rescan.swap(false, Ordering::SeqCst) && self.queue.lock().queued.is_empty() {
                let vfs = Arc::clone(&self.vfs);
                match tokio::task::spawn_blocking(move || {
                    vfs.missing_chunks(FETCH_QUEUE_CHUNKS_MAX)
                })
                .await
                {
                    Ok(Ok(ids)) => self.enqueue(ids),
                    // Tried again after the pause below; `keibi status` shows why.
                    Ok(Err(e)) => self.rescan_failed(&e.to_string()),
                    Err(e) => self.rescan_failed(&e.to_string()),
                }
            }
            let (source, devices) = {
                let s = self.sources.lock();
                let devices: Vec<DeviceId> = s.iter().map(|(d, _)| *d).collect();
                #[expect(clippy::cast_possible_truncation, reason = "an index below len")]
                let turn =
                    (self.turn.fetch_add(1, Ordering::Relaxed) % s.len().max(1) as u64) as usize;
                (s.get(turn).map(|(d, c)| (*d, c.clone())), devices)
            };
            let ids = match &source {
                Some((device, _)) => self.next_ids(*device, &devices),
                None => Vec::new(),
            };
            if ids.is_empty() && source.is_some() && self.has_queued() {
                // Everything queued is for other sources (this one lacked it): their turn.
                tokio::task::yield_now().await;
                continue;
            }
            let (Some((device, client)), false) = (source, ids.is_empty()) else {
                // The queue has been dry for a while: make what was fetched survive a crash
                // (one flush for a burst of fetches, not one per file).
                // Only after the persist has finished does status say so: a chunk counted
                // before it began was written before it began, so the flush holds it.
                if self.pending() == (0, 0)
                    && self.unpersisted()
                    && self.last_stored.lock().elapsed()
                        >= Duration::from_millis(FETCH_PERSIST_IDLE_MS)
                {
                    let upto = self.stats.chunks.load(Ordering::SeqCst);
                    let chunks = Arc::clone(self.vfs.chunks());
                    match tokio::task::spawn_blocking(move || chunks.persist_pending()).await {
                        Ok(Ok(())) => {
                            self.persisted.fetch_max(upto, Ordering::SeqCst);
                        }
                        Ok(Err(e)) => self.persist_failed(&e.to_string()),
                        Err(e) => self.persist_failed(&e.to_string()),
                    }
                }
                // Nothing to do, or nobody to ask: wait for work, a peer, or a retry.
                let _ = tokio::time::timeout(
                    Duration::from_millis(FETCH_RETRY_MS),
                    self.wake.notified(),
                )
                .await;
                continue;
            };
            self.fetch(device, client, ids, &devices).await;
        }
    }

    /// True when ids wait in the queue (not counting retries that are not due).
    fn has_queued(&self) -> bool {
        !self.queue.lock().queued.is_empty()
    }

    /// Asks `client` for `ids` (skipping those the store got meanwhile) and stores what
    /// arrives.
    async fn fetch(
        &self,
        device: DeviceId,
        client: ReplicationClient<tonic::transport::Channel>,
        ids: Vec<ChunkId>,
        sources: &[DeviceId],
    ) {
        let mut want = Vec::new();
        for id in ids {
            match self.vfs.chunks().contains(&id) {
                Ok(true) => self.finish(id, &Ok(())),
                Ok(false) | Err(_) => want.push(id),
            }
        }
        if want.is_empty() {
            return;
        }
        let req = proto::ChunkRequest {
            ids: want.iter().map(|i| i.0.to_vec()).collect(),
        };
        let mut open: HashSet<ChunkId> = want.iter().copied().collect();
        let result = async {
            let mut stream = client
                .max_decoding_message_size(WIRE_MESSAGE_BYTES_MAX)
                .stream_file(req)
                .await
                .map_err(|e| format!("StreamFile to {device}: {}", e.message()))?
                .into_inner();
            while let Some(msg) = stream
                .message()
                .await
                .map_err(|e| format!("StreamFile from {device}: {}", e.message()))?
            {
                match wire::chunk_data(&msg) {
                    Ok((id, _)) if !open.contains(&id) => {
                        return Err(format!("{device} sent chunk {id}, which was not asked for"));
                    }
                    Ok((id, Some(checked))) => {
                        open.remove(&id);
                        let chunks = Arc::clone(self.vfs.chunks());
                        let len = checked.data.len() as u64;
                        // Kept from gc before it is stored: no record references it yet.
                        let ahead = self.queue.lock().speculative.contains(&id);
                        if ahead {
                            chunks.stored_ahead(id);
                        }
                        let stored = tokio::task::spawn_blocking(move || {
                            let data = Arc::new(checked.data.to_vec());
                            chunks.put_fetched(id, data, &checked.cvs)
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                        if stored.is_ok() {
                            *self.last_stored.lock() = Instant::now();
                            self.stats.chunks.fetch_add(1, Ordering::Relaxed);
                            self.stats.bytes.fetch_add(len, Ordering::Relaxed);
                            if ahead {
                                self.stats.announced.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        self.finish(id, &stored);
                    }
                    Ok((id, None)) => {
                        open.remove(&id);
                        self.finish_lacking(id, device, sources);
                    }
                    Err(e) => {
                        // A lying or broken peer: count it, and drop the stream.
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("from {device}: {e}");
                        return Err(format!("from {device}: {e}"));
                    }
                }
            }
            Ok::<(), String>(())
        }
        .await;
        let leftover = match result {
            Ok(()) => "stream ended before every chunk arrived".to_string(),
            Err(e) => e,
        };
        for id in open {
            self.finish(id, &Err(leftover.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetcher() -> Arc<Fetcher> {
        let fixture = crate::testing::mem().expect("store");
        Fetcher::new(Arc::new(fixture.vfs))
    }

    fn id(n: u64) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    #[test]
    fn announced_chunks_are_hints_until_a_record_asks_for_them() {
        let f = fetcher();
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        assert_eq!(f.announce(a, [id(0), id(1), id(2)]), 3);
        assert_eq!(f.announce(a, [id(0)]), 0, "announced twice");
        assert_eq!(f.pending(), (0, 0), "hints are not missing chunks");
        // Only the announcer is asked for them.
        assert!(f.next_ids(b, &[a, b]).is_empty());
        assert_eq!(f.next_ids(a, &[a, b]), vec![id(0), id(1), id(2)]);
        // A hint that fails is dropped: no retry, no error.
        f.finish(id(0), &Err("stream broke".into()));
        f.finish_lacking(id(1), a, &[a, b]);
        assert_eq!(f.stats.errors.load(Ordering::SeqCst), 0);
        assert!(f.last_error().is_none());
        // A record asks for one in flight: its failure is then retried.
        f.enqueue([id(2)]);
        f.finish(id(2), &Err("stream broke".into()));
        assert_eq!(
            f.pending(),
            (1, 0),
            "a wanted chunk that failed waits for a retry"
        );
        assert!(f.last_error().is_some());
    }

    #[test]
    fn the_announced_queue_is_bounded_and_keeps_the_newest() {
        let f = fetcher();
        let a = DeviceId([1; 32]);
        let n = FETCH_ANNOUNCED_CHUNKS_MAX as u64;
        assert_eq!(
            f.announce(a, (0..n + 10).map(id)),
            FETCH_ANNOUNCED_CHUNKS_MAX + 10
        );
        let q = f.queue.lock();
        assert_eq!(q.announced.len(), FETCH_ANNOUNCED_CHUNKS_MAX);
        assert_eq!(q.speculative.len(), FETCH_ANNOUNCED_CHUNKS_MAX);
        assert_eq!(q.announced.front().map(|e| e.1), Some(id(10)));
    }
}

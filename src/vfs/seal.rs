//! The seal pool: worker threads that hash, compress, encrypt and store full chunk buffers
//! while the writer goes on, and read chunks ahead of sequential readers.
//!
//! Whole chunks sealed for a file still being written are remembered in [`Announced`], from
//! which replication tells peers about them before the file's record goes.
//!
//! Tasks: one worker thread per core, fed by two bounded channels (seal jobs, which block
//! the submitter when full, and prefetches, which are dropped when full). Shutdown: dropping
//! the [`Sealer`] closes the channels; workers finish their current job and exit, and the
//! drop joins them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::{Condvar, Mutex};

use crate::chunk::{self, ChunkStore};
use crate::id::ChunkId;
use crate::limits::{
    ANNOUNCED_CHUNKS_KEPT_MAX, PREFETCH_QUEUE_JOBS_MAX, SEAL_INLINE_BYTES_MAX, SEAL_QUEUE_JOBS_MAX,
    SEAL_WORKERS_PER_CORE,
};

/// One buffer being sealed. Readers use `data` until the result is in.
pub struct SealJob {
    /// The chunk's plaintext, shared with the read cache once stored.
    pub data: Arc<Vec<u8>>,
    /// Stored without the write-ahead log.
    unlogged: bool,
    /// Remembered in [`Announced`] once stored.
    announce: bool,
    result: Mutex<Option<Result<ChunkId, Arc<chunk::Error>>>>,
    done: Condvar,
}

impl SealJob {
    /// Waits for the job and returns the stored chunk's id.
    ///
    /// # Errors
    /// The store failed to take the chunk (a full disk, an I/O error).
    pub fn wait(&self) -> Result<ChunkId, Arc<chunk::Error>> {
        let mut r = self.result.lock();
        loop {
            if let Some(r) = r.as_ref() {
                return r.clone();
            }
            self.done.wait(&mut r);
        }
    }

    /// The stored chunk's id if the job finished well; `None` while it runs or if it failed
    /// (the commit that waits for it reports the failure).
    #[must_use]
    pub fn done_id(&self) -> Option<ChunkId> {
        match self.result.lock().as_ref() {
            Some(Ok(id)) => Some(*id),
            Some(Err(_)) | None => None,
        }
    }

    fn finish(&self, r: Result<ChunkId, chunk::Error>) {
        *self.result.lock() = Some(r.map_err(Arc::new));
        self.done.notify_all();
    }
}

/// The newest chunks sealed whole ahead of a commit, at most [`ANNOUNCED_CHUNKS_KEPT_MAX`],
/// each at a position in the sequence of all such chunks; readers keep a cursor into it.
#[derive(Default)]
pub struct Announced {
    ring: Mutex<(u64, VecDeque<ChunkId>)>,
}

impl Announced {
    fn push(&self, id: ChunkId) {
        let mut ring = self.ring.lock();
        let (first, ids) = &mut *ring;
        if ids.len() >= ANNOUNCED_CHUNKS_KEPT_MAX {
            ids.pop_front();
            *first += 1;
        }
        ids.push_back(id);
    }

    /// The position after the newest chunk: a cursor there sees only chunks sealed later.
    #[must_use]
    pub fn end(&self) -> u64 {
        let ring = self.ring.lock();
        ring.0 + ring.1.len() as u64
    }

    /// At most `max` chunks from position `cursor` on (those already dropped are skipped),
    /// and the position after them.
    #[must_use]
    pub fn since(&self, cursor: u64, max: usize) -> (Vec<ChunkId>, u64) {
        let ring = self.ring.lock();
        let (first, ids) = &*ring;
        let start = cursor.max(*first);
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let out: Vec<ChunkId> = ids.iter().skip(skip).take(max).copied().collect();
        let next = start + out.len() as u64;
        (out, next)
    }
}

enum Job {
    Seal(Arc<SealJob>),
    Prefetch(ChunkId),
}

/// The pool; see the module doc.
pub struct Sealer {
    seal_tx: Option<Sender<Job>>,
    prefetch_tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Used when the pool cannot start threads: jobs then run in the caller.
    chunks: Arc<ChunkStore>,
    announced: Arc<Announced>,
}

fn work(
    chunks: &ChunkStore,
    announced: &Announced,
    seal: &Receiver<Job>,
    prefetch: &Receiver<Job>,
) {
    loop {
        // Seal jobs first: a writer may be blocked on them.
        let job = if let Ok(job) = seal.try_recv() {
            job
        } else {
            crossbeam_channel::select! {
                recv(seal) -> j => match j { Ok(j) => j, Err(_) => return },
                recv(prefetch) -> j => match j {
                    Ok(j) => j,
                    Err(_) => match seal.recv() { Ok(j) => j, Err(_) => return },
                },
            }
        };
        run(chunks, announced, job);
    }
}

fn run(chunks: &ChunkStore, announced: &Announced, job: Job) {
    match job {
        Job::Seal(job) => {
            let data = Arc::clone(&job.data);
            let stored = if job.unlogged {
                chunks.put_shared_unlogged(data)
            } else {
                chunks.put_shared(data)
            };
            if job.announce
                && let Ok(id) = &stored
            {
                announced.push(*id);
            }
            job.finish(stored);
        }
        Job::Prefetch(id) => {
            // A failed prefetch is not an error: the reader will read the chunk itself and
            // get the error then.
            // Local only: a prefetch never waits on a peer.
            let _ = chunks.get_local(&id);
        }
    }
}

impl Sealer {
    /// Starts one worker per core.
    #[must_use]
    pub fn start(chunks: Arc<ChunkStore>) -> Self {
        let announced = Arc::new(Announced::default());
        let (seal_tx, seal_rx) = bounded(SEAL_QUEUE_JOBS_MAX);
        let (prefetch_tx, prefetch_rx) = bounded(PREFETCH_QUEUE_JOBS_MAX);
        let n = std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            * SEAL_WORKERS_PER_CORE;
        let workers = (0..n)
            .filter_map(|i| {
                let (store, ann) = (Arc::clone(&chunks), Arc::clone(&announced));
                let (seals, prefetches) = (seal_rx.clone(), prefetch_rx.clone());
                std::thread::Builder::new()
                    .name(format!("keibi-seal-{i}"))
                    .spawn(move || work(&store, &ann, &seals, &prefetches))
                    .ok()
            })
            .collect::<Vec<_>>();
        Self {
            seal_tx: Some(seal_tx),
            prefetch_tx: Some(prefetch_tx),
            workers,
            chunks,
            announced,
        }
    }

    /// Chunks sealed whole for files still being written ([`Self::seal_whole_ahead`]).
    #[must_use]
    pub fn announced(&self) -> &Announced {
        &self.announced
    }

    /// As [`Self::seal`] unlogged, for a chunk written whole while its file is being
    /// written: once stored it is remembered in [`Self::announced`], so peers may fetch it
    /// before the file is committed.
    #[must_use]
    pub fn seal_whole_ahead(&self, data: Vec<u8>) -> Arc<SealJob> {
        self.submit(data, true, true)
    }

    /// Queues `data` for sealing; blocks while the queue is full. A chunk of at most
    /// [`SEAL_INLINE_BYTES_MAX`] is sealed here instead, before this returns. An `unlogged`
    /// chunk skips the write-ahead log (see [`ChunkStore::put_shared_unlogged`]): for chunks
    /// written ahead of a commit, which persists them before its record references them.
    #[must_use]
    pub fn seal(&self, data: Vec<u8>, unlogged: bool) -> Arc<SealJob> {
        self.submit(data, unlogged, false)
    }

    fn submit(&self, data: Vec<u8>, unlogged: bool, announce: bool) -> Arc<SealJob> {
        let data_len = data.len();
        let job = Arc::new(SealJob {
            unlogged,
            announce,
            data: Arc::new(data),
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        let queued = data_len > SEAL_INLINE_BYTES_MAX
            && !self.workers.is_empty()
            && self
                .seal_tx
                .as_ref()
                .is_some_and(|tx| tx.send(Job::Seal(Arc::clone(&job))).is_ok());
        if !queued {
            run(&self.chunks, &self.announced, Job::Seal(Arc::clone(&job)));
        }
        job
    }

    /// Reads `id` into the chunk cache in the background, unless the queue is full.
    pub fn prefetch(&self, id: ChunkId) {
        if let Some(tx) = &self.prefetch_tx {
            let _ = tx.try_send(Job::Prefetch(id));
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.seal_tx = None;
        self.prefetch_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_chunks_are_read_from_a_cursor_and_the_oldest_make_room() {
        let a = Announced::default();
        let id = |n: u64| ChunkId::of(&n.to_le_bytes());
        let start = a.end();
        assert_eq!(a.since(start, 10), (vec![], start));
        a.push(id(0));
        a.push(id(1));
        assert_eq!(a.since(start, 1), (vec![id(0)], start + 1));
        assert_eq!(a.since(start + 1, 10), (vec![id(1)], start + 2));
        let kept = ANNOUNCED_CHUNKS_KEPT_MAX as u64;
        for n in 2..kept + 5 {
            a.push(id(n));
        }
        assert_eq!(a.end(), kept + 5);
        // A cursor that fell behind skips what was dropped.
        let (ids, next) = a.since(0, 2);
        assert_eq!(ids, vec![id(5), id(6)]);
        assert_eq!(next, 7);
        let (rest, end) = a.since(next, usize::MAX);
        assert_eq!(rest.len() as u64, kept - 2);
        assert_eq!(end, a.end());
    }
}

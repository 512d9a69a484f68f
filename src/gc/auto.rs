//! gc while a mount runs: a thread that collects unreferenced chunks at a fixed interval,
//! when records changed since its last run, so that the space of removed and rewritten
//! files (and of chunks announced by peers for files that never arrived) comes back
//! without anyone running `keibi gc`. A run is the same as `keibi gc`'s; one that finds a
//! manual run active, or outgrows its protection bound under heavy writing, is skipped
//! until the next interval.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use super::{Error, GcPlan};
use crate::vfs::Vfs;

/// What the last automatic run did, for `keibi status`.
#[derive(Clone, Debug, Serialize)]
pub struct LastRun {
    /// Runs since the mount started, this one included.
    pub runs: u64,
    /// When it ended, in seconds since the Unix epoch.
    pub ended_unix_secs: u64,
    /// Chunks deleted (frames without an index entry included).
    pub deleted_chunks: u64,
    /// Stored bytes of the deleted chunks.
    pub deleted_bytes: u64,
    /// Why it did not run to the end, if it did not.
    pub error: Option<String>,
    /// Whether that was a skip (a manual run was active, or writers outgrew the protection
    /// bound), not a failure.
    pub skipped: bool,
}

/// State shared with the thread.
#[derive(Default)]
struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
    last: Mutex<Option<LastRun>>,
}

/// The running collector; stopped (and its thread joined) on [`Self::stop`] or drop.
pub struct AutoGc {
    shared: Arc<Shared>,
    every: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AutoGc {
    /// Starts collecting unreferenced chunks of `vfs`'s store every `every`.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(vfs: Arc<Vfs>, every: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("keibi-gc".into())
                .spawn(move || collect_every(&vfs, every, &shared))?
        };
        Ok(Self {
            shared,
            every,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The interval between runs.
    #[must_use]
    pub fn every(&self) -> Duration {
        self.every
    }

    /// What the last run did; `None` before the first.
    #[must_use]
    pub fn last_run(&self) -> Option<LastRun> {
        self.shared.last.lock().clone()
    }

    /// Stops the thread, waiting for a run in progress to end.
    pub fn stop(&self) {
        *self.shared.stopped.lock() = true;
        self.shared.wake.notify_all();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for AutoGc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect_every(vfs: &Vfs, every: Duration, shared: &Shared) {
    // The sequence number of the last record written when the last run began: records
    // changed since if it moved.
    let mut collected_at = None;
    let mut runs = 0;
    loop {
        {
            let mut stopped = shared.stopped.lock();
            if !*stopped {
                let _ = shared.wake.wait_for(&mut stopped, every);
            }
            if *stopped {
                return;
            }
        }
        let seq = vfs.tables().last_seq();
        if collected_at == Some(seq) {
            continue;
        }
        runs += 1;
        let outcome =
            GcPlan::compute(vfs.chunks(), &|| vfs.staged_chunks()).and_then(GcPlan::execute);
        let ended_unix_secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let run = match outcome {
            Ok(r) => {
                collected_at = Some(seq);
                if r.deleted_chunks + r.deleted_orphans > 0 {
                    tracing::info!(
                        chunks = r.deleted_chunks + r.deleted_orphans,
                        bytes = r.deleted_bytes,
                        disk_before = r.disk_bytes_before,
                        disk_after = r.disk_bytes_after,
                        "gc: deleted unreferenced chunks"
                    );
                }
                LastRun {
                    runs,
                    ended_unix_secs,
                    deleted_chunks: r.deleted_chunks + r.deleted_orphans,
                    deleted_bytes: r.deleted_bytes,
                    error: None,
                    skipped: false,
                }
            }
            Err(e) => {
                let skipped = match e {
                    Error::Busy | Error::Chunk(crate::chunk::Error::GcOverrun) => {
                        tracing::info!(error = %e, "gc: skipped until the next interval");
                        true
                    }
                    Error::MarkFailed(_) | Error::Store(_) | Error::Chunk(_) => {
                        tracing::warn!(error = %e, "gc failed; tried again at the next interval");
                        false
                    }
                };
                LastRun {
                    runs,
                    ended_unix_secs,
                    deleted_chunks: 0,
                    deleted_bytes: 0,
                    error: Some(e.to_string()),
                    skipped,
                }
            }
        };
        *shared.last.lock() = Some(run);
    }
}

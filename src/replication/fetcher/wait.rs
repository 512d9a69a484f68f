//! Fetches a caller waits for: a read of a chunk that has not arrived (through
//! [`RemoteChunks`], the chunk store's window onto the fetcher), and `keibi verify
//! --repair`'s chunk-by-chunk fetch that leaves the store alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::id::ChunkId;
use crate::limits::{FETCH_READ_TIMEOUT_MS, FETCH_RETRY_MS, WIRE_MESSAGE_BYTES_MAX};

use super::super::{proto, wire};
use super::Fetcher;

impl Fetcher {
    /// Asks each connected peer in turn for `id` until one sends it, checked against its
    /// hash; the store is not touched (`keibi verify --repair` stores it in place of a
    /// damaged frame). A chunk that arrives bad is counted as a fetch error.
    ///
    /// # Errors
    /// No peer is connected, or none sent the chunk (the reasons, peer by peer).
    pub async fn fetch_checked(&self, id: ChunkId) -> Result<wire::CheckedChunk, String> {
        let sources: Vec<_> = self.sources.lock().clone();
        if sources.is_empty() {
            return Err("no peer is connected".into());
        }
        let mut why = Vec::new();
        for (device, client) in sources {
            let req = proto::ChunkRequest {
                ids: vec![id.0.to_vec()],
            };
            let got = async {
                let mut stream = client
                    .max_decoding_message_size(WIRE_MESSAGE_BYTES_MAX)
                    .stream_file(req)
                    .await
                    .map_err(|e| e.message().to_string())?
                    .into_inner();
                let msg = stream
                    .message()
                    .await
                    .map_err(|e| e.message().to_string())?
                    .ok_or("the stream ended empty")?;
                match wire::chunk_data(&msg) {
                    Ok((got, Some(checked))) if got == id => Ok(checked),
                    Ok((_, None)) => Err("it does not have it".to_string()),
                    Ok((got, Some(_))) => Err(format!("it sent chunk {got} instead")),
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        Err(e.to_string())
                    }
                }
            }
            .await;
            match got {
                Ok(checked) => return Ok(checked),
                Err(e) => why.push(format!("{device}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    /// Fetches `id` ahead of everything else and waits for it (bounded).
    fn fetch_now_blocking(&self, id: &ChunkId) -> Result<(), String> {
        if self.vfs.chunks().contains(id).unwrap_or(false) {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        {
            let mut q = self.queue.lock();
            q.waiters.entry(*id).or_default().push(tx);
            q.speculative.remove(id);
            if !q.in_flight.contains(id) {
                q.queued.insert(*id);
                q.urgent.push_back(*id);
                q.retry.retain(|(_, r)| r != id);
            }
        }
        self.wake.notify_waiters();
        // The chunk may have been stored between the check and the registration.
        if self.vfs.chunks().contains(id).unwrap_or(false) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(FETCH_READ_TIMEOUT_MS);
        loop {
            match rx.recv_timeout(Duration::from_millis(FETCH_RETRY_MS)) {
                Ok(r) => return r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if self.vfs.chunks().contains(id).unwrap_or(false) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        let why = self.last_error().unwrap_or_else(|| {
                            if self.sources.lock().is_empty() {
                                "no peer is connected".into()
                            } else {
                                "no peer delivered it".into()
                            }
                        });
                        return Err(format!("waited {} s: {why}", FETCH_READ_TIMEOUT_MS / 1000));
                    }
                    // Keep it at the front while waiting (a failure moved it to retry).
                    let mut q = self.queue.lock();
                    if !q.in_flight.contains(id) && q.queued.insert(*id) {
                        q.urgent.push_back(*id);
                    }
                    drop(q);
                    self.wake.notify_waiters();
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err("fetcher stopped".into());
                }
            }
        }
    }
}

/// The chunk store's window onto the fetcher.
pub struct RemoteChunks(pub Arc<Fetcher>);

impl crate::chunk::Remote for RemoteChunks {
    fn fetch_now(&self, id: &ChunkId) -> Result<(), String> {
        self.0.fetch_now_blocking(id)
    }
}

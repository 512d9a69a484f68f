//! The receiving side: the gRPC service peers call (`Hello`, `BatchNotify`, `StreamFile`,
//! `Announce`), and
//! the inbox of each sender, which holds records that cannot apply yet.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::store::{Batch, Durability, tables::Tables};
use crate::tree::FileRecord;
use crate::vfs::Outcome;

use super::node::Node;
use super::proto::replication_server::Replication;
use super::transport::PeerInfo;
use super::{PROTOCOL_VERSION, proto, wire};
use crate::limits::{INBOX_WAITING_RECORDS_MAX, STREAM_CHUNKS_AHEAD_MAX};

/// Records from one sender store that wait, and the assembly of split manifests.
#[derive(Default)]
pub struct Inbox {
    /// Waiting records in the sender's sequence order.
    waiting: Vec<FileRecord>,
    assembler: wire::Assembler,
    /// The sender said it had caught up in its last batch.
    caught_up: bool,
    /// Highest sequence the sender covered so far.
    covered: u64,
}

/// What one application pass did.
#[derive(Default)]
struct Pass {
    rejected: u32,
    missing: Vec<crate::id::ChunkId>,
}

impl Inbox {
    /// Offers `rec` (already validated); keeps it if it must wait.
    fn offer(&mut self, node: &Node, origin: u64, rec: FileRecord, settle: bool, pass: &mut Pass) {
        self.waiting.retain(|w| w.id != rec.id);
        match node.vfs.apply_remote(origin, &rec, settle) {
            Ok(a) => {
                pass.missing.extend(a.missing);
                if a.outcome.waits() {
                    self.waiting.push(rec);
                    self.waiting.sort_by_key(|w| w.seq);
                } else if a.outcome == Outcome::Conflict {
                    node.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                // A store error: keep the record waiting, so it is applied later or sent
                // again after a restart (the watermark stays before it).
                tracing::warn!("applying {} from peer {origin:016x}: {e}", rec.id);
                self.waiting.push(rec);
                self.waiting.sort_by_key(|w| w.seq);
            }
        }
    }

    /// Offers every waiting record again until none applies. Name clashes are settled only
    /// after that, and only once the sender has caught up: within a batch, the record that
    /// frees a name (the old `HEAD` deleted by git's `HEAD.lock` rename) may come after the
    /// record that takes it.
    pub fn retry(&mut self, node: &Node, origin: u64) -> Vec<crate::id::ChunkId> {
        let mut pass = Pass::default();
        self.passes(node, origin, false, &mut pass);
        if self.caught_up && !self.waiting.is_empty() {
            self.passes(node, origin, true, &mut pass);
        }
        pass.missing
    }

    fn passes(&mut self, node: &Node, origin: u64, settle: bool, pass: &mut Pass) {
        for _ in 0..8 {
            let before = self.waiting.len();
            if before == 0 {
                break;
            }
            let waiting = std::mem::take(&mut self.waiting);
            for rec in waiting {
                self.offer(node, origin, rec, settle, pass);
            }
            if self.waiting.len() == before {
                break;
            }
        }
    }

    /// The sender's sequence up to which everything is applied.
    pub fn watermark(&self) -> u64 {
        self.waiting
            .iter()
            .map(|w| w.seq.saturating_sub(1))
            .min()
            .map_or(self.covered, |w| w.min(self.covered))
    }

    /// Records waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The service, one per mount.
pub struct Service {
    pub(crate) node: Arc<Node>,
}

fn peer_of<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated peer"))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for Service {
    async fn hello(
        &self,
        req: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloReply>, Status> {
        let peer = peer_of(&req)?;
        let hello = req.into_inner();
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol {} not spoken here (this peer speaks {PROTOCOL_VERSION})",
                hello.protocol
            )));
        }
        if hello.index_id == self.node.index_id {
            return Err(Status::failed_precondition(
                "the peer has the same store index id as this one (a copied store?)",
            ));
        }
        self.node.inbound(&peer, hello.index_id);
        let inbox = self.node.inbox(hello.index_id);
        let applied = {
            let tables = self.node.vfs.tables();
            let stored = tables
                .peer_applied(hello.index_id)
                .map_err(|e| Status::internal(e.to_string()))?;
            let mut ib = inbox.lock().await;
            // A new session: the sender starts over from the answer below, so a record it
            // was sending in parts comes again from its first part.
            ib.assembler.reset();
            ib.covered = ib.covered.max(stored);
            ib.watermark().min(stored)
        };
        Ok(Response::new(proto::HelloReply {
            protocol: PROTOCOL_VERSION,
            index_id: self.node.index_id,
            applied_seq: applied,
        }))
    }

    async fn batch_notify(
        &self,
        req: Request<proto::Batch>,
    ) -> Result<Response<proto::BatchAck>, Status> {
        let peer = peer_of(&req)?;
        let batch = req.into_inner();
        let origin = batch.index_id;
        if self.node.index_of(&peer.device) != Some(origin) {
            return Err(Status::failed_precondition("BatchNotify before Hello"));
        }
        if batch.from_seq > batch.to_seq {
            return Err(Status::invalid_argument("sequence range is reversed"));
        }
        let bytes: usize = batch.records.iter().map(wire::part_bytes).sum();
        self.node
            .with_peer(&peer.device, |p| p.received_bytes += bytes as u64);
        let mut ib = self.node.inbox(origin).lock_owned().await;
        let node = Arc::clone(&self.node);
        let (ack, missing) = tokio::task::spawn_blocking(move || {
            let mut pass = Pass::default();
            ib.caught_up = batch.caught_up;
            let mut stopped_at = None;
            for part in &batch.records {
                if ib.waiting.len() >= INBOX_WAITING_RECORDS_MAX {
                    stopped_at = Some(part.seq.saturating_sub(1));
                    break;
                }
                match ib.assembler.take(part) {
                    Ok(Some(rec)) => {
                        node.with_peer(&peer.device, |p| p.records_received += 1);
                        ib.offer(&node, origin, rec, false, &mut pass);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        pass.rejected += 1;
                        tracing::warn!("record from {}: {e}", peer.device);
                        node.with_peer(&peer.device, |p| {
                            p.rejected += 1;
                            p.last_error = Some(e.to_string());
                        });
                    }
                }
            }
            let abandoned = ib.assembler.take_abandoned();
            if abandoned > 0 {
                pass.rejected += abandoned;
                tracing::warn!(
                    "{abandoned} records from {} broken off part-way",
                    peer.device
                );
                node.with_peer(&peer.device, |p| {
                    p.rejected += u64::from(abandoned);
                    p.last_error = Some(format!("{abandoned} records broken off part-way"));
                });
            }
            pass.missing.extend(ib.retry(&node, origin));
            let covered = stopped_at.unwrap_or(batch.to_seq);
            ib.covered = ib.covered.max(covered.min(batch.to_seq));
            let applied = ib.watermark();
            let mut b = Batch::new();
            Tables::set_peer_applied(&mut b, origin, applied);
            let write = node.vfs.tables().backend().write(b, Durability::Buffered);
            (
                write.map(|()| proto::BatchAck {
                    applied_seq: applied,
                    rejected: pass.rejected,
                }),
                pass.missing,
            )
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        self.node.fetcher.enqueue(missing);
        ack.map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn announce(
        &self,
        req: Request<proto::Announcement>,
    ) -> Result<Response<proto::AnnounceAck>, Status> {
        let peer = peer_of(&req)?;
        if self.node.index_of(&peer.device).is_none() {
            return Err(Status::failed_precondition("Announce before Hello"));
        }
        let ids = wire::announcement(req.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let queued = self.node.fetcher.announce(peer.device, ids);
        Ok(Response::new(proto::AnnounceAck {
            queued: u32::try_from(queued).unwrap_or(u32::MAX),
        }))
    }

    type StreamFileStream = ChunkStream;

    async fn stream_file(
        &self,
        req: Request<proto::ChunkRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let peer = peer_of(&req)?;
        let ids = wire::chunk_request(req.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS_AHEAD_MAX);
        let node = Arc::clone(&self.node);
        tokio::spawn(async move {
            for id in ids {
                let chunks = Arc::clone(node.vfs.chunks());
                let got = tokio::task::spawn_blocking(move || chunks.get_local(&id)).await;
                let msg = match got {
                    Ok(Ok(data)) => proto::ChunkData {
                        id: id.0.to_vec(),
                        // The cached chunk itself, not a copy of it.
                        data: bytes::Bytes::from_owner(SharedChunk(data)),
                        missing: false,
                    },
                    Ok(Err(_)) | Err(_) => proto::ChunkData {
                        id: id.0.to_vec(),
                        data: bytes::Bytes::new(),
                        missing: true,
                    },
                };
                let n = msg.data.len() as u64;
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                node.with_peer(&peer.device, |p| p.sent_bytes += n);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A decoded chunk shared with the chunk cache, lent to a reply without copying it.
struct SharedChunk(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Inboxes by sender index id.
pub type Inboxes = HashMap<u64, Arc<tokio::sync::Mutex<Inbox>>>;

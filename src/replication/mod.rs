//! Replication between peers (DESIGN.md, "Replication").
//!
//! - [`tls`]: identity on the wire: TLS 1.3, mutual authentication, pinned device ids.
//! - [`transport`]: TCP + TLS under tonic, both ends.
//! - `proto` (generated) and [`wire`]: the protocol, and the one place its messages are
//!   validated and turned into domain types.
//! - `service`: the receiving side (`Hello`, `BatchNotify`, `StreamFile`) and per-sender inboxes.
//! - `node`: shared state, and one session per dialled peer.
//! - `notify`: a session's notify worker, which debounces, batches and sends local changes
//!   and announces chunks of files being written.
//! - [`fetcher`]: missing chunks by hash, bounded, with reads jumping the queue.
//! - [`config`]: trusted peers and addresses.
//!
//! Tasks: everything runs on one tokio runtime owned by [`Replication`], with two worker
//! threads; blocking store work goes to its blocking pool. [`Replication::stop`] shuts the
//! runtime down and unhooks the fetcher from the chunk store.

pub mod config;
pub mod fetcher;
pub mod node;
mod notify;
#[doc(hidden)]
pub mod proto;
mod service;
pub mod tls;
pub mod transport;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::id::ChunkId;
use crate::limits::{
    HTTP2_WINDOW_BYTES, INBOX_RETRY_MS, KEEPALIVE_INTERVAL_MS, NOTIFY_DEBOUNCE_MS,
    OPEN_FILES_COMMIT_POLL_MS, REPAIR_FETCHES_MAX, WIRE_MESSAGE_BYTES_MAX,
};
use crate::vfs::Vfs;

pub use node::PeerStatus;

/// Protocol version spoken (`proto/keibi.proto`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Errors starting replication.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Keys or TLS configuration.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The listen address could not be bound.
    #[error("listening on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("starting the replication runtime: {0}")]
    Runtime(std::io::Error),
}

/// Replication figures for `keibi status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Address peers connect to.
    pub listen: Option<String>,
    /// Each configured peer.
    pub peers: Vec<PeerStatus>,
    /// Chunks records reference that are not here yet (queued or being fetched).
    pub chunks_missing: u64,
    /// Chunks fetched from peers.
    pub chunks_fetched: u64,
    /// Bytes of chunks fetched.
    pub bytes_fetched: u64,
    /// Of `chunks_fetched`, those fetched on a peer's announcement, before their file's
    /// record arrived.
    pub chunks_announced: u64,
    /// Chunks that arrived bad or that a peer lacked.
    pub fetch_errors: u64,
    /// The last fetch error.
    pub fetch_last_error: Option<String>,
    /// Chunks fetched since the last persist, which a crash would lose (and the next start
    /// would fetch again).
    pub fetched_unpersisted: bool,
    /// Concurrent versions resolved (conflict copies and concurrent deletions).
    pub conflicts: u64,
    /// The last connection the listener refused (an untrusted device, a failed handshake).
    pub last_refused: Option<String>,
}

/// What [`Replication::repair`] did.
#[derive(Clone, Debug, Default)]
pub struct Repair {
    /// Chunks fetched again and stored.
    pub fetched: Vec<ChunkId>,
    /// Chunks no peer could send, with why.
    pub failed: Vec<(ChunkId, String)>,
}

/// Running replication of one store: the listener, a session per peer with an address, the
/// fetcher.
pub struct Replication {
    runtime: parking_lot::Mutex<Option<tokio::runtime::Runtime>>,
    node: Arc<node::Node>,
    listen: Option<SocketAddr>,
}

impl Replication {
    /// Starts replicating `vfs` with the peers of `config`, as `identity`.
    ///
    /// # Errors
    /// [`Error::Listen`] when the listen address is taken; TLS configuration errors.
    pub fn start(
        vfs: &Arc<Vfs>,
        identity: &tls::Identity,
        config: &config::Config,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keibi-replication")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let fetcher = fetcher::Fetcher::new(Arc::clone(vfs));
        let node = Arc::new(node::Node::new(
            Arc::clone(vfs),
            Arc::clone(&fetcher),
            &config.peers,
        ));
        let mut listen = None;
        if let Some(address) = config.listen {
            let server_config = Arc::new(tls::server_config(
                identity,
                config.peers.iter().map(|p| p.device),
            )?);
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(address))
                .map_err(|source| Error::Listen { address, source })?;
            listen = listener.local_addr().ok();
            let service = service::Service {
                node: Arc::clone(&node),
            };
            let refused = Arc::clone(&node.refused);
            runtime.spawn(async move {
                let incoming = tokio_stream::wrappers::ReceiverStream::new(transport::accept_loop(
                    listener,
                    server_config,
                    refused,
                ));
                let server = proto::replication_server::ReplicationServer::new(service)
                    .max_decoding_message_size(WIRE_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(WIRE_MESSAGE_BYTES_MAX);
                let result = tonic::transport::Server::builder()
                    .initial_stream_window_size(HTTP2_WINDOW_BYTES)
                    .initial_connection_window_size(HTTP2_WINDOW_BYTES)
                    .http2_keepalive_interval(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS)))
                    .http2_keepalive_timeout(Some(Duration::from_millis(KEEPALIVE_INTERVAL_MS * 2)))
                    .add_service(server)
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = result {
                    tracing::error!("replication server stopped: {e}");
                }
            });
        }
        runtime.block_on(async { fetcher.start() });
        vfs.chunks()
            .set_remote(Some(Arc::new(fetcher::RemoteChunks(Arc::clone(&fetcher)))));
        for peer in &config.peers {
            runtime.spawn(node::run_peer(
                Arc::clone(&node),
                peer.clone(),
                identity.clone(),
            ));
        }
        // Files kept open get their quiet changes committed, so that the notify workers
        // see a record to send.
        let quiet_vfs = Arc::clone(vfs);
        runtime.spawn(async move {
            let quiet = Duration::from_millis(NOTIFY_DEBOUNCE_MS);
            // A failure tried again every poll (a full disk) is logged once, not each time.
            let mut failing: Option<String> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(OPEN_FILES_COMMIT_POLL_MS)).await;
                let vfs = Arc::clone(&quiet_vfs);
                let why = match tokio::task::spawn_blocking(move || vfs.commit_quiet_files(quiet))
                    .await
                {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("committing a file kept open: {e}")),
                    Err(e) => Some(format!("committing files kept open: {e}")),
                };
                if why.is_some() && why != failing {
                    tracing::warn!("{}", why.as_deref().unwrap_or_default());
                }
                failing = why;
            }
        });
        let retry_node = Arc::clone(&node);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(INBOX_RETRY_MS)).await;
                retry_node.retry_inboxes().await;
            }
        });
        Ok(Self {
            runtime: parking_lot::Mutex::new(Some(runtime)),
            node,
            listen,
        })
    }

    /// The address peers connect to (with the port the system chose for port 0).
    #[must_use]
    pub fn listen_address(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Figures for `keibi status`.
    #[must_use]
    pub fn status(&self) -> Status {
        let (queued, in_flight) = self.node.fetcher.pending();
        let s = &self.node.fetcher.stats;
        Status {
            listen: self.listen.map(|a| a.to_string()),
            peers: self.node.peer_status(),
            chunks_missing: (queued + in_flight) as u64,
            chunks_fetched: s.chunks.load(Ordering::Relaxed),
            bytes_fetched: s.bytes.load(Ordering::Relaxed),
            chunks_announced: s.announced.load(Ordering::Relaxed),
            fetch_errors: s.errors.load(Ordering::Relaxed),
            fetch_last_error: self.node.fetcher.last_error(),
            fetched_unpersisted: self.node.fetcher.unpersisted(),
            conflicts: self.node.counters.conflicts.load(Ordering::Relaxed),
            last_refused: self.node.refused.lock().clone(),
        }
    }

    /// Fetches each of `ids` again from a connected peer and stores it, checked against
    /// its hash, in place of the damaged or absent frame (`keibi verify --repair`). Up to
    /// [`REPAIR_FETCHES_MAX`] chunks are fetched at once; a chunk no peer could send is
    /// listed with the reasons. Both lists keep the order of `ids`.
    #[must_use]
    pub fn repair(&self, ids: &[ChunkId]) -> Repair {
        let mut out = Repair::default();
        let Some(handle) = self.runtime.lock().as_ref().map(|rt| rt.handle().clone()) else {
            out.failed = ids
                .iter()
                .map(|id| (*id, "replication has stopped".to_string()))
                .collect();
            return out;
        };
        let fetcher = Arc::clone(&self.node.fetcher);
        let chunks = Arc::clone(self.node.vfs.chunks());
        let wanted = ids.to_vec();
        // Each chunk is stored as it arrives, so at most REPAIR_FETCHES_MAX are held at once;
        // what is kept for the report is each chunk's outcome.
        let mut outcome = handle.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut of_task = std::collections::HashMap::new();
            let mut outcome = std::collections::HashMap::new();
            let mut next = wanted.into_iter();
            loop {
                while tasks.len() < REPAIR_FETCHES_MAX {
                    let Some(id) = next.next() else { break };
                    let f = Arc::clone(&fetcher);
                    let task = tasks.spawn(async move { f.fetch_checked(id).await });
                    of_task.insert(task.id(), id);
                }
                let (id, got) = match tasks.join_next_with_id().await {
                    Some(Ok((task, got))) => (of_task[&task], got),
                    Some(Err(e)) => (of_task[&e.id()], Err(format!("fetch task failed: {e}"))),
                    None => return outcome,
                };
                let stored = got.and_then(|c| {
                    chunks
                        .replace_fetched(id, c.data.to_vec(), &c.cvs)
                        .map_err(|e| format!("storing it: {e}"))
                });
                outcome.insert(id, stored);
            }
        });
        for id in ids {
            match outcome
                .remove(id)
                .unwrap_or_else(|| Err("not fetched".into()))
            {
                Ok(()) => out.fetched.push(*id),
                Err(e) => out.failed.push((*id, e)),
            }
        }
        out
    }

    /// Stops every task and closes every connection.
    pub fn stop(&self) {
        self.node.vfs.chunks().set_remote(None);
        let rt = self.runtime.lock().take();
        if let Some(rt) = rt {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.stop();
    }
}

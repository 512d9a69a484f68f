//! One running replica: the state shared by the service, the per-peer senders and the
//! fetcher, and the sessions (one per peer with an address).
//!
//! A session dials the peer, says Hello (learning the peer's store index id and how far it
//! has applied this store's changes), registers the connection with the fetcher, then runs
//! the notify worker (`notify.rs`) from that point. A failed call ends the session;
//! the peer is dialled again with exponential backoff and the session starts over from the
//! peer's acknowledged sequence (catch-up).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::id::DeviceId;
use crate::limits::{RECONNECT_BACKOFF_MAX_MS, RECONNECT_BACKOFF_MIN_MS, WIRE_MESSAGE_BYTES_MAX};
use crate::vfs::Vfs;

use super::config::Peer;
use super::fetcher::Fetcher;
use super::notify::Sender;
use super::proto::replication_client::ReplicationClient;
use super::service::{Inbox, Inboxes};
use super::{PROTOCOL_VERSION, proto, tls, transport};

/// What this peer knows of one other peer, for `keibi status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    /// Device id.
    pub device: String,
    /// Address dialled, when configured.
    pub address: Option<String>,
    /// Our session to it is up.
    pub connected_out: bool,
    /// It has said Hello to us on a connection it dialled.
    pub connected_in: bool,
    /// Key exchange of the connection (ours to it, else its to us).
    pub key_exchange: Option<String>,
    /// Its store index id, once known.
    pub index_id: Option<u64>,
    /// Highest of our sequence numbers it acknowledged.
    pub acked_seq: u64,
    /// Our sequence numbers after `acked_seq`: changes it may still lack (an upper bound).
    pub pending_records: u64,
    /// Records sent to it and received from it.
    pub records_sent: u64,
    /// Records received from it.
    pub records_received: u64,
    /// Records from it refused as malformed.
    pub rejected: u64,
    /// Bytes sent to it (records and chunks).
    pub sent_bytes: u64,
    /// Bytes received from it (records; chunks are counted by the fetcher).
    pub received_bytes: u64,
    /// Its records waiting here (for a parent, a name, a local commit).
    pub waiting_records: usize,
    /// The last thing that went wrong.
    pub last_error: Option<String>,
}

/// Counters over all peers.
#[derive(Default)]
pub struct Counters {
    /// Concurrent versions resolved.
    pub conflicts: AtomicU64,
}

/// State shared by the service, the sessions and the fetcher.
pub struct Node {
    pub(crate) vfs: Arc<Vfs>,
    pub(crate) index_id: u64,
    pub(crate) fetcher: Arc<Fetcher>,
    pub(crate) counters: Counters,
    peers: Mutex<HashMap<DeviceId, PeerStatus>>,
    inboxes: Mutex<Inboxes>,
    /// Last handshake refused by the listener.
    pub(crate) refused: Arc<Mutex<Option<String>>>,
}

impl Node {
    /// A node over `vfs` trusting `peers`.
    pub fn new(vfs: Arc<Vfs>, fetcher: Arc<Fetcher>, peers: &[Peer]) -> Self {
        let index_id = vfs.tables().index_id();
        let map = peers
            .iter()
            .map(|p| {
                (
                    p.device,
                    PeerStatus {
                        device: p.device.to_string(),
                        address: p.address.clone(),
                        ..PeerStatus::default()
                    },
                )
            })
            .collect();
        Self {
            vfs,
            index_id,
            fetcher,
            counters: Counters::default(),
            peers: Mutex::new(map),
            inboxes: Mutex::new(HashMap::new()),
            refused: Arc::new(Mutex::new(None)),
        }
    }

    /// Updates the status of `device`.
    pub fn with_peer(&self, device: &DeviceId, f: impl FnOnce(&mut PeerStatus)) {
        if let Some(p) = self.peers.lock().get_mut(device) {
            f(p);
        }
    }

    /// Notes a Hello from `device`, whose store is `index_id`.
    pub fn inbound(&self, info: &transport::PeerInfo, index_id: u64) {
        self.with_peer(&info.device, |p| {
            p.connected_in = true;
            p.index_id = Some(index_id);
            if p.key_exchange.is_none() {
                p.key_exchange.clone_from(&info.key_exchange);
            }
        });
    }

    /// The store index id `device` said Hello with.
    pub fn index_of(&self, device: &DeviceId) -> Option<u64> {
        self.peers.lock().get(device).and_then(|p| p.index_id)
    }

    /// The inbox of sender store `index_id`.
    pub fn inbox(&self, index_id: u64) -> Arc<tokio::sync::Mutex<Inbox>> {
        Arc::clone(self.inboxes.lock().entry(index_id).or_default())
    }

    /// Records `error` as the last error of the peer whose store is `origin`.
    fn note_error(&self, origin: u64, error: String) {
        tracing::warn!("peer store {origin:016x}: {error}");
        if let Some(p) = self
            .peers
            .lock()
            .values_mut()
            .find(|p| p.index_id == Some(origin))
        {
            p.last_error = Some(error);
        }
    }

    /// Every sender's inbox, by sender store index id (a snapshot of the map).
    fn inbox_list(&self) -> Vec<(u64, Arc<tokio::sync::Mutex<Inbox>>)> {
        self.inboxes
            .lock()
            .iter()
            .map(|(k, v)| (*k, Arc::clone(v)))
            .collect()
    }

    /// Every peer's status.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let last = self.vfs.tables().last_seq();
        let inboxes = self.inbox_list();
        let mut out: Vec<PeerStatus> = self.peers.lock().values().cloned().collect();
        for p in &mut out {
            p.pending_records = last.saturating_sub(p.acked_seq);
            if let Some((_, ib)) = inboxes.iter().find(|(k, _)| Some(*k) == p.index_id)
                && let Ok(ib) = ib.try_lock()
            {
                p.waiting_records = ib.waiting();
            }
        }
        out.sort_by(|a, b| a.device.cmp(&b.device));
        out
    }

    /// Offers every inbox's waiting records again (for records waiting on a local commit,
    /// which no batch will retry).
    pub async fn retry_inboxes(self: &Arc<Self>) {
        let inboxes = self.inbox_list();
        for (origin, ib) in inboxes {
            let Ok(mut guard) = ib.try_lock_owned() else {
                continue;
            };
            if guard.waiting() == 0 {
                continue;
            }
            let node = Arc::clone(self);
            let missing = tokio::task::spawn_blocking(move || {
                let before = guard.watermark();
                let missing = guard.retry(&node, origin);
                let after = guard.watermark();
                if after != before {
                    let mut b = crate::store::Batch::new();
                    crate::store::tables::Tables::set_peer_applied(&mut b, origin, after);
                    // On failure the stored watermark stays behind: the next batch or
                    // retry writes it again, and a restart re-sends what it covers.
                    if let Err(e) = node
                        .vfs
                        .tables()
                        .backend()
                        .write(b, crate::store::Durability::Buffered)
                    {
                        node.note_error(origin, format!("saving how far it applied: {e}"));
                    }
                }
                missing
            })
            .await
            .unwrap_or_default();
            self.fetcher.enqueue(missing);
        }
    }
}

/// Runs the session with `peer` forever: dial, Hello, send; on failure wait and dial again.
pub async fn run_peer(node: Arc<Node>, peer: Peer, identity: tls::Identity) {
    let Some(address) = peer.address.clone() else {
        return;
    };
    let config = match tls::client_config(&identity, peer.device) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            node.with_peer(&peer.device, |p| p.last_error = Some(e.to_string()));
            return;
        }
    };
    let mut backoff = RECONNECT_BACKOFF_MIN_MS;
    loop {
        let started = Instant::now();
        let result = session(&node, &peer, &address, Arc::clone(&config)).await;
        node.fetcher.remove_source(peer.device);
        node.with_peer(&peer.device, |p| {
            p.connected_out = false;
            if let Err(e) = &result {
                p.last_error = Some(e.clone());
            }
        });
        if let Err(e) = result {
            tracing::info!("peer {} at {address}: {e}", peer.device);
        }
        if started.elapsed() > Duration::from_millis(RECONNECT_BACKOFF_MAX_MS) {
            backoff = RECONNECT_BACKOFF_MIN_MS;
        }
        tokio::time::sleep(Duration::from_millis(backoff)).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX_MS);
    }
}

async fn session(
    node: &Arc<Node>,
    peer: &Peer,
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let (channel, kx) = transport::dial(address, config).await?;
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(WIRE_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(WIRE_MESSAGE_BYTES_MAX);
    let hello = client
        .hello(proto::HelloRequest {
            protocol: PROTOCOL_VERSION,
            index_id: node.index_id,
        })
        .await
        .map_err(|e| format!("Hello: {}", e.message()))?
        .into_inner();
    node.with_peer(&peer.device, |p| {
        p.connected_out = true;
        p.key_exchange = kx;
        p.index_id = Some(hello.index_id);
        p.acked_seq = hello.applied_seq;
        p.last_error = None;
    });
    node.fetcher.add_source(peer.device, client.clone());
    Sender::new(
        Arc::clone(node),
        peer.device,
        hello.index_id,
        client,
        hello.applied_seq,
    )
    .run()
    .await
}

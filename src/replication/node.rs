//! One running replica: the state shared by the service, the per-peer senders and the
//! fetcher, and the sending side (one session per peer with an address).
//!
//! A session dials the peer, says Hello (learning the peer's store index id and how far it
//! has applied this store's changes), registers the connection with the fetcher, then runs
//! the notify worker: it reads the sequence index from that point, holds content changes
//! until their file has been stable for [`NOTIFY_DEBOUNCE_MS`], skips changes that came
//! from that peer, and sends the rest in bounded `BatchNotify` calls. Before each round it
//! announces the whole chunks stored since for files still being written (`Announce`), so
//! the peer can fetch a large file while it is written. A failed call ends the
//! session; the peer is dialled again with exponential backoff and the session starts over
//! from the peer's acknowledged sequence (catch-up).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::id::{DeviceId, FileId};
use crate::limits::{
    NOTIFY_DEBOUNCE_MS, NOTIFY_DELAY_MAX_MS, NOTIFY_HELD_RECORDS_MAX, NOTIFY_POLL_MS,
    NOTIFY_SCAN_RECORDS_MAX, RECONNECT_BACKOFF_MAX_MS, RECONNECT_BACKOFF_MIN_MS,
    WIRE_ANNOUNCE_CHUNKS_MAX, WIRE_BATCH_BYTES_MAX, WIRE_BATCH_RECORDS_MAX, WIRE_MESSAGE_BYTES_MAX,
};
use crate::tree::{FileRecord, Kind, Timestamp};
use crate::vfs::Vfs;

use super::config::Peer;
use super::fetcher::Fetcher;
use super::proto::replication_client::ReplicationClient;
use super::service::{Inbox, Inboxes};
use super::{PROTOCOL_VERSION, proto, tls, transport, wire};

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
    let mut sender = Sender {
        node: Arc::clone(node),
        device: peer.device,
        peer_index: hello.index_id,
        client,
        scanned: hello.applied_seq,
        sent_watermark: hello.applied_seq,
        held: BTreeMap::new(),
        first_held: HashMap::new(),
        caught_up: false,
        announced: Some(node.vfs.announced().end()),
    };
    sender.run().await
}

/// The notify worker of one session.
struct Sender {
    node: Arc<Node>,
    device: DeviceId,
    peer_index: u64,
    client: ReplicationClient<tonic::transport::Channel>,
    /// Highest local sequence read from the index.
    scanned: u64,
    /// Watermark of the last batch sent.
    sent_watermark: u64,
    /// Content changes being debounced: sequence → (file, when its window began: when the
    /// change was made, by [`stable_for`]).
    held: BTreeMap<u64, (FileId, Instant)>,
    /// When each held file was first held (for the maximum delay).
    first_held: HashMap<FileId, Instant>,
    /// What the last batch said.
    caught_up: bool,
    /// Position in the vfs's announced chunks up to which the peer was told; `None` once
    /// it answered that it does not take announcements.
    announced: Option<u64>,
}

/// True for a record that a content change made (a commit sets mtime and ctime together;
/// a rename or mode change moves only ctime).
fn is_content_change(r: &FileRecord) -> bool {
    r.kind == Kind::File && !r.tombstone && r.mtime == r.ctime
}

/// How long the file of content change `r` has been stable at wall-clock time `now`: the
/// time since the change, at most the debounce window. A change made before the worker
/// read it (a catch-up after a reconnect, a worker that fell behind) has waited part or
/// all of its window already. A change dated in the future (a clock set back) counts as
/// just made.
fn stable_for(r: &FileRecord, now: Timestamp) -> Duration {
    let nanos = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
    let age = nanos(now) - nanos(r.ctime);
    let window = Duration::from_millis(NOTIFY_DEBOUNCE_MS);
    match u64::try_from(age) {
        Ok(age) => Duration::from_nanos(age).min(window),
        Err(_) => Duration::ZERO,
    }
}

impl Sender {
    async fn run(&mut self) -> Result<(), String> {
        loop {
            self.announce().await;
            let tables_last = self.node.vfs.tables().last_seq();
            if tables_last > self.scanned || !self.held.is_empty() || !self.caught_up {
                self.round().await?;
            } else {
                tokio::time::sleep(Duration::from_millis(NOTIFY_POLL_MS)).await;
            }
        }
    }

    /// Tells the peer of the whole chunks stored since the last call for files still being
    /// written. Only a hint: a failure is logged and skipped (a broken connection also
    /// fails the next `BatchNotify`, which ends the session).
    async fn announce(&mut self) {
        let Some(mut cursor) = self.announced else {
            return;
        };
        loop {
            let (ids, next) = self
                .node
                .vfs
                .announced()
                .since(cursor, WIRE_ANNOUNCE_CHUNKS_MAX);
            if ids.is_empty() {
                break;
            }
            cursor = next;
            let req = proto::Announcement {
                ids: ids.iter().map(|i| i.0.to_vec()).collect(),
            };
            let bytes = prost::Message::encoded_len(&req) as u64;
            match self.client.announce(req).await {
                Ok(_) => self.node.with_peer(&self.device, |p| p.sent_bytes += bytes),
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    tracing::info!("peer {} takes no announcements", self.device);
                    self.announced = None;
                    return;
                }
                Err(e) => {
                    tracing::debug!("Announce to {}: {}", self.device, e.message());
                    break;
                }
            }
        }
        self.announced = Some(cursor);
    }

    /// One round: read new changes, release what is due, send.
    async fn round(&mut self) -> Result<(), String> {
        let vfs = Arc::clone(&self.node.vfs);
        let after = self.scanned;
        let recs = tokio::task::spawn_blocking(move || {
            vfs.tables().changes_since(after, NOTIFY_SCAN_RECORDS_MAX)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let full_scan = recs.len() >= NOTIFY_SCAN_RECORDS_MAX;
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut out = Vec::new();
        for r in recs {
            self.scanned = self.scanned.max(r.seq);
            if r.origin == self.peer_index {
                continue;
            }
            if is_content_change(&r) && self.held.len() < NOTIFY_HELD_RECORDS_MAX {
                // Held as if seen when the change was made: the window runs from the change.
                let seen = now.checked_sub(stable_for(&r, wall)).unwrap_or(now);
                self.first_held.entry(r.id).or_insert(seen);
                self.held.insert(r.seq, (r.id, seen));
            } else {
                self.first_held.remove(&r.id);
                out.push(r);
            }
        }
        self.release_due(now, &mut out).await?;
        out.sort_by_key(|r| r.seq);
        let watermark = self
            .held
            .keys()
            .next()
            .map_or(self.scanned, |s| s.saturating_sub(1));
        let caught_up = !full_scan;
        if out.is_empty() && watermark == self.sent_watermark && caught_up == self.caught_up {
            if !self.held.is_empty() {
                tokio::time::sleep(Duration::from_millis(NOTIFY_POLL_MS)).await;
            }
            return Ok(());
        }
        self.send(out, watermark, caught_up).await
    }

    /// Moves held records that are due (stable for the debounce window, or held for the
    /// maximum delay) to `out`; drops those a later change superseded.
    async fn release_due(&mut self, now: Instant, out: &mut Vec<FileRecord>) -> Result<(), String> {
        let debounce = Duration::from_millis(NOTIFY_DEBOUNCE_MS);
        let delay_max = Duration::from_millis(NOTIFY_DELAY_MAX_MS);
        let due: Vec<(u64, FileId)> = self
            .held
            .iter()
            .filter(|(_, (id, seen))| {
                now.duration_since(*seen) >= debounce
                    || self
                        .first_held
                        .get(id)
                        .is_some_and(|f| now.duration_since(*f) >= delay_max)
            })
            .map(|(s, (id, _))| (*s, *id))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        // A file changed again since is held under its newer sequence: drop the old entry
        // (a newer held entry for the same file keeps the file unstable).
        let newest: HashMap<FileId, u64> = self.held.iter().map(|(s, (id, _))| (*id, *s)).collect();
        let vfs = Arc::clone(&self.node.vfs);
        let ids: Vec<(u64, FileId)> = due.clone();
        let records = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|(s, id)| vfs.tables().record(id).map(|r| (s, id, r)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for (seq, id, rec) in records {
            if newest.get(&id) != Some(&seq) {
                self.held.remove(&seq);
                continue;
            }
            self.held.remove(&seq);
            self.first_held.remove(&id);
            match rec {
                Some(r) if r.seq == seq => out.push(r),
                // Rewritten since: the scan meets it again under its new sequence.
                Some(_) | None => {}
            }
        }
        // Entries of files that changed again are not due until their newest one is.
        let stale: HashSet<u64> = self
            .held
            .iter()
            .filter(|(s, (id, _))| newest.get(id) != Some(s))
            .map(|(s, _)| *s)
            .collect();
        self.held.retain(|s, _| !stale.contains(s));
        Ok(())
    }

    /// Sends `out` in bounded batches; the last one carries `watermark` and `caught_up`.
    async fn send(
        &mut self,
        out: Vec<FileRecord>,
        watermark: u64,
        caught_up: bool,
    ) -> Result<(), String> {
        let mut batches: Vec<(Vec<proto::Record>, u64)> = Vec::new();
        let mut cur: Vec<proto::Record> = Vec::new();
        let mut cur_bytes = 0;
        for r in &out {
            for part in wire::record_parts(r) {
                let n = wire::part_bytes(&part);
                if !cur.is_empty()
                    && (cur.len() >= WIRE_BATCH_RECORDS_MAX || cur_bytes + n > WIRE_BATCH_BYTES_MAX)
                {
                    // Every record up to the one before this part is in; parts of one
                    // record never straddle a watermark.
                    let upto = cur.last().map_or(0, |p: &proto::Record| p.seq);
                    let upto = if upto == r.seq {
                        upto.saturating_sub(1)
                    } else {
                        upto
                    };
                    batches.push((std::mem::take(&mut cur), upto.min(watermark)));
                    cur_bytes = 0;
                }
                cur_bytes += n;
                cur.push(part);
            }
        }
        batches.push((cur, watermark));
        let count = batches.len();
        for (i, (records, upto)) in batches.into_iter().enumerate() {
            let last = i + 1 == count;
            let n_records = records.len() as u64;
            let bytes: usize = records.iter().map(wire::part_bytes).sum();
            let to_seq = upto.max(self.sent_watermark);
            let batch = proto::Batch {
                index_id: self.node.index_id,
                from_seq: self.sent_watermark,
                to_seq,
                records,
                caught_up: last && caught_up,
            };
            let ack = self
                .client
                .batch_notify(batch)
                .await
                .map_err(|e| format!("BatchNotify: {}", e.message()))?
                .into_inner();
            self.sent_watermark = to_seq;
            self.node.with_peer(&self.device, |p| {
                p.acked_seq = ack.applied_seq;
                p.records_sent += n_records;
                p.sent_bytes += bytes as u64;
            });
        }
        self.caught_up = caught_up;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::FileId;
    use crate::tree::VersionVector;

    fn changed_at(ctime: Timestamp) -> FileRecord {
        FileRecord {
            id: FileId((1 << 127) | 7),
            ino: 9,
            kind: Kind::File,
            parent: FileId::ROOT,
            name: b"a".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            atime: ctime,
            mtime: ctime,
            ctime,
            size: 0,
            manifest: vec![],
            target: vec![],
            subdirs: 0,
            version: VersionVector(vec![(1, 1)]),
            seq: 1,
            tombstone: false,
            origin: 0,
        }
    }

    #[test]
    fn a_change_has_been_stable_since_it_was_made_up_to_the_window() {
        let now = Timestamp {
            secs: 1_000,
            nanos: 900_000_000,
        };
        let window = Duration::from_millis(NOTIFY_DEBOUNCE_MS);
        let at = |secs, nanos| changed_at(Timestamp { secs, nanos });
        // Made 50 ms ago (across a second boundary): 50 ms of its window are over.
        assert_eq!(
            stable_for(&at(1_000, 850_000_000), now),
            Duration::from_millis(50)
        );
        assert_eq!(stable_for(&at(1_000, 900_000_000), now), Duration::ZERO);
        // Made long ago (a catch-up): the whole window is over, so it is due at once.
        assert_eq!(stable_for(&at(10, 0), now), window);
        assert_eq!(stable_for(&at(1_000, 700_000_000), now), window);
        // Dated in the future (a clock set back): waits the whole window from now.
        assert_eq!(stable_for(&at(1_001, 0), now), Duration::ZERO);
        assert!(is_content_change(&at(10, 0)));
    }
}

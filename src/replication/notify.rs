//! The notify worker of one session: it reads the sequence index from the peer's
//! acknowledged sequence on, holds content changes until their file has been stable for
//! [`NOTIFY_DEBOUNCE_MS`], skips changes that came from that peer, and sends the rest in
//! bounded `BatchNotify` calls. Before each round it announces the whole chunks stored since
//! for files still being written (`Announce`), so the peer can fetch a large file while it
//! is written. A failed `BatchNotify` ends the session ([`super::node::run_peer`] dials
//! again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::id::{DeviceId, FileId};
use crate::limits::{
    ANNOUNCED_CHUNKS_KEPT_MAX, NOTIFY_DEBOUNCE_MS, NOTIFY_DELAY_MAX_MS, NOTIFY_HELD_RECORDS_MAX,
    NOTIFY_POLL_MS, NOTIFY_SCAN_RECORDS_MAX, WIRE_ANNOUNCE_CHUNKS_MAX, WIRE_BATCH_BYTES_MAX,
    WIRE_BATCH_RECORDS_MAX,
};
use crate::tree::{FileRecord, Kind, Timestamp};

use super::node::Node;
use super::proto::replication_client::ReplicationClient;
use super::{proto, wire};

/// The notify worker of one session.
pub(super) struct Sender {
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
    /// The worker of a session with `device` (store `peer_index`), which has applied this
    /// store's changes up to `applied`; announcements start after the newest chunk.
    pub(super) fn new(
        node: Arc<Node>,
        device: DeviceId,
        peer_index: u64,
        client: ReplicationClient<tonic::transport::Channel>,
        applied: u64,
    ) -> Self {
        let announced = Some(node.vfs.announced().end());
        Self {
            node,
            device,
            peer_index,
            client,
            scanned: applied,
            sent_watermark: applied,
            held: BTreeMap::new(),
            first_held: HashMap::new(),
            caught_up: false,
            announced,
        }
    }

    /// Runs until a `BatchNotify` fails.
    pub(super) async fn run(&mut self) -> Result<(), String> {
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
        // At most the ring's worth per call, so a writer that keeps storing chunks does not
        // hold back the round.
        for _ in 0..ANNOUNCED_CHUNKS_KEPT_MAX.div_ceil(WIRE_ANNOUNCE_CHUNKS_MAX) {
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
                    // Shown in status; these chunks go unannounced (their records still go).
                    let why = format!("Announce: {}", e.message());
                    tracing::warn!("peer {}: {why}", self.device);
                    self.node
                        .with_peer(&self.device, |p| p.last_error = Some(why));
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
            xattrs: Vec::new(),
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

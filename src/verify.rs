//! `keibi verify`: re-hashes chunks and checks every record, dirent, sequence and inode
//! entry against the others. Every finding is collected (up to a bound, then counted), each
//! with what to do about it; a damaged database is itself a finding, never a panic.
//!
//! Tasks: during the chunk scan, one decode worker per core in a thread scope, fed by the
//! scanning thread through a bounded channel; all are joined before [`run`] returns.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;

use crate::chunk::{Cipher, chunk_count, frame};
use crate::id::{ChunkId, FileId};
use crate::limits::{
    TREE_DEPTH_MAX, VERIFY_BATCH_CHUNKS, VERIFY_FINDINGS_MAX, VERIFY_QUEUE_BATCHES_MAX,
};
use crate::store::{Backend, Cf, keys};
use crate::tree::{FileRecord, Kind};

/// One problem verify found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Short machine-readable kind, such as `corrupt-chunk`.
    pub kind: &'static str,
    /// What it concerns: a chunk id, a file id and path, a key.
    pub subject: String,
    /// What is wrong.
    pub detail: String,
    /// What to do about it.
    pub advice: &'static str,
}

/// The result of a verify run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Findings, up to [`VERIFY_FINDINGS_MAX`].
    pub findings: Vec<Finding>,
    /// All findings, including those past the bound.
    pub findings_total: u64,
    /// Chunks re-hashed.
    pub chunks_checked: u64,
    /// Plaintext bytes re-hashed.
    pub chunk_bytes_checked: u64,
    /// Records checked.
    pub records_checked: u64,
    /// Percentage of chunks re-hashed.
    pub sample_percent: u8,
    /// Stored chunks that no record references and no index entry lists: left by a commit
    /// that a crash or a full disk interrupted between flushing chunk bodies and their index
    /// (see `ChunkStore::persist_unlogged`). Harmless, so not a finding.
    pub orphan_chunks: u64,
    /// Chunks whose frame is damaged or absent, which `--repair` fetches again from a peer
    /// (at most [`VERIFY_FINDINGS_MAX`]).
    #[serde(skip)]
    pub refetch: Vec<ChunkId>,
}

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Re-hash only this percentage of chunks (1 to 100), chosen by hash.
    pub sample_percent: u8,
    /// Show a progress bar on standard error when it is a terminal.
    pub progress: bool,
}

const ADVICE_RESTORE: &str = "the files that use this chunk read as errors: run `keibi verify --repair` while the mount runs to fetch it again from a peer, or copy the files back from a backup";
const ADVICE_DAMAGED: &str = "the database files are damaged (disk or filesystem fault): copy the home directory elsewhere, check the disk, and restore the store from a peer or backup";
const ADVICE_TREE: &str = "the file tree is inconsistent: report it as a keibi bug with this output; files outside the damaged entries are unaffected";
const ADVICE_INDEX: &str = "an index entry disagrees with the data it indexes: report it as a keibi bug; `keibi gc` and reads may misjudge this chunk until fixed";
const ADVICE_JOURNAL: &str = "stale journal entries: the next `keibi mount` folds or drops them";

struct Collector {
    report: Mutex<Report>,
    refetch: Mutex<HashSet<ChunkId>>,
}

impl Collector {
    /// Notes that chunk `id` needs a good copy from a peer.
    fn refetch(&self, id: ChunkId) {
        let mut r = self.refetch.lock();
        if r.len() < VERIFY_FINDINGS_MAX {
            r.insert(id);
        }
    }
    fn add(&self, kind: &'static str, subject: String, detail: String, advice: &'static str) {
        let mut r = self.report.lock();
        r.findings_total += 1;
        if r.findings.len() < VERIFY_FINDINGS_MAX {
            r.findings.push(Finding {
                kind,
                subject,
                detail,
                advice,
            });
        }
    }
    fn damaged(&self, what: &str, e: &impl std::fmt::Display) {
        self.add(
            "store-damaged",
            what.to_string(),
            e.to_string(),
            ADVICE_DAMAGED,
        );
    }
}

fn sampled(id: &[u8], percent: u8) -> bool {
    percent >= 100 || (u32::from(id[0]) << 8 | u32::from(id[1])) < u32::from(percent) * 65536 / 100
}

fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if show && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("verify {bar:40} {pos}/{len} chunks {per_sec} {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    }
}

/// Runs every check. Never fails: what cannot be read is a finding.
#[must_use]
pub fn run(backend: &dyn Backend, cipher: Option<&Cipher>, opts: Options) -> Report {
    let c = Collector {
        report: Mutex::new(Report {
            sample_percent: opts.sample_percent.clamp(1, 100),
            ..Report::default()
        }),
        refetch: Mutex::new(HashSet::new()),
    };
    let index = check_chunk_index(backend, &c);
    let stored = check_chunks(backend, cipher, opts, index.len() as u64, &c);
    for id in index.difference(&stored) {
        c.refetch(*id);
        c.add(
            "missing-chunk-frame",
            id.to_string(),
            "indexed but its frame is absent".into(),
            ADVICE_RESTORE,
        );
    }
    let unindexed: HashSet<ChunkId> = stored.difference(&index).copied().collect();
    let referenced = check_tree(backend, &index, &unindexed, &c);
    let mut orphans = 0;
    for id in &unindexed {
        if referenced.contains(id) {
            c.add(
                "unindexed-chunk",
                id.to_string(),
                "frame present and referenced, without an index entry".into(),
                ADVICE_INDEX,
            );
        } else {
            orphans += 1;
        }
    }
    let mut report = c.report.into_inner();
    report.orphan_chunks = orphans;
    report.refetch = c.refetch.into_inner().into_iter().collect();
    report.refetch.sort();
    report
}

fn check_chunk_index(backend: &dyn Backend, c: &Collector) -> HashSet<ChunkId> {
    let mut index = HashSet::new();
    let r = backend.scan(Cf::ChunkIndex, &[], None, &mut |k, v| {
        match (keys::chunk_id(k), keys::parse_chunk_info(v)) {
            (Ok(id), Ok(_)) => {
                index.insert(id);
            }
            (Err(e), _) | (_, Err(e)) => c.add(
                "bad-index-entry",
                data_encoding::HEXLOWER.encode(k),
                e.to_string(),
                ADVICE_INDEX,
            ),
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("chunk_index", &e);
    }
    index
}

/// Re-hashes sampled chunks on all cores; returns the ids of every stored frame.
fn check_chunks(
    backend: &dyn Backend,
    cipher: Option<&Cipher>,
    opts: Options,
    total: u64,
    c: &Collector,
) -> HashSet<ChunkId> {
    let bar = progress_bar(opts.progress, total);
    let checked = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let mut stored = HashSet::new();
    // The scanning thread decodes too whenever the queue is full, so one worker fewer than
    // cores keeps every core busy.
    let workers = std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .max(2)
        - 1;
    let check = |batch: Vec<(ChunkId, Vec<u8>)>| {
        for (id, frame_bytes) in batch {
            match frame::decode(&id, &frame_bytes, cipher) {
                Ok(data) => {
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    c.refetch(id);
                    c.add(
                        "corrupt-chunk",
                        id.to_string(),
                        e.to_string(),
                        ADVICE_RESTORE,
                    );
                }
            }
            checked.fetch_add(1, Ordering::Relaxed);
        }
    };
    std::thread::scope(|s| {
        let (tx, rx) =
            crossbeam_channel::bounded::<Vec<(ChunkId, Vec<u8>)>>(VERIFY_QUEUE_BATCHES_MAX);
        for _ in 0..workers {
            let rx = rx.clone();
            let check = &check;
            s.spawn(move || {
                for batch in rx {
                    check(batch);
                }
            });
        }
        drop(rx);
        let mut batch: Vec<(ChunkId, Vec<u8>)> = Vec::with_capacity(VERIFY_BATCH_CHUNKS);
        // The chunk whose parts may follow its head in key order, and whether it is checked:
        // a frame stored in parts is put back together before it is decoded.
        let mut current: Option<(ChunkId, bool)> = None;
        let r = backend.scan(Cf::Chunks, &[], None, &mut |k, v| {
            if k.len() == keys::CHUNK_PIECE_KEY_BYTES {
                match current {
                    Some((id, checked)) if k[..32] == id.0 => {
                        if let Some((_, frame)) = batch.last_mut().filter(|_| checked) {
                            frame.extend_from_slice(v);
                        }
                    }
                    _ => c.add(
                        "orphan-chunk-piece",
                        data_encoding::HEXLOWER.encode(k),
                        "a piece of a chunk whose head is not stored".into(),
                        ADVICE_INDEX,
                    ),
                }
                return ControlFlow::Continue(());
            }
            let Ok(id) = keys::chunk_id(k) else {
                current = None;
                c.add(
                    "bad-chunk-key",
                    data_encoding::HEXLOWER.encode(k),
                    "not a 32-byte hash".into(),
                    ADVICE_INDEX,
                );
                return ControlFlow::Continue(());
            };
            if batch.len() >= VERIFY_BATCH_CHUNKS {
                match tx.try_send(std::mem::take(&mut batch)) {
                    Ok(()) => {}
                    Err(
                        crossbeam_channel::TrySendError::Full(b)
                        | crossbeam_channel::TrySendError::Disconnected(b),
                    ) => check(b),
                }
            }
            stored.insert(id);
            bar.inc(1);
            let checked = sampled(k, opts.sample_percent);
            current = Some((id, checked));
            if checked {
                batch.push((id, v.to_vec()));
            }
            ControlFlow::Continue(())
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        if let Err(e) = r {
            c.damaged("chunks", &e);
        }
    });
    bar.finish_and_clear();
    let mut r = c.report.lock();
    r.chunks_checked = checked.load(Ordering::Relaxed);
    r.chunk_bytes_checked = bytes.load(Ordering::Relaxed);
    stored
}

/// What the tree checks keep of each record.
struct Node {
    parent: FileId,
    name: Vec<u8>,
    kind: Kind,
    tombstone: bool,
    seq: u64,
    ino: u64,
    subdirs: u32,
}

fn path_of(nodes: &HashMap<FileId, Node>, id: FileId) -> String {
    let mut parts = Vec::new();
    let mut cur = id;
    for _ in 0..TREE_DEPTH_MAX {
        match nodes.get(&cur) {
            Some(n) if cur != FileId::ROOT => {
                parts.push(String::from_utf8_lossy(&n.name).into_owned());
                cur = n.parent;
            }
            Some(_) | None => break,
        }
    }
    parts.reverse();
    format!("{id} (/{})", parts.join("/"))
}

/// Checks records and the tree; returns which of the `unindexed` chunks records reference.
fn check_tree(
    backend: &dyn Backend,
    index: &HashSet<ChunkId>,
    unindexed: &HashSet<ChunkId>,
    c: &Collector,
) -> HashSet<ChunkId> {
    let mut referenced = HashSet::new();
    let mut nodes: HashMap<FileId, Node> = HashMap::new();
    let mut missing: Vec<(FileId, ChunkId)> = Vec::new();
    let r = backend.scan(Cf::Files, &[], None, &mut |k, v| {
        match FileRecord::decode(v) {
            Ok(rec) => {
                if keys::file_id(k).ok() != Some(rec.id) {
                    c.add(
                        "record-key-mismatch",
                        data_encoding::HEXLOWER.encode(k),
                        format!("record says id {}", rec.id),
                        ADVICE_TREE,
                    );
                }
                if rec.kind == Kind::File
                    && rec.manifest.len() as u64 != chunk_count(rec.size)
                    && !rec.tombstone
                {
                    c.add(
                        "manifest-length",
                        rec.id.to_string(),
                        "manifest does not match size".into(),
                        ADVICE_TREE,
                    );
                }
                for id in &rec.manifest {
                    if unindexed.contains(id) {
                        referenced.insert(*id);
                    } else if !index.contains(id) {
                        missing.push((rec.id, *id));
                    }
                }
                nodes.insert(
                    rec.id,
                    Node {
                        parent: rec.parent,
                        name: rec.name,
                        kind: rec.kind,
                        tombstone: rec.tombstone,
                        seq: rec.seq,
                        ino: rec.ino,
                        subdirs: rec.subdirs,
                    },
                );
            }
            Err(e) => c.add(
                "bad-record",
                data_encoding::HEXLOWER.encode(k),
                e.0,
                ADVICE_TREE,
            ),
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("files", &e);
    }
    c.report.lock().records_checked = nodes.len() as u64;
    for (file, chunk) in missing {
        c.refetch(chunk);
        c.add(
            "missing-chunk",
            path_of(&nodes, file),
            format!("needs chunk {chunk}, which is not stored"),
            ADVICE_RESTORE,
        );
    }
    check_dirents(backend, &nodes, c);
    check_seq_and_inodes(backend, &nodes, c);
    referenced
}

fn check_dirents(backend: &dyn Backend, nodes: &HashMap<FileId, Node>, c: &Collector) {
    let mut named: HashMap<FileId, u32> = HashMap::new();
    let mut child_dirs: HashMap<FileId, u32> = HashMap::new();
    let r = backend.scan(Cf::Dirents, &[], None, &mut |k, v| {
        let (Ok((parent, name)), Ok(child)) = (keys::parse_dirent(k), keys::file_id(v)) else {
            c.add(
                "bad-dirent",
                data_encoding::HEXLOWER.encode(k),
                "malformed".into(),
                ADVICE_TREE,
            );
            return ControlFlow::Continue(());
        };
        match nodes.get(&parent) {
            Some(p) if p.kind == Kind::Dir && !p.tombstone => {}
            Some(_) | None => c.add(
                "dirent-bad-parent",
                path_of(nodes, child),
                format!("listed in {parent}, which is not a live directory"),
                ADVICE_TREE,
            ),
        }
        match nodes.get(&child) {
            Some(n) if !n.tombstone && n.parent == parent && n.name == name => {
                *named.entry(child).or_default() += 1;
                if n.kind == Kind::Dir {
                    *child_dirs.entry(parent).or_default() += 1;
                }
            }
            Some(_) => c.add(
                "dirent-mismatch",
                path_of(nodes, child),
                format!(
                    "entry {:?} in {parent} disagrees with the record",
                    String::from_utf8_lossy(name)
                ),
                ADVICE_TREE,
            ),
            None => c.add(
                "dirent-dangling",
                format!("{parent}/{}", String::from_utf8_lossy(name)),
                format!("points to missing record {child}"),
                ADVICE_TREE,
            ),
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("dirents", &e);
    }
    for (id, n) in nodes {
        if n.tombstone {
            continue;
        }
        if *id != FileId::ROOT && named.get(id).copied().unwrap_or(0) != 1 {
            c.add(
                "orphan",
                path_of(nodes, *id),
                "live record without exactly one directory entry".into(),
                ADVICE_TREE,
            );
        }
        if n.kind == Kind::Dir && child_dirs.get(id).copied().unwrap_or(0) != n.subdirs {
            c.add(
                "subdir-count",
                path_of(nodes, *id),
                format!(
                    "records {} subdirectories, has {}",
                    n.subdirs,
                    child_dirs.get(id).copied().unwrap_or(0)
                ),
                ADVICE_TREE,
            );
        }
        let mut cur = *id;
        let mut reached = false;
        for _ in 0..TREE_DEPTH_MAX {
            if cur == FileId::ROOT {
                reached = true;
                break;
            }
            match nodes.get(&cur) {
                Some(p) => cur = p.parent,
                None => break,
            }
        }
        if !reached {
            c.add(
                "unreachable",
                path_of(nodes, *id),
                "parent chain does not reach the root (cycle or missing parent)".into(),
                ADVICE_TREE,
            );
        }
    }
}

fn check_seq_and_inodes(backend: &dyn Backend, nodes: &HashMap<FileId, Node>, c: &Collector) {
    let mut seen_seq: HashSet<FileId> = HashSet::new();
    let r = backend.scan(Cf::Seq, &[], None, &mut |k, v| {
        match (keys::be_u64(k), keys::file_id(v)) {
            (Ok(seq), Ok(id)) => match nodes.get(&id) {
                Some(n) if n.seq == seq => {
                    seen_seq.insert(id);
                }
                Some(n) => c.add(
                    "seq-stale",
                    path_of(nodes, id),
                    format!("sequence entry {seq}, record has {}", n.seq),
                    ADVICE_INDEX,
                ),
                None => c.add(
                    "seq-dangling",
                    format!("seq {seq}"),
                    format!("points to missing record {id}"),
                    ADVICE_INDEX,
                ),
            },
            (Err(e), _) | (_, Err(e)) => c.add(
                "bad-seq-entry",
                data_encoding::HEXLOWER.encode(k),
                e.to_string(),
                ADVICE_INDEX,
            ),
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("seq", &e);
    }
    for id in nodes.keys().filter(|id| !seen_seq.contains(id)) {
        c.add(
            "seq-missing",
            path_of(nodes, *id),
            "record has no sequence entry: peers would not learn of it".into(),
            ADVICE_INDEX,
        );
    }
    let r = backend.scan(Cf::Inodes, &[], None, &mut |k, v| {
        match (keys::be_u64(k), keys::file_id(v)) {
            (Ok(ino), Ok(id)) if nodes.get(&id).is_some_and(|n| n.ino == ino) => {}
            (Ok(ino), _) => c.add(
                "inode-mismatch",
                format!("inode {ino}"),
                "inode map entry disagrees with the records".into(),
                ADVICE_INDEX,
            ),
            (Err(e), _) => c.add(
                "bad-inode-entry",
                data_encoding::HEXLOWER.encode(k),
                e.to_string(),
                ADVICE_INDEX,
            ),
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("inodes", &e);
    }
    let r = backend.scan(Cf::Journal, &[], None, &mut |k, _| {
        if let Ok((file, _, _)) = keys::parse_journal(k) {
            if nodes.get(&file).is_none_or(|n| n.tombstone) {
                c.add(
                    "stale-journal",
                    file.to_string(),
                    "journal entry for a deleted or unknown file".into(),
                    ADVICE_JOURNAL,
                );
            }
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = r {
        c.damaged("journal", &e);
    }
}

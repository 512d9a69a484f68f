//! Replication between two (and three) peers in one process, over real TLS on 127.0.0.1, driving each
//! peer's filesystem core directly (no mount): catch-up, rename and append cost, conflicts,
//! refused devices, lying peers, and randomized schedules that must converge.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

mod peers;

use std::sync::Arc;
use std::time::Duration;

use keibi::id::{ChunkId, ROOT_INO};
use keibi::testing::{ME, noise, wait_until};
use keibi::tree::Kind;
use keibi::vfs::{OpenFlags, XattrSet};
use peers::{Peer, converge, pair};

#[test]
fn a_file_written_on_one_peer_appears_on_the_other_with_its_mode() {
    let (a, b) = pair();
    a.mkdir("/dir");
    let data = noise(3 << 20, 1);
    a.write("/dir/f.bin", &data);
    let ino = a.ino("/dir/f.bin").expect("exists");
    a.vfs
        .setattr(
            ino,
            &keibi::vfs::SetAttr {
                mode: Some(0o755),
                ..Default::default()
            },
        )
        .expect("chmod");
    assert!(wait_until(20, || b.read("/dir/f.bin").as_deref() == Some(&data[..])));
    converge(&a, &b, 20);
    let attr = b
        .vfs
        .getattr(b.ino("/dir/f.bin").expect("exists"))
        .expect("attr");
    assert_eq!(attr.perm, 0o755);
    let st = a.status();
    assert!(st.peers[0].connected_out, "{st:#?}");
    assert_eq!(st.peers[0].key_exchange.as_deref(), Some("X25519MLKEM768"));
}

#[test]
fn rename_moves_no_data_and_append_fetches_one_chunk() {
    let (a, b) = pair();
    let data = noise(4 << 20, 2);
    a.write("/big", &data);
    assert!(wait_until(30, || b.read("/big").as_deref() == Some(&data[..])));
    let fetched = b.status().chunks_fetched;
    assert_eq!(fetched, 8, "4 MiB is 8 chunks");
    let sent = a.status().peers[0].sent_bytes;

    assert!(a.rename("/big", "/renamed"));
    assert!(wait_until(20, || b.ino("/renamed").is_some()
        && b.ino("/big").is_none()));
    assert_eq!(
        b.status().chunks_fetched,
        fetched,
        "a rename fetched chunks"
    );
    let rename_bytes = a.status().peers[0].sent_bytes - sent;
    assert!(rename_bytes < 4096, "a rename sent {rename_bytes} bytes");

    a.append("/renamed", b"twenty bytes of tail");
    let mut want = data.clone();
    want.extend_from_slice(b"twenty bytes of tail");
    assert!(wait_until(20, || b.read("/renamed").as_deref() == Some(&want[..])));
    assert_eq!(
        b.status().chunks_fetched,
        fetched + 1,
        "an append fetched more than one chunk"
    );
}

#[test]
fn extended_attributes_replicate_without_moving_data() {
    let (a, b) = pair();
    let data = noise(2 << 20, 3);
    a.write("/tagged", &data);
    assert!(wait_until(30, || b.read("/tagged").as_deref() == Some(&data[..])));
    let (fetched, sent) = (b.status().chunks_fetched, a.status().peers[0].sent_bytes);
    let ino_a = a.ino("/tagged").expect("on A");
    a.vfs
        .setxattr(ino_a, b"user.tag", b"blue", XattrSet::Any)
        .expect("setxattr");
    let ino_b = b.ino("/tagged").expect("on B");
    assert!(wait_until(20, || b.vfs.getxattr(ino_b, b"user.tag").ok()
        == Some(b"blue".to_vec())));
    assert_eq!(
        b.status().chunks_fetched,
        fetched,
        "an attribute fetched chunks"
    );
    let bytes = a.status().peers[0].sent_bytes - sent;
    assert!(bytes < 4096, "an attribute sent {bytes} bytes");
    // Removed on B, gone on A; the content untouched on both.
    b.vfs.removexattr(ino_b, b"user.tag").expect("removexattr");
    assert!(wait_until(20, || a.vfs.listxattr(ino_a).ok() == Some(Vec::new())));
    assert_eq!(a.read("/tagged").as_deref(), Some(&data[..]));
    assert_eq!(b.read("/tagged").as_deref(), Some(&data[..]));
}

#[test]
fn a_sparse_file_reaches_the_peer_without_its_holes_being_fetched() {
    let (a, b) = pair();
    let c = keibi::limits::CHUNK_BYTES;
    // Data in the first and the tenth chunk; the eight between are holes.
    let mut data = vec![0u8; 10 * c];
    data[..c].copy_from_slice(&noise(c, 21));
    data[9 * c..].copy_from_slice(&noise(c, 22));
    let (_, fh) = a
        .vfs
        .create(ROOT_INO, b"sparse.img", 0o644, ME, OpenFlags::default())
        .expect("create");
    a.vfs.write(fh, 0, &data[..c]).expect("write");
    a.vfs
        .write(fh, 9 * c as u64, &data[9 * c..])
        .expect("write");
    a.vfs.release(fh).expect("release");
    assert!(wait_until(30, || b.read("/sparse.img").as_deref() == Some(&data[..])));
    assert_eq!(b.status().chunks_fetched, 2, "only the two chunks of data");
}

#[test]
fn chunks_of_a_file_still_being_written_reach_the_peer_before_its_record() {
    let (a, b) = pair();
    // Announcements go on sessions that are up (a session starts after the newest chunk).
    assert!(wait_until(20, || dialled_all(&a, 1) && dialled_all(&b, 1)));
    let data = noise(4 << 20, 5);
    let (_, fh) = a
        .vfs
        .create(ROOT_INO, b"growing.bin", 0o644, ME, OpenFlags::default())
        .expect("create");
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        a.vfs.write(fh, (i as u64) << 20, piece).expect("write");
    }
    let ids: Vec<ChunkId> = data
        .chunks(keibi::limits::CHUNK_BYTES)
        .map(ChunkId::of)
        .collect();
    // A keeps writing (its last byte, unchanged), so the file is never quiet long enough to
    // be committed while open.
    let writing = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            let last = data.len() - 1;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                a.vfs
                    .write(fh, last as u64, &data[last..])
                    .expect("rewrite");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let _stop = StopOnDrop(&writing);
        ahead_of_the_record(&b, &ids);
    });

    a.vfs.release(fh).expect("release");
    assert!(wait_until(20, || b.read("/growing.bin").as_deref() == Some(&data[..])));
    assert_eq!(b.status().chunks_fetched, 8, "a chunk was fetched twice");
}

/// Clears the flag when dropped, a failed assertion included, so a looping thread ends.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Checks, while the file of chunks `ids` is still being written on the other peer, that
/// `b` has them all ahead of its record, and that a gc on `b` keeps them.
fn ahead_of_the_record(b: &Peer, ids: &[ChunkId]) {
    // The file is still open and uncommitted on A: its chunks go ahead of its record.
    assert!(
        wait_until(20, || ids.iter().all(|id| b
            .vfs
            .chunks()
            .contains(id)
            .unwrap_or(false))),
        "the chunks of an open file never reached B: {:?}",
        b.status()
    );
    let st = b.status();
    assert_eq!(st.chunks_announced, 8, "{st:?}");
    let on_b = b
        .ino("/growing.bin")
        .map(|i| b.vfs.getattr(i).expect("attr").size);
    assert!(
        on_b.is_none_or(|size| size == 0),
        "B has the file's content already: {on_b:?}"
    );
    // A gc on B meanwhile keeps them, though no record references them yet.
    let swept = keibi::gc::GcPlan::compute(b.vfs.chunks(), &|| b.vfs.staged_chunks())
        .and_then(keibi::gc::GcPlan::execute)
        .expect("gc on B");
    assert_eq!(swept.deleted_chunks, 0, "{swept:?}");
}

/// True when `p` has a session up to each of `n` peers.
fn dialled_all(p: &Peer, n: usize) -> bool {
    let st = p.status();
    st.peers.len() == n && st.peers.iter().all(|q| q.connected_out)
}

#[test]
fn a_chunk_is_fetched_from_the_peer_that_has_it() {
    // A and B connect first, so each is the other's first source. C joins later and alone
    // has the file: asking only the first source, A and B would ask each other forever.
    let mut a = Peer::new();
    let mut b = Peer::new();
    let mut c = Peer::new();
    a.start(&[&b, &c]);
    b.start(&[&a, &c]);
    assert!(wait_until(20, || {
        a.status().peers.iter().filter(|p| p.connected_out).count() == 1
            && b.status().peers.iter().filter(|p| p.connected_out).count() == 1
    }));
    c.start(&[&a, &b]);
    assert!(wait_until(30, || dialled_all(&a, 2)
        && dialled_all(&b, 2)
        && dialled_all(&c, 2)));
    let data = noise(3 << 20, 9);
    c.write("/from-c", &data);
    for (name, p) in [("A", &a), ("B", &b)] {
        assert!(
            wait_until(30, || p.read("/from-c").as_deref() == Some(&data[..])),
            "{name} did not get C's file: {:?}",
            p.status()
        );
    }
    converge(&a, &c, 20);
    converge(&b, &c, 20);
}

fn verify(p: &Peer) -> keibi::verify::Report {
    keibi::verify::run(
        p.vfs.tables().backend().as_ref(),
        p.vfs.chunks().cipher(),
        keibi::verify::Options {
            sample_percent: 100,
            progress: false,
        },
    )
}

fn kinds(r: &keibi::verify::Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.kind).collect()
}

#[test]
fn verify_repair_fetches_damaged_and_lost_chunks_again_from_a_peer() {
    use keibi::store::{Batch, Cf, Durability, keys};
    let (mut a, b) = pair();
    let data = noise(3 << 20, 21);
    a.write("/f", &data);
    assert!(wait_until(30, || b.read("/f").as_deref() == Some(&data[..])));
    let clean = verify(&b);
    assert_eq!(clean.findings_total, 0, "{:?}", clean.findings);
    // On B: one piece of one chunk damaged, and every part of another chunk lost (its
    // index entry kept).
    let backend = Arc::clone(b.vfs.tables().backend());
    let mut parts = Vec::new();
    backend
        .scan(Cf::Chunks, &[], None, &mut |k, v| {
            parts.push((k.to_vec(), v.to_vec()));
            std::ops::ControlFlow::Continue(())
        })
        .expect("scan");
    let (piece_key, mut piece) = parts
        .iter()
        .find(|(k, _)| k.len() == keys::CHUNK_PIECE_KEY_BYTES)
        .cloned()
        .expect("a chunk stored in parts");
    let damaged = &piece_key[..32];
    let lost = parts
        .iter()
        .map(|(k, _)| &k[..32])
        .find(|id| *id != damaged)
        .expect("a second chunk")
        .to_vec();
    piece[40] ^= 0x55;
    let mut batch = Batch::new();
    batch.put(Cf::Chunks, piece_key.clone(), piece);
    for (k, _) in parts.iter().filter(|(k, _)| k[..32] == lost[..]) {
        batch.delete(Cf::Chunks, k.clone());
    }
    backend.write(batch, Durability::Synced).expect("damage");
    let found = verify(&b);
    assert!(
        kinds(&found).contains(&"corrupt-chunk"),
        "{:?}",
        found.findings
    );
    assert!(
        kinds(&found).contains(&"missing-chunk-frame"),
        "{:?}",
        found.findings
    );
    assert_eq!(found.refetch.len(), 2, "{:?}", found.refetch);
    let rep_b = b.rep.as_ref().expect("running");
    let done = rep_b.repair(&found.refetch);
    assert_eq!(done.fetched.len(), 2, "{:?}", done.failed);
    let after = verify(&b);
    assert_eq!(after.findings_total, 0, "{:?}", after.findings);
    assert_eq!(b.read("/f").as_deref(), Some(&data[..]));
    // With the only peer gone, a repair changes nothing and says why.
    let mut batch = Batch::new();
    let mut piece = backend
        .get(Cf::Chunks, &piece_key)
        .expect("get")
        .expect("piece");
    piece[40] ^= 0x55;
    batch.put(Cf::Chunks, piece_key.clone(), piece);
    backend
        .write(batch, Durability::Synced)
        .expect("damage again");
    a.stop();
    let found = verify(&b);
    let done = rep_b.repair(&found.refetch);
    assert!(done.fetched.is_empty());
    assert_eq!(done.failed.len(), 1, "{:?}", done.failed);
    let why = &done.failed[0].1;
    assert!(
        why.contains("no peer") || why.contains(&a.device().to_string()),
        "{why}"
    );
    assert!(kinds(&verify(&b)).contains(&"corrupt-chunk"));
}

#[test]
fn a_same_size_change_propagates() {
    let (a, b) = pair();
    a.write("/f", b"version one");
    assert!(wait_until(20, || b.read("/f").as_deref() == Some(&b"version one"[..])));
    a.write("/f", b"version two");
    assert!(wait_until(20, || b.read("/f").as_deref() == Some(&b"version two"[..])));
    // And back the other way.
    b.write("/f", b"version 3!!");
    assert!(wait_until(20, || a.read("/f").as_deref() == Some(&b"version 3!!"[..])));
    converge(&a, &b, 10);
}

#[test]
fn a_restarted_peer_catches_up() {
    let (mut a, mut b) = pair();
    a.write("/before", b"seen live");
    assert!(wait_until(20, || b.read("/before").is_some()));
    b.stop();
    a.mkdir("/d");
    for i in 0..50 {
        a.write(&format!("/d/f{i}"), format!("file {i}").as_bytes());
    }
    assert!(a.rename("/before", "/d/after"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(b.ino("/d").is_none(), "b changed while stopped");
    b.start(&[&a]);
    converge(&a, &b, 30);
    a.stop();
    b.write("/from-b", b"while a was away");
    a.start(&[&b]);
    converge(&a, &b, 30);
    assert_eq!(a.read("/from-b").as_deref(), Some(&b"while a was away"[..]));
}

#[test]
fn concurrent_edits_keep_both_versions_under_the_same_names() {
    let (mut a, mut b) = pair();
    a.write("/doc.txt", b"base");
    assert!(wait_until(20, || b.read("/doc.txt").is_some()));
    a.stop();
    b.stop();
    a.write("/doc.txt", b"edited on a");
    b.write("/doc.txt", b"edited on b, later");
    // The same name made independently on both sides.
    a.write("/new.txt", b"new on a");
    b.write("/new.txt", b"new on b");
    a.start(&[&b]);
    b.start(&[&a]);
    converge(&a, &b, 30);
    let (tree, contents) = a.contents();
    for want in [
        &b"edited on a"[..],
        b"edited on b, later",
        b"new on a",
        b"new on b",
    ] {
        assert!(
            contents.iter().any(|c| c == want),
            "{:?} lost: {tree:#?}",
            String::from_utf8_lossy(want)
        );
    }
    assert!(tree.keys().any(|p| p.contains(".conflict-")), "{tree:#?}");
    assert_eq!(tree.len(), 4, "{tree:#?}");
}

#[test]
fn an_unknown_device_is_refused_in_the_handshake() {
    let mut a = Peer::new();
    let mut stranger = Peer::new();
    let friend = Peer::new();
    // a trusts only `friend`; the stranger dials a anyway, claiming nothing.
    a.start(&[&friend]);
    stranger.start(&[&a]);
    stranger.write("/x", b"should not arrive");
    assert!(wait_until(20, || a.status().last_refused.is_some()));
    let st = stranger.status();
    assert!(!st.peers[0].connected_out);
    assert!(a.ino("/x").is_none());
}

#[test]
fn randomized_concurrent_schedules_converge_without_losing_writes() {
    // A small deterministic generator: each seed is one schedule. KEIBI_SCHEDULE_SEEDS=A..B
    // runs seeds A to B instead of 1 to 16 (to hunt for rare interleavings).
    let seeds = std::env::var("KEIBI_SCHEDULE_SEEDS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some(a.parse::<u64>().ok()?..=b.parse::<u64>().ok()?)
        })
        .unwrap_or(1..=16);
    for seed in seeds {
        let (mut a, mut b) = pair();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for d in 0..3 {
            a.mkdir(&format!("/d{d}"));
        }
        converge(&a, &b, 20);
        // Every write: (step, peer, file id, path, content); every deletion: (step, file id).
        let mut writes: Vec<(usize, usize, keibi::id::FileId, String, Vec<u8>)> = Vec::new();
        let mut deletes: Vec<(usize, keibi::id::FileId)> = Vec::new();
        // What happened, printed when the trees do not converge.
        let mut log: Vec<String> = Vec::new();
        for step in 0..120 {
            if next(20) == 0 {
                // A disconnect: both stop, work apart for a while, come back.
                a.stop();
                b.stop();
                log.push(format!("{step}: disconnect"));
            } else if a.rep.is_none() && next(4) == 0 {
                a.start(&[&b]);
                b.start(&[&a]);
                log.push(format!("{step}: reconnect"));
            }
            let who = usize::try_from(next(2)).expect("small");
            let p = if who == 0 { &a } else { &b };
            let dir = format!("/d{}", next(3));
            let file = format!("{dir}/f{}", next(6));
            match next(7) {
                0..=2 => {
                    let data = format!("seed {seed} step {step} by {who}").into_bytes();
                    // A write counts when its file still exists after the close: a peer's
                    // deletion may have removed it in the meantime.
                    let written = p
                        .try_write(&file, &data)
                        .and_then(|ino| p.vfs.tables().file_of_ino(ino).expect("inode map"));
                    if let Some(id) = written {
                        writes.push((step, who, id, file.clone(), data));
                    }
                }
                3 => {
                    let to = format!("/d{}/f{}", next(3), next(6));
                    if p.ino(&to).is_none() && p.rename(&file, &to) {
                        log.push(format!("{step}: {who} renamed {file} to {to}"));
                    }
                }
                4 => {
                    // Delete a file (a directory is left alone: it may hold files).
                    if let Some(id) = p.unlink(&file) {
                        log.push(format!("{step}: {who} deleted {file}"));
                        deletes.push((step, id));
                    }
                }
                5 => {
                    // Tag a file: a change of metadata alone, sent at once.
                    let tag = format!("step {step} by {who}");
                    if let Some(ino) = p.ino(&file)
                        && p.vfs
                            .setxattr(ino, b"user.tag", tag.as_bytes(), XattrSet::Any)
                            .is_ok()
                    {
                        log.push(format!("{step}: {who} tagged {file}"));
                    }
                }
                _ => {
                    // Move a directory under another one, or back to the root.
                    let from = format!("/d{}", next(3));
                    let to = format!("/d{}/d{}", next(3), next(3));
                    if p.rename(&from, &to) {
                        log.push(format!("{step}: {who} moved {from} to {to}"));
                    }
                }
            }
        }
        if a.rep.is_none() {
            a.start(&[&b]);
            b.start(&[&a]);
        }
        if !wait_until(60, || a.tree() == b.tree()) {
            print_divergence(seed, &log, &a, &b);
            converge(&a, &b, 0);
        }
        let (tree, contents) = a.contents();
        // A write that no later write to the same file could have replaced, and no later
        // deletion of it removed, must survive somewhere (under its name, a new one, or a
        // conflict name): concurrent edits keep both versions, a change beats a concurrent
        // deletion, renames move content without touching it.
        for (step, who, id, path, data) in &writes {
            let replaced = writes.iter().any(|(s, _, i, _, _)| s > step && i == id)
                || deletes.iter().any(|(s, i)| s > step && i == id);
            if !replaced {
                assert!(
                    contents.contains(data),
                    "seed {seed}: the last write of {path} by peer {who} at step {step} was lost: {tree:#?}"
                );
            }
        }
    }
}

/// What a randomized schedule did, and every directory record of both peers.
fn print_divergence(seed: u64, log: &[String], a: &Peer, b: &Peer) {
    eprintln!("seed {seed}: the trees did not converge. Moves and deletions:");
    for line in log {
        eprintln!("  {line}");
    }
    eprintln!("Directory records:");
    for (label, p) in [("A", a), ("B", b)] {
        p.vfs
            .tables()
            .for_each_record(&mut |r| {
                if r.kind == Kind::Dir {
                    eprintln!(
                        "  {label} {:?} parent {:?} name {:?} tomb {} version {:?}",
                        r.id,
                        r.parent,
                        String::from_utf8_lossy(&r.name),
                        r.tombstone,
                        r.version
                    );
                }
                true
            })
            .expect("records");
    }
}

/// A file that stays open (a database, a log): its changes are committed once quiet for the
/// debounce window and reach the peer without a close.
#[test]
fn changes_of_a_file_kept_open_reach_the_peer() {
    let (a, b) = pair();
    let (_, fh) = a
        .vfs
        .create(ROOT_INO, b"db.sqlite", 0o644, ME, OpenFlags::default())
        .expect("create");
    let first = noise(700_000, 41);
    a.vfs.write(fh, 0, &first).expect("write");
    a.vfs.fsync(fh).expect("fsync");
    assert!(
        wait_until(20, || b.read("/db.sqlite").as_deref() == Some(&first[..])),
        "an fsynced file that stays open never reached B: {:?}",
        b.status()
    );
    // A page rewritten in place and fsynced, the file still open.
    a.vfs.write(fh, 4096, &[9u8; 4096]).expect("rewrite a page");
    a.vfs.fsync(fh).expect("fsync");
    let mut second = first.clone();
    second[4096..8192].fill(9);
    assert!(
        wait_until(20, || b.read("/db.sqlite").as_deref() == Some(&second[..])),
        "an in-place rewrite of a file kept open never reached B"
    );
    // Appended without an fsync, as a log is: it goes once quiet for the debounce window.
    a.vfs
        .write(fh, second.len() as u64, b"a line of log\n")
        .expect("append");
    let mut third = second.clone();
    third.extend_from_slice(b"a line of log\n");
    assert!(
        wait_until(20, || b.read("/db.sqlite").as_deref() == Some(&third[..])),
        "an append to a file kept open never reached B"
    );
    a.vfs.release(fh).expect("release");
}

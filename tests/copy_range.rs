//! `copy_file_range`: a copy that starts on chunk boundaries references the stored chunks
//! (nothing read, written, stored or fetched by peers); any other copy moves the bytes. Both
//! leave the same content. Driven through the vfs core, between two peers, and with `cp` on
//! a real mount.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

#[expect(dead_code, reason = "this file uses part of the shared mount harness")]
mod mounted;
#[expect(dead_code, reason = "this file uses part of the peer harness")]
mod peers;

use keibi::id::ROOT_INO;
use keibi::limits::{CHUNK_BYTES, CHUNK_BYTES_U64};
use keibi::store::Cf;
use keibi::testing::{self as common, BoxError, ME, noise, wait_until};
use keibi::vfs::{OpenFlags, Vfs};

type TestResult = Result<(), BoxError>;

/// Copies `len` bytes between two open files as `cp` does: until a call copies nothing.
/// Returns the byte count of each call.
fn copy_all(v: &Vfs, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> Vec<u64> {
    let mut calls = Vec::new();
    let mut done = 0;
    while done < len {
        let n = v
            .copy_range(fh_in, off_in + done, fh_out, off_out + done, len - done)
            .expect("copy_range");
        if n == 0 {
            break;
        }
        calls.push(n);
        done += n;
    }
    calls
}

fn chunks_stored(fx: &common::Fixture) -> usize {
    common::count_entries(fx.backend.as_ref(), Cf::ChunkIndex).expect("scan")
}

#[test]
fn a_copy_on_chunk_boundaries_references_the_stored_chunks() -> TestResult {
    let fx = common::mem()?;
    let v = &fx.vfs;
    let data = noise(6 * CHUNK_BYTES + 1234, 11);
    let src = common::put_file(v, ROOT_INO, "src", &data)?;
    let stored = chunks_stored(&fx);
    let fh_in = v.open(src, OpenFlags::default())?;
    let (dst, fh_out) = v.create(ROOT_INO, b"dst", 0o644, ME, OpenFlags::default())?;
    let calls = copy_all(v, fh_in, 0, fh_out, 0, u64::MAX / 2);
    assert_eq!(
        calls,
        [data.len() as u64],
        "one call, every chunk referenced"
    );
    v.release(fh_out)?;
    v.release(fh_in)?;
    assert_eq!(common::read_all(v, dst.ino)?, data);
    assert_eq!(chunks_stored(&fx), stored, "the copy stored chunks");
    let id = |ino| {
        v.tables()
            .file_of_ino(ino)
            .ok()
            .flatten()
            .and_then(|id| v.tables().record(id).ok().flatten())
            .map(|r| r.manifest)
    };
    assert_eq!(id(dst.ino), id(src), "the copy's manifest is the source's");
    Ok(())
}

#[test]
fn copies_off_chunk_boundaries_and_over_unsealed_writes_move_bytes() -> TestResult {
    let fx = common::mem()?;
    let v = &fx.vfs;
    let data = noise(3 * CHUNK_BYTES + 77, 12);
    let src = common::put_file(v, ROOT_INO, "src", &data)?;
    let fh_in = v.open(src, OpenFlags::default())?;

    // Offsets at different places within a chunk: bytes, a megabyte a call at most.
    let (shifted, fh) = v.create(ROOT_INO, b"shifted", 0o644, ME, OpenFlags::default())?;
    let calls = copy_all(v, fh_in, 0, fh, 100, data.len() as u64);
    assert!(calls.iter().all(|n| *n <= 1 << 20), "{calls:?}");
    v.release(fh)?;
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&data);
    assert_eq!(common::read_all(v, shifted.ino)?, want);

    // The same place within a chunk: bytes up to the boundary, then chunks.
    let (same_phase, fh) = v.create(ROOT_INO, b"same-phase", 0o644, ME, OpenFlags::default())?;
    let calls = copy_all(v, fh_in, 1000, fh, 1000, data.len() as u64 - 1000);
    assert_eq!(calls[0], CHUNK_BYTES_U64 - 1000, "{calls:?}");
    assert_eq!(calls.len(), 2, "{calls:?}");
    v.release(fh)?;
    let mut want = vec![0u8; 1000];
    want.extend_from_slice(&data[1000..]);
    assert_eq!(common::read_all(v, same_phase.ino)?, want);

    // The input's short last chunk into the middle of a longer file: bytes, since the chunk
    // would not end the file; the rest of the file stays.
    let long = noise(5 * CHUNK_BYTES, 13);
    let long_ino = common::put_file(v, ROOT_INO, "long", &long)?;
    let fh = v.open(long_ino, OpenFlags::default())?;
    copy_all(v, fh_in, 3 * CHUNK_BYTES_U64, fh, CHUNK_BYTES_U64, 77);
    v.release(fh)?;
    let mut want = long.clone();
    want[CHUNK_BYTES..CHUNK_BYTES + 77].copy_from_slice(&data[3 * CHUNK_BYTES..]);
    assert_eq!(common::read_all(v, long_ino)?, want);

    // Writes to the input not yet sealed are copied as they read.
    v.write(fh_in, 5, b"fresh")?;
    let (fresh, fh) = v.create(ROOT_INO, b"fresh", 0o644, ME, OpenFlags::default())?;
    copy_all(v, fh_in, 0, fh, 0, data.len() as u64);
    v.release(fh)?;
    let mut want = data.clone();
    want[5..10].copy_from_slice(b"fresh");
    assert_eq!(common::read_all(v, fresh.ino)?, want);
    v.release(fh_in)?;
    Ok(())
}

/// The copy's record reaches the peer and reads the same there. The peer already has every
/// chunk the copy references, so it fetches nothing; a copy by bytes would dedup to the same
/// chunks, so this checks the record a reference copy commits, not that no bytes moved
/// (the mount test below checks that).
#[test]
fn a_copy_reaches_the_peer_without_fetching_anything() {
    let (a, b) = peers::pair();
    let data = noise(4 * CHUNK_BYTES, 14);
    a.write("/orig", &data);
    assert!(wait_until(30, || b.read("/orig").as_deref() == Some(&data[..])));
    let fetched = b.status().chunks_fetched;
    let src = a.ino("/orig").expect("on A");
    let fh_in = a.vfs.open(src, OpenFlags::default()).expect("open");
    let (_, fh_out) = a
        .vfs
        .create(ROOT_INO, b"copy", 0o644, ME, OpenFlags::default())
        .expect("create");
    copy_all(&a.vfs, fh_in, 0, fh_out, 0, data.len() as u64);
    a.vfs.release(fh_out).expect("release");
    a.vfs.release(fh_in).expect("release");
    assert!(wait_until(20, || b.read("/copy").as_deref() == Some(&data[..])));
    assert_eq!(
        b.status().chunks_fetched,
        fetched,
        "the copy fetched chunks"
    );
}

#[test]
fn cp_on_a_mount_copies_without_moving_the_bytes() {
    if !mounted::fuse_available("cp_on_a_mount_copies_without_moving_the_bytes") {
        return;
    }
    let m = mounted::Mount::new();
    let data = noise(20 * CHUNK_BYTES + 5, 15);
    let (src, dst) = (m.path().join("src.bin"), m.path().join("dst.bin"));
    std::fs::write(&src, &data).expect("write");
    // What the mount process has read: every request from /dev/fuse, with the data of
    // each write. A copy by bytes reads the whole file again as writes.
    let read_by_mount = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", m.pid())).expect("/proc/PID/io");
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("rchar")
    };
    let before = read_by_mount();
    // coreutils' cp copies with copy_file_range.
    let out = std::process::Command::new("cp")
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = read_by_mount() - before;
    assert!(
        read < 1 << 20,
        "the mount read {read} bytes for a copy of {}",
        data.len()
    );
    assert!(
        std::fs::read(&dst).expect("read copy") == data,
        "the copy differs"
    );
    m.stop();
}
#[test]
fn a_hole_not_yet_committed_is_copied_as_zeros() -> TestResult {
    // Written past before any commit, the hole has no zero chunk stored for it yet, so it
    // cannot be referenced: it is copied as the zeros it reads as.
    let fx = common::mem()?;
    let v = &fx.vfs;
    let (sparse, fh_in) = v.create(ROOT_INO, b"sparse", 0o644, ME, OpenFlags::default())?;
    v.write(fh_in, 3 * CHUNK_BYTES_U64, b"end")?;
    let (copy, fh_out) = v.create(ROOT_INO, b"copy", 0o644, ME, OpenFlags::default())?;
    copy_all(v, fh_in, 0, fh_out, 0, 2 * CHUNK_BYTES_U64);
    v.release(fh_out)?;
    // Read while the input is still open: its commit would store the zero chunk.
    assert_eq!(common::read_all(v, copy.ino)?, vec![0u8; 2 * CHUNK_BYTES]);
    v.release(fh_in)?;
    assert_eq!(v.getattr(sparse.ino)?.size, 3 * CHUNK_BYTES_U64 + 3);
    Ok(())
}

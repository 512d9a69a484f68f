//! Filesystem core benchmarks over a real encrypted store: sequential write and read of
//! 1 GiB in 1 MiB writes and 128 KiB reads (the sizes FUSE uses), and 4 KiB random writes
//! with an fsync every 64; lookup in small and large directories; applying a peer's record of
//! a large file whose chunks are all missing.
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use keibi::id::ROOT_INO;
use keibi::limits::CHUNK_BYTES;
use keibi::testing::{self, ME, noise};
use keibi::vfs::{OpenFlags, Vfs};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const GIB: usize = 1 << 30;
const WRITE_BYTES: usize = 1 << 20;
const READ_BYTES: u32 = 128 * 1024;

/// Writes 1 GiB as `name` in 1 MiB writes and closes it; each 512 KiB piece of `pool` is
/// stamped with `pass` so that nothing dedups against an earlier pass.
fn write_gib(v: &Vfs, name: &str, pool: &[u8], pass: u64) -> u64 {
    let (attr, fh) = v
        .create(ROOT_INO, name.as_bytes(), 0o644, ME, OpenFlags::default())
        .expect("create");
    let mut buf = vec![0u8; WRITE_BYTES];
    for i in 0..GIB / WRITE_BYTES {
        let off = (i * WRITE_BYTES) % pool.len();
        buf.copy_from_slice(&pool[off..off + WRITE_BYTES]);
        for (k, piece) in buf.chunks_mut(CHUNK_BYTES).enumerate() {
            piece[..8].copy_from_slice(&(pass << 32 | (i * 2 + k) as u64).to_le_bytes());
        }
        v.write(fh, (i * WRITE_BYTES) as u64, &buf).expect("write");
    }
    v.release(fh).expect("release");
    attr.ino
}

fn sequential(c: &mut Criterion) {
    let pool = noise(64 << 20, 1);
    let mut g = c.benchmark_group("vfs");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(GIB as u64));
    // Each pass writes into a new store (made and removed outside the timing), as a user
    // writing a 1 GiB file to a fresh mount would.
    let mut pass = 0;
    g.bench_function("sequential write 1GiB (new store)", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let fx = testing::rocks(dir.path()).expect("fixture");
                (dir, fx)
            },
            |(dir, fx)| {
                pass += 1;
                write_gib(&fx.vfs, "big", &pool, pass);
                (dir, fx)
            },
            BatchSize::PerIteration,
        );
    });
    // The same in one store that keeps every pass's file: the store grows by 1 GiB a pass.
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = testing::rocks(dir.path()).expect("fixture");
    g.bench_function("sequential write 1GiB (growing store)", |b| {
        b.iter(|| {
            pass += 1;
            write_gib(&fx.vfs, &format!("w{pass}"), &pool, pass);
        });
    });
    let ino = write_gib(&fx.vfs, "read", &pool, 0);
    let v = &fx.vfs;
    g.bench_function("sequential read 1GiB", |b| {
        b.iter(|| {
            let fh = v.open(ino, OpenFlags::default()).expect("open");
            let mut off = 0u64;
            loop {
                let got = v.read(fh, off, READ_BYTES).expect("read");
                if got.is_empty() {
                    break;
                }
                off += got.len() as u64;
            }
            v.release(fh).expect("release");
            assert_eq!(off, GIB as u64);
        });
    });
    g.finish();
}

fn random_small_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = testing::rocks(dir.path()).expect("fixture");
    let v = &fx.vfs;
    let size = 64 << 20;
    let ino = testing::put_file(v, ROOT_INO, "db", &noise(size, 5)).expect("file");
    let fh = v.open(ino, OpenFlags::default()).expect("open");
    let page = noise(4096, 6);
    let mut x = 12345u64;
    let mut g = c.benchmark_group("vfs");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64 random 4KiB writes + fsync", |b| {
        b.iter(|| {
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (size as u64 / 4096)) * 4096;
                v.write(fh, off, &page).expect("write");
            }
            v.fsync(fh).expect("fsync");
        });
    });
    g.finish();
    v.release(fh).expect("release");
}

/// Lookup and getattr of one name in directories of 10 and 100,000 entries: the time must
/// not grow with the directory (one keyed read of the entry, one of its record).
fn lookup_by_directory_size(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = testing::rocks(dir.path()).expect("fixture");
    let v = &fx.vfs;
    let mut g = c.benchmark_group("vfs lookup");
    for entries in [10usize, 100_000] {
        let d = v
            .mkdir(ROOT_INO, format!("d{entries}").as_bytes(), 0o755, ME)
            .expect("mkdir")
            .ino;
        for i in 0..entries {
            v.mknod(
                d,
                format!("file-{i:06}").as_bytes(),
                keibi::tree::Kind::File,
                0o644,
                ME,
                0,
            )
            .expect("mknod");
        }
        let probe = format!("file-{:06}", entries / 2);
        g.bench_function(format!("lookup in a directory of {entries}"), |b| {
            b.iter(|| v.lookup(d, probe.as_bytes()).expect("lookup"));
        });
    }
    g.finish();
}

/// What the core spends on each small file a `git checkout` writes: create, one 16 KiB
/// write, flush (the close's commit) and release, each timed on its own over 1,000 files
/// per sample. FUSE round trips come on top (tools/bench-mount.sh).
fn small_file_steps(c: &mut Criterion) {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = testing::rocks(dir.path()).expect("fixture");
    let v = &fx.vfs;
    let body = noise(16 * 1024, 9);
    let mut next = 0u64;
    let mut g = c.benchmark_group("vfs small file");
    g.throughput(Throughput::Elements(1));
    for step in ["create", "write 16 KiB", "flush", "release"] {
        g.bench_function(step, |b| {
            b.iter_custom(|n| {
                let mut spent = Duration::ZERO;
                for _ in 0..n {
                    next += 1;
                    let mut data = body.clone();
                    data[..8].copy_from_slice(&next.to_le_bytes());
                    let name = format!("f{next:08}");
                    let t = Instant::now();
                    let (_, fh) = v
                        .create(ROOT_INO, name.as_bytes(), 0o644, ME, OpenFlags::default())
                        .expect("create");
                    let created = t.elapsed();
                    let t = Instant::now();
                    v.write(fh, 0, &data).expect("write");
                    let written = t.elapsed();
                    let t = Instant::now();
                    v.flush(fh).expect("flush");
                    let flushed = t.elapsed();
                    let t = Instant::now();
                    v.release(fh).expect("release");
                    let released = t.elapsed();
                    spent += match step {
                        "create" => created,
                        "write 16 KiB" => written,
                        "flush" => flushed,
                        _ => released,
                    };
                }
                spent
            });
        });
    }
    g.finish();
}

/// Applying a peer's record of a 10 GiB file whose 20,480 chunks this store lacks: each is
/// checked against the store and queued once.
fn apply_large_manifest(c: &mut Criterion) {
    use keibi::id::{ChunkId, FileId};
    use keibi::tree::{FileRecord, Kind, Timestamp, VersionVector};
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = testing::rocks(dir.path()).expect("fixture");
    let chunks = 20_480u64;
    let mut g = c.benchmark_group("vfs apply");
    g.sample_size(10);
    let mut next = 0u128;
    g.bench_function("record of a 10 GiB file, every chunk missing", |b| {
        b.iter_batched(
            || {
                next += 1;
                FileRecord {
                    id: FileId((1 << 126) | next),
                    ino: 0,
                    kind: Kind::File,
                    parent: keibi::id::FileId::ROOT,
                    name: format!("big-{next}").into_bytes(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    atime: Timestamp::now(),
                    mtime: Timestamp::now(),
                    ctime: Timestamp::now(),
                    size: chunks * CHUNK_BYTES as u64,
                    manifest: (0..chunks)
                        .map(|i| {
                            ChunkId::of(&[next.to_le_bytes(), u128::from(i).to_le_bytes()].concat())
                        })
                        .collect(),
                    target: Vec::new(),
                    subdirs: 0,
                    version: VersionVector(vec![(7, 1)]),
                    seq: 1,
                    tombstone: false,
                    origin: 0,
                    xattrs: Vec::new(),
                }
            },
            |r| fx.vfs.apply_remote(7, &r, true).expect("apply"),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(
    benches,
    sequential,
    random_small_writes,
    lookup_by_directory_size,
    small_file_steps,
    apply_large_manifest
);
criterion_main!(benches);

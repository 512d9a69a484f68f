//! Storage benchmarks: hashing, frames, RocksDB puts and gets of 512 KiB values, verify.
//! Raw BLAKE3 and zstd figures are measured beside keibi's own for comparison.
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use keibi::chunk::{ChunkStore, Cipher, frame};
use keibi::id::ChunkId;
use keibi::limits::CHUNK_BYTES;
use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Cf, keys};
use keibi::testing::noise;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Text-like data that zstd compresses about 4:1.
fn compressible(len: usize) -> Vec<u8> {
    let words = noise(4096, 77);
    let mut out = Vec::with_capacity(len);
    let mut i = 0usize;
    while out.len() < len {
        let start = (i * 131) % 4000;
        out.extend_from_slice(&words[start..start + 24]);
        out.extend_from_slice(b" the quick brown fox jumps over\n");
        i += 1;
    }
    out.truncate(len);
    out
}

fn hashing(c: &mut Criterion) {
    let data = noise(CHUNK_BYTES, 1);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    g.bench_function("blake3 512KiB", |b| {
        b.iter(|| ChunkId::of(black_box(&data)));
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let cipher = Cipher::new(&[5u8; 32]).expect("cipher");
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    for (kind, data) in [
        ("text", compressible(CHUNK_BYTES)),
        ("random", noise(CHUNK_BYTES, 2)),
    ] {
        let id = ChunkId::of(&data);
        let raw = zstd::bulk::compress(&data, 1).expect("zstd");
        g.bench_function(format!("zstd-1 decode raw {kind}"), |b| {
            b.iter(|| zstd::bulk::decompress(black_box(&raw), CHUNK_BYTES).expect("decode"));
        });
        for enc in [false, true] {
            let c = enc.then_some(&cipher);
            let label = if enc { "aes" } else { "plain" };
            g.bench_function(format!("encode {kind} {label}"), |b| {
                b.iter(|| frame::encode(&id, black_box(&data), c).expect("encode"));
            });
            let f = frame::encode(&id, &data, c).expect("encode");
            g.bench_function(format!("decode+hash {kind} {label}"), |b| {
                b.iter(|| frame::decode(&id, black_box(&f), c).expect("decode"));
            });
        }
    }
    g.finish();
}

fn rocks_put_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn Backend> = Arc::new(RocksBackend::open(dir.path(), true).expect("open"));
    let store = ChunkStore::new(Arc::clone(&backend), None);
    let base = noise(CHUNK_BYTES, 3);
    let mut n = 0u64;
    let mut g = c.benchmark_group("rocksdb");
    g.throughput(Throughput::Bytes(CHUNK_BYTES as u64));
    g.bench_function("chunk put 512KiB (unique)", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut d = base.clone();
                d[..8].copy_from_slice(&n.to_le_bytes());
                d
            },
            |d| store.put(&d).expect("put"),
            BatchSize::SmallInput,
        );
    });
    let ids: Vec<ChunkId> = (0..256u64)
        .map(|i| {
            let mut d = base.clone();
            d[8..16].copy_from_slice(&i.to_le_bytes());
            store.put(&d).expect("put")
        })
        .collect();
    backend.flush().expect("flush");
    let mut i = 0;
    // 256 chunks read in turn: each read misses the 64-entry cache.
    g.bench_function("chunk get 512KiB (uncached)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            store.get(&ids[i]).expect("get")
        });
    });
    g.bench_function("chunk read 4KiB (uncached)", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            i = (i + 1) % ids.len();
            out.clear();
            store
                .read_range(&ids[i], 200_000, 204_096, &mut out)
                .expect("read");
        });
    });
    // Incompressible chunks are stored in parts: one piece is what a small read fetches.
    g.bench_function("raw get 64KiB piece", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            backend
                .get(Cf::Chunks, &keys::chunk_piece(&ids[i], 3))
                .expect("get")
                .expect("piece")
        });
    });
    g.finish();
}

fn verify_scan(c: &mut Criterion) {
    let chunks = 512u64;
    let text = compressible(CHUNK_BYTES);
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(chunks * CHUNK_BYTES as u64));
    // The yardstick: raw zstd decoding plus BLAKE3 of the same chunks on every core, with
    // no store, framing or encryption around them.
    let compressed: Vec<Vec<u8>> = (0..chunks)
        .map(|i| {
            let mut d = text.clone();
            d[..8].copy_from_slice(&i.to_le_bytes());
            zstd::bulk::compress(&d, 1).expect("zstd")
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    g.bench_function("raw zstd decode + blake3 256MiB, all cores", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for part in compressed.chunks(compressed.len().div_ceil(cores)) {
                    s.spawn(move || {
                        for z in part {
                            let d = zstd::bulk::decompress(z, CHUNK_BYTES).expect("decode");
                            black_box(ChunkId::of(&d));
                        }
                    });
                }
            });
        });
    });
    for enc in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend: Arc<dyn Backend> =
            Arc::new(RocksBackend::open(dir.path(), true).expect("open"));
        let cipher = enc.then(|| Cipher::new(&[5u8; 32]).expect("cipher"));
        let store = ChunkStore::new(
            Arc::clone(&backend),
            enc.then(|| Cipher::new(&[5u8; 32]).expect("cipher")),
        );
        for i in 0..chunks {
            let mut d = text.clone();
            d[..8].copy_from_slice(&i.to_le_bytes());
            store.put(&d).expect("put");
        }
        backend.flush().expect("flush");
        let label = if enc { "aes" } else { "plain" };
        g.bench_function(format!("scan 256MiB text {label}"), |b| {
            b.iter(|| {
                let r = keibi::verify::run(
                    backend.as_ref(),
                    cipher.as_ref(),
                    keibi::verify::Options {
                        sample_percent: 100,
                        progress: false,
                    },
                );
                assert_eq!(r.findings_total, 0);
            });
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, frames, rocks_put_get, verify_scan);
criterion_main!(benches);

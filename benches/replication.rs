//! Replication benchmark: two peers in one process over real TLS on 127.0.0.1, each with an
//! encrypted RocksDB store. Peer A holds a file of 256 MiB of incompressible data; each pass
//! starts a peer B with an empty store and times it until every chunk of the file has been
//! fetched, checked and stored (the fetch path alone: no mount, no reader).
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose setup fails has nothing to measure"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keibi::id::ROOT_INO;
use keibi::limits::CHUNK_BYTES;
use keibi::replication::config::{Config, Peer as PeerConf};
use keibi::replication::tls::Identity;
use keibi::replication::{Replication, Status};
use keibi::testing::{free_port, noise, put_file};
use keibi::vfs::Vfs;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const FILE_BYTES: usize = 256 << 20;
/// A pass that has not finished by then has stalled: the benchmark fails rather than waits.
const PASS_TIMEOUT: Duration = Duration::from_secs(120);

struct Peer {
    _dir: tempfile::TempDir,
    vfs: Arc<Vfs>,
    identity: Identity,
    port: u16,
}

impl Peer {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(
            std::env::var_os("KEIBI_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()),
        )
        .expect("tempdir");
        let (identity, vfs) = keibi::testing::peer_home(dir.path()).expect("a new home");
        Self {
            _dir: dir,
            vfs,
            identity,
            port: free_port().expect("free port"),
        }
    }

    fn start(&self, other: &Self) -> Replication {
        let config = Config {
            listen: Some(format!("127.0.0.1:{}", self.port).parse().expect("addr")),
            peers: vec![PeerConf {
                device: other.identity.device(),
                address: Some(format!("127.0.0.1:{}", other.port)),
            }],
        };
        // The previous pass's listener may hold the port for a moment after its stop.
        for _ in 0..50 {
            match Replication::start(&self.vfs, &self.identity, &config) {
                Ok(r) => return r,
                Err(keibi::replication::Error::Listen { .. }) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("start: {e}"),
            }
        }
        panic!("port {} stayed taken for 5 s", self.port);
    }
}

fn fetched(s: &Status, chunks: u64) -> bool {
    s.chunks_missing == 0 && s.chunks_fetched >= chunks
}

fn fetch(c: &mut Criterion) {
    let a = Peer::new();
    put_file(&a.vfs, ROOT_INO, "big", &noise(FILE_BYTES, 7)).expect("write");
    let chunks = FILE_BYTES.div_ceil(CHUNK_BYTES) as u64;
    let mut g = c.benchmark_group("replication");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(FILE_BYTES as u64));
    g.bench_function("fetch 256MiB into an empty peer", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let b = Peer::new();
                let rep_a = a.start(&b);
                let start = Instant::now();
                let rep_b = b.start(&a);
                while !fetched(&rep_b.status(), chunks) {
                    assert!(
                        start.elapsed() < PASS_TIMEOUT,
                        "B stalled: {:?}",
                        rep_b.status()
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                total += start.elapsed();
                rep_b.stop();
                rep_a.stop();
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, fetch);
criterion_main!(benches);

//! A trusted peer that lies, over real TLS on 127.0.0.1: peer A replicates normally; peer C
//! is this test, speaking the protocol by hand. C sends a batch in which most records are
//! malformed (`..`, `/` and NUL in names, a manifest that does not match the size), then a
//! message larger than the protocol allows, and answers A's first request for a chunk with
//! bytes that do not hash to it. A must refuse each bad part, apply the good record, survive
//! the oversized message, never store the wrong bytes, and end with the right content once
//! C stops lying. Announcements too: malformed ones are refused, and one of a chunk C then
//! lacks is dropped without an error.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keibi::home::{Home, InitOptions};
use keibi::id::{ChunkId, DeviceId, FileId, ROOT_INO};
use keibi::replication::config::{Config, Peer as PeerConf};
use keibi::replication::proto::{self, replication_client::ReplicationClient};
use keibi::replication::tls::{self, Identity};
use keibi::replication::{Replication, transport};
use keibi::testing::{free_port, read_all, wait_until};
use keibi::vfs::Vfs;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// C's store index id (anything but A's).
const C_INDEX: u64 = 0x00C0_FFEE_0000_0001;
const CONTENT: &[u8] = b"the real content of good.txt\n";
/// Content of a file whose chunk C never has.
const NEVER: &[u8] = b"content no peer can deliver\n";

fn identity(dir: &std::path::Path) -> Identity {
    let home = Home::new(dir);
    home.init(InitOptions { encrypt: true }).expect("init");
    Identity::load(&home).expect("identity")
}

/// C's server: answers Hello and acknowledges batches; serves `CONTENT` for its chunk, but
/// the first `lies` requests get other bytes under the same id.
struct Liar {
    lies: u64,
    served: Arc<AtomicU64>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl proto::replication_server::Replication for Liar {
    async fn hello(
        &self,
        _: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloReply>, Status> {
        Ok(Response::new(proto::HelloReply {
            protocol: keibi::replication::PROTOCOL_VERSION,
            index_id: C_INDEX,
            applied_seq: 0,
        }))
    }

    async fn batch_notify(
        &self,
        req: Request<proto::Batch>,
    ) -> Result<Response<proto::BatchAck>, Status> {
        Ok(Response::new(proto::BatchAck {
            applied_seq: req.get_ref().to_seq,
            rejected: 0,
        }))
    }

    async fn announce(
        &self,
        _: Request<proto::Announcement>,
    ) -> Result<Response<proto::AnnounceAck>, Status> {
        Ok(Response::new(proto::AnnounceAck { queued: 0 }))
    }

    type StreamFileStream = ChunkStream;

    async fn stream_file(
        &self,
        req: Request<proto::ChunkRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let n = self.served.fetch_add(1, Ordering::SeqCst);
        let data: &[u8] = if n < self.lies {
            b"bytes that do not hash to the id asked for"
        } else {
            CONTENT
        };
        let never = ChunkId::of(NEVER).0;
        let msgs: Vec<Result<proto::ChunkData, Status>> = req
            .into_inner()
            .ids
            .into_iter()
            .map(|id| {
                let missing = id == never;
                Ok(proto::ChunkData {
                    id,
                    data: if missing {
                        bytes::Bytes::new()
                    } else {
                        bytes::Bytes::copy_from_slice(data)
                    },
                    missing,
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }
}

fn record(id: u128, name: &[u8], size: u64, manifest: Vec<Vec<u8>>, seq: u64) -> proto::Record {
    proto::Record {
        id: FileId(id).to_be_bytes().to_vec(),
        kind: proto::Kind::File.into(),
        parent: FileId::ROOT.to_be_bytes().to_vec(),
        name: name.to_vec(),
        mode: 0o644,
        mtime_secs: 1_700_000_000,
        ctime_secs: 1_700_000_000,
        size,
        manifest,
        version: vec![proto::VersionEntry {
            index_id: C_INDEX,
            counter: 1,
        }],
        seq,
        ..proto::Record::default()
    }
}

/// The names in the root directory, without reading any file.
fn root_names(vfs: &Vfs) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let entries = vfs.readdir(ROOT_INO, offset).expect("readdir");
        if entries.is_empty() {
            break;
        }
        for e in entries {
            offset = e.offset;
            if e.name != b"." && e.name != b".." {
                names.push(e.name);
            }
        }
    }
    names
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, told in order")]
fn a_lying_peer_is_refused_record_by_record_and_chunk_by_chunk() {
    let (dir_a, dir_c) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (id_a, id_c) = (identity(dir_a.path()), identity(dir_c.path()));
    let (device_a, device_c): (DeviceId, DeviceId) = (id_a.device(), id_c.device());
    let (port_a, port_c) = (
        free_port().expect("free port"),
        free_port().expect("free port"),
    );

    // C listens first, so that A's session to it (its chunk source) comes up at once.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let served = Arc::new(AtomicU64::new(0));
    let server_config = Arc::new(tls::server_config(&id_c, [device_a]).expect("config"));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port_c)))
        .expect("bind C");
    let liar = Liar {
        // The first request is for the announced chunk C does not have (below).
        lies: 3,
        served: Arc::clone(&served),
    };
    rt.spawn(async move {
        let refused = Arc::new(parking_lot::Mutex::new(None));
        let incoming = tokio_stream::wrappers::ReceiverStream::new(transport::accept_loop(
            listener,
            server_config,
            refused,
        ));
        let _ = tonic::transport::Server::builder()
            .add_service(proto::replication_server::ReplicationServer::new(liar))
            .serve_with_incoming(incoming)
            .await;
    });

    // A: a real peer that trusts C and dials it.
    let home_a = Home::new(dir_a.path());
    let store = home_a.open().expect("open");
    let vfs = Arc::new(Vfs::new(store.tables, store.chunks, dir_a.path()).expect("vfs"));
    let config = Config {
        listen: Some(format!("127.0.0.1:{port_a}").parse().expect("addr")),
        peers: vec![PeerConf {
            device: device_c,
            address: Some(format!("127.0.0.1:{port_c}")),
        }],
    };
    let rep = Replication::start(&vfs, &id_a, &config).expect("start A");

    // C dials A and sends a batch: one good record among malformed ones.
    let chunk = ChunkId::of(CONTENT);
    let good = record(
        1 << 100,
        b"good.txt",
        CONTENT.len() as u64,
        vec![chunk.0.to_vec()],
        1,
    );
    let bad = vec![
        record((1 << 100) + 1, b"..", 3, vec![chunk.0.to_vec()], 2),
        record((1 << 100) + 2, b"a/b", 3, vec![chunk.0.to_vec()], 3),
        record((1 << 100) + 3, b"nul\0name", 3, vec![chunk.0.to_vec()], 4),
        // Ten chunks' worth of size, one chunk in the manifest.
        record(
            (1 << 100) + 4,
            b"short.bin",
            10 << 19,
            vec![chunk.0.to_vec()],
            5,
        ),
        // A file id in the reserved range.
        record(7, b"reserved.txt", 3, vec![chunk.0.to_vec()], 6),
    ];
    let never = record(
        (1 << 100) + 5,
        b"never.bin",
        NEVER.len() as u64,
        vec![ChunkId::of(NEVER).0.to_vec()],
        7,
    );
    let client_config = Arc::new(tls::client_config(&id_c, device_a).expect("config"));
    let mut client = rt.block_on(async {
        let (channel, _) = transport::dial(&format!("127.0.0.1:{port_a}"), client_config)
            .await
            .expect("C dials A");
        let mut client = ReplicationClient::new(channel);
        client
            .hello(proto::HelloRequest {
                protocol: keibi::replication::PROTOCOL_VERSION,
                index_id: C_INDEX,
            })
            .await
            .expect("hello");
        let too_many = proto::Announcement {
            ids: vec![chunk.0.to_vec(); keibi::limits::WIRE_ANNOUNCE_CHUNKS_MAX + 1],
        };
        let short = proto::Announcement {
            ids: vec![vec![7; 31]],
        };
        for bad in [too_many, short] {
            let got = client.announce(bad).await;
            assert_eq!(
                got.map(|_| ()).map_err(|e| e.code()),
                Err(tonic::Code::InvalidArgument),
                "a malformed announcement was taken"
            );
        }
        // An announced chunk that C then lacks: A asks once and drops the hint, with no
        // error and nothing left to fetch.
        let ack = client
            .announce(proto::Announcement {
                ids: vec![ChunkId::of(NEVER).0.to_vec()],
            })
            .await
            .expect("announce")
            .into_inner();
        assert_eq!(ack.queued, 1);
        client
    });
    assert!(
        wait_until(30, || served.load(Ordering::SeqCst) >= 1
            && rep.status().chunks_missing == 0),
        "A never asked for the announced chunk: {:?}",
        rep.status()
    );
    let status = rep.status();
    assert_eq!(status.fetch_errors, 0, "a dropped hint counted: {status:?}");
    assert!(status.fetch_last_error.is_none(), "{status:?}");
    let ack = rt.block_on(async {
        // Larger than any message the protocol allows: refused before it is decoded.
        let huge = proto::Batch {
            index_id: C_INDEX,
            from_seq: 0,
            to_seq: 0,
            records: vec![proto::Record {
                target: vec![b'x'; keibi::limits::WIRE_MESSAGE_BYTES_MAX + 1],
                ..record((1 << 100) + 9, b"huge", 0, Vec::new(), 0)
            }],
            caught_up: false,
        };
        let refused = client.batch_notify(huge).await;
        assert!(
            refused.is_err(),
            "a message over the limit was accepted: {refused:?}"
        );
        let mut records = bad.clone();
        records.insert(2, good.clone());
        records.push(never.clone());
        client
            .batch_notify(proto::Batch {
                index_id: C_INDEX,
                from_seq: 0,
                to_seq: 7,
                records,
                caught_up: true,
            })
            .await
            .expect("the connection outlives the oversized message")
            .into_inner()
    });
    assert_eq!(ack.rejected, 5, "every malformed record is refused");

    // The good record applied at once, with its final size; nothing else did.
    let mut names = root_names(&vfs);
    names.sort();
    assert_eq!(
        names,
        vec![b"good.txt".to_vec(), b"never.bin".to_vec()],
        "only the good records applied"
    );
    let ino = vfs.lookup(ROOT_INO, b"good.txt").expect("lookup").ino;
    assert_eq!(vfs.getattr(ino).expect("attr").size, CONTENT.len() as u64);

    // A read of a chunk no peer delivers waits for it, then fails: never zeros.
    let never_ino = vfs.lookup(ROOT_INO, b"never.bin").expect("lookup").ino;
    let reader = {
        let vfs = Arc::clone(&vfs);
        std::thread::spawn(move || read_all(&vfs, never_ino).map_err(|e| e.to_string()))
    };

    // A asks C for the chunk; the first answers are wrong and are never stored.
    assert!(
        wait_until(30, || rep.status().fetch_errors >= 2),
        "wrong chunks were not counted: {:?}",
        rep.status()
    );
    // Once C tells the truth, the retried fetch stores the right bytes.
    assert!(
        wait_until(30, || vfs.chunks().contains(&chunk).unwrap_or(false)),
        "the chunk never arrived: {:?}",
        rep.status()
    );
    assert_eq!(read_all(&vfs, ino).expect("read"), CONTENT);
    let status = rep.status();
    assert!(status.fetch_errors >= 2, "{status:?}");
    assert_eq!(status.chunks_fetched, 1, "{status:?}");
    assert!(status.fetch_last_error.is_some(), "{status:?}");
    let read = reader.join().expect("reader thread");
    assert!(
        read.is_err(),
        "a chunk nobody has read as {read:?} instead of failing"
    );
    assert!(!vfs.chunks().contains(&ChunkId::of(NEVER)).unwrap_or(true));
    let peer = status
        .peers
        .iter()
        .find(|p| p.device == device_c.to_string())
        .expect("C in status");
    assert_eq!(peer.rejected, 5, "{peer:?}");
    assert!(served.load(Ordering::SeqCst) >= 3);
    rep.stop();
    rt.shutdown_timeout(Duration::from_secs(2));
}

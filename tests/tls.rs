//! The peer transport's identity layer over real TLS on 127.0.0.1: trusted devices connect
//! with the hybrid post-quantum key exchange; an unknown device is refused in the handshake.
#![expect(clippy::expect_used, reason = "test code fails loudly on setup errors")]

use std::collections::HashSet;
use std::sync::Arc;

use keibi::home::{Home, InitOptions};
use keibi::id::DeviceId;
use keibi::replication::tls::{self, Identity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn identity(dir: &std::path::Path) -> Identity {
    let home = Home::new(dir);
    home.init(InitOptions { encrypt: false }).expect("init");
    Identity::load(&home).expect("load identity")
}

/// The other side's device id and the key exchange, as one side of a connection saw them.
type Seen = (Option<DeviceId>, Option<String>);

/// What each side of one connection attempt saw (the server also what it read).
struct Outcome {
    server: Result<(Seen, Vec<u8>), String>,
    client: Result<Seen, String>,
}

/// Runs one handshake: `server` trusts `trusted`; `client` dials expecting `expect`. On
/// success the client sends a line the server reads, so a refused side shows up as an error.
async fn connect(
    server: &Identity,
    trusted: HashSet<DeviceId>,
    client: &Identity,
    expect: DeviceId,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tls::server_config(server, trusted).expect("server config"),
    ));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut s = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut got = vec![0u8; 5];
        s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
        let conn = s.get_ref().1;
        Ok::<_, String>(((tls::peer_device(conn), tls::key_exchange(conn)), got))
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        tls::client_config(client, expect).expect("client config"),
    ));
    let client_result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("keibi-peer").map_err(|e| e.to_string())?;
        let mut s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let conn = s.get_ref().1;
        Ok::<_, String>((tls::peer_device(conn), tls::key_exchange(conn)))
    }
    .await;
    let server_result = tokio::time::timeout(std::time::Duration::from_secs(10), server_task)
        .await
        .expect("server side ended")
        .expect("server task");
    Outcome {
        server: server_result,
        client: client_result,
    }
}

#[tokio::test]
async fn trusted_peers_connect_and_unknown_devices_are_refused() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let (a, b, stranger) = (
        identity(dirs[0].path()),
        identity(dirs[1].path()),
        identity(dirs[2].path()),
    );
    assert_ne!(a.device(), b.device());

    // A trusts B, B dials A expecting A: both see each other's device id, and the key
    // exchange is the hybrid post-quantum one.
    let ok = connect(&a, HashSet::from([b.device()]), &b, a.device()).await;
    let ((seen_by_a, kx_a), line) = ok.server.expect("A accepts B");
    let (seen_by_b, kx_b) = ok.client.expect("B reaches A");
    assert_eq!(seen_by_a, Some(b.device()));
    assert_eq!(seen_by_b, Some(a.device()));
    assert_eq!(line, b"hello");
    assert_eq!(kx_a.as_deref(), Some("X25519MLKEM768"));
    assert_eq!(kx_b.as_deref(), Some("X25519MLKEM768"));

    // A stranger A does not trust is refused in the handshake, before any data.
    let refused = connect(&a, HashSet::from([b.device()]), &stranger, a.device()).await;
    let err = refused.server.expect_err("A refuses the stranger");
    assert!(err.contains("not a trusted peer"), "{err}");

    // A client that expects another device than the one answering refuses the server.
    let wrong = connect(&a, HashSet::from([b.device()]), &b, stranger.device()).await;
    let err = wrong
        .client
        .expect_err("B refuses a server that is not the one it dialled");
    assert!(err.contains("not a trusted peer"), "{err}");
    assert!(wrong.server.is_err(), "the server sees the handshake fail");
}

#[test]
fn a_certificate_not_matching_the_key_is_refused() {
    let one = tempfile::tempdir().expect("dir");
    let two = tempfile::tempdir().expect("dir");
    identity(one.path());
    identity(two.path());
    // Put the second home's certificate beside the first home's key.
    std::fs::copy(two.path().join("peer.crt"), one.path().join("peer.crt")).expect("copy");
    let err = Identity::load(&Home::new(one.path())).expect_err("mismatch");
    assert!(err.to_string().contains("not the key in peer.key"), "{err}");
}

//! TCP + TLS under tonic: the listener that hands authenticated connections to the gRPC
//! server, and the connector that dials one pinned peer. tonic's own TLS settings cannot
//! take a custom certificate verifier, so both ends run tokio-rustls themselves.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;

use crate::id::DeviceId;
use crate::limits::{
    ACCEPTED_CONNECTIONS_QUEUED_MAX, HANDSHAKE_TIMEOUT_MS, HTTP2_WINDOW_BYTES,
    KEEPALIVE_INTERVAL_MS, PEER_ACCEPT_RETRY_MS,
};

use super::tls;

/// Who is on the other end of an accepted connection (a request extension on the server).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The authenticated device id.
    pub device: DeviceId,
    /// The key exchange the handshake negotiated.
    pub key_exchange: Option<String>,
    /// The remote socket address.
    pub address: Option<SocketAddr>,
}

/// An accepted, authenticated connection.
pub struct Accepted {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for Accepted {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener`, runs each handshake (bounded in time) and passes
/// on those from trusted devices; refused handshakes are logged and dropped.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    refused: Arc<Mutex<Option<String>>>,
) -> mpsc::Receiver<std::io::Result<Accepted>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_CONNECTIONS_QUEUED_MAX);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, address) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a peer connection: {e}");
                    tokio::time::sleep(Duration::from_millis(PEER_ACCEPT_RETRY_MS)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, refused) = (acceptor.clone(), tx.clone(), Arc::clone(&refused));
            tokio::spawn(async move {
                let hs = tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                )
                .await;
                match hs {
                    Ok(Ok(stream)) => {
                        let (_, conn) = stream.get_ref();
                        let Some(device) = tls::peer_device(conn) else {
                            return;
                        };
                        let info = PeerInfo {
                            device,
                            key_exchange: tls::key_exchange(conn),
                            address: Some(address),
                        };
                        let _ = tx.send(Ok(Accepted { stream, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("refused peer connection from {address}: {e}");
                        *refused.lock() = Some(format!("refused {address}: {e}"));
                    }
                    Err(_) => tracing::warn!("peer handshake from {address} timed out"),
                }
            });
        }
    });
    rx
}

/// Dials `address`, authenticates it as `device`, and returns a gRPC channel over that
/// connection together with the key exchange the handshake negotiated.
///
/// # Errors
/// The connection, the handshake (an unexpected device) or HTTP/2 failed.
pub async fn dial(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(tonic::transport::Channel, Option<String>), String> {
    let kx = Arc::new(Mutex::new(None));
    let address = address.to_string();
    let connector = {
        let kx = Arc::clone(&kx);
        tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let (address, config, kx) = (address.clone(), Arc::clone(&config), Arc::clone(&kx));
            async move {
                let tcp = TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("keibi-peer")
                    .map_err(std::io::Error::other)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                *kx.lock() = tls::key_exchange(stream.get_ref().1);
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        })
    };
    let endpoint = tonic::transport::Endpoint::from_static("http://keibi-peer")
        .connect_timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS))
        .initial_stream_window_size(HTTP2_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_INTERVAL_MS * 2))
        .keep_alive_while_idle(true);
    let channel = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        endpoint.connect_with_connector(connector),
    )
    .await
    .map_err(|_| "connection timed out".to_string())?
    .map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })?;
    let kx = kx.lock().clone();
    Ok((channel, kx))
}

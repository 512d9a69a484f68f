//! Peer identity on the wire: TLS 1.3 with mutual authentication and pinned device ids.
//!
//! A peer's certificate is self-signed (made by `keibi init`); no authority vouches for it.
//! What makes it trusted is its key: the device id is the BLAKE3 hash of the certificate's
//! public key, and each side accepts a handshake only when the other's device id is one it
//! was told to trust. The check runs inside the handshake, so an unknown device is refused
//! before any byte of an RPC. The handshake signature proves the peer holds the key.
//!
//! Key exchange: rustls's aws-lc-rs provider with `prefer-post-quantum` offers the hybrid
//! X25519MLKEM768 first; [`key_exchange`] names what a connection negotiated, for
//! `keibi status`.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::home::Home;
use crate::id::DeviceId;

/// Errors of the identity layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer's key or certificate could not be read.
    #[error("{path}: {detail}")]
    Key {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// This peer's certificate and key, and the device id they make.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    device: DeviceId,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            device: self.device,
        }
    }
}

impl Identity {
    /// Reads `HOME/peer.crt` and `HOME/peer.key`.
    ///
    /// # Errors
    /// [`Error::Key`] for a missing or unreadable file, or a certificate whose key is not
    /// the one in `peer.key`.
    pub fn load(home: &Home) -> Result<Self, Error> {
        let (cert_path, key_path) = (home.peer_cert_path(), home.peer_key_path());
        let key_err = |path: &std::path::Path, detail: String| Error::Key {
            path: path.display().to_string(),
            detail,
        };
        let cert = CertificateDer::from_pem_file(&cert_path)
            .map_err(|e| key_err(&cert_path, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| key_err(&key_path, e.to_string()))?;
        let device = device_of(&cert).map_err(|e| key_err(&cert_path, e.to_string()))?;
        let own = home
            .device_id()
            .map_err(|e| key_err(&key_path, e.to_string()))?;
        if own != device {
            return Err(key_err(
                &cert_path,
                "the certificate's key is not the key in peer.key".into(),
            ));
        }
        Ok(Self { cert, key, device })
    }

    /// The device id of this peer.
    #[must_use]
    pub fn device(&self) -> DeviceId {
        self.device
    }
}

/// The device id a certificate stands for.
///
/// # Errors
/// A certificate rustls cannot parse.
pub fn device_of(cert: &CertificateDer<'_>) -> Result<DeviceId, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(DeviceId::of_public_key(
        parsed.subject_public_key_info().as_ref(),
    ))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Checks a presented certificate against the trusted device ids and verifies handshake
/// signatures with the certificate's key. Shared by both directions.
#[derive(Debug)]
struct Pinned {
    trusted: HashSet<DeviceId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(trusted: HashSet<DeviceId>, provider: &CryptoProvider) -> Self {
        Self {
            trusted,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let device = device_of(cert)?;
        if self.trusted.contains(&device) {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "device {device} is not a trusted peer"
            )))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// Both configurations offer TLS 1.3 only, so a TLS 1.2 signature is never checked.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not offered".into()))
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The configuration to accept peers with: TLS 1.3 only, a client certificate required,
/// and its device id must be in `trusted`.
///
/// # Errors
/// rustls refused the key.
pub fn server_config(
    id: &Identity,
    trusted: impl IntoIterator<Item = DeviceId>,
) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(Pinned::new(trusted.into_iter().collect(), &provider));
    Ok(
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![id.cert.clone()], id.key.clone_key())?,
    )
}

/// The configuration to dial peer `peer` with: TLS 1.3 only, presenting this peer's
/// certificate, accepting only a server whose device id is `peer`.
///
/// # Errors
/// rustls refused the key.
pub fn client_config(id: &Identity, peer: DeviceId) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = Arc::new(Pinned::new(HashSet::from([peer]), &provider));
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())?,
    )
}

/// The name of the key exchange a finished handshake negotiated (`X25519MLKEM768` when both
/// sides offer the hybrid post-quantum exchange).
#[must_use]
pub fn key_exchange(conn: &rustls::CommonState) -> Option<String> {
    conn.negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
}

/// The device id of the other side of a finished handshake.
#[must_use]
pub fn peer_device(conn: &rustls::CommonState) -> Option<DeviceId> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| device_of(c).ok())
}

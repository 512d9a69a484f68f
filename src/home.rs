//! The home directory of a peer: where its store, keys and (later) control socket live, and
//! how a store is created and opened.
//!
//! ```text
//! HOME/store/        RocksDB database (see schema/)
//! HOME/store.reserve 16 MiB set aside, given back when a full disk stops the store opening
//! HOME/identity.txt  age identity that wraps the data key (0600)
//! HOME/datakey.age   the store's data key, wrapped with age (absent without encryption)
//! HOME/peer.key      the peer's private key, PKCS#8 PEM (0600)
//! HOME/peer.crt      the peer's self-signed certificate, PEM
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chunk::{self, ChunkStore, Cipher, crypt, frame::CipherKind};
use crate::id::DeviceId;
use crate::store::{self, Backend, Cf, keys, rocks::RocksBackend, tables::Tables};

/// Errors of home handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No store at this home.
    #[error("no keibi store at {0}: create one with `keibi init --home {0}`")]
    NotInitialised(PathBuf),
    /// `init` on a home that has a store.
    #[error("{0} already holds a keibi store; choose another --home or remove it first")]
    AlreadyInitialised(PathBuf),
    /// A file of the home could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Key or certificate handling failed.
    #[error("{0}")]
    Key(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The chunk layer failed (data key).
    #[error(transparent)]
    Chunk(#[from] chunk::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of one home directory.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

/// What `init` may choose.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    /// Encrypt chunk payloads at rest (the default).
    pub encrypt: bool,
}

/// An open store: tables and chunks over one backend.
pub struct Store {
    /// The database.
    pub backend: Arc<dyn Backend>,
    /// Typed tables.
    pub tables: Tables,
    /// Chunks.
    pub chunks: Arc<ChunkStore>,
}

impl Home {
    /// The home at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default home: `keibi` in the user's data directory (`~/.local/share/keibi`).
    #[must_use]
    pub fn default_root() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("keibi")
    }

    /// The home directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The RocksDB directory.
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    fn identity_path(&self) -> PathBuf {
        self.root.join("identity.txt")
    }
    fn data_key_path(&self) -> PathBuf {
        self.root.join("datakey.age")
    }
    pub(crate) fn peer_key_path(&self) -> PathBuf {
        self.root.join("peer.key")
    }
    pub(crate) fn peer_cert_path(&self) -> PathBuf {
        self.root.join("peer.crt")
    }

    /// Creates keys and an empty store.
    ///
    /// # Errors
    /// [`Error::AlreadyInitialised`]; unwritable home; store errors.
    pub fn init(&self, opts: InitOptions) -> Result<DeviceId, Error> {
        if self.store_dir().exists() {
            return Err(Error::AlreadyInitialised(self.root.clone()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io(&self.root))?;
        let identity = crypt::new_identity();
        write_private(
            &self.identity_path(),
            crypt::identity_text(&identity).as_bytes(),
        )?;
        let cipher = if opts.encrypt {
            let key = Cipher::generate_key()?;
            write_private(&self.data_key_path(), &crypt::wrap_key(&identity, &key)?)?;
            CipherKind::Aes256Gcm
        } else {
            CipherKind::None
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| Error::Key(format!("key pair: {e}")))?;
        let params = rcgen::CertificateParams::new(vec!["keibi".to_string()])
            .map_err(|e| Error::Key(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Key(format!("certificate: {e}")))?;
        write_private(&self.peer_key_path(), key.serialize_pem().as_bytes())?;
        std::fs::write(self.peer_cert_path(), cert.pem()).map_err(io(&self.peer_cert_path()))?;
        let backend = RocksBackend::open(&self.store_dir(), true)?;
        let mut index = [0u8; 8];
        aws_lc_rs::rand::fill(&mut index).map_err(|_| Error::Key("random source failed".into()))?;
        Tables::initialise(
            &backend,
            u64::from_le_bytes(index),
            cipher as u8,
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )?;
        self.device_id()
    }

    /// Opens the store.
    ///
    /// # Errors
    /// [`Error::NotInitialised`]; a store in use ([`store::Error::Locked`]); an unknown
    /// schema; a missing or wrong data key.
    pub fn open(&self) -> Result<Store, Error> {
        let dir = self.store_dir();
        if !dir.join("CURRENT").exists() {
            return Err(Error::NotInitialised(self.root.clone()));
        }
        let backend: Arc<dyn Backend> = Arc::new(RocksBackend::open(&dir, false)?);
        Self::open_backend(self, backend)
    }

    /// Opens tables and chunks over an already open backend.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_backend(&self, backend: Arc<dyn Backend>) -> Result<Store, Error> {
        let tables = Tables::open(Arc::clone(&backend), &self.store_dir())?;
        let code = backend
            .get(Cf::Meta, keys::META_CIPHER)?
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        let cipher = match CipherKind::from_code(code) {
            Some(CipherKind::None) => None,
            Some(CipherKind::Aes256Gcm) => {
                let identity = crypt::read_identity(&self.identity_path())?;
                let wrapped =
                    std::fs::read(self.data_key_path()).map_err(io(&self.data_key_path()))?;
                Some(Cipher::new(&crypt::unwrap_key(&identity, &wrapped)?)?)
            }
            None => return Err(Error::Key(format!("store uses unknown cipher {code}"))),
        };
        let chunks = Arc::new(ChunkStore::new(Arc::clone(&backend), cipher));
        Ok(Store {
            backend,
            tables,
            chunks,
        })
    }

    /// This peer's device id, from its certificate key.
    ///
    /// # Errors
    /// No key (not initialised) or an unreadable one.
    pub fn device_id(&self) -> Result<DeviceId, Error> {
        let path = self.peer_key_path();
        if !path.exists() {
            return Err(Error::NotInitialised(self.root.clone()));
        }
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        let key = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| Error::Key(format!("{}: {e}", path.display())))?;
        Ok(DeviceId::of_public_key(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        ))
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

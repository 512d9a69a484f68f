//! Peers for the replication tests: each with its own encrypted home, store and filesystem
//! core, replicating over real TLS on 127.0.0.1, driven through the vfs by path.

use std::collections::BTreeMap;
use std::sync::Arc;

use keibi::id::{DeviceId, ROOT_INO};
use keibi::replication::config::{Config, Peer as PeerConf};
use keibi::replication::tls::Identity;
use keibi::replication::{Replication, Status};
use keibi::testing::{ME, free_port, peer_home, put_file, read_all, snapshot, wait_until};
use keibi::tree::Kind;
use keibi::vfs::{OpenFlags, RenameMode, Vfs};

pub type Tree = BTreeMap<String, (Kind, u32, String)>;

pub struct Peer {
    _dir: tempfile::TempDir,
    pub vfs: Arc<Vfs>,
    pub rep: Option<Replication>,
    port: u16,
    identity: Identity,
}

impl Peer {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, vfs) = peer_home(dir.path()).expect("a new home");
        Self {
            _dir: dir,
            vfs,
            rep: None,
            port: free_port().expect("free port"),
            identity,
        }
    }

    pub fn device(&self) -> DeviceId {
        self.identity.device()
    }

    /// Starts replicating with `others` (trusted, dialled on their ports).
    pub fn start(&mut self, others: &[&Peer]) {
        let config = Config {
            listen: Some(format!("127.0.0.1:{}", self.port).parse().expect("addr")),
            peers: others
                .iter()
                .map(|o| PeerConf {
                    device: o.device(),
                    address: Some(format!("127.0.0.1:{}", o.port)),
                })
                .collect(),
        };
        // A restart right after a stop can find the port still held by the old runtime's
        // listener for a moment: retry, bounded.
        for _ in 0..50 {
            match Replication::start(&self.vfs, &self.identity, &config) {
                Ok(r) => {
                    self.rep = Some(r);
                    return;
                }
                Err(e @ keibi::replication::Error::Listen { .. }) => {
                    eprintln!("restart of a peer: {e}; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("start: {e}"),
            }
        }
        panic!("start: port {} stayed taken for 5 s", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(r) = self.rep.take() {
            r.stop();
        }
    }

    pub fn status(&self) -> Status {
        self.rep
            .as_ref()
            .map(Replication::status)
            .unwrap_or_default()
    }

    pub fn tree(&self) -> Tree {
        snapshot(&self.vfs).expect("snapshot")
    }

    pub fn ino(&self, path: &str) -> Option<u64> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.vfs.lookup(ino, part.as_bytes()).ok()?.ino;
        }
        Some(ino)
    }

    /// Writes `data` to `path` (created or truncated) and returns its inode.
    pub fn write(&self, path: &str, data: &[u8]) -> u64 {
        self.try_write(path, data).expect("parent exists")
    }

    /// As [`Self::write`], or `None` when the parent directory is not (or no longer) there:
    /// a peer's change may move it at any moment.
    pub fn try_write(&self, path: &str, data: &[u8]) -> Option<u64> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.ino(dir)?;
        match self.vfs.lookup(parent, name.as_bytes()) {
            Ok(a) => {
                // A peer's change may remove the file between the lookup and the open.
                let fh = self
                    .vfs
                    .open(
                        a.ino,
                        OpenFlags {
                            append: false,
                            truncate: true,
                        },
                    )
                    .ok()?;
                let mut off = 0;
                for piece in data.chunks(1 << 20) {
                    self.vfs.write(fh, off, piece).expect("write");
                    off += piece.len() as u64;
                }
                self.vfs.release(fh).expect("release");
                Some(a.ino)
            }
            Err(_) => put_file(&self.vfs, parent, name, data).ok(),
        }
    }

    pub fn append(&self, path: &str, data: &[u8]) {
        let ino = self.ino(path).expect("exists");
        let size = self.vfs.getattr(ino).expect("attr").size;
        let fh = self.vfs.open(ino, OpenFlags::default()).expect("open");
        self.vfs.write(fh, size, data).expect("write");
        self.vfs.release(fh).expect("release");
    }

    /// The tree, and the content of every file in it.
    pub fn contents(&self) -> (Tree, Vec<Vec<u8>>) {
        let tree = self.tree();
        let contents = tree
            .iter()
            .filter(|(_, (k, _, _))| *k == Kind::File)
            .map(|(p, _)| self.read(p).expect("readable"))
            .collect();
        (tree, contents)
    }

    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.ino(path)
            .map(|i| read_all(&self.vfs, i).expect("read"))
    }

    pub fn mkdir(&self, path: &str) {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.ino(dir).expect("parent exists");
        self.vfs
            .mkdir(parent, name.as_bytes(), 0o755, ME)
            .expect("mkdir");
    }

    /// Deletes the file at `path`; its file id when there was one to delete.
    pub fn unlink(&self, path: &str) -> Option<keibi::id::FileId> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.ino(dir)?;
        let attr = self.vfs.lookup(parent, name.as_bytes()).ok()?;
        if attr.kind != Kind::File {
            return None;
        }
        let id = self.vfs.tables().file_of_ino(attr.ino).ok()??;
        self.vfs.unlink(parent, name.as_bytes()).ok()?;
        Some(id)
    }

    pub fn rename(&self, from: &str, to: &str) -> bool {
        let (fd, fname) = from.rsplit_once('/').unwrap_or(("", from));
        let (td, tname) = to.rsplit_once('/').unwrap_or(("", to));
        let (Some(fp), Some(tp)) = (self.ino(fd), self.ino(td)) else {
            return false;
        };
        self.vfs
            .rename(
                fp,
                fname.as_bytes(),
                tp,
                tname.as_bytes(),
                RenameMode::Replace,
            )
            .is_ok()
    }
}

pub fn pair() -> (Peer, Peer) {
    let mut a = Peer::new();
    let mut b = Peer::new();
    a.start(&[&b]);
    b.start(&[&a]);
    (a, b)
}

pub fn converge(a: &Peer, b: &Peer, secs: u64) {
    let ok = wait_until(secs, || a.tree() == b.tree());
    let (ta, tb) = (a.tree(), b.tree());
    let only_a: Vec<_> = ta.iter().filter(|(k, v)| tb.get(*k) != Some(v)).collect();
    let only_b: Vec<_> = tb.iter().filter(|(k, v)| ta.get(*k) != Some(v)).collect();
    assert!(
        ok,
        "trees differ after {secs} s:\nonly A: {only_a:?}\nonly B: {only_b:?}\nA status: {:?}\nB status: {:?}",
        a.status(),
        b.status()
    );
}

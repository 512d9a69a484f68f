//! Which peers to trust and where to reach them: `--listen` and `--peer` on the command
//! line, and the same in `HOME/peers.toml`:
//!
//! ```toml
//! listen = "0.0.0.0:7421"
//!
//! [[peer]]
//! id = "ABCD-EFGH-..."        # as `keibi id` prints it on that peer
//! address = "192.0.2.7:7421"  # optional: without it the peer is trusted but not dialled
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::id::DeviceId;
use crate::limits::PEERS_MAX;

/// One trusted peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its device id: the only thing that makes it trusted.
    pub device: DeviceId,
    /// Where to dial it (`host:port`), when known.
    pub address: Option<String>,
}

impl FromStr for Peer {
    type Err = String;

    /// `DEVICE_ID@HOST:PORT`, or `DEVICE_ID` alone for a peer that is only accepted.
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, address) = match s.rsplit_once('@') {
            Some((id, addr)) => (id, Some(addr)),
            None => (s, None),
        };
        let device =
            DeviceId::from_str(id.trim()).map_err(|e| format!("peer {s:?}: device id: {e}"))?;
        let address = address
            .map(|a| check_address(a).map_err(|e| format!("peer {s:?}: {e}")))
            .transpose()?;
        Ok(Self { device, address })
    }
}

fn check_address(a: &str) -> Result<String, String> {
    let a = a.trim();
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(a.to_string())
        }
        Some(_) | None => Err(format!("address {a:?} is not HOST:PORT")),
    }
}

/// Replication settings of one mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Address to accept peers on.
    pub listen: Option<SocketAddr>,
    /// Trusted peers.
    pub peers: Vec<Peer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    id: String,
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    #[serde(default)]
    peer: Vec<FilePeer>,
}

impl Config {
    /// Reads `path` when it exists (an absent file is an empty configuration).
    ///
    /// # Errors
    /// An unreadable or malformed file, naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let listen = f
            .listen
            .map(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|e| format!("{}: listen {l:?}: {e}", path.display()))
            })
            .transpose()?;
        let mut peers = Vec::new();
        for p in f.peer {
            let device = DeviceId::from_str(&p.id)
                .map_err(|e| format!("{}: peer {:?}: {e}", path.display(), p.id))?;
            let address = p
                .address
                .map(|a| check_address(&a).map_err(|e| format!("{}: {e}", path.display())))
                .transpose()?;
            peers.push(Peer { device, address });
        }
        let mut c = Self { listen, peers };
        c.dedup()?;
        Ok(c)
    }

    /// Adds the command line's settings over the file's: `--listen` replaces, `--peer`
    /// adds (or gives an address to a peer the file names without one).
    ///
    /// # Errors
    /// More peers than [`PEERS_MAX`].
    pub fn merge(mut self, listen: Option<SocketAddr>, peers: Vec<Peer>) -> Result<Self, String> {
        if listen.is_some() {
            self.listen = listen;
        }
        self.peers.extend(peers);
        self.dedup()?;
        Ok(self)
    }

    fn dedup(&mut self) -> Result<(), String> {
        let mut out: Vec<Peer> = Vec::new();
        for p in self.peers.drain(..) {
            match out.iter_mut().find(|o| o.device == p.device) {
                Some(o) => {
                    if p.address.is_some() {
                        o.address = p.address;
                    }
                }
                None => out.push(p),
            }
        }
        if out.len() > PEERS_MAX {
            return Err(format!(
                "{} peers configured, at most {PEERS_MAX}",
                out.len()
            ));
        }
        self.peers = out;
        Ok(())
    }

    /// True when there is nothing to replicate with.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.listen.is_none() && self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_from_the_command_line_and_the_file() {
        let id = DeviceId([7; 32]).to_string();
        let p: Peer = format!("{id}@127.0.0.1:7421").parse().expect("valid");
        assert_eq!(p.address.as_deref(), Some("127.0.0.1:7421"));
        let p: Peer = id.parse().expect("valid");
        assert_eq!(p.address, None);
        assert!(format!("{id}@nowhere").parse::<Peer>().is_err());
        assert!(format!("{id}@host:0").parse::<Peer>().is_err());
        assert!("nonsense@127.0.0.1:1".parse::<Peer>().is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("peers.toml");
        std::fs::write(
            &path,
            format!("listen = \"127.0.0.1:9\"\n[[peer]]\nid = \"{id}\"\n"),
        )
        .expect("write");
        let c = Config::load(&path).expect("valid");
        assert_eq!(c.peers.len(), 1);
        let c = c
            .merge(None, vec![format!("{id}@h:1").parse().expect("valid")])
            .expect("merge");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].address.as_deref(), Some("h:1"));
        std::fs::write(&path, "listen = 5\n").expect("write");
        assert!(Config::load(&path).is_err());
        assert!(Config::load(&dir.path().join("absent.toml")).is_ok());
    }
}

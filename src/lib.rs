//! keibi: a content-addressed replication engine for a shared folder between peers.
//!
//! Module map (mirrors ARCHITECTURE.md, from the bottom up):
//!
//! - [`limits`]: every bound, as a named constant.
//! - [`id`]: chunk, file, inode and device identifiers.
//! - [`store`]: the key-value layer (RocksDB and an in-memory twin), keys, typed tables.
//! - [`chunk`]: 512 KiB content-addressed chunks, frames (zstd, AES-256-GCM), chunk store.
//! - [`tree`]: file records and version vectors (pure).
//! - [`vfs`]: the FUSE-free filesystem core: namespace, staging, commits.
//! - [`fuse`]: the FUSE adapter (fuser ⇄ vfs, errno map).
//! - [`gc`]: mark and sweep of unreferenced chunks, plan then execute.
//! - [`verify`]: the store checker that collects every finding.
//! - [`status`]: store figures for `keibi status`.
//! - [`control`]: the control socket through which CLI commands reach a running mount.
//! - [`home`]: a peer's home directory: store, keys, init and open.
//! - [`replication`]: peers: TLS identity with pinned device ids (the rest comes next).
//! - [`cli`]: the `keibi` command line.

pub mod chunk;
pub mod cli;
pub mod control;
pub mod fuse;
pub mod gc;
pub mod home;
pub mod id;
pub mod limits;
pub mod replication;
pub mod status;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tree;
pub mod verify;
pub mod vfs;

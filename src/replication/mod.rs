//! Replication between peers (DESIGN.md, "Replication"). Built so far: the transport's
//! identity layer ([`tls`]): TLS 1.3 with mutual authentication, where each side accepts only
//! the device ids it was told to trust. The wire protocol, notify worker, fetcher and apply
//! come next and will sit on it.
//!
//! Tasks: none yet. The TLS configurations are plain values used by whoever accepts or dials.

pub mod tls;

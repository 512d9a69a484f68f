//! The chunk store's floor of free space: new frames are refused while the disk holding
//! the store has less than [`free_space_floor`] free, so that the store never fills it.

use std::time::{Duration, Instant};

use crate::limits::{
    STORE_FREE_BYTES_MIN, STORE_FREE_CHECK_BYTES, STORE_FREE_CHECK_MS, STORE_FREE_PERCENT_MAX,
    STORE_FREE_PERCENT_MIN,
};
use crate::store;

use super::{ChunkStore, Error};

/// When the chunk store last looked at the free space, and what it saw.
#[derive(Default)]
pub(super) struct SpaceCheck {
    at: Option<Instant>,
    /// Frame bytes written since.
    written: u64,
    /// Bytes free then beyond the floor (0 when under it).
    spare: u64,
    /// The floor, and what was left, for the error message.
    floor: u64,
    available: u64,
}

/// The free space kept on a disk of `total` bytes: [`STORE_FREE_BYTES_MIN`] or
/// [`STORE_FREE_PERCENT_MIN`] of it, whichever is more, and at most
/// [`STORE_FREE_PERCENT_MAX`] of it.
#[must_use]
pub fn free_space_floor(total: u64) -> u64 {
    let percent =
        |p: u64| u64::try_from(u128::from(total) * u128::from(p) / 100).unwrap_or(u64::MAX);
    STORE_FREE_BYTES_MIN
        .max(percent(STORE_FREE_PERCENT_MIN))
        .min(percent(STORE_FREE_PERCENT_MAX))
}

impl ChunkStore {
    /// Refuses a new frame of `len` bytes when the disk holding the store is down to its
    /// floor ([`free_space_floor`]), looking again every [`STORE_FREE_CHECK_MS`] or
    /// [`STORE_FREE_CHECK_BYTES`].
    pub(super) fn check_space(&self, len: u64) -> Result<(), Error> {
        let mut c = self.space.lock();
        let stale = c.at.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(STORE_FREE_CHECK_MS)
                || c.written >= STORE_FREE_CHECK_BYTES
        });
        if stale {
            let Some(space) = self.backend.disk_space()? else {
                return Ok(());
            };
            let floor = free_space_floor(space.total);
            *c = SpaceCheck {
                at: Some(Instant::now()),
                written: 0,
                spare: space.available.saturating_sub(floor),
                floor,
                available: space.available,
            };
        }
        if c.spare < c.written.saturating_add(len) {
            return Err(Error::Store(store::Error::NoSpace(format!(
                "keibi keeps {} MiB free on the disk of its store and {} MiB are left: \
                 remove files (then `keibi gc`, or wait for the mount's) or free space \
                 elsewhere on that disk",
                c.floor >> 20,
                c.available.saturating_sub(c.written) >> 20
            ))));
        }
        c.written += len;
        Ok(())
    }
}

//! The one map from vfs errors to errno values. No wildcard arm: a new error variant must be
//! given its errno here before keibi compiles.

use fuser::Errno;

use crate::vfs::Error;
use crate::{chunk, store};

/// The errno a kernel request fails with for `e`.
#[must_use]
pub fn of(e: &Error) -> Errno {
    match e {
        Error::NotFound => Errno::ENOENT,
        Error::Exists => Errno::EEXIST,
        Error::NotDir => Errno::ENOTDIR,
        Error::IsDir => Errno::EISDIR,
        Error::NotEmpty => Errno::ENOTEMPTY,
        Error::NameTooLong => Errno::ENAMETOOLONG,
        Error::Invalid(_) => Errno::EINVAL,
        Error::NotPermitted(_) => Errno::EPERM,
        Error::BadHandle => Errno::EBADF,
        Error::TooBig => Errno::EFBIG,
        Error::PastEnd => Errno::ENXIO,
        Error::NoAttr => Errno::ENODATA,
        Error::Unsupported => Errno::EOPNOTSUPP,
        // A full disk met below the vfs too (an unlink's or a chunk's write).
        Error::NoSpace(_) | Error::Store(store::Error::NoSpace(_)) => Errno::ENOSPC,
        Error::Chunk(c) if matches!(**c, chunk::Error::Store(store::Error::NoSpace(_))) => {
            Errno::ENOSPC
        }
        Error::Chunk(_) | Error::Store(_) => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_error_has_its_posix_errno() {
        let cases = [
            (Error::NotFound, Errno::ENOENT),
            (Error::Exists, Errno::EEXIST),
            (Error::NotDir, Errno::ENOTDIR),
            (Error::IsDir, Errno::EISDIR),
            (Error::NotEmpty, Errno::ENOTEMPTY),
            (Error::NameTooLong, Errno::ENAMETOOLONG),
            (Error::Invalid("x".into()), Errno::EINVAL),
            (Error::NotPermitted("x"), Errno::EPERM),
            (Error::BadHandle, Errno::EBADF),
            (Error::TooBig, Errno::EFBIG),
            (Error::PastEnd, Errno::ENXIO),
            (Error::NoAttr, Errno::ENODATA),
            (Error::Unsupported, Errno::EOPNOTSUPP),
            (Error::NoSpace("full".into()), Errno::ENOSPC),
            (
                Error::Chunk(Arc::new(chunk::Error::Missing(crate::id::ChunkId::of(
                    b"x",
                )))),
                Errno::EIO,
            ),
            (Error::Store(store::Error::Io("disk".into())), Errno::EIO),
            (
                Error::Store(store::Error::NoSpace("full".into())),
                Errno::ENOSPC,
            ),
            (
                Error::Chunk(Arc::new(chunk::Error::Store(store::Error::NoSpace(
                    "full".into(),
                )))),
                Errno::ENOSPC,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(of(&e), want, "{e}");
        }
        // The numbers themselves, so a wrong constant above cannot hide a wrong map.
        assert_eq!(of(&Error::NotFound).code(), 2);
        assert_eq!(of(&Error::NotEmpty).code(), 39);
        assert_eq!(of(&Error::NoSpace(String::new())).code(), 28);
    }
}

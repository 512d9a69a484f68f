//! Extended attributes: kept in the file's record, so they replicate with it.
//!
//! Permission checks are the kernel's (`default_permissions`): who may read or write which
//! namespace, and on which kinds of file. Names arrive here whole; a name outside the stored
//! namespaces (`tree::XATTR_NAMESPACES`) is not supported, as on ext4.

use crate::store::{Batch, Durability};
use crate::tree::{Timestamp, validate_xattr_name, validate_xattrs, xattr_bytes};

use super::{Error, Result, Vfs};
use crate::id::Ino;
use crate::limits::XATTR_BYTES_PER_FILE_MAX;

/// What `setxattr` requires of an existing attribute (`XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrSet {
    /// Create it or replace it.
    Any,
    /// Fail with [`Error::Exists`] if it exists.
    Create,
    /// Fail with [`Error::NoAttr`] unless it exists.
    Replace,
}

fn check_name(name: &[u8]) -> Result<()> {
    validate_xattr_name(name).map_err(|_| Error::Unsupported)
}

impl Vfs {
    /// The value of attribute `name` of `ino`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NoAttr`], [`Error::Unsupported`] for a name outside the
    /// stored namespaces; store errors.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let r = self.record_of(ino)?;
        check_name(name)?;
        r.xattr(name).map(<[u8]>::to_vec).ok_or(Error::NoAttr)
    }

    /// The names of `ino`'s attributes, each followed by a NUL, as `listxattr` returns them.
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let r = self.record_of(ino)?;
        let mut out = Vec::new();
        for (name, _) in &r.xattrs {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets attribute `name` of `ino` to `value`, as `how` allows; a change of the record
    /// that replicates at once, as a `chmod` does.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Exists`], [`Error::NoAttr`], [`Error::Unsupported`];
    /// [`Error::NoSpace`] when the file's attributes would pass
    /// [`XATTR_BYTES_PER_FILE_MAX`]; store errors.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        check_name(name)?;
        self.change_xattrs(ino, |xattrs| {
            match (
                xattrs.binary_search_by(|(n, _)| n.as_slice().cmp(name)),
                how,
            ) {
                (Ok(_), XattrSet::Create) => Err(Error::Exists),
                (Err(_), XattrSet::Replace) => Err(Error::NoAttr),
                (Ok(i), XattrSet::Any | XattrSet::Replace) => {
                    xattrs[i].1 = value.to_vec();
                    Ok(())
                }
                (Err(i), XattrSet::Any | XattrSet::Create) => {
                    xattrs.insert(i, (name.to_vec(), value.to_vec()));
                    Ok(())
                }
            }?;
            let total: usize = xattrs.iter().map(|(n, v)| xattr_bytes(n, v)).sum();
            if total > XATTR_BYTES_PER_FILE_MAX {
                return Err(Error::NoSpace(format!(
                    "extended attributes of one file are limited to {} KiB",
                    XATTR_BYTES_PER_FILE_MAX / 1024
                )));
            }
            Ok(())
        })
    }

    /// Removes attribute `name` of `ino`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NoAttr`], [`Error::Unsupported`]; store errors.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        self.change_xattrs(ino, |xattrs| {
            let i = xattrs
                .binary_search_by(|(n, _)| n.as_slice().cmp(name))
                .map_err(|_| Error::NoAttr)?;
            xattrs.remove(i);
            Ok(())
        })
    }

    /// Applies `change` to the attributes of live file `ino` and commits the record, under
    /// the tree lock; nothing is written when `change` fails.
    fn change_xattrs(
        &self,
        ino: Ino,
        change: impl FnOnce(&mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        let _tree = self.tree.lock();
        let mut r = self.record_of(ino)?;
        if r.tombstone {
            return Err(Error::NotFound);
        }
        change(&mut r.xattrs)?;
        validate_xattrs(&r.xattrs).map_err(Error::Invalid)?;
        r.ctime = Timestamp::now();
        let mut batch = Batch::new();
        self.tables.put_record(&mut batch, &mut r);
        self.tables.backend().write(batch, Durability::Buffered)?;
        Ok(())
    }
}

//! File records and version vectors: the replicated description of one file, and its
//! encoding. Pure: no I/O. `schema/records.md` documents the encoding.

use serde::{Deserialize, Serialize};

use crate::chunk::chunk_count;
use crate::id::{ChunkId, FileId, Ino};
use crate::limits::{
    NAME_BYTES_MAX, RECORD_BYTES_MAX, SYMLINK_TARGET_BYTES_MAX, XATTR_BYTES_PER_FILE_MAX,
    XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
};

/// Record encoding version written by this build (first byte of every stored record).
/// Version 3 added `xattrs`, version 2 `origin`; stores written by version 1 predate
/// replication and are not read.
pub const RECORD_VERSION: u8 = 3;
/// The version before `xattrs`, still read: its encoding is version 3's without the last field.
const RECORD_VERSION_NO_XATTRS: u8 = 2;

/// Namespaces of extended attributes keibi stores. `system.` (ACLs) is the kernel's.
pub const XATTR_NAMESPACES: [&[u8]; 3] = [b"user.", b"trusted.", b"security."];

/// What a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file with a manifest.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with a target.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket node.
    Socket,
    /// A character device node (with `rdev`).
    CharDevice,
    /// A block device node (with `rdev`).
    BlockDevice,
}

/// A point in time, seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 10^9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    #[must_use]
    pub fn now() -> Self {
        Self::from(std::time::SystemTime::now())
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Self { secs, nanos: 0 }
                } else {
                    Self {
                        secs: secs - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for std::time::SystemTime {
    fn from(t: Timestamp) -> Self {
        let base = std::time::UNIX_EPOCH;
        if t.secs >= 0 {
            base + std::time::Duration::new(t.secs.unsigned_abs(), t.nanos)
        } else {
            base - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(t.nanos))
        }
    }
}

/// A version vector: for each store (by index id) the number of changes it made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub Vec<(u64, u64)>);

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The same history.
    Equal,
    /// The left side has seen everything the right side has, and more.
    Newer,
    /// The right side is newer.
    Older,
    /// Each side has changes the other has not seen.
    Concurrent,
}

impl VersionVector {
    /// The counter of `store`.
    #[must_use]
    pub fn get(&self, store: u64) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| *s == store)
            .map_or(0, |(_, c)| *c)
    }

    /// Records one more change made by `store`.
    pub fn bump(&mut self, store: u64) {
        match self.0.binary_search_by_key(&store, |(s, _)| *s) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => self.0.insert(i, (store, 1)),
        }
    }

    /// The smallest vector that has seen everything both have: each store's larger counter.
    #[must_use]
    pub fn merged(&self, other: &Self) -> Self {
        let mut out = self.clone();
        for (s, c) in &other.0 {
            match out.0.binary_search_by_key(s, |(k, _)| *k) {
                Ok(i) => out.0[i].1 = out.0[i].1.max(*c),
                Err(i) => out.0.insert(i, (*s, *c)),
            }
        }
        out
    }

    /// True when the entries are sorted by store, unique, and every counter is above 0.
    #[must_use]
    pub fn is_canonical(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0 < w[1].0) && self.0.iter().all(|(_, c)| *c > 0)
    }

    /// Compares two vectors.
    #[must_use]
    pub fn compare(&self, other: &Self) -> Order {
        let (mut more, mut less) = (false, false);
        for (s, c) in &self.0 {
            let o = other.get(*s);
            more |= *c > o;
            less |= *c < o;
        }
        for (s, c) in &other.0 {
            less |= *c > self.get(*s);
        }
        match (more, less) {
            (false, false) => Order::Equal,
            (true, false) => Order::Newer,
            (false, true) => Order::Older,
            (true, true) => Order::Concurrent,
        }
    }
}

/// Everything keibi knows of one file, directory, link or node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Stable id, the same on every peer.
    pub id: FileId,
    /// Local inode number (never replicated).
    pub ino: Ino,
    /// What it is.
    pub kind: Kind,
    /// Directory it is in (the root is its own parent).
    pub parent: FileId,
    /// Name in the parent, raw bytes, no `/` or NUL.
    pub name: Vec<u8>,
    /// Permission bits and set-id/sticky bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of device nodes.
    pub rdev: u64,
    /// Last access (not updated by reads: keibi behaves as `noatime`).
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last change of content or metadata.
    pub ctime: Timestamp,
    /// Size in bytes (files), target length (symlinks), 0 otherwise.
    pub size: u64,
    /// Chunk hashes of the content, in order; `chunk_count(size)` of them.
    pub manifest: Vec<ChunkId>,
    /// Target of a symlink.
    pub target: Vec<u8>,
    /// Subdirectory count of a directory (its link count is 2 + this).
    pub subdirs: u32,
    /// Which changes, by which stores, this version includes.
    pub version: VersionVector,
    /// Local sequence number of the last change to this record.
    pub seq: u64,
    /// Deleted: kept so the deletion replicates; no dirent points to it.
    pub tombstone: bool,
    /// Index id of the peer this version was applied from, 0 for a change made here. A
    /// version is never sent back to the peer it came from.
    pub origin: u64,
    /// Extended attributes, name and value, sorted by name, names unique. Last field: a
    /// version 2 record is this encoding without it (see [`FileRecord::decode`]).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A stored record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("file record malformed: {0}")]
pub struct DecodeError(pub String);

impl FileRecord {
    /// Link count as `stat` reports it.
    #[must_use]
    pub fn nlink(&self) -> u32 {
        match self.kind {
            Kind::Dir => 2 + self.subdirs,
            Kind::File
            | Kind::Symlink
            | Kind::Fifo
            | Kind::Socket
            | Kind::CharDevice
            | Kind::BlockDevice => u32::from(!self.tombstone),
        }
    }

    /// Encodes the record: version byte, then postcard.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        // postcard into a Vec cannot fail for these types.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes and validates a stored record.
    ///
    /// # Errors
    /// Unknown version, malformed bytes, or fields that break the record's invariants.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(DecodeError(format!(
                "{} bytes exceeds {RECORD_BYTES_MAX}",
                bytes.len()
            )));
        }
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => {
                let r: Self = postcard::from_bytes(rest).map_err(|e| DecodeError(e.to_string()))?;
                r.validate()?;
                Ok(r)
            }
            Some((&RECORD_VERSION_NO_XATTRS, rest)) => {
                // postcard writes a sequence as its length, then its items: the empty list
                // of attributes is the one byte 0, so appending it makes a version 3 record.
                let mut v3 = Vec::with_capacity(rest.len() + 1);
                v3.extend_from_slice(rest);
                v3.push(0);
                let r: Self = postcard::from_bytes(&v3).map_err(|e| DecodeError(e.to_string()))?;
                r.validate()?;
                Ok(r)
            }
            Some((v, _)) => Err(DecodeError(format!("unknown record version {v}"))),
            None => Err(DecodeError("empty".into())),
        }
    }

    /// Checks the invariants every record satisfies.
    ///
    /// # Errors
    /// The first broken invariant.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.id == FileId::ROOT {
            if !self.name.is_empty() || self.parent != FileId::ROOT {
                return Err(DecodeError(
                    "root must be its own parent, with no name".into(),
                ));
            }
        } else {
            validate_name(&self.name).map_err(DecodeError)?;
        }
        if self.target.len() > SYMLINK_TARGET_BYTES_MAX {
            return Err(DecodeError("symlink target too long".into()));
        }
        if self.kind == Kind::File
            && !self.tombstone
            && self.manifest.len() as u64 != chunk_count(self.size)
        {
            return Err(DecodeError(format!(
                "{} manifest entries for {} bytes",
                self.manifest.len(),
                self.size
            )));
        }
        if self.kind != Kind::File && !self.manifest.is_empty() {
            return Err(DecodeError(
                "manifest on a record that is not a file".into(),
            ));
        }
        validate_xattrs(&self.xattrs).map_err(DecodeError)
    }

    /// The value of extended attribute `name`.
    #[must_use]
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| self.xattrs[i].1.as_slice())
    }
}

/// Bytes an attribute counts against [`XATTR_BYTES_PER_FILE_MAX`]: its name with the NUL a
/// listing gives it, and its value. Within the bound, a listing fits `listxattr`'s 64 KiB.
#[must_use]
pub fn xattr_bytes(name: &[u8], value: &[u8]) -> usize {
    name.len() + 1 + value.len()
}

/// Checks an extended attribute name: 1 to 255 bytes, no NUL, in one of
/// [`XATTR_NAMESPACES`] with something after the prefix.
///
/// # Errors
/// What is wrong with the name.
pub fn validate_xattr_name(name: &[u8]) -> Result<(), String> {
    if name.len() > XATTR_NAME_BYTES_MAX {
        return Err(format!(
            "attribute name of {} bytes exceeds {XATTR_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name.contains(&0) {
        return Err("attribute name contains NUL".into());
    }
    if !XATTR_NAMESPACES
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
    {
        return Err(format!(
            "attribute name {:?} is not in user., trusted. or security.",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

/// Checks a record's extended attributes: valid names, strictly sorted, each value and all
/// of them together within their bounds.
///
/// # Errors
/// The first broken rule.
pub fn validate_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), String> {
    let mut total = 0usize;
    for (i, (name, value)) in xattrs.iter().enumerate() {
        validate_xattr_name(name)?;
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(format!(
                "attribute value of {} bytes exceeds {XATTR_VALUE_BYTES_MAX}",
                value.len()
            ));
        }
        if i > 0 && xattrs[i - 1].0 >= *name {
            return Err("attributes unsorted or repeated".into());
        }
        total += xattr_bytes(name, value);
    }
    if total > XATTR_BYTES_PER_FILE_MAX {
        return Err(format!(
            "attributes of {total} bytes exceed {XATTR_BYTES_PER_FILE_MAX}"
        ));
    }
    Ok(())
}

/// Checks a directory entry name: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
///
/// # Errors
/// What is wrong with the name.
pub fn validate_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "name of {} bytes exceeds {NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if name == b"." || name == b".." {
        return Err("name is . or ..".into());
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return Err("name contains / or NUL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(size: u64, name: Vec<u8>) -> FileRecord {
        FileRecord {
            id: FileId(42),
            ino: 7,
            kind: Kind::File,
            parent: FileId::ROOT,
            name,
            mode: 0o644,
            uid: 1,
            gid: 2,
            rdev: 0,
            atime: Timestamp { secs: -5, nanos: 3 },
            mtime: Timestamp::now(),
            ctime: Timestamp::now(),
            size,
            manifest: (0..chunk_count(size))
                .map(|i| ChunkId::of(&i.to_le_bytes()))
                .collect(),
            target: vec![],
            subdirs: 0,
            version: VersionVector(vec![(1, 2), (9, 1)]),
            seq: 99,
            tombstone: false,
            origin: 0,
            xattrs: vec![(b"user.a".to_vec(), b"1".to_vec())],
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(size in 0u64..(8 << 20), name in proptest::collection::vec(1u8..=255, 1..255)) {
            let name: Vec<u8> = name.into_iter().map(|b| if b == b'/' { b'x' } else { b }).collect();
            prop_assume!(name != b"." && name != b"..");
            let r = record(size, name);
            prop_assert_eq!(FileRecord::decode(&r.encode()).ok(), Some(r));
        }
    }

    #[test]
    fn bad_records_are_refused() {
        let mut r = record(10, b"a".to_vec());
        r.manifest.clear();
        assert!(FileRecord::decode(&r.encode()).is_err());
        let r = record(10, b"a/b".to_vec());
        assert!(FileRecord::decode(&r.encode()).is_err());
        let mut bytes = record(10, b"a".to_vec()).encode();
        bytes[0] = 1;
        assert!(FileRecord::decode(&bytes).is_err());
        assert!(FileRecord::decode(&[]).is_err());
    }

    #[test]
    fn records_of_version_2_read_with_no_attributes() {
        let mut r = record(10, b"old".to_vec());
        r.xattrs.clear();
        let mut v2 = r.encode();
        assert_eq!(v2.pop(), Some(0), "the empty list is the last byte");
        v2[0] = 2;
        assert_eq!(FileRecord::decode(&v2).ok(), Some(r));
        // A version 3 record cut short is still refused.
        let mut cut = record(10, b"new".to_vec()).encode();
        cut.pop();
        assert!(FileRecord::decode(&cut).is_err());
    }

    #[test]
    fn attributes_are_checked() {
        let ok = record(10, b"a".to_vec());
        assert_eq!(ok.xattr(b"user.a"), Some(b"1".as_slice()));
        assert_eq!(ok.xattr(b"user.b"), None);
        let bad: [Vec<(Vec<u8>, Vec<u8>)>; 6] = [
            vec![(b"user.b".to_vec(), vec![]), (b"user.a".to_vec(), vec![])],
            vec![(b"user.a".to_vec(), vec![]), (b"user.a".to_vec(), vec![])],
            vec![(b"system.posix_acl_access".to_vec(), vec![])],
            vec![(b"trusted.".to_vec(), vec![])],
            vec![(b"user.a".to_vec(), vec![0; XATTR_VALUE_BYTES_MAX + 1])],
            (0..2)
                .map(|i| {
                    (
                        format!("user.{i}").into_bytes(),
                        vec![0; XATTR_VALUE_BYTES_MAX / 2],
                    )
                })
                .collect(),
        ];
        for xattrs in bad {
            let mut r = ok.clone();
            r.xattrs = xattrs;
            assert!(
                FileRecord::decode(&r.encode()).is_err(),
                "{:?} accepted",
                r.xattrs.first().map(|x| &x.0)
            );
        }
        let mut full = ok.clone();
        full.xattrs = vec![(
            b"security.x".to_vec(),
            vec![0; XATTR_BYTES_PER_FILE_MAX - xattr_bytes(b"security.x", b"")],
        )];
        assert_eq!(FileRecord::decode(&full.encode()).ok(), Some(full));
    }

    #[test]
    fn version_vectors_order() {
        let mut a = VersionVector::default();
        let mut b = VersionVector::default();
        assert_eq!(a.compare(&b), Order::Equal);
        a.bump(1);
        assert_eq!(a.compare(&b), Order::Newer);
        assert_eq!(b.compare(&a), Order::Older);
        b.bump(2);
        assert_eq!(a.compare(&b), Order::Concurrent);
        b.bump(1);
        assert_eq!(b.compare(&a), Order::Newer);
        let m = a.merged(&b);
        assert_eq!(m.compare(&a), Order::Newer);
        assert_eq!(m.compare(&b), Order::Equal);
        assert!(m.is_canonical());
    }

    #[test]
    fn timestamps_convert_both_ways() {
        for t in [
            Timestamp { secs: 5, nanos: 7 },
            Timestamp { secs: -5, nanos: 7 },
            Timestamp::now(),
        ] {
            assert_eq!(Timestamp::from(std::time::SystemTime::from(t)), t);
        }
    }
}

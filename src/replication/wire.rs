//! The edge of the protocol: generated types in, validated domain types out, and back.
//! Everything a peer sends is checked here once (lengths, names, ids, kinds, manifest
//! sizes); nothing inward sees a prost type.

use crate::chunk::chunk_count;
use crate::id::{ChunkId, FileId};
use crate::limits::{
    CHUNK_BYTES, FILE_BYTES_MAX, SYMLINK_TARGET_BYTES_MAX, WIRE_ANNOUNCE_CHUNKS_MAX,
    WIRE_CHUNKS_PER_REQUEST_MAX, WIRE_MANIFEST_PART_CHUNKS,
};
use crate::tree::{FileRecord, Kind, Timestamp, VersionVector, validate_name, validate_xattrs};

use super::proto;

/// A message from a peer that breaks the protocol.
#[derive(Debug, thiserror::Error)]
#[error("bad message from peer: {0}")]
pub struct WireError(pub String);

fn bad(s: impl Into<String>) -> WireError {
    WireError(s.into())
}

fn file_id(bytes: &[u8], what: &str) -> Result<FileId, WireError> {
    let id = FileId::from_be_slice(bytes).ok_or_else(|| bad(format!("{what}: not 16 bytes")))?;
    if id != FileId::ROOT && id.0 < (1 << 16) {
        return Err(bad(format!("{what}: reserved file id {id}")));
    }
    Ok(id)
}

/// A chunk id from the wire.
///
/// # Errors
/// Not 32 bytes.
pub fn chunk_id(bytes: &[u8]) -> Result<ChunkId, WireError> {
    ChunkId::from_slice(bytes).ok_or_else(|| bad("chunk id: not 32 bytes"))
}

fn kind_from(k: i32) -> Result<Kind, WireError> {
    Ok(
        match proto::Kind::try_from(k).map_err(|_| bad(format!("unknown kind {k}")))? {
            proto::Kind::File => Kind::File,
            proto::Kind::Dir => Kind::Dir,
            proto::Kind::Symlink => Kind::Symlink,
            proto::Kind::Fifo => Kind::Fifo,
            proto::Kind::Socket => Kind::Socket,
            proto::Kind::CharDevice => Kind::CharDevice,
            proto::Kind::BlockDevice => Kind::BlockDevice,
        },
    )
}

fn kind_to(k: Kind) -> proto::Kind {
    match k {
        Kind::File => proto::Kind::File,
        Kind::Dir => proto::Kind::Dir,
        Kind::Symlink => proto::Kind::Symlink,
        Kind::Fifo => proto::Kind::Fifo,
        Kind::Socket => proto::Kind::Socket,
        Kind::CharDevice => proto::Kind::CharDevice,
        Kind::BlockDevice => proto::Kind::BlockDevice,
    }
}

fn time(secs: i64, nanos: u32, what: &str) -> Result<Timestamp, WireError> {
    if nanos >= 1_000_000_000 {
        return Err(bad(format!("{what}: nanoseconds out of range")));
    }
    Ok(Timestamp { secs, nanos })
}

/// The wire parts of `r`: one, or several when its manifest is longer than one part.
#[must_use]
pub fn record_parts(r: &FileRecord) -> Vec<proto::Record> {
    // A deletion carries no content (a local open file may still keep its chunks).
    let (size, manifest): (u64, &[ChunkId]) = if r.tombstone {
        (0, &[])
    } else {
        (r.size, &r.manifest)
    };
    let header = |offset: usize, hashes: &[ChunkId]| proto::Record {
        id: r.id.to_be_bytes().to_vec(),
        kind: kind_to(r.kind).into(),
        parent: r.parent.to_be_bytes().to_vec(),
        name: r.name.clone(),
        mode: r.mode,
        uid: r.uid,
        gid: r.gid,
        rdev: r.rdev,
        mtime_secs: r.mtime.secs,
        mtime_nanos: r.mtime.nanos,
        ctime_secs: r.ctime.secs,
        ctime_nanos: r.ctime.nanos,
        size,
        manifest_offset: offset as u64,
        manifest: hashes.iter().map(|c| c.0.to_vec()).collect(),
        target: r.target.clone(),
        version: r
            .version
            .0
            .iter()
            .map(|(s, c)| proto::VersionEntry {
                index_id: *s,
                counter: *c,
            })
            .collect(),
        tombstone: r.tombstone,
        seq: r.seq,
        xattrs: if offset == 0 {
            r.xattrs
                .iter()
                .map(|(name, value)| proto::Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
    };
    if manifest.is_empty() {
        return vec![header(0, &[])];
    }
    manifest
        .chunks(WIRE_MANIFEST_PART_CHUNKS)
        .enumerate()
        .map(|(i, part)| header(i * WIRE_MANIFEST_PART_CHUNKS, part))
        .collect()
}

/// Approximate encoded size of a record part, for batch bounds.
#[must_use]
pub fn part_bytes(p: &proto::Record) -> usize {
    128 + p.name.len()
        + p.target.len()
        + p.manifest.len() * 34
        + p.version.len() * 20
        + p.xattrs
            .iter()
            .map(|x| 8 + x.name.len() + x.value.len())
            .sum::<usize>()
}

/// Checks everything a record part says, except manifest completeness.
fn header(p: &proto::Record) -> Result<FileRecord, WireError> {
    let id = file_id(&p.id, "id")?;
    let parent = file_id(&p.parent, "parent")?;
    let kind = kind_from(p.kind)?;
    if id == FileId::ROOT {
        if parent != FileId::ROOT || !p.name.is_empty() || kind != Kind::Dir || p.tombstone {
            return Err(bad(
                "root record must be a live directory, its own parent, unnamed",
            ));
        }
    } else {
        validate_name(&p.name)
            .map_err(|e| bad(format!("name {:?}: {e}", String::from_utf8_lossy(&p.name))))?;
        if parent == id {
            return Err(bad("record is its own parent"));
        }
    }
    if p.mode > 0o7777 {
        return Err(bad(format!("mode {:o} has bits beyond 0o7777", p.mode)));
    }
    if p.target.len() > SYMLINK_TARGET_BYTES_MAX {
        return Err(bad("symlink target too long"));
    }
    if p.size > FILE_BYTES_MAX {
        return Err(bad(format!("size {} beyond the largest file", p.size)));
    }
    if kind != Kind::File && (!p.manifest.is_empty() || p.manifest_offset != 0) {
        return Err(bad("manifest on a record that is not a file"));
    }
    let version = VersionVector(p.version.iter().map(|e| (e.index_id, e.counter)).collect());
    if version.0.is_empty() || !version.is_canonical() {
        return Err(bad(
            "version vector empty, unsorted, repeated or with a zero counter",
        ));
    }
    if p.manifest_offset != 0 && !p.xattrs.is_empty() {
        return Err(bad("extended attributes in a later manifest part"));
    }
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = p
        .xattrs
        .iter()
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect();
    validate_xattrs(&xattrs).map_err(bad)?;
    Ok(FileRecord {
        id,
        ino: 0,
        kind,
        parent,
        name: p.name.clone(),
        mode: p.mode,
        uid: p.uid,
        gid: p.gid,
        rdev: p.rdev,
        atime: time(p.mtime_secs, p.mtime_nanos, "mtime")?,
        mtime: time(p.mtime_secs, p.mtime_nanos, "mtime")?,
        ctime: time(p.ctime_secs, p.ctime_nanos, "ctime")?,
        size: p.size,
        manifest: Vec::new(),
        target: p.target.clone(),
        subdirs: 0,
        version,
        seq: p.seq,
        tombstone: p.tombstone,
        origin: 0,
        xattrs,
    })
}

/// Puts records back together from their parts, one sender's stream at a time. The parts
/// of one record come one after another (`proto/keibi.proto`), so at most one record is in
/// progress: a part that starts another record abandons it (counted, see
/// [`Self::take_abandoned`]), and a part that starts the same record again (the sender
/// resent it after a reconnect) restarts it.
#[derive(Default)]
pub struct Assembler {
    /// The record whose manifest is still arriving.
    partial: Option<FileRecord>,
    /// Records abandoned part-way and not yet reported.
    abandoned: u32,
}

impl Assembler {
    /// Takes one part; returns the record once complete and valid.
    ///
    /// # Errors
    /// A malformed part; a part that does not continue its record.
    pub fn take(&mut self, p: &proto::Record) -> Result<Option<FileRecord>, WireError> {
        let head = header(p)?;
        let expected = if head.kind == Kind::File && !head.tombstone {
            chunk_count(head.size)
        } else {
            // A tombstone may be sent with the content an open file keeps: no manifest.
            0
        };
        if p.manifest.len() > WIRE_MANIFEST_PART_CHUNKS {
            return Err(bad("manifest part too long"));
        }
        let hashes = p
            .manifest
            .iter()
            .map(|h| chunk_id(h))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rec = match self.partial.take() {
            Some(prev) if prev.id == head.id && p.manifest_offset != 0 => {
                if p.manifest_offset != prev.manifest.len() as u64
                    || prev.size != head.size
                    || prev.version != head.version
                {
                    return Err(bad(format!("manifest part of {} out of order", head.id)));
                }
                prev
            }
            prev => {
                if prev.is_some_and(|r| r.id != head.id) {
                    self.abandoned += 1;
                }
                if p.manifest_offset != 0 {
                    return Err(bad(format!(
                        "manifest part of {} without its start",
                        head.id
                    )));
                }
                head
            }
        };
        rec.manifest.extend(hashes);
        let have = rec.manifest.len() as u64;
        if have > expected {
            return Err(bad(format!(
                "{have} manifest entries for {} bytes",
                rec.size
            )));
        }
        if have < expected {
            self.partial = Some(rec);
            return Ok(None);
        }
        if rec.tombstone {
            rec.manifest.clear();
            rec.size = 0;
        }
        rec.validate().map_err(|e| bad(e.0))?;
        Ok(Some(rec))
    }

    /// Records abandoned part-way since the last call: each a record the sender began and
    /// broke off, which the receiver refused.
    pub fn take_abandoned(&mut self) -> u32 {
        std::mem::take(&mut self.abandoned)
    }

    /// Forgets the record in progress, as its sender starts a new session.
    pub fn reset(&mut self) {
        self.partial = None;
    }
}

/// At most `max` chunk ids, each 32 bytes; `what` names the message in the error.
fn chunk_ids(ids: &[Vec<u8>], max: usize, what: &str) -> Result<Vec<ChunkId>, WireError> {
    if ids.len() > max {
        return Err(bad(format!(
            "{} chunks in one {what}, at most {max}",
            ids.len()
        )));
    }
    ids.iter().map(|i| chunk_id(i)).collect()
}

/// The chunk ids of a `StreamFile` request.
///
/// # Errors
/// Too many ids; an id that is not 32 bytes.
pub fn chunk_request(r: &proto::ChunkRequest) -> Result<Vec<ChunkId>, WireError> {
    chunk_ids(&r.ids, WIRE_CHUNKS_PER_REQUEST_MAX, "StreamFile request")
}

/// The chunk ids of an `Announce`.
///
/// # Errors
/// Too many ids; an id that is not 32 bytes.
pub fn announcement(a: &proto::Announcement) -> Result<Vec<ChunkId>, WireError> {
    chunk_ids(&a.ids, WIRE_ANNOUNCE_CHUNKS_MAX, "announcement")
}

/// A chunk's bytes that hash to its id, with the chaining values of its pieces (which the
/// store keeps, so they are computed once).
pub struct CheckedChunk {
    /// The bytes.
    pub data: bytes::Bytes,
    /// As [`crate::chunk::pieces::hash`] gave them.
    pub cvs: Vec<blake3::hazmat::ChainingValue>,
}

/// A chunk received: its id and bytes, checked against the hash.
///
/// # Errors
/// A malformed id, more than one chunk of data, or bytes that do not hash to the id.
pub fn chunk_data(d: &proto::ChunkData) -> Result<(ChunkId, Option<CheckedChunk>), WireError> {
    let id = chunk_id(&d.id)?;
    if d.missing {
        return Ok((id, None));
    }
    if d.data.len() > CHUNK_BYTES {
        return Err(bad(format!("chunk {id} of {} bytes", d.data.len())));
    }
    let (hashed, cvs) = crate::chunk::pieces::hash(&d.data);
    if hashed != id {
        return Err(bad(format!("chunk {id}: data does not match its hash")));
    }
    Ok((
        id,
        Some(CheckedChunk {
            data: d.data.clone(),
            cvs,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CHUNK_BYTES_U64, XATTR_VALUE_BYTES_MAX};

    fn rec(size: u64) -> FileRecord {
        FileRecord {
            id: FileId((1 << 127) | 0x4d),
            ino: 9,
            kind: Kind::File,
            parent: FileId::ROOT,
            name: b"a.txt".to_vec(),
            mode: 0o755,
            uid: 1,
            gid: 2,
            rdev: 0,
            atime: Timestamp { secs: 3, nanos: 4 },
            mtime: Timestamp { secs: 3, nanos: 4 },
            ctime: Timestamp { secs: 5, nanos: 6 },
            size,
            manifest: (0..chunk_count(size))
                .map(|i| ChunkId::of(&i.to_le_bytes()))
                .collect(),
            target: vec![],
            subdirs: 0,
            version: VersionVector(vec![(3, 1), (8, 2)]),
            seq: 12,
            tombstone: false,
            origin: 0,
            xattrs: vec![
                (b"security.selinux".to_vec(), b"label".to_vec()),
                (b"user.mime_type".to_vec(), b"text/plain".to_vec()),
            ],
        }
    }

    fn round_trip(r: &FileRecord) -> Result<Vec<FileRecord>, WireError> {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        for p in record_parts(r) {
            out.extend(a.take(&p)?);
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_and_large_manifests_split() {
        let small = rec(1000);
        let got = round_trip(&small).expect("valid");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].manifest, small.manifest);
        assert_eq!(got[0].mode, 0o755);
        let big = rec(CHUNK_BYTES_U64 * (WIRE_MANIFEST_PART_CHUNKS as u64 * 2 + 3));
        let parts = record_parts(&big);
        assert_eq!(parts.len(), 3);
        assert!(
            parts
                .iter()
                .all(|p| part_bytes(p) < crate::limits::WIRE_MESSAGE_BYTES_MAX)
        );
        assert_eq!(parts[0].xattrs.len(), 2);
        assert!(parts[1..].iter().all(|p| p.xattrs.is_empty()));
        let mut late = parts.clone();
        late[1].xattrs.clone_from(&parts[0].xattrs);
        let mut a = Assembler::default();
        assert!(a.take(&late[0]).expect("first part").is_none());
        assert!(
            a.take(&late[1]).is_err(),
            "attributes in a later part accepted"
        );
        let got = round_trip(&big).expect("valid");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].manifest, big.manifest);
        assert_eq!(got[0].xattrs, big.xattrs);
    }

    #[test]
    fn a_record_started_again_restarts_and_one_broken_off_is_counted() {
        let big = rec(CHUNK_BYTES_U64 * (WIRE_MANIFEST_PART_CHUNKS as u64 + 5));
        let parts = record_parts(&big);
        assert_eq!(parts.len(), 2);
        let mut a = Assembler::default();
        // The first part, then the connection drops; the resent record starts over.
        assert!(a.take(&parts[0]).expect("first part").is_none());
        assert!(a.take(&parts[0]).expect("started again").is_none());
        let got = a.take(&parts[1]).expect("second part").expect("complete");
        assert_eq!(got.manifest, big.manifest);
        assert_eq!(a.take_abandoned(), 0);
        // A record broken off by another one is counted; its later part is refused.
        let mut other = rec(1000);
        other.id = FileId((1 << 127) | 0x4e);
        assert!(a.take(&parts[0]).expect("first part").is_none());
        assert!(a.take(&record_parts(&other)[0]).expect("other").is_some());
        assert_eq!(a.take_abandoned(), 1);
        assert!(a.take(&parts[1]).is_err());
        // After a reset, a continuation without its start is refused.
        assert!(a.take(&parts[0]).expect("first part").is_none());
        a.reset();
        assert!(a.take(&parts[1]).is_err());
        assert_eq!(a.take_abandoned(), 0);
    }

    #[test]
    fn bad_records_are_refused() {
        type Mutation = Box<dyn Fn(&mut proto::Record)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("dotdot", Box::new(|p| p.name = b"..".to_vec())),
            ("slash", Box::new(|p| p.name = b"a/b".to_vec())),
            ("nul", Box::new(|p| p.name = b"a\0b".to_vec())),
            ("long", Box::new(|p| p.name = vec![b'a'; 256])),
            ("short id", Box::new(|p| p.id = vec![1, 2])),
            (
                "reserved id",
                Box::new(|p| p.id = 5u128.to_be_bytes().to_vec()),
            ),
            ("kind", Box::new(|p| p.kind = 99)),
            ("mode", Box::new(|p| p.mode = 0o170_000)),
            ("manifest", Box::new(|p| p.manifest.push(vec![0; 32]))),
            ("hash len", Box::new(|p| p.manifest[0] = vec![0; 31])),
            ("version", Box::new(|p| p.version.clear())),
            ("nanos", Box::new(|p| p.mtime_nanos = 2_000_000_000)),
            ("xattr order", Box::new(|p| p.xattrs.reverse())),
            (
                "xattr repeated",
                Box::new(|p| p.xattrs[0].name = p.xattrs[1].name.clone()),
            ),
            (
                "xattr namespace",
                Box::new(|p| p.xattrs[0].name = b"system.posix_acl_access".to_vec()),
            ),
            (
                "xattr bare prefix",
                Box::new(|p| p.xattrs[0].name = b"user.".to_vec()),
            ),
            (
                "xattr nul",
                Box::new(|p| p.xattrs[0].name = b"security.a\0b".to_vec()),
            ),
            (
                "xattr name long",
                Box::new(|p| p.xattrs[1].name = [b"user.".as_slice(), &[b'n'; 251]].concat()),
            ),
            (
                "xattr value huge",
                Box::new(|p| p.xattrs[1].value = vec![7; XATTR_VALUE_BYTES_MAX + 1]),
            ),
            (
                "xattrs too many bytes",
                Box::new(|p| {
                    p.xattrs[0].value = vec![7; XATTR_VALUE_BYTES_MAX / 2];
                    p.xattrs[1].value = vec![7; XATTR_VALUE_BYTES_MAX / 2];
                }),
            ),
        ];
        for (what, mutate) in cases {
            let mut p = record_parts(&rec(1000)).remove(0);
            mutate(&mut p);
            assert!(Assembler::default().take(&p).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn chunks_are_checked_against_their_hash() {
        let data = bytes::Bytes::from_static(b"hello");
        let good = proto::ChunkData {
            id: ChunkId::of(&data).0.to_vec(),
            data: data.clone(),
            missing: false,
        };
        assert!(chunk_data(&good).is_ok());
        let lying = proto::ChunkData {
            id: ChunkId::of(b"other").0.to_vec(),
            data,
            missing: false,
        };
        assert!(chunk_data(&lying).is_err());
        let many = proto::ChunkRequest {
            ids: vec![vec![0; 32]; WIRE_CHUNKS_PER_REQUEST_MAX + 1],
        };
        assert!(chunk_request(&many).is_err());
        let ok = proto::Announcement {
            ids: vec![vec![1; 32]; WIRE_ANNOUNCE_CHUNKS_MAX],
        };
        assert_eq!(
            announcement(&ok).map(|v| v.len()).ok(),
            Some(WIRE_ANNOUNCE_CHUNKS_MAX)
        );
        let too_many = proto::Announcement {
            ids: vec![vec![1; 32]; WIRE_ANNOUNCE_CHUNKS_MAX + 1],
        };
        assert!(announcement(&too_many).is_err());
        let short = proto::Announcement {
            ids: vec![vec![1; 31]],
        };
        assert!(announcement(&short).is_err());
    }
}

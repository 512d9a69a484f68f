//! The rules that settle concurrent versions, as pure functions of the records: every
//! peer that has seen the same versions derives the same winner, copy id and copy name.

use crate::id::FileId;
use crate::limits::NAME_BYTES_MAX;
use crate::tree::{FileRecord, Kind, Timestamp};

/// The conflict name of `name` for a file whose distinguishing id is `tag`:
/// `stem.conflict-xxxxxxxx.ext`, shortened to fit 255 bytes.
#[must_use]
pub fn conflict_name(name: &[u8], tag: FileId) -> Vec<u8> {
    let hash = blake3::hash(&tag.to_be_bytes());
    let suffix = format!(".conflict-{}", &hash.to_hex()[..8]);
    let dot = name.iter().rposition(|b| *b == b'.').filter(|i| *i > 0);
    let (stem, ext) = dot.map_or((name, &b""[..]), |i| (&name[..i], &name[i..]));
    let ext = if ext.len() > 32 { &b""[..] } else { ext };
    let room = NAME_BYTES_MAX - suffix.len() - ext.len();
    let mut out = stem[..stem.len().min(room)].to_vec();
    out.extend_from_slice(suffix.as_bytes());
    out.extend_from_slice(ext);
    out
}

/// The id of the conflict copy of `id` at version `loser`: the same on every peer.
pub(super) fn conflict_id(rec: &FileRecord) -> FileId {
    let mut h = blake3::Hasher::new();
    h.update(b"keibi conflict copy");
    h.update(&rec.id.to_be_bytes());
    for (s, c) in &rec.version.0 {
        h.update(&s.to_be_bytes());
        h.update(&c.to_be_bytes());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    FileId(u128::from_be_bytes(b) | (1 << 127))
}

/// True when `a` wins over the concurrent `b` (see the module doc). Only fields that are
/// the same on every peer for one version count: a directory's times are local bookkeeping
/// (each peer touches them when entries come and go), so directories compare by version.
pub(super) fn wins(a: &FileRecord, b: &FileRecord) -> bool {
    let key = |r: &FileRecord| {
        let mtime = if r.kind == Kind::Dir {
            Timestamp::default()
        } else {
            r.mtime
        };
        (
            mtime,
            r.version.0.clone(),
            r.manifest.clone(),
            r.name.clone(),
            // Equal versions with other content get here too: every field that can differ
            // takes part, so two different records never tie.
            r.parent,
            r.mode,
            r.size,
            r.target.clone(),
            r.tombstone,
            r.kind as u8,
            r.xattrs.clone(),
        )
    };
    key(a) > key(b)
}

/// True when two versions say the same thing, so that a concurrent pair needs no copy.
pub(super) fn same_content(a: &FileRecord, b: &FileRecord) -> bool {
    a.kind == b.kind
        && a.tombstone == b.tombstone
        && a.parent == b.parent
        && a.name == b.name
        && a.mode == b.mode
        && a.size == b.size
        && a.manifest == b.manifest
        && a.target == b.target
        && a.xattrs == b.xattrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension_and_fit() {
        let n = conflict_name(b"notes.txt", FileId(5));
        assert!(n.starts_with(b"notes.conflict-"));
        assert!(n.ends_with(b".txt"));
        let long = vec![b'a'; 255];
        let n = conflict_name(&long, FileId(5));
        assert!(n.len() <= NAME_BYTES_MAX);
        assert_ne!(
            conflict_name(b"x", FileId(5)),
            conflict_name(b"x", FileId(6))
        );
        assert!(crate::tree::validate_name(&conflict_name(b".bashrc", FileId(1))).is_ok());
    }
}

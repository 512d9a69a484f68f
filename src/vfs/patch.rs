//! Byte-range bookkeeping for staging: merged dirty ranges of one chunk, and overlays of
//! small writes over a committed chunk. Pure data structures, no I/O.

use std::collections::BTreeMap;

use crate::limits::JOURNAL_RANGES_PER_BUFFER_MAX;

/// Byte ranges within one chunk, merged, at most [`JOURNAL_RANGES_PER_BUFFER_MAX`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Ranges {
    ranges: Vec<(usize, usize)>,
    /// Set when the bound was hit: `ranges` then over-approximates.
    pub overflow: bool,
}

impl Ranges {
    pub fn add(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        self.ranges.retain(|&(a, b)| {
            if b < s || a > e {
                true
            } else {
                s = s.min(a);
                e = e.max(b);
                false
            }
        });
        let at = self.ranges.partition_point(|&(a, _)| a < s);
        self.ranges.insert(at, (s, e));
        if self.ranges.len() > JOURNAL_RANGES_PER_BUFFER_MAX {
            let lo = self.ranges.first().map_or(0, |r| r.0);
            let hi = self.ranges.last().map_or(0, |r| r.1);
            self.ranges = vec![(lo, hi)];
            self.overflow = true;
        }
    }
    pub fn bytes(&self) -> usize {
        self.ranges.iter().map(|(a, b)| b - a).sum()
    }
    pub fn covers(&self, len: usize) -> bool {
        self.ranges.first() == Some(&(0, len))
    }
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &(usize, usize)> {
        self.ranges.iter()
    }
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.overflow = false;
    }
}

/// Small changes to a committed chunk, kept without reading the chunk: a 4 KiB write into
/// a large file costs 4 KiB of memory and no chunk decode until the chunk is sealed.
#[derive(Default)]
pub(crate) struct Overlay {
    /// Changed bytes by offset in the chunk; patches never overlap or touch.
    pub patches: BTreeMap<usize, Vec<u8>>,
    /// Ranges changed since the last durable point (always inside `patches`).
    pub dirty: Ranges,
}

impl Overlay {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.patches.values().map(Vec::len).sum()
    }

    /// Records `data` written at `start`, merging the patches it overlaps or touches.
    pub fn write(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        let touched: Vec<usize> = self
            .patches
            .range(..=end)
            .filter(|(s, p)| **s + p.len() >= start)
            .map(|(s, _)| *s)
            .collect();
        let (mut lo, mut hi) = (start, end);
        for s in &touched {
            lo = lo.min(*s);
            hi = hi.max(s + self.patches.get(s).map_or(0, Vec::len));
        }
        let mut merged = vec![0u8; hi - lo];
        for s in touched {
            if let Some(p) = self.patches.remove(&s) {
                merged[s - lo..s - lo + p.len()].copy_from_slice(&p);
            }
        }
        merged[start - lo..end - lo].copy_from_slice(data);
        self.patches.insert(lo, merged);
        self.dirty.add(start, end);
    }

    /// Applies the patches to `out`, which holds the chunk's bytes from offset `at`.
    pub fn apply(&self, out: &mut [u8], at: usize) {
        for (s, p) in &self.patches {
            let (from, to) = ((*s).max(at), (s + p.len()).min(at + out.len()));
            if from < to {
                out[from - at..to - at].copy_from_slice(&p[from - s..to - s]);
            }
        }
    }

    /// The patches that intersect `[start, end)`, clipped to it.
    pub fn clip(&self, start: usize, end: usize) -> Vec<(usize, Vec<u8>)> {
        self.patches
            .iter()
            .filter_map(|(s, p)| {
                let (from, to) = ((*s).max(start), (s + p.len()).min(end));
                (from < to).then(|| (from, p[from - s..to - s].to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Overlay, Ranges};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn overlay_matches_plain_writes(writes in proptest::collection::vec((0usize..4096, 1usize..300, any::<u8>()), 1..40)) {
            let base: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
            let mut model = base.clone();
            let mut o = Overlay::default();
            for (at, len, byte) in writes {
                let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i.to_le_bytes()[0])).collect();
                o.write(at, &data);
                model[at..at + len].copy_from_slice(&data);
                let mut got = base.clone();
                o.apply(&mut got, 0);
                prop_assert_eq!(&got, &model);
                // Patches never overlap or touch, and every clip reads the model back.
                let mut prev_end = None;
                for (s, p) in &o.patches {
                    prop_assert!(prev_end.is_none_or(|e| e < *s));
                    prev_end = Some(s + p.len());
                }
                let mut part = base[1000..3000].to_vec();
                o.apply(&mut part, 1000);
                prop_assert_eq!(&part[..], &model[1000..3000]);
                for (s, p) in o.clip(1000, 3000) {
                    prop_assert_eq!(&p[..], &model[s..s + p.len()]);
                }
            }
        }
    }

    #[test]
    fn ranges_merge_and_cover() {
        let mut r = Ranges::default();
        r.add(10, 20);
        r.add(30, 40);
        assert_eq!(r.bytes(), 20);
        r.add(15, 35);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![(10, 40)]);
        r.add(0, 10);
        r.add(40, 100);
        assert!(r.covers(100));
        assert!(!r.overflow);
        let mut r = Ranges::default();
        for i in 0..200 {
            r.add(i * 10, i * 10 + 5);
        }
        assert!(r.overflow);
        assert!(r.iter().count() <= super::JOURNAL_RANGES_PER_BUFFER_MAX);
        for i in 0..200 {
            assert!(
                r.iter().any(|&(a, b)| a <= i * 10 && i * 10 + 5 <= b),
                "range {i} lost"
            );
        }
    }
}

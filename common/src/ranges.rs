//! A set of `u64` held as disjoint half-open ranges, so that long runs cost one entry.

use std::collections::BTreeMap;

/// Disjoint, merged half-open ranges `[start, end)`, each with a value from when it was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap<V> {
    ranges: BTreeMap<u64, (u64, V)>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        RangeMap {
            ranges: BTreeMap::new(),
        }
    }
}

impl<V: Copy> RangeMap<V> {
    /// Adds `[start, end)` tagged `value`; merges with touching ranges (keeping the older value).
    pub fn insert(&mut self, mut start: u64, mut end: u64, mut value: V) {
        if start >= end {
            return;
        }
        if let Some((&s, &(e, v))) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            self.ranges.remove(&s);
            start = s;
            end = end.max(e);
            value = v;
        }
        while let Some((&s, &(e, _))) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, (end, value));
    }

    /// True if `x` lies in a range.
    pub fn contains(&self, x: u64) -> bool {
        self.ranges
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &(e, _))| x < e)
    }

    /// Removes the single point `x`, splitting its range.
    pub fn remove(&mut self, x: u64) {
        let Some((&s, &(e, v))) = self.ranges.range(..=x).next_back() else {
            return;
        };
        if x >= e {
            return;
        }
        self.ranges.remove(&s);
        if s < x {
            self.ranges.insert(s, (x, v));
        }
        // `x < e`, so `x + 1` cannot overflow.
        if x + 1 < e {
            self.ranges.insert(x + 1, (e, v));
        }
    }

    /// Removes and returns every range whose value satisfies `pred`.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&V) -> bool) -> Vec<(u64, u64, V)> {
        let hit: Vec<u64> = self
            .ranges
            .iter()
            .filter(|(_, (_, v))| pred(v))
            .map(|(s, _)| *s)
            .collect();
        hit.into_iter()
            .filter_map(|s| self.ranges.remove(&s).map(|(e, v)| (s, e, v)))
            .collect()
    }

    /// Removes and returns the lowest range.
    pub fn pop_first(&mut self) -> Option<(u64, u64, V)> {
        self.ranges.pop_first().map(|(s, (e, v))| (s, e, v))
    }

    /// Every range, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        self.ranges.iter().map(|(&s, &(e, v))| (s, e, v))
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_splits_and_drains() {
        let mut r = RangeMap::default();
        r.insert(10, 20, 1);
        r.insert(20, 25, 2);
        r.insert(5, 8, 3);
        assert_eq!(r.len(), 2);
        assert!(r.contains(24) && r.contains(10) && !r.contains(8) && !r.contains(25));
        r.remove(15);
        assert!(!r.contains(15) && r.contains(14) && r.contains(16));
        assert_eq!(r.len(), 3);
        let drained = r.drain_where(|v| *v == 1);
        assert_eq!(drained, vec![(10, 15, 1), (16, 25, 1)]);
        assert_eq!(r.len(), 1);
    }
}

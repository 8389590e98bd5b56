//! Sequence tracking on the subscriber: in order, gaps (with exactly which sequences were lost),
//! and stale or repeated sequences. Comparisons use wrapping (serial-number) arithmetic.

/// What one observed sequence means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first sequence seen: it sets the baseline.
    First,
    /// Exactly the expected sequence.
    InOrder,
    /// Sequences `first .. first + count` (wrapping) were skipped.
    Gap {
        /// First skipped sequence.
        first: u64,
        /// Number skipped.
        count: u64,
    },
    /// A sequence at or before one already seen.
    Stale {
        /// The sequence that was expected.
        expected: u64,
    },
}

/// Tracks the expected next sequence and counts what was lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapTracker {
    expected: Option<u64>,
    gaps: u64,
    lost: u64,
}

impl GapTracker {
    /// A tracker that takes its baseline from the first sequence it sees.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that expects `first` next.
    pub fn expecting(first: u64) -> Self {
        Self {
            expected: Some(first),
            ..Self::default()
        }
    }

    /// Next expected sequence, if any was seen.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Number of gap events so far.
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    /// Total sequences lost so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Counts `first .. first + count` as lost, reported by other means (the end of a
    /// stream), so that they are not reported again: the tracker then expects what follows.
    pub fn skip(&mut self, first: u64, count: u64) {
        let after = first.wrapping_add(count);
        if self
            .expected
            .is_none_or(|e| after.wrapping_sub(e) < 1 << 63)
        {
            self.expected = Some(after);
        }
        self.gaps += 1;
        self.lost += count;
    }

    /// Records `seq` and says how it relates to what came before.
    pub fn observe(&mut self, seq: u64) -> SeqEvent {
        let Some(expected) = self.expected else {
            self.expected = Some(seq.wrapping_add(1));
            return SeqEvent::First;
        };
        let ahead = seq.wrapping_sub(expected) as i64;
        if ahead == 0 {
            self.expected = Some(seq.wrapping_add(1));
            SeqEvent::InOrder
        } else if ahead > 0 {
            self.gaps += 1;
            self.lost += ahead as u64;
            self.expected = Some(seq.wrapping_add(1));
            SeqEvent::Gap {
                first: expected,
                count: ahead as u64,
            }
        } else {
            SeqEvent::Stale { expected }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn basic() {
        let mut g = GapTracker::expecting(u64::MAX - 1);
        assert_eq!(g.observe(u64::MAX - 1), SeqEvent::InOrder);
        assert_eq!(
            g.observe(1),
            SeqEvent::Gap {
                first: u64::MAX,
                count: 2
            }
        );
        assert_eq!(g.observe(1), SeqEvent::Stale { expected: 2 });
        assert_eq!(g.observe(2), SeqEvent::InOrder);
        assert_eq!((g.gaps(), g.lost()), (1, 2));
        assert_eq!(GapTracker::new().observe(7), SeqEvent::First);
    }

    proptest! {
        /// Whatever subset of a sequence range arrives (in order), the gaps reported name exactly
        /// the sequences that did not arrive, also when the range crosses the u64 wrap.
        #[test]
        fn gaps_name_exactly_the_lost(start in prop_oneof![any::<u64>(), (u64::MAX - 500)..=u64::MAX],
                                      keep in proptest::collection::vec(any::<bool>(), 1..600)) {
            let mut g = GapTracker::expecting(start);
            let mut lost_reported = BTreeSet::new();
            let mut lost_actual = BTreeSet::new();
            let mut delivered_last = None;
            for (i, &k) in keep.iter().enumerate() {
                let seq = start.wrapping_add(i as u64);
                if !k { lost_actual.insert(i as u64); continue; }
                delivered_last = Some(i as u64);
                match g.observe(seq) {
                    SeqEvent::InOrder => {}
                    SeqEvent::Gap { first, count } => {
                        for j in 0..count { lost_reported.insert(first.wrapping_add(j).wrapping_sub(start)); }
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            // Losses after the last delivered message are not yet knowable.
            let knowable: BTreeSet<u64> = lost_actual.iter().copied().filter(|&i| Some(i) < delivered_last.map(|d| d + 1) && delivered_last.is_some_and(|d| i < d)).collect();
            prop_assert_eq!(&lost_reported, &knowable);
            prop_assert_eq!(g.lost(), knowable.len() as u64);
        }

        /// A repeated or older sequence is stale and changes nothing.
        #[test]
        fn stale_is_harmless(start in any::<u64>(), n in 1u64..50, back in 1u64..50) {
            let mut g = GapTracker::expecting(start);
            for i in 0..n { g.observe(start.wrapping_add(i)); }
            let before = g;
            let old = start.wrapping_add(n).wrapping_sub(back.min(n));
            prop_assert_eq!(g.observe(old), SeqEvent::Stale { expected: start.wrapping_add(n) });
            prop_assert_eq!(g, before);
        }
    }
}

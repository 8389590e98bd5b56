//! Flow-control accounting. Positions are free-running `u64` counters compared with wrapping
//! arithmetic, so they stay correct across the `u64` wrap.
//!
//! The publisher keeps a [`CreditTracker`] per subscriber: how many slots of that subscriber's
//! ring it has written, and how many the subscriber reported consumed. The subscriber keeps a
//! [`CreditReturner`] that decides when to write its consumed position back.

/// Why a consumed position reported by a subscriber was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditError {
    /// The reported position moved backwards.
    Backwards {
        /// Last accepted position.
        previous: u64,
        /// The position reported.
        reported: u64,
    },
    /// The reported position is ahead of what was ever written.
    AheadOfWritten {
        /// Next position to write.
        written: u64,
        /// The position reported.
        reported: u64,
    },
}

impl core::fmt::Display for CreditError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Backwards { previous, reported } => {
                write!(
                    f,
                    "consumed position went backwards from {previous} to {reported}"
                )
            }
            Self::AheadOfWritten { written, reported } => {
                write!(
                    f,
                    "consumed position {reported} is ahead of written position {written}"
                )
            }
        }
    }
}

impl std::error::Error for CreditError {}

/// Publisher-side credit for one subscriber ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditTracker {
    slots: u64,
    written: u64,
    consumed: u64,
}

impl CreditTracker {
    /// A tracker for a ring of `slots` slots whose positions start at `start`.
    pub fn new(slots: u32, start: u64) -> Self {
        Self {
            slots: slots as u64,
            written: start,
            consumed: start,
        }
    }

    /// Next position to write.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Last consumed position accepted from the subscriber.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Slots written but not yet released.
    pub fn in_flight(&self) -> u64 {
        self.written.wrapping_sub(self.consumed)
    }

    /// Free slots the publisher may write now.
    pub fn available(&self) -> u64 {
        self.slots - self.in_flight()
    }

    /// Accepts a consumed position read from the credit word; it must lie in `consumed..=written`.
    pub fn update(&mut self, reported: u64) -> Result<(), CreditError> {
        let advance = reported.wrapping_sub(self.consumed);
        if advance > self.in_flight() {
            // Either behind the last accepted position or ahead of what was written.
            return if reported.wrapping_sub(self.written) as i64 > 0 {
                Err(CreditError::AheadOfWritten {
                    written: self.written,
                    reported,
                })
            } else {
                Err(CreditError::Backwards {
                    previous: self.consumed,
                    reported,
                })
            };
        }
        self.consumed = reported;
        Ok(())
    }

    /// Takes one slot: returns the position to write, or `None` when the ring is full.
    pub fn acquire(&mut self) -> Option<u64> {
        if self.available() == 0 {
            return None;
        }
        let pos = self.written;
        self.written = self.written.wrapping_add(1);
        Some(pos)
    }
}

/// Subscriber-side policy for writing the consumed position back to the publisher: every
/// `threshold` releases (a quarter ring by default). With a threshold of at most the ring
/// size this alone keeps the publisher going: it is out of credit only while
/// `slots - threshold` written slots have not been seen by the subscriber yet, so the
/// subscriber is never idle then. `idle()` returns the rest for a subscriber that wants to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditReturner {
    threshold: u64,
    consumed: u64,
    returned: u64,
    last_idle_return_ns: u64,
}

impl CreditReturner {
    /// Returns credit every quarter of a `slots`-slot ring, positions starting at `start`.
    pub fn new(slots: u32, start: u64) -> Self {
        Self::with_threshold((slots as u64 / 4).max(1), start)
    }

    /// Returns credit every `threshold` releases.
    pub fn with_threshold(threshold: u64, start: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            consumed: start,
            returned: start,
            last_idle_return_ns: 0,
        }
    }

    /// Position of the next slot to read.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Releases between two write-backs.
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Last position written back.
    pub fn returned(&self) -> u64 {
        self.returned
    }

    /// Records one released slot; returns the position to write back when one is due.
    pub fn release(&mut self) -> Option<u64> {
        self.consumed = self.consumed.wrapping_add(1);
        if self.consumed.wrapping_sub(self.returned) >= self.threshold {
            self.returned = self.consumed;
            Some(self.consumed)
        } else {
            None
        }
    }

    /// Called when there was nothing to read at time `now_ns`: returns any credit not yet
    /// written back, at most once per `min_interval_ns` (so that an idle subscriber's
    /// publisher sees the truth within that interval, and a ping-pong does not pay a credit
    /// write per message).
    pub fn idle_at(&mut self, now_ns: u64, min_interval_ns: u64) -> Option<u64> {
        if self.consumed == self.returned
            || now_ns.wrapping_sub(self.last_idle_return_ns) < min_interval_ns
        {
            return None;
        }
        self.last_idle_return_ns = now_ns;
        self.returned = self.consumed;
        Some(self.consumed)
    }

    /// Called when there was nothing to read: returns any credit not yet written back.
    pub fn idle(&mut self) -> Option<u64> {
        if self.consumed != self.returned {
            self.returned = self.consumed;
            Some(self.consumed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fills_and_drains() {
        let mut c = CreditTracker::new(4, 10);
        assert_eq!(
            (0..5).map(|_| c.acquire()).collect::<Vec<_>>(),
            vec![Some(10), Some(11), Some(12), Some(13), None]
        );
        assert_eq!(
            c.update(9),
            Err(CreditError::Backwards {
                previous: 10,
                reported: 9
            })
        );
        assert_eq!(
            c.update(15),
            Err(CreditError::AheadOfWritten {
                written: 14,
                reported: 15
            })
        );
        c.update(12).unwrap();
        assert_eq!(c.available(), 2);
        c.update(12).unwrap();
        assert_eq!(c.acquire(), Some(14));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write,
        Read,
        Idle,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![Just(Op::Write), Just(Op::Read), Just(Op::Idle)],
            0..400,
        )
    }

    proptest! {
        /// Publisher and subscriber driven together: the publisher never overwrites a slot the
        /// subscriber has not released, never stalls forever, and credit stays consistent,
        /// including across the u64 wrap.
        #[test]
        fn never_overruns(shift in 1u32..6, start in prop_oneof![any::<u64>(), (u64::MAX - 300)..=u64::MAX], ops in ops()) {
            let slots = 1u32 << shift;
            let mut publisher = CreditTracker::new(slots, start);
            let mut subscriber = CreditReturner::new(slots, start);
            let mut credit_word = start;
            let mut written_not_read: u64 = 0;
            for op in ops {
                match op {
                    Op::Write => {
                        publisher.update(credit_word).unwrap();
                        if publisher.acquire().is_some() {
                            written_not_read += 1;
                        }
                        // Slots the subscriber has not released are never handed out again.
                        prop_assert!(publisher.in_flight() <= slots as u64);
                        prop_assert!(publisher.written().wrapping_sub(subscriber.consumed()) <= slots as u64);
                    }
                    Op::Read => {
                        if written_not_read > 0 {
                            written_not_read -= 1;
                            if let Some(pos) = subscriber.release() { credit_word = pos; }
                        } else if let Some(pos) = subscriber.idle() { credit_word = pos; }
                    }
                    Op::Idle => if let Some(pos) = subscriber.idle() { credit_word = pos; },
                }
            }
            // After the subscriber drains and goes idle, the publisher has the whole ring again.
            while written_not_read > 0 { written_not_read -= 1; if let Some(p) = subscriber.release() { credit_word = p; } }
            if let Some(p) = subscriber.idle() { credit_word = p; }
            publisher.update(credit_word).unwrap();
            prop_assert_eq!(publisher.available(), slots as u64);
        }

        /// With credit returned only every `threshold` releases (never on idle), the publisher is
        /// out of credit only while the subscriber still has written messages to read: progress
        /// never depends on an idle return. Checked for every threshold up to the ring size.
        #[test]
        fn threshold_returns_alone_never_deadlock(shift in 1u32..6, t in 1u64..=32, start in any::<u64>(), ops in ops()) {
            let slots = 1u32 << shift;
            let threshold = t.min(slots as u64);
            let mut publisher = CreditTracker::new(slots, start);
            let mut subscriber = CreditReturner::with_threshold(threshold, start);
            let mut credit_word = start;
            let mut unread: u64 = 0;
            for op in ops {
                match op {
                    Op::Write | Op::Idle => {
                        publisher.update(credit_word).unwrap();
                        if publisher.acquire().is_some() {
                            unread += 1;
                        } else {
                            prop_assert!(unread > slots as u64 - threshold, "stuck: {} unread", unread);
                        }
                    }
                    Op::Read => if unread > 0 {
                        unread -= 1;
                        if let Some(pos) = subscriber.release() { credit_word = pos; }
                    },
                }
            }
        }

        /// With rate-limited idle returns (and threshold returns while reading), Drop and
        /// Disconnect decide on the truth: a subscriber that has been idle (polling, nothing to
        /// read) for one interval has returned everything, so a burst after a pause can use
        /// the whole ring; and at any time fewer than `threshold` released slots are unseen,
        /// so the publisher finds the ring full only when more than `slots - threshold` are
        /// really unread. The subscriber polls whenever time moves and it has nothing to read.
        #[test]
        fn idle_returns_keep_the_publisher_on_the_truth(
            shift in 1u32..7,
            interval in 1u64..1000,
            start in any::<u64>(),
            ops in proptest::collection::vec((0u8..2, 0u64..2000), 0..400),
        ) {
            let slots = 1u32 << shift;
            let threshold = (slots as u64 / 4).max(1);
            let mut publisher = CreditTracker::new(slots, start);
            let mut subscriber = CreditReturner::new(slots, start);
            let mut credit_word = start;
            let mut unread: u64 = 0;
            let mut now = 1_000_000u64;
            let mut idle_since = Some(now);
            // Releases since the subscriber was last idle for a whole interval.
            let mut released_since_long_idle = 0u64;
            for (op, dt) in ops {
                now += dt;
                if unread == 0 {
                    let since = *idle_since.get_or_insert(now);
                    if let Some(p) = subscriber.idle_at(now, interval) { credit_word = p; }
                    if now - since >= interval {
                        prop_assert_eq!(credit_word, subscriber.consumed(), "idle for an interval, credit still unseen");
                        released_since_long_idle = 0;
                    }
                }
                let unseen = subscriber.consumed().wrapping_sub(credit_word);
                prop_assert!(unseen < threshold);
                match op {
                    0 => {
                        publisher.update(credit_word).unwrap();
                        if publisher.acquire().is_some() {
                            unread += 1;
                            idle_since = None;
                        } else {
                            prop_assert_eq!(unread + unseen, slots as u64);
                            prop_assert!(unread > slots as u64 - threshold);
                            if released_since_long_idle == 0 {
                                prop_assert_eq!(unread, slots as u64, "a burst after a pause was cut short");
                            }
                        }
                    }
                    _ => if unread > 0 {
                        unread -= 1;
                        released_since_long_idle += 1;
                        if let Some(pos) = subscriber.release() { credit_word = pos; }
                    },
                }
            }
        }

        /// Any report outside consumed..=written is refused and changes nothing.
        #[test]
        fn rejects_out_of_window(start in any::<u64>(), writes in 0u64..16, reported in any::<u64>()) {
            let mut c = CreditTracker::new(16, start);
            for _ in 0..writes { c.acquire().unwrap(); }
            let before = c;
            let in_window = reported.wrapping_sub(start) <= writes;
            prop_assert_eq!(c.update(reported).is_ok(), in_window);
            if !in_window { prop_assert_eq!(c, before); }
        }
    }
}

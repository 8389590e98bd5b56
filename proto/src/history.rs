//! The publisher's history: the last `n` messages of a topic, kept serialized in its staging
//! ring, and what each subscriber's cursor into it may do on a `send()`. Pure arithmetic, so
//! every case (late join, lag within the history, lag past it, wrap of sequence numbers) is
//! tested without a transport.

/// How much of the retained history a new subscriber asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistoryRequest {
    /// Start at the live edge (the default).
    #[default]
    None,
    /// The last `k` retained messages (fewer if fewer are retained).
    Last(u64),
    /// Everything retained.
    All,
}

impl HistoryRequest {
    /// The request as sent in `Auth` (`u64::MAX` for all).
    pub fn to_wire(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Last(k) => k.min(u64::MAX - 1),
            Self::All => u64::MAX,
        }
    }

    /// The request from its `Auth` form.
    pub fn from_wire(v: u64) -> Self {
        match v {
            0 => Self::None,
            u64::MAX => Self::All,
            k => Self::Last(k),
        }
    }
}

/// Which sequences the history still holds: the last `depth` sent since the session began
/// (or since the numbering was reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    depth: u64,
    /// First sequence sent since the (re)start of the numbering.
    first: u64,
    /// The sequence the next send gets.
    next: u64,
}

impl Window {
    /// A window of `depth` messages (0: no history) for a numbering starting at `next`.
    pub fn new(depth: u64, next: u64) -> Self {
        Self {
            depth,
            first: next,
            next,
        }
    }

    /// Messages kept.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Restarts the numbering at `next` (what was kept is no longer reachable).
    pub fn reset(&mut self, next: u64) {
        self.first = next;
        self.next = next;
    }

    /// Records that `seq` (the window's `next`) was sent.
    #[inline]
    pub fn record(&mut self, seq: u64) {
        debug_assert_eq!(seq, self.next);
        self.next = seq.wrapping_add(1);
    }

    /// Messages sent since the numbering began, as far as the window can tell.
    fn sent(&self) -> u64 {
        self.next.wrapping_sub(self.first)
    }

    /// Messages currently held.
    pub fn held(&self) -> u64 {
        self.sent().min(self.depth)
    }

    /// The oldest sequence still held (equal to `next` when nothing is).
    pub fn oldest(&self) -> u64 {
        self.next.wrapping_sub(self.held())
    }

    /// Where a new subscriber asking for `req` starts.
    pub fn start_for(&self, req: HistoryRequest) -> u64 {
        let want = match req {
            HistoryRequest::None => 0,
            HistoryRequest::Last(k) => k,
            HistoryRequest::All => u64::MAX,
        };
        self.next.wrapping_sub(want.min(self.held()))
    }

    /// How many messages a subscriber whose next unsent sequence is `cursor` is behind the
    /// window's `next` (0 when it is at the live edge).
    #[inline]
    pub fn lag(&self, cursor: u64) -> u64 {
        self.next.wrapping_sub(cursor)
    }

    /// Whether `cursor` still names a held message or the live edge.
    pub fn holds(&self, cursor: u64) -> bool {
        self.lag(cursor) <= self.held()
    }

    /// The staging slot of held sequence `seq`, in a staging ring of `slots` slots (a power
    /// of two) where the `k`-th send since the start used slot `k mod slots`, `sends` sends
    /// so far.
    #[inline]
    pub fn slot_of(&self, seq: u64, sends: u64, slots: u64) -> u64 {
        debug_assert!(slots.is_power_of_two());
        let back = self.next.wrapping_sub(seq); // 1 for the newest
        sends.wrapping_sub(back) & (slots - 1)
    }
}

/// Staging slots needed to keep `depth` messages intact while one more is being loaned.
pub fn staging_slots_for(depth: u64, at_least: u32) -> Option<u32> {
    let need = depth.checked_add(2)?.max(at_least as u64);
    let p = need.checked_next_power_of_two()?;
    u32::try_from(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_late_joiner_gets_the_last_depth_messages() {
        let mut w = Window::new(4096, 0);
        for s in 0..5000 {
            w.record(s);
        }
        assert_eq!(w.oldest(), 904);
        assert_eq!(w.start_for(HistoryRequest::All), 904);
        assert_eq!(w.start_for(HistoryRequest::Last(10)), 4990);
        assert_eq!(w.start_for(HistoryRequest::Last(1 << 40)), 904);
        assert_eq!(w.start_for(HistoryRequest::None), 5000);
        assert!(w.holds(904) && !w.holds(903) && w.holds(5000));
    }

    #[test]
    fn nothing_before_the_first_send_is_held() {
        let mut w = Window::new(100, 7);
        assert_eq!((w.held(), w.oldest()), (0, 7));
        w.record(7);
        w.record(8);
        assert_eq!((w.held(), w.oldest()), (2, 7));
        assert_eq!(w.start_for(HistoryRequest::All), 7);
        w.reset(1000);
        assert_eq!((w.held(), w.oldest()), (0, 1000));
    }

    #[test]
    fn no_history_holds_only_the_live_edge() {
        let mut w = Window::new(0, 0);
        w.record(0);
        assert_eq!(w.start_for(HistoryRequest::All), 1);
        assert!(w.holds(1) && !w.holds(0));
    }

    #[test]
    fn staging_is_large_enough_and_a_power_of_two() {
        assert_eq!(staging_slots_for(0, 64), Some(64));
        assert_eq!(staging_slots_for(4096, 64), Some(8192));
        assert_eq!(staging_slots_for(62, 64), Some(64));
        assert_eq!(staging_slots_for(63, 64), Some(128));
        assert_eq!(staging_slots_for(u64::MAX, 64), None);
        assert_eq!(staging_slots_for(1 << 40, 64), None);
    }

    #[test]
    fn wire_form_round_trips() {
        for r in [
            HistoryRequest::None,
            HistoryRequest::All,
            HistoryRequest::Last(1),
            HistoryRequest::Last(4096),
        ] {
            assert_eq!(HistoryRequest::from_wire(r.to_wire()), r);
        }
    }

    proptest! {
        /// Across sequence wrap-around, every held sequence maps to the slot it was sent in.
        #[test]
        fn held_sequences_map_to_their_send_slot(start in any::<u64>(), depth in 0u64..300,
                                                 sends in 0u64..2000) {
            let slots = staging_slots_for(depth, 4).unwrap() as u64;
            let mut w = Window::new(depth, start);
            let mut slot_seq = vec![None; slots as usize];
            for k in 0..sends {
                let seq = start.wrapping_add(k);
                slot_seq[(k % slots) as usize] = Some(seq);
                w.record(seq);
            }
            for back in 1..=w.held() {
                let seq = w.next.wrapping_sub(back);
                let slot = w.slot_of(seq, sends, slots);
                prop_assert_eq!(slot_seq[slot as usize], Some(seq));
            }
            prop_assert!(w.held() <= depth && w.held() <= sends);
        }
    }
}

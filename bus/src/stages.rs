//! Where one message's time goes: cycle counts per stage of the hot path, for
//! `rdmabus bench pingpong --stages`. Only with the `stage-clock` feature; without it every
//! probe compiles to nothing and [`ENABLED`] is false.
//!
//! A probe reads [`crate::clock::ticks`] (the time-stamp counter on x86_64) before and after
//! its stage and adds the difference to its thread's totals (relaxed loads and stores on
//! lines only that thread writes); a snapshot sums every thread's. The totals are for a
//! benchmark to read, not for production; convert them with [`crate::clock::ticks_per_ns`].
//! A probe's own cost is measured by [`probe_cost_ticks`]; the totals include it.

/// Whether this build carries the probes (the `stage-clock` feature).
pub const ENABLED: bool = cfg!(feature = "stage-clock");

/// A stage of the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `Publisher::loan`: picking the staging slot and reclaiming it from the transport.
    Loan,
    /// `Loan::write`: rkyv serialization into the slot (or the copy of `write_bytes`).
    Serialize,
    /// The publish timestamp.
    Stamp,
    /// History bookkeeping and adopting joiners, before the links are fed.
    Record,
    /// Per link: the credit check (cached view, credit word when it says full, queue room).
    Credit,
    /// Per link: building the header and handing the write to the transport (shm: the copy
    /// and the release store; verbs: the work request and `ibv_post_send`, its doorbell).
    Write,
    /// Per link, verbs: reaping send completions after a signaled write.
    Reap,
    /// Counters and the topic's sequence after the links were fed.
    Account,
    /// Subscriber: the poll that found a message (shm: the flags word; verbs: `ibv_poll_cq`
    /// and re-posting the receive). Empty polls are waiting, not counted.
    Poll,
    /// Subscriber: reading and checking the slot header and the sequence.
    Validate,
    /// Subscriber, `Access::Copy`: copying the payload out of the ring.
    Copy,
    /// Subscriber: rkyv validation of the archive.
    Access,
    /// Subscriber: counters and the sampled latency.
    Stats,
    /// Subscriber: writing credit back when a quarter of the ring was released.
    CreditReturn,
    /// Subscriber: writing credit back while idle (rate-limited).
    IdleCredit,
}

/// Every stage, in the order of a message's path.
pub const ALL: [Stage; 15] = [
    Stage::Loan,
    Stage::Serialize,
    Stage::Stamp,
    Stage::Record,
    Stage::Credit,
    Stage::Write,
    Stage::Reap,
    Stage::Account,
    Stage::Poll,
    Stage::Validate,
    Stage::Copy,
    Stage::Access,
    Stage::Stats,
    Stage::CreditReturn,
    Stage::IdleCredit,
];

impl Stage {
    /// The stage's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Loan => "loan",
            Stage::Serialize => "serialize",
            Stage::Stamp => "stamp",
            Stage::Record => "record",
            Stage::Credit => "credit check",
            Stage::Write => "write/post",
            Stage::Reap => "reap completions",
            Stage::Account => "account",
            Stage::Poll => "poll (hit)",
            Stage::Validate => "header check",
            Stage::Copy => "copy out",
            Stage::Access => "rkyv check",
            Stage::Stats => "stats",
            Stage::CreditReturn => "credit return",
            Stage::IdleCredit => "idle credit",
        }
    }
}

/// Totals of one stage since the last [`reset`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTotal {
    /// Times the stage ran.
    pub count: u64,
    /// Time-stamp counter ticks spent in it.
    pub ticks: u64,
}

#[cfg(feature = "stage-clock")]
mod imp {
    use super::{Stage, StageTotal, ALL};
    use crossbeam_utils::CachePadded;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    /// Threads with totals of their own; further threads share the last block.
    const THREADS: usize = 16;

    /// One thread's totals: written by that thread only (a load and a store, no
    /// read-modify-write), on lines of their own, so that probes on two cores do not hand
    /// cache lines to each other.
    struct Block {
        count: [AtomicU64; ALL.len()],
        ticks: [AtomicU64; ALL.len()],
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const ZERO: AtomicU64 = AtomicU64::new(0);
    #[allow(clippy::declare_interior_mutable_const)]
    const BLOCK: CachePadded<Block> = CachePadded::new(Block {
        count: [ZERO; ALL.len()],
        ticks: [ZERO; ALL.len()],
    });
    static BLOCKS: [CachePadded<Block>; THREADS] = [BLOCK; THREADS];
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    #[inline(always)]
    fn block() -> &'static Block {
        let mut i = MINE.with(Cell::get);
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Relaxed).min(THREADS - 1);
            MINE.with(|m| m.set(i));
        }
        &BLOCKS[i]
    }

    #[inline(always)]
    pub fn start() -> u64 {
        crate::clock::ticks()
    }

    #[inline(always)]
    pub fn end(stage: Stage, t0: u64) {
        let dt = crate::clock::ticks().saturating_sub(t0);
        let b = block();
        let i = stage as usize;
        b.count[i].store(b.count[i].load(Relaxed) + 1, Relaxed);
        b.ticks[i].store(b.ticks[i].load(Relaxed).wrapping_add(dt), Relaxed);
    }

    pub fn snapshot() -> [StageTotal; ALL.len()] {
        std::array::from_fn(|i| StageTotal {
            count: BLOCKS.iter().map(|b| b.count[i].load(Relaxed)).sum(),
            ticks: BLOCKS.iter().map(|b| b.ticks[i].load(Relaxed)).sum(),
        })
    }

    /// Zeroes the totals; probes running meanwhile on other threads may keep a count or two
    /// from before (a benchmark resets between its runs, where that is noise).
    pub fn reset() {
        for b in &BLOCKS {
            for i in 0..ALL.len() {
                b.count[i].store(0, Relaxed);
                b.ticks[i].store(0, Relaxed);
            }
        }
    }
}

/// Runs `$body` as stage `$stage`: timed with the `stage-clock` feature, as it is without.
macro_rules! stage {
    ($stage:expr, $body:expr) => {{
        #[cfg(feature = "stage-clock")]
        let t0 = $crate::stages::start_probe();
        let r = $body;
        #[cfg(feature = "stage-clock")]
        $crate::stages::end_probe($stage, t0);
        #[cfg(not(feature = "stage-clock"))]
        let _: $crate::stages::Stage = $stage;
        r
    }};
}
pub(crate) use stage;

/// Start of a probe (the macro's half; a tick count).
#[cfg(feature = "stage-clock")]
#[doc(hidden)]
#[inline(always)]
pub fn start_probe() -> u64 {
    imp::start()
}

/// End of a probe started at `t0`: adds its ticks to `stage`.
#[cfg(feature = "stage-clock")]
#[doc(hidden)]
#[inline(always)]
pub fn end_probe(stage: Stage, t0: u64) {
    imp::end(stage, t0)
}

/// The totals of every stage (in [`ALL`]'s order) since the last [`reset`]; all zero without
/// the feature.
pub fn snapshot() -> [StageTotal; ALL.len()] {
    #[cfg(feature = "stage-clock")]
    {
        imp::snapshot()
    }
    #[cfg(not(feature = "stage-clock"))]
    {
        [StageTotal::default(); ALL.len()]
    }
}

/// Sets every total back to zero (say, after a warm-up).
pub fn reset() {
    #[cfg(feature = "stage-clock")]
    imp::reset()
}

/// What one empty probe costs, in ticks (the median of 10,001 back-to-back reads).
pub fn probe_cost_ticks() -> u64 {
    let mut v: Vec<u64> = (0..10_001)
        .map(|_| {
            let t0 = crate::clock::ticks();
            crate::clock::ticks().saturating_sub(t0)
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

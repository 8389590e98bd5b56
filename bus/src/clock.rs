//! Wall-clock nanoseconds for publish timestamps and one-way latency (CLOCK_REALTIME). Across
//! machines it is as good as their PTP sync.
//!
//! [`now_ns`] reads CLOCK_REALTIME through the vDSO (no system call, but 20 to 40 ns on a
//! VM's kvm-clock). [`Stamper`] is what the hot path uses: the CPU's time-stamp counter
//! scaled to nanoseconds and re-anchored to CLOCK_REALTIME every [`SYNC_NS`], so a stamp costs
//! one `rdtsc` and a multiplication. It is used only where the kernel itself trusts the TSC
//! (invariant TSC and `tsc` as the clock source); elsewhere, or with `RDMABUS_CLOCK=realtime`,
//! every stamp reads CLOCK_REALTIME. `RDMABUS_CLOCK=tsc` uses the TSC on x86_64 even where the
//! kernel chose another clock source (a VM whose TSC the operator knows to be steady, while
//! its kernel reads a slow emulated clock): the re-anchoring still bounds the drift, and a
//! rate that strays by more than 1/64 is not believed.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME).
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// How often a [`Stamper`] re-anchors its TSC reading to CLOCK_REALTIME (50 ms): between two
/// anchors a stamp drifts from CLOCK_REALTIME by at most the rate error over that span.
pub const SYNC_NS: u64 = 50_000_000;

/// Fraction bits of the ticks-to-nanoseconds multiplier.
const SHIFT: u32 = 32;

/// A rate measured at re-anchoring that differs from the calibrated one by more than this
/// (1/64) is not believed (a clock step, a migration): the anchor moves, the rate stays.
const RATE_TOLERANCE_SHIFT: u32 = 6;

/// A CLOCK_REALTIME reader for the hot path (see the module documentation).
#[derive(Debug)]
pub struct Stamper {
    tsc: Option<TscClock>,
}

impl Default for Stamper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stamper {
    /// A stamper on the TSC where the kernel trusts it, on CLOCK_REALTIME otherwise.
    pub fn new() -> Self {
        Self::with_sync(SYNC_NS)
    }

    /// The same, re-anchoring every `sync_ns` nanoseconds (tests use a short span).
    pub fn with_sync(sync_ns: u64) -> Self {
        Self {
            tsc: calibrated_mult().map(|mult| TscClock::new(mult, sync_ns)),
        }
    }

    /// Whether stamps come from the TSC (false: each one reads CLOCK_REALTIME).
    pub fn uses_tsc(&self) -> bool {
        self.tsc.is_some()
    }

    /// Nanoseconds since the Unix epoch.
    #[inline]
    pub fn now_ns(&mut self) -> u64 {
        match &mut self.tsc {
            Some(clock) => clock.now_ns(),
            None => now_ns(),
        }
    }
}

/// The TSC, scaled: `anchor_ns + (tsc - anchor_tsc) * mult >> SHIFT`.
#[derive(Debug)]
struct TscClock {
    anchor_tsc: u64,
    anchor_ns: u64,
    /// Nanoseconds per tick, with `SHIFT` fraction bits.
    mult: u64,
    /// The calibrated multiplier, against which a re-measured rate is judged.
    calibrated: u64,
    /// Ticks between anchors.
    sync_ticks: u64,
}

impl TscClock {
    fn new(mult: u64, sync_ns: u64) -> Self {
        let (anchor_tsc, anchor_ns) = anchor();
        Self {
            anchor_tsc,
            anchor_ns,
            mult,
            calibrated: mult,
            sync_ticks: ((u128::from(sync_ns.max(1)) << SHIFT) / u128::from(mult.max(1)))
                .clamp(1, u128::from(u64::MAX >> 8)) as u64,
        }
    }

    #[inline]
    fn now_ns(&mut self) -> u64 {
        let ticks = rdtsc().wrapping_sub(self.anchor_tsc);
        if ticks >= self.sync_ticks {
            return self.resync();
        }
        self.anchor_ns + ((u128::from(ticks) * u128::from(self.mult)) >> SHIFT) as u64
    }

    /// Takes a new anchor, and the rate measured since the last one if it is believable.
    #[cold]
    fn resync(&mut self) -> u64 {
        let (tsc, ns) = anchor();
        let (ticks, elapsed) = (
            tsc.wrapping_sub(self.anchor_tsc),
            ns.wrapping_sub(self.anchor_ns),
        );
        if ticks > 0 && elapsed < 1 << 62 {
            let measured = ((u128::from(elapsed) << SHIFT) / u128::from(ticks)) as u64;
            if measured.abs_diff(self.calibrated) <= self.calibrated >> RATE_TOLERANCE_SHIFT {
                self.mult = measured;
            }
        }
        self.anchor_tsc = tsc;
        self.anchor_ns = ns;
        ns
    }
}

/// A TSC reading and CLOCK_REALTIME taken together: the clock read bracketed by two TSC
/// reads, the midpoint kept, retried when something (an interrupt) stretched the bracket.
fn anchor() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..5 {
        let t1 = rdtsc();
        let ns = now_ns();
        let t2 = rdtsc();
        let width = t2.wrapping_sub(t1);
        if width < best.0 {
            best = (width, t1.wrapping_add(width / 2), ns);
        }
    }
    (best.1, best.2)
}

/// The process-wide ticks-to-nanoseconds multiplier, calibrated once (10 ms), or `None`
/// where the TSC is not to be used.
fn calibrated_mult() -> Option<u64> {
    static MULT: OnceLock<Option<u64>> = OnceLock::new();
    *MULT.get_or_init(|| {
        if !tsc_trusted() {
            return None;
        }
        let (t0, n0) = anchor();
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (t1, n1) = anchor();
        let (ticks, elapsed) = (t1.wrapping_sub(t0), n1.wrapping_sub(n0));
        if ticks == 0 || elapsed == 0 || elapsed > 1_000_000_000 {
            return None;
        }
        Some(((u128::from(elapsed) << SHIFT) / u128::from(ticks)) as u64).filter(|&m| m > 0)
    })
}

/// The kernel's current clock source (`tsc`, `kvm-clock`, `hpet`...), empty where it does
/// not say.
pub fn clock_source() -> String {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether the kernel trusts the TSC: x86_64, `constant_tsc` and `nonstop_tsc` in
/// /proc/cpuinfo, and `tsc` as the current clock source; not with `RDMABUS_CLOCK=realtime`,
/// always (on x86_64) with `RDMABUS_CLOCK=tsc`.
fn tsc_trusted() -> bool {
    let forced = std::env::var("RDMABUS_CLOCK").ok();
    if !cfg!(target_arch = "x86_64") || forced.as_deref() == Some("realtime") {
        return false;
    }
    if forced.as_deref() == Some("tsc") {
        return true;
    }
    let source = clock_source();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    source == "tsc" && has("constant_tsc") && has("nonstop_tsc")
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC is part of the x86_64 baseline; it reads a counter and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn rdtsc() -> u64 {
    0
}

/// A cheap, steady tick count for timing short intervals within one run (benchmarks): the
/// TSC on x86_64, as perftest times with it; elsewhere nanoseconds of the monotonic clock.
/// Convert with [`ticks_per_ns`].
#[inline(always)]
pub fn ticks() -> u64 {
    if cfg!(target_arch = "x86_64") {
        rdtsc()
    } else {
        static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// [`ticks`] per nanosecond, measured against the monotonic clock over 20 ms.
pub fn ticks_per_ns() -> f64 {
    let (t0, i0) = (ticks(), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (t1, el) = (ticks(), i0.elapsed());
    (t1.wrapping_sub(t0) as f64 / el.as_nanos().max(1) as f64).max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps follow CLOCK_REALTIME: each read between two reads of it stays within a few
    /// microseconds of them, across many re-anchorings.
    #[test]
    fn stamps_follow_the_realtime_clock() {
        let mut s = Stamper::with_sync(1_000_000);
        let mut worst = 0u64;
        let until = now_ns() + 300_000_000;
        let mut reads = 0u64;
        while now_ns() < until {
            let before = now_ns();
            let stamp = s.now_ns();
            let after = now_ns();
            reads += 1;
            let off = if stamp < before {
                before - stamp
            } else {
                stamp.saturating_sub(after)
            };
            worst = worst.max(off);
        }
        assert!(reads > 1000, "only {reads} reads");
        assert!(
            worst < 20_000,
            "a stamp was {worst} ns outside the realtime reads around it (tsc: {})",
            s.uses_tsc()
        );
    }

    #[test]
    fn realtime_fallback_when_asked() {
        let mut s = Stamper { tsc: None };
        let (a, b, c) = (now_ns(), s.now_ns(), now_ns());
        assert!(a <= b && b <= c);
    }
}

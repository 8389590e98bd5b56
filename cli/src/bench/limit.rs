//! The limit: one cache line handed between two threads and back (each pinned where the bus's
//! pollers run), the physical floor of any shared-memory hand-off between those cores. One-way
//! is half the round trip, as for the bus's ping-pong; `bench pingpong` measures it in the same
//! run and prints its p50 as a ratio to this one.

use super::result::{histogram, host, Percentiles, Row};
use super::Common;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use rdmabus::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Arguments of `rdmabus bench limit`.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    #[command(flatten)]
    pub common: Common,
}

/// One-way latency of handing one cache line to the thread on `cpus[1]` and back, measured
/// from the calling thread (pinned to `cpus[0]` if given): `warmup` unmeasured round trips,
/// then `iters` measured.
pub fn measure(c: &Common, warmup: u64, iters: u64) -> Result<Histogram<u64>, Error> {
    // One line each way would be two lines; one word both write is one line, as a message's
    // header is for the bus.
    let line = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let total = warmup + iters;
    let other = line.clone();
    let echo_cpu = c.cpu.get(1).copied();
    let echo = std::thread::Builder::new()
        .name("bench-limit".into())
        .spawn(move || -> Result<(), Error> {
            if let Some(cpu) = echo_cpu {
                rdmabus::affinity::pin_current_thread(cpu)?;
            }
            for i in 0..total {
                let ping = 2 * i + 1;
                while other.load(Ordering::Acquire) != ping {
                    std::hint::spin_loop();
                }
                other.store(ping + 1, Ordering::Release);
            }
            Ok(())
        })
        .map_err(|e| Error::io("starting the limit thread", e))?;
    // Measured on a thread of our own, so that the caller's pinning is left as it was.
    let first_cpu = c.cpu.first().copied();
    let timer = std::thread::Builder::new()
        .name("bench-limit-timer".into())
        .spawn(move || -> Result<Histogram<u64>, Error> {
            if let Some(cpu) = first_cpu {
                rdmabus::affinity::pin_current_thread(cpu)?;
            }
            let mut h = histogram();
            // Timed with the TSC, as the bus's ping-pong is.
            let per_ns = rdmabus::clock::ticks_per_ns();
            for i in 0..total {
                let ping = 2 * i + 1;
                let t0 = rdmabus::clock::ticks();
                line.store(ping, Ordering::Release);
                while line.load(Ordering::Acquire) != ping + 1 {
                    std::hint::spin_loop();
                }
                let rtt = (rdmabus::clock::ticks().saturating_sub(t0) as f64 / per_ns) as u64;
                if i >= warmup {
                    let _ = h.record((rtt / 2).max(1));
                }
            }
            Ok(h)
        })
        .map_err(|e| Error::io("starting the limit thread", e))?;
    let h = timer
        .join()
        .map_err(|_| Error::Protocol("the limit thread panicked".into()))??;
    echo.join()
        .map_err(|_| Error::Protocol("the limit thread panicked".into()))??;
    Ok(h)
}

/// Runs `rdmabus bench limit`.
pub fn run(args: LimitArgs) -> Result<(), Error> {
    let c = args.common;
    c.check()?;
    let host = host();
    let h = measure(&c, c.warmup, c.iters)?;
    let rtts = 1e9 / (2.0 * h.mean().max(1.0));
    let row = Row {
        label: "one cache line".into(),
        size: 8,
        subscribers: 1,
        messages: c.iters,
        latency: Percentiles::of(&h),
        msgs_per_s: rtts,
        mb_per_s: 0.0,
        x_limit: Some(1.0),
        send_ns: None,
        skew: None,
    };
    c.report("limit", host, vec![row], None)
}

//! Ping-pong: node A publishes "bench.ping"; an echo thread on node B forwards each message's
//! archive unchanged on "bench.pong"; A times the round trip (with [`rdmabus::clock::ticks`],
//! the TSC on x86_64). One-way latency is half of it.

use super::result::{histogram, host, Percentiles, Row};
use super::Common;
use rdmabus::clock::ticks;
use rdmabus::proto::bench::BenchMsg;
use rdmabus::{Error, Event, Node, Psk, Subscriber};
use std::net::IpAddr;
use std::time::Duration;

/// Arguments of `rdmabus bench pingpong`.
#[derive(clap::Args, Debug)]
pub struct PingpongArgs {
    #[command(flatten)]
    pub common: Common,
    /// Address of side A (the pinger); over verbs it picks A's RDMA device.
    #[arg(long, value_name = "IP")]
    pub a: Option<IpAddr>,
    /// Address of side B (the echo); over verbs it picks B's RDMA device.
    #[arg(long, value_name = "IP")]
    pub b: Option<IpAddr>,
    /// After the table, where one message's time goes: cycles per stage of the hot path
    /// (needs a build with the `stage-clock` feature).
    #[arg(long)]
    pub stages: bool,
    /// Ring slots of both subscribers (credit goes back every quarter of them). Default: the
    /// library's 1024, fewer (down to 64) where the largest size would make a ring of more
    /// than 8 MiB (over verbs each ring is pinned memory, within the memlock limit).
    #[arg(long, value_parser = crate::parse::slots)]
    pub slots: Option<u32>,
}

const WAIT: Duration = Duration::from_secs(30);

/// Runs the benchmark.
pub fn run(args: PingpongArgs) -> Result<(), Error> {
    let c = args.common.clone();
    c.check()?;
    if args.stages {
        super::stages::check_enabled()?;
    }
    let host = host();
    // The floor first, between the same CPUs, before any poller spins on them.
    let limit = super::limit::measure(&c, c.warmup, c.iters)?;
    let limit_p50 = limit.value_at_quantile(0.5).max(1) as f64;
    // Round trips are timed with the TSC, as perftest times them: on a VM whose clock
    // source is emulated, reading the clock costs microseconds.
    let per_ns = rdmabus::clock::ticks_per_ns();
    let ip_a = c.ip_or_default(args.a)?;
    let ip_b = args.b.unwrap_or(ip_a);
    let psk = Psk::random();
    let max = *c.sizes.iter().max().expect("sizes checked");
    let max_payload = BenchMsg::archived_len(max) + 64;
    let node_a = Node::builder()
        .bind(format!("{ip_a}:0"))
        .psk(psk.clone())
        .start()?;
    let node_b = Node::builder()
        .bind(format!("{ip_b}:0"))
        .psk(psk.clone())
        .start()?;
    let mut ping = node_a
        .publisher::<BenchMsg>("bench.ping")
        .max_payload(max_payload)
        .staging_slots(16)
        .build()?;
    let mut pong = node_b
        .publisher::<BenchMsg>("bench.pong")
        .max_payload(max_payload)
        .staging_slots(16)
        .build()?;

    let slots = args.slots.unwrap_or_else(|| default_slots(max_payload));
    let (addr_a, echo_common, echo_psk) = (node_a.local_addr(), c.clone(), psk.clone());
    let echo = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || -> Result<(), Error> {
            echo_common.pin(1)?;
            let mut pings = Subscriber::<BenchMsg>::builder(addr_a, "bench.ping")
                .psk(echo_psk)
                .transport(echo_common.transport)
                .bind(ip_b)
                .slots(slots)
                .idle(echo_common.idle)
                .access(echo_common.access)
                .connect()?;
            pong.wait_for_subscribers(1, WAIT)?;
            loop {
                match pings.recv() {
                    Ok(Event::Message(m)) => {
                        pong.loan()?.write_bytes(m.bytes())?.send()?;
                    }
                    Ok(_) => return Err(Error::Protocol("gap in a Block ping-pong".into())),
                    Err(Error::Closed { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(|e| Error::io("starting the echo thread", e))?;

    let mut pongs = Subscriber::<BenchMsg>::builder(node_b.local_addr(), "bench.pong")
        .psk(psk)
        .transport(c.transport)
        .bind(ip_a)
        .slots(slots)
        .idle(c.idle)
        .access(c.access)
        .connect()?;
    ping.wait_for_subscribers(1, WAIT)?;
    c.pin(0)?;
    let mut rows = Vec::new();
    let mut breakdowns = Vec::new();
    for &size in &c.sizes {
        let msg = BenchMsg::of_size(size);
        let mut h = histogram();
        let mut measured = 0u64;
        for i in 0..c.warmup + c.iters {
            if i == c.warmup {
                rdmabus::stages::reset();
            }
            let t0 = ticks();
            ping.loan()?.write(&msg)?.send()?;
            match pongs.recv()? {
                Event::Message(m) if m.payload.len() == size => {}
                Event::Message(_) => {
                    return Err(Error::Protocol("echo returned another size".into()))
                }
                _ => return Err(Error::Protocol("gap in a Block ping-pong".into())),
            }
            let rtt = (ticks().saturating_sub(t0) as f64 / per_ns) as u64;
            if i >= c.warmup {
                measured = measured.saturating_add(rtt);
                let _ = h.record((rtt / 2).max(1));
            }
        }
        // Each round trip is two one-way messages, each through the whole path once.
        breakdowns.push((size, rdmabus::stages::snapshot(), 2 * c.iters));
        let rtts = c.iters as f64 / (measured.max(1) as f64 / 1e9);
        rows.push(Row {
            label: format!("{size} B"),
            size,
            subscribers: 1,
            messages: c.iters,
            latency: Percentiles::of(&h),
            msgs_per_s: rtts,
            mb_per_s: rtts * size as f64 / 1e6,
            x_limit: Some(h.value_at_quantile(0.5) as f64 / limit_p50),
            send_ns: None,
            skew: None,
        });
    }
    drop(ping);
    echo.join()
        .map_err(|_| Error::Protocol("the echo thread panicked".into()))??;
    let p50s: Vec<u64> = rows.iter().map(|r| r.latency.summary.p50_ns).collect();
    c.report("pingpong", host, rows, Some(Percentiles::of(&limit)))?;
    if args.stages {
        super::stages::print(&breakdowns, &p50s);
    }
    Ok(())
}

/// Ring bytes the default `--slots` stays within.
const DEFAULT_RING_BYTES: usize = 8 << 20;

/// The library's default slots, halved until a ring of slots for `max_payload` fits in
/// [`DEFAULT_RING_BYTES`], and never fewer than 64.
fn default_slots(max_payload: usize) -> u32 {
    let slot = (rdmabus::proto::slot::HEADER_LEN + max_payload).next_multiple_of(64);
    let mut slots = rdmabus::DEFAULT_SLOTS;
    while slots > 64 && slots as usize * slot > DEFAULT_RING_BYTES {
        slots /= 2;
    }
    slots
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_slots_keep_rings_small() {
        assert_eq!(super::default_slots(64 + 64), 1024);
        assert_eq!(super::default_slots(65_536 + 64), 64);
        assert_eq!(super::default_slots(4096 + 64), 1024);
        assert_eq!(super::default_slots(16_384 + 64), 256);
    }
}

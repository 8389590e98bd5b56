//! Fan-out: one publisher (policy Block, unpaced), N subscriber threads. Throughput is the
//! messages published divided by the time until the last subscriber has read them all;
//! latency is one-way, from the publisher's stamp to the subscriber reading in place. Each
//! row also gives the publisher's cost per `send()` (its loop time over the messages: the
//! increase from N-1 to N subscribers is the cost of one more) and the delivery skew: per
//! message, the time between the first and the last subscriber reading it. With `--batch K`
//! the publisher sends with `publish_all`, K messages per call.

use super::result::{histogram, host, Percentiles, Row};
use super::Common;
use rdmabus::proto::bench::BenchMsg;
use rdmabus::{Error, Event, Node, Psk, Subscriber};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Arguments of `rdmabus bench fanout`.
#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8])]
    pub subscribers: Vec<usize>,
    /// Address of the publisher; over verbs it picks its RDMA device.
    #[arg(long, value_name = "IP")]
    pub publisher: Option<IpAddr>,
    /// Addresses subscribers bind to, comma-separated, used in turn (default: the publisher's).
    #[arg(long, value_delimiter = ',', value_name = "IP")]
    pub sub_bind: Vec<IpAddr>,
    /// Ring slots per subscriber.
    #[arg(long, default_value_t = 256)]
    pub slots: u32,
    /// Messages per `publish_all` call (1: one `send()` each). At most the publisher's
    /// staging slots less one (`--staging` raises them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// The publisher's staging slots (default: the library's, or enough for `--batch`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
    pub staging: Option<u32>,
}

const WAIT: Duration = Duration::from_secs(60);

/// Runs the benchmark.
pub fn run(args: FanoutArgs) -> Result<(), Error> {
    let c = args.common.clone();
    c.check()?;
    let host = host();
    let ip = c.ip_or_default(args.publisher)?;
    if args.subscribers.contains(&0) {
        return Err(Error::Config("--subscribers must be at least 1".into()));
    }
    let mut rows = Vec::new();
    for &n in &args.subscribers {
        for &size in &c.sizes {
            rows.push(one(&c, &args, ip, n, size)?);
        }
    }
    c.report("fanout", host, rows, None)
}

fn one(c: &Common, args: &FanoutArgs, ip: IpAddr, n: usize, size: usize) -> Result<Row, Error> {
    let psk = Psk::random();
    let node = Node::builder()
        .bind(format!("{ip}:0"))
        .psk(psk.clone())
        .start()?;
    let mut p = node
        .publisher::<BenchMsg>("bench.fanout")
        .max_payload(BenchMsg::archived_len(size) + 64)
        .idle(c.idle)
        .staging_slots(staging_slots(args))
        .build()?;
    let total = c.warmup + c.iters;
    let mut threads = Vec::new();
    for i in 0..n {
        let (addr, key, common) = (node.local_addr(), psk.clone(), c.clone());
        let bind = args
            .sub_bind
            .get(i % args.sub_bind.len().max(1))
            .copied()
            .unwrap_or(ip);
        let (slots, warmup) = (args.slots, c.warmup);
        threads.push(std::thread::spawn(
            move || -> Result<(hdrhistogram::Histogram<u64>, Instant, Vec<u64>), Error> {
                common.pin(i + 1)?;
                let mut sub = Subscriber::<BenchMsg>::builder(addr, "bench.fanout")
                    .psk(key)
                    .transport(common.transport)
                    .bind(bind)
                    .slots(slots)
                    .idle(common.idle)
                    .access(common.access)
                    .connect()?;
                let mut h = histogram();
                // When it read each measured message (for the skew between subscribers).
                let mut read_at = Vec::with_capacity((total - warmup) as usize);
                for k in 0..total {
                    match sub.recv()? {
                        Event::Message(m) => {
                            if k >= warmup {
                                let now = rdmabus::clock::now_ns();
                                let _ = h.record(now.saturating_sub(m.publish_ns()).max(1));
                                read_at.push(now);
                            }
                        }
                        Event::Gap { .. } => {
                            return Err(Error::Protocol("gap under policy Block".into()))
                        }
                        _ => return Err(Error::Protocol("reconnected without reconnect".into())),
                    }
                }
                Ok((h, Instant::now(), read_at))
            },
        ));
    }
    p.wait_for_subscribers(n, WAIT)?;
    c.pin(0)?;
    let msg = BenchMsg::of_size(size);
    let batch = vec![msg.clone(); args.batch as usize];
    send(&mut p, &msg, &batch, c.warmup)?;
    let start = Instant::now();
    send(&mut p, &msg, &batch, c.iters)?;
    let send_ns = start.elapsed().as_nanos() as f64 / c.iters as f64;
    let mut all = histogram();
    let mut end = start;
    let mut first = vec![u64::MAX; c.iters as usize];
    let mut last = vec![0u64; c.iters as usize];
    for t in threads {
        let (h, done, read_at) = t
            .join()
            .map_err(|_| Error::Protocol("a subscriber thread panicked".into()))??;
        let _ = all.add(&h);
        end = end.max(done);
        for (k, &at) in read_at.iter().enumerate() {
            first[k] = first[k].min(at);
            last[k] = last[k].max(at);
        }
    }
    let mut skew = histogram();
    for (f, l) in first.iter().zip(&last) {
        let _ = skew.record(l.saturating_sub(*f).max(1));
    }
    let secs = (end - start).as_secs_f64().max(1e-9);
    let rate = c.iters as f64 / secs;
    Ok(Row {
        label: if args.batch > 1 {
            format!("{n} subs, {size} B, batch {}", args.batch)
        } else {
            format!("{n} subs, {size} B")
        },
        size,
        subscribers: n,
        messages: c.iters,
        latency: Percentiles::of(&all),
        msgs_per_s: rate,
        mb_per_s: rate * size as f64 * n as f64 / 1e6,
        x_limit: None,
        send_ns: Some(send_ns),
        skew: Some(Percentiles::of(&skew).summary),
    })
}

/// Staging slots for the publisher: `--staging`, or the default raised to fit `--batch`.
fn staging_slots(args: &FanoutArgs) -> u32 {
    args.staging
        .unwrap_or_else(|| rdmabus::DEFAULT_STAGING_SLOTS.max((args.batch + 1).next_power_of_two()))
}

/// Publishes `count` messages: one `send()` each, or in `publish_all` calls of `batch`.
fn send(
    p: &mut rdmabus::Publisher<BenchMsg>,
    msg: &BenchMsg,
    batch: &[BenchMsg],
    count: u64,
) -> Result<(), Error> {
    if batch.len() <= 1 {
        for _ in 0..count {
            p.loan()?.write(msg)?.send()?;
        }
        return Ok(());
    }
    let mut left = count;
    while left > 0 {
        let k = left.min(batch.len() as u64) as usize;
        p.publish_all(&batch[..k])?;
        left -= k as u64;
    }
    Ok(())
}

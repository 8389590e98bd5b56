//! Round-trip latency: a `Quote` goes out on "ping", an echo thread sends it back on "pong".
//!
//!     cargo run --release -p rdmabus-examples --bin pingpong
//!
//! Both sides busy-spin, so give each a core (on a 2-core machine, expect the figures to move
//! with whatever else runs).

use hdrhistogram::Histogram;
use rdmabus::proto::market::Quote;
use rdmabus::{Error, Event, Node, Psk, Subscriber};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 100_000;

fn main() -> Result<(), Error> {
    let psk = Psk::random();
    let a = Node::builder().psk(psk.clone()).start()?;
    let b = Node::builder().psk(psk.clone()).start()?;
    let mut ping = a.publisher::<Quote>("ping").max_payload(96).build()?;
    let (a_addr, b_addr, key) = (a.local_addr(), b.local_addr(), psk.clone());

    // The echo side: its own publisher ("pong") and a subscriber of "ping".
    let mut pong = b.publisher::<Quote>("pong").max_payload(96).build()?;
    let echo = std::thread::spawn(move || -> Result<(), Error> {
        let mut pings = Subscriber::<Quote>::builder(a_addr, "ping")
            .psk(key)
            .connect()?;
        pong.wait_for_subscribers(1, Duration::from_secs(5))?;
        loop {
            match pings.recv() {
                Ok(Event::Message(m)) => {
                    // Answer with a quote carrying the same sequence and exchange timestamp.
                    let q = Quote {
                        exchange_ts_ns: m.exchange_ts_ns.to_native(),
                        ..Quote::synthetic(m.seq())
                    };
                    pong.publish(&q)?;
                }
                Ok(Event::Gap { .. }) => unreachable!("Block never loses"),
                Ok(_) => unreachable!("no reconnect asked for"),
                Err(Error::Closed { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut pongs = Subscriber::<Quote>::builder(b_addr, "pong")
        .psk(psk)
        .connect()?;
    ping.wait_for_subscribers(1, Duration::from_secs(5))?;

    let mut rtt = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    for i in 0..ROUNDS + 10_000 {
        let t0 = Instant::now();
        ping.publish(&Quote::synthetic(i))?;
        match pongs.recv()? {
            Event::Message(m) => assert_eq!(m.seq(), i),
            _ => unreachable!("Block never loses; no reconnect asked for"),
        }
        if i >= 10_000 {
            rtt.record(t0.elapsed().as_nanos() as u64).unwrap();
        }
    }
    drop(ping);
    echo.join().unwrap()?;
    println!(
        "{ROUNDS} round trips: p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
        rtt.value_at_quantile(0.5) as f64 / 1e3,
        rtt.value_at_quantile(0.99) as f64 / 1e3,
        rtt.value_at_quantile(0.999) as f64 / 1e3,
        rtt.max() as f64 / 1e3
    );
    Ok(())
}

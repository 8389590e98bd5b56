//! Market-data fan-out across processes: one publisher, subscribers in their own processes.
//!
//!     cargo run --release -p rdmabus-examples --bin market_fanout
//!
//! With no arguments it runs the publisher and starts two copies of itself as subscribers.
//! By hand: `market_fanout pub 127.0.0.1:7500` and, elsewhere, `market_fanout sub 127.0.0.1:7500`
//! (both with the same RDMABUS_PSK).

use rdmabus::proto::market::{Quote, PRICE_SCALE};
use rdmabus::{Error, Event, IdleStrategy, Node, Policy, Psk, Subscriber};
use std::time::Duration;

const MESSAGES: u64 = 200_000;

fn publisher(bind: &str, psk: Psk, spawn_subscribers: usize) -> Result<(), Error> {
    let node = Node::builder().bind(bind).psk(psk.clone()).start()?;
    let mut quotes = node
        .publisher::<Quote>("md.quotes")
        .policy(Policy::Block)
        .max_payload(96)
        .idle(IdleStrategy::Yield)
        .build()?;
    let mut children = Vec::new();
    for _ in 0..spawn_subscribers {
        let exe = std::env::current_exe().expect("own path");
        children.push(
            std::process::Command::new(exe)
                .args(["sub", &node.local_addr().to_string()])
                .env("RDMABUS_PSK", psk.to_text())
                .spawn()
                .expect("start a subscriber"),
        );
    }
    quotes.wait_for_subscribers(spawn_subscribers.max(1), Duration::from_secs(30))?;
    println!(
        "publisher: {} subscribers, sending {MESSAGES} quotes",
        quotes.subscriber_count()
    );
    for i in 0..MESSAGES {
        // loan → serialize in place → send: no allocation, no copy before the ring.
        quotes.loan()?.write(&Quote::synthetic(i))?.send()?;
    }
    let stats = quotes.close(Duration::from_secs(2));
    for s in &stats.subscribers {
        println!(
            "publisher: {} got {} (dropped {})",
            s.name, s.sent, s.dropped
        );
    }
    for mut c in children {
        c.wait().expect("subscriber exit");
    }
    Ok(())
}

fn subscriber(addr: &str) -> Result<(), Error> {
    let name = format!("fanout-{}", std::process::id());
    let mut sub = Subscriber::<Quote>::builder(addr, "md.quotes")
        .name(&name)
        .idle(IdleStrategy::Yield)
        .connect()?;
    let (mut n, mut spread_sum) = (0u64, 0i64);
    loop {
        match sub.recv() {
            // `m` derefs to the archived quote, in the subscriber's validated copy of the slot.
            Ok(Event::Message(m)) => {
                n += 1;
                spread_sum += m.ask_px.to_native() - m.bid_px.to_native();
            }
            Ok(Event::Gap { first, count, .. }) => println!("{name}: lost {count} from #{first}"),
            Ok(_) => {} // other events (a reconnect) need `SubscriberBuilder::reconnect`
            Err(Error::Closed { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    println!(
        "{name}: {n} quotes, mean spread {:.4}",
        spread_sum as f64 / n.max(1) as f64 / PRICE_SCALE as f64
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("pub") => publisher(
            args.get(2).map_or("127.0.0.1:7500", |s| s),
            Psk::from_env_default()?,
            0,
        ),
        Some("sub") => subscriber(args.get(2).map_or("127.0.0.1:7500", |s| s)),
        _ => publisher("127.0.0.1:0", Psk::random(), 2),
    }
}

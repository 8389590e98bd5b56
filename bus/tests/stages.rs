//! `rdmabus::stages`: with the `stage-clock` feature every stage of a message's path is counted
//! once per message and takes time; without it nothing is counted. Run with
//! `cargo test -p rdmabus --features stage-clock --test stages` (scripts/test does) as well as
//! in the plain suite.

mod common;

use rdmabus::proto::market::Quote;
use rdmabus::stages::{self, Stage, ALL};
use rdmabus::{Event, Policy, Psk};
use std::time::Duration;

#[test]
fn every_stage_of_a_message_is_counted_once_and_takes_time() {
    let psk = Psk::random();
    let node = common::node_builder(psk.clone()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("stages")
        .policy(Policy::Block)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "stages", psk)
        .slots(64)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    // Nothing else in this test binary sends: the totals are this test's.
    stages::reset();
    let n = 1000u64;
    for i in 0..n {
        p.publish(&Quote::synthetic(i)).unwrap();
        match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Message(m)) => assert_eq!(m.seq(), p.next_seq() - 1),
            other => panic!("expected message {i}, got {:?}", other.is_some()),
        }
    }
    let totals = stages::snapshot();
    let of = |s: Stage| totals[ALL.iter().position(|&x| x == s).unwrap()];
    if !stages::ENABLED {
        assert!(totals.iter().all(|t| t.count == 0 && t.ticks == 0));
        return;
    }
    // Every stage but those that do not run once per message over shm.
    let per_message = ALL
        .into_iter()
        .filter(|s| !matches!(s, Stage::Reap | Stage::CreditReturn | Stage::IdleCredit));
    for s in per_message {
        let t = of(s);
        assert_eq!(
            t.count,
            n,
            "{} ran {} times for {n} messages",
            s.name(),
            t.count
        );
        assert!(t.ticks > 0, "{} took no time", s.name());
    }
    // Credit goes back at least every quarter ring (16 slots), or sooner when the subscriber
    // found its ring empty (idle credit, counted apart, which restarts the count of 16).
    let (batch, idle) = (of(Stage::CreditReturn).count, of(Stage::IdleCredit).count);
    assert!(batch <= n / 16, "{batch} batch returns for {n} messages");
    assert!(
        batch + idle >= (n - 15) / 16,
        "{batch} + {idle} returns for {n} messages"
    );
    assert!(rdmabus::clock::ticks_per_ns() > 0.0);
}

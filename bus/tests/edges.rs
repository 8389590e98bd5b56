//! The edges of a link's life: a Block subscriber that never consumes, a handshake that
//! finishes after its publisher is gone.

mod common;

use common::psk;
use common::raw::RawSub;
use rdmabus::proto::handshake::*;
use rdmabus::proto::market::Quote;
use rdmabus::{Event, LinkEnd, Policy};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn a_block_subscriber_that_never_consumes_costs_the_others_one_stall_budget() {
    let node = common::node_builder(psk()).start().unwrap();
    let budget = Duration::from_millis(300);
    let mut p = node
        .publisher::<Quote>("quotes")
        .policy(Policy::Block)
        .block_timeout(Some(budget))
        .build()
        .unwrap();
    // Heartbeats (its session thread runs) but never polls: its 8 slots fill and stay full.
    let stuck = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(8)
        .name("stuck")
        .connect()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let addr = node.local_addr();
    let good = std::thread::spawn(move || {
        let mut s = common::subscriber::<Quote>(addr, "quotes", psk())
            .name("good")
            .connect()
            .unwrap();
        tx.send(()).unwrap();
        let mut n = 0u64;
        while n < 200 {
            match s.recv_timeout(Duration::from_secs(10)).unwrap() {
                Some(Event::Message(m)) => {
                    assert!(Quote::synthetic_matches(&m, n), "message {n}");
                    n += 1;
                }
                Some(_) => panic!("the good subscriber lost messages"),
                None => panic!("the good subscriber starved at {n}"),
            }
        }
        n
    });
    rx.recv().unwrap();
    p.wait_for_subscribers(2, Duration::from_secs(10)).unwrap();
    // Publish on another thread, so that a publisher frozen by the stuck subscriber fails
    // the test instead of hanging it.
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut longest = Duration::ZERO;
        for i in 0..200u64 {
            let t = Instant::now();
            p.publish(&Quote::synthetic(i)).unwrap();
            longest = longest.max(t.elapsed());
        }
        let _ = done_tx.send((longest, p.stats()));
    });
    let (longest, stats) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the publisher is frozen by a subscriber that never consumes");
    assert_eq!(good.join().unwrap(), 200);
    eprintln!("longest send(): {longest:?} (budget {budget:?})");
    assert!(
        longest >= budget,
        "the stall budget was not used: {longest:?}"
    );
    assert!(
        longest < budget + Duration::from_millis(700),
        "one stall cost {longest:?}"
    );
    let s = stats
        .subscribers
        .iter()
        .find(|s| s.name == "stuck")
        .unwrap();
    assert!(
        matches!(&s.end, LinkEnd::Cut(GoodbyeReason::SlowConsumer, why) if why.contains("held the publisher")),
        "{s:?}"
    );
    drop(stuck);
}

#[test]
fn a_handshake_that_finishes_after_the_publisher_is_dropped_is_told_at_once() {
    let node = rdmabus::Node::builder()
        .bind("127.0.0.1:0")
        .psk(psk())
        .start()
        .unwrap();
    let p = node.publisher::<Quote>("quotes").build().unwrap();
    let mut sub = RawSub::connect(
        node.local_addr(),
        &psk(),
        "quotes",
        std::any::type_name::<Quote>(),
        TransportKind::Shm,
    );
    // A real shm ring, handed over, up to the Welcome.
    let (_local, credit) = sub.shm_to_welcome(64).expect("no Welcome");
    drop(credit);
    // The publisher goes away between Welcome and the subscriber's first heartbeat.
    drop(p);
    sub.hs.ready(0);
    let ClientEvent::Established(mut session) = sub.next_event() else {
        panic!("not established")
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = session.poll_message().unwrap() {
            match m {
                ControlMsg::Goodbye(g) => {
                    assert_eq!(g.reason, GoodbyeReason::Shutdown, "{g:?}");
                    break;
                }
                ControlMsg::Heartbeat(_) => {}
                other => panic!("unexpected {other:?}"),
            }
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "an orphaned link is heartbeated instead of being told the topic is gone"
        );
        if let Ok(Some(n)) = sub
            .fs
            .read_until(Instant::now() + Duration::from_millis(50), &mut buf)
        {
            session.handle_input(&buf[..n]).unwrap();
        }
    }
}

#[test]
fn drops_just_before_the_end_are_announced_and_the_ring_is_drained_first() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .policy(Policy::Drop)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(8)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    // The subscriber does not read: 8 fit, the last 12 are dropped, then the topic closes.
    for i in 0..20u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let stats = p.close(Duration::from_secs(5));
    assert_eq!(stats.subscribers[0].dropped, 12, "{stats:?}");
    let mut got = Vec::new();
    let mut gaps = Vec::new();
    let end = loop {
        match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Event::Message(m))) => got.push(m.seq()),
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => gaps.push((first, count, announced)),
            Ok(Some(_)) => panic!("unexpected event"),
            Ok(None) => panic!("no end"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert_eq!(
        gaps,
        vec![(8, 12, true)],
        "the trailing drops were not announced"
    );
    assert!(
        matches!(
            &end,
            rdmabus::Error::Closed {
                reason: GoodbyeReason::Shutdown,
                ..
            }
        ),
        "{end}"
    );
    let s = sub.stats();
    assert_eq!((s.received, s.lost, s.dropped_announced), (8, 12, 12));
}

/// Reads 255 messages of a 1024-slot ring (less than the quarter ring after which credit goes
/// back), pauses with an empty ring, then takes an 801-message burst it does not read during.
fn pause_then_burst(policy: Policy) -> (rdmabus::PublisherStats, Vec<u64>) {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .policy(policy)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(1024)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    let mut seen = Vec::new();
    for i in 0..255u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
        match sub.recv_timeout(Duration::from_secs(5)).unwrap() {
            Some(Event::Message(m)) => seen.push(m.seq()),
            _ => panic!("message {i}"),
        }
    }
    // The pause: an idle subscriber, polling an empty ring.
    assert!(sub
        .recv_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    for i in 255..255 + 801u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let stats = p.stats();
    while seen.len() < 255 + 801 {
        match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(Some(Event::Message(m))) => seen.push(m.seq()),
            Ok(Some(Event::Gap { first, count, .. })) => panic!("lost {count} from {first}"),
            other => panic!("after {}: {:?}", seen.len(), other.err()),
        }
    }
    (stats, seen)
}

#[test]
fn a_paused_subscriber_with_an_empty_ring_takes_a_whole_burst_under_drop() {
    let (stats, seen) = pause_then_burst(Policy::Drop);
    assert_eq!(stats.subscribers[0].dropped, 0, "{stats:?}");
    assert_eq!(seen, (0..1056).collect::<Vec<_>>());
}

#[test]
fn a_paused_subscriber_with_an_empty_ring_is_not_cut_under_disconnect() {
    let (stats, seen) = pause_then_burst(Policy::Disconnect);
    assert_eq!(stats.subscribers[0].end, LinkEnd::Active, "{stats:?}");
    assert_eq!(seen.len(), 1056);
}

//! `Publisher::publish_all`: a batch is the same stream as the same sends one by one (sequences,
//! content, Block, Drop and its exact gaps, Disconnect), and a batch that cannot be sent whole
//! sends nothing. Runs on the host over shm and in the guest over verbs (where a batch is one
//! chained work-request list per subscriber).

mod common;

use rdmabus::proto::handshake::GoodbyeReason;
use rdmabus::proto::market::{BookUpdate, Quote};
use rdmabus::{Error, Event, LinkEnd, Policy, Psk};
use std::time::Duration;

fn psk() -> Psk {
    Psk::parse("rdmabus-psk-v1:33333333333333333333333333333333333333333333333333333333333333ab")
        .unwrap()
}

/// Everything the subscriber reads until the topic closes: messages (checked against their
/// synthetic content) and gaps.
fn drain(sub: &mut rdmabus::Subscriber<Quote>) -> (Vec<u64>, Vec<(u64, u64, bool)>, Error) {
    let mut got = Vec::new();
    let mut gaps = Vec::new();
    let end = loop {
        match sub.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Event::Message(m))) => {
                assert!(Quote::synthetic_matches(&m, m.seq()), "seq {}", m.seq());
                got.push(m.seq());
            }
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => gaps.push((first, count, announced)),
            Ok(Some(_)) => panic!("unexpected event"),
            Ok(None) => panic!("nothing for 10 s after {} messages", got.len()),
            Err(e) => break e,
        }
    };
    (got, gaps, end)
}

#[test]
fn batches_under_block_are_the_stream_single_sends_make() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("q")
        .policy(Policy::Block)
        .build()
        .unwrap();
    let addr = node.local_addr();
    // A ring of 8 slots, smaller than most batches: the publisher waits for credit inside a
    // batch, which the subscriber can return only for writes it was given.
    let reader = std::thread::spawn(move || {
        let mut sub = common::subscriber::<Quote>(addr, "q", psk())
            .slots(8)
            .connect()
            .unwrap();
        drain(&mut sub)
    });
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    let mut next = 0u64;
    for k in (1..=40usize).chain([63, 63, 1, 2]) {
        let batch: Vec<Quote> = (next..next + k as u64).map(Quote::synthetic).collect();
        assert_eq!(p.publish_all(&batch).unwrap(), next, "batch of {k}");
        next += k as u64;
        // A single send between batches takes the next sequence.
        assert_eq!(p.publish(&Quote::synthetic(next)).unwrap(), next);
        next += 1;
    }
    assert_eq!(p.publish_all(&[]).unwrap(), next, "an empty batch");
    let stats = p.close(Duration::from_secs(10));
    let (got, gaps, end) = reader.join().unwrap();
    assert_eq!(got, (0..next).collect::<Vec<_>>(), "{stats:?}");
    assert!(gaps.is_empty(), "{gaps:?}");
    assert!(matches!(end, Error::Closed { .. }), "{end}");
    assert_eq!(stats.published, next);
}

#[test]
fn a_batch_that_overfills_a_ring_under_drop_has_exact_announced_gaps() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("q")
        .policy(Policy::Drop)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "q", psk())
        .slots(8)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    // The subscriber does not read: 8 of the 50 fit, 42 are dropped.
    let batch: Vec<Quote> = (0..50).map(Quote::synthetic).collect();
    assert_eq!(p.publish_all(&batch).unwrap(), 0);
    let stats = p.close(Duration::from_secs(5));
    assert_eq!(stats.subscribers[0].dropped, 42, "{stats:?}");
    let (got, gaps, end) = drain(&mut sub);
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert_eq!(gaps, vec![(8, 42, true)]);
    assert!(matches!(end, Error::Closed { .. }), "{end}");
}

#[test]
fn a_batch_that_overfills_a_ring_under_disconnect_cuts_only_that_subscriber() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("q")
        .policy(Policy::Disconnect)
        .build()
        .unwrap();
    let mut slow = common::subscriber::<Quote>(node.local_addr(), "q", psk())
        .slots(8)
        .connect()
        .unwrap();
    let addr = node.local_addr();
    let fast = std::thread::spawn(move || {
        let mut sub = common::subscriber::<Quote>(addr, "q", psk())
            .slots(1024)
            .connect()
            .unwrap();
        drain(&mut sub)
    });
    p.wait_for_subscribers(2, Duration::from_secs(10)).unwrap();
    let batch: Vec<Quote> = (0..50).map(Quote::synthetic).collect();
    assert_eq!(p.publish_all(&batch).unwrap(), 0);
    let batch: Vec<Quote> = (50..100).map(Quote::synthetic).collect();
    assert_eq!(p.publish_all(&batch).unwrap(), 50);
    let stats = p.stats();
    let cut = stats
        .subscribers
        .iter()
        .filter(|s| matches!(&s.end, LinkEnd::Cut(GoodbyeReason::SlowConsumer, _)))
        .count();
    let active = stats
        .subscribers
        .iter()
        .filter(|s| s.end == LinkEnd::Active)
        .count();
    assert_eq!((cut, active), (1, 1), "{stats:?}");
    p.close(Duration::from_secs(10));
    let (got, gaps, _) = fast.join().unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "the fast subscriber");
    assert!(gaps.is_empty());
    // The slow one has what fitted, in order, and then its link ends.
    let (got, _, end) = drain(&mut slow);
    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
    assert!(got.len() <= 8, "{got:?}");
    assert!(matches!(end, Error::Closed { .. }), "{end}");
}

#[test]
fn a_batch_larger_than_the_staging_ring_is_refused_and_sends_nothing() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("q")
        .staging_slots(64)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "q", psk())
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    assert_eq!(p.max_batch(), 63);
    let batch: Vec<Quote> = (0..64).map(Quote::synthetic).collect();
    match p.publish_all(&batch) {
        Err(Error::Config(m)) => assert!(m.contains("64"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.publish_all(&batch[..63]).unwrap(), 0);
    let stats = p.close(Duration::from_secs(5));
    assert_eq!(stats.published, 63);
    let (got, gaps, _) = drain(&mut sub);
    assert_eq!(got, (0..63).collect::<Vec<_>>());
    assert!(gaps.is_empty());
}

#[test]
fn a_value_that_does_not_fit_fails_the_whole_batch_before_anything_is_sent() {
    let node = common::node_builder(psk()).start().unwrap();
    let small = BookUpdate {
        bids: Default::default(),
        asks: Default::default(),
        ..BookUpdate::synthetic(1)
    };
    let full = BookUpdate::synthetic(2);
    assert!(!full.bids.is_empty());
    let room = {
        let mut buf = [0u8; 4096];
        rdmabus::proto::codec::encode_into(&small, &mut buf).unwrap() + 16
    };
    let mut p = node
        .publisher::<BookUpdate>("b")
        .max_payload(room)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<BookUpdate>(node.local_addr(), "b", psk())
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    let err = p
        .publish_all(&[small.clone(), full, small.clone()])
        .unwrap_err();
    assert!(!matches!(err, Error::Config(_)), "{err}");
    // Nothing went out: the next send is sequence 0, and it is the first thing read.
    assert_eq!(p.publish(&small).unwrap(), 0);
    match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
        Some(Event::Message(m)) => {
            assert_eq!(m.seq(), 0);
            assert!(m.bids.is_empty());
        }
        Some(Event::Gap { first, count, .. }) => panic!("gap {first}+{count}"),
        _ => panic!("no message"),
    }
    assert!(sub
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    assert_eq!(p.stats().published, 1);
}

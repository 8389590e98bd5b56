//! The publisher's history, over the suite's transport (shm on the host, verbs in the
//! Soft-RoCE guest): a late joiner gets the retained past then the live stream with no gap
//! and no duplicate at the seam; a Drop subscriber that falls behind is fed from the history
//! instead of losing messages, and loses exactly what left the history when its lag passes it.

mod common;

use common::psk;
use rdmabus::proto::market::Quote;
use rdmabus::{Event, HistoryRequest, Policy, Publisher, Subscriber};
use std::time::{Duration, Instant};

fn publisher(node: &rdmabus::Node, policy: Policy, history: u64) -> Publisher<Quote> {
    node.publisher::<Quote>("quotes")
        .max_payload(96)
        .policy(policy)
        .history(history)
        .build()
        .unwrap()
}

/// What a subscriber saw: messages (seq, from history) and gaps (first, count, announced).
#[derive(Default)]
struct Seen {
    messages: Vec<(u64, bool)>,
    gaps: Vec<(u64, u64, bool)>,
}

/// Takes whatever the subscriber has now, checking each message's content.
fn drain(sub: &mut Subscriber<Quote>, seen: &mut Seen) {
    while let Some(e) = sub.poll().unwrap() {
        match e {
            Event::Message(m) => {
                assert!(
                    Quote::synthetic_matches(m.archived(), m.seq()),
                    "content of {}",
                    m.seq()
                );
                seen.messages.push((m.seq(), m.from_history()));
            }
            Event::Gap {
                first,
                count,
                announced,
            } => seen.gaps.push((first, count, announced)),
            _ => panic!("unexpected event"),
        }
    }
}

/// Pumps the publisher and drains the subscriber until it has `n` messages (or 60 s pass).
fn pump_until(p: &mut Publisher<Quote>, sub: &mut Subscriber<Quote>, seen: &mut Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.messages.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived",
            seen.messages.len()
        );
        p.pump();
        drain(sub, seen);
    }
}

#[test]
fn a_late_joiner_gets_the_retained_past_then_the_live_stream_without_a_seam() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = publisher(&node, Policy::Block, 4096);
    for i in 0..5000u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .history(HistoryRequest::All)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    let mut seen = Seen::default();
    // Live messages keep coming while the history is replayed.
    for i in 5000..6000u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
        drain(&mut sub, &mut seen);
    }
    pump_until(&mut p, &mut sub, &mut seen, 6000 - 904);
    let seqs: Vec<u64> = seen.messages.iter().map(|m| m.0).collect();
    assert_eq!(
        seqs,
        (904..6000).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    assert!(seen.gaps.is_empty(), "{:?}", seen.gaps);
    // Everything before the join came from the history.
    assert!(seen.messages[..4096].iter().all(|m| m.1));
    let s = sub.stats();
    assert!(s.repaired >= 4096, "{s:?}");
    assert_eq!((s.received, s.gaps, s.lost), (6000 - 904, 0, 0));
}

#[test]
fn a_late_joiner_asking_for_the_last_k_gets_exactly_those() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = publisher(&node, Policy::Block, 100);
    for i in 0..250u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .history(HistoryRequest::Last(10))
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    let mut seen = Seen::default();
    p.publish(&Quote::synthetic(250)).unwrap();
    pump_until(&mut p, &mut sub, &mut seen, 11);
    let seqs: Vec<u64> = seen.messages.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (240..251).collect::<Vec<_>>());
    // No history asked: the live edge only.
    let mut live = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .connect()
        .unwrap();
    p.wait_for_subscribers(2, Duration::from_secs(20)).unwrap();
    p.publish(&Quote::synthetic(251)).unwrap();
    let mut seen = Seen::default();
    pump_until(&mut p, &mut live, &mut seen, 1);
    assert_eq!(seen.messages, vec![(251, false)]);
}

#[test]
fn a_drop_subscriber_behind_within_the_history_loses_nothing() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = publisher(&node, Policy::Drop, 1024);
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(64)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    // The subscriber does not read while 800 messages go out: its ring of 64 fills.
    for i in 0..800u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let mut seen = Seen::default();
    pump_until(&mut p, &mut sub, &mut seen, 800);
    let seqs: Vec<u64> = seen.messages.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (0..800).collect::<Vec<_>>());
    assert!(seen.gaps.is_empty(), "{:?}", seen.gaps);
    let s = sub.stats();
    assert_eq!((s.lost, s.repaired), (0, 800 - 64), "{s:?}");
    let info = &p.stats().subscribers[0];
    assert_eq!((info.sent, info.dropped), (800, 0), "{info:?}");
}

#[test]
fn a_drop_subscriber_behind_past_the_history_loses_exactly_what_left_it() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = publisher(&node, Policy::Drop, 1024);
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(64)
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    for i in 0..3000u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let mut seen = Seen::default();
    // 64 in the ring, then 64..1976 left the history, then the 1024 it still holds.
    pump_until(&mut p, &mut sub, &mut seen, 64 + 1024);
    let seqs: Vec<u64> = seen.messages.iter().map(|m| m.0).collect();
    let expected: Vec<u64> = (0..64).chain(1976..3000).collect();
    assert_eq!(seqs, expected);
    assert_eq!(seen.gaps, vec![(64, 1912, true)]);
    let s = sub.stats();
    assert_eq!(
        (s.lost, s.dropped_announced, s.repaired),
        (1912, 1912, 1024)
    );
}

#[test]
fn publishers_are_told_apart_by_their_epoch() {
    let node = common::node_builder(psk()).start().unwrap();
    let p = publisher(&node, Policy::Block, 0);
    let epoch = p.epoch();
    let sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .connect()
        .unwrap();
    assert_eq!(sub.epoch(), epoch);
    drop(sub);
    drop(p);
    let p2 = publisher(&node, Policy::Block, 0);
    assert_ne!(p2.epoch(), epoch, "a new publisher is a new session");
}

/// Sequences received, gaps (first, count, announced), the error that ended it if any.
type Joined = (Vec<u64>, Vec<(u64, u64, bool)>, Option<String>);

/// A late joiner asking for all of a full history (100 of 250 sent), adopted inside the
/// next `send()` (its history is then the last 100 with that message: 151..=250) (nothing pumps or waits in between, as with a publisher sending
/// continuously): what it saw, its gaps, and its error if any.
fn join_inside_send(policy: Policy) -> Joined {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .max_payload(96)
        .policy(policy)
        .history(100)
        .build()
        .unwrap();
    for i in 0..250u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .history(HistoryRequest::All)
        .connect()
        .unwrap();
    // The handshake finishes (the link waits to be adopted), then the next send adopts it.
    std::thread::sleep(Duration::from_millis(1500));
    p.publish(&Quote::synthetic(250)).unwrap();
    let mut seqs = Vec::new();
    let mut gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut err = None;
    while Instant::now() < deadline && seqs.len() < 100 {
        p.pump();
        match sub.poll() {
            Ok(Some(Event::Message(m))) => seqs.push(m.seq()),
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => gaps.push((first, count, announced)),
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    (seqs, gaps, err)
}

#[test]
fn a_late_joiner_adopted_inside_send_gets_the_whole_history_under_block() {
    let (seqs, gaps, err) = join_inside_send(Policy::Block);
    assert_eq!(err, None);
    assert!(
        gaps.is_empty(),
        "gaps {gaps:?}, first seq {:?}",
        seqs.first()
    );
    assert_eq!(
        seqs,
        (151..251).collect::<Vec<_>>(),
        "the last 100, the live one included"
    );
}

#[test]
fn a_late_joiner_adopted_inside_send_is_not_cut_under_disconnect() {
    let (seqs, gaps, err) = join_inside_send(Policy::Disconnect);
    assert_eq!(err, None, "gaps {gaps:?} seqs {}", seqs.len());
    assert_eq!(
        seqs,
        (151..251).collect::<Vec<_>>(),
        "the last 100, the live one included"
    );
}

/// Closing waits (up to its timeout) for subscribers behind to catch up from the history: a
/// slow one that needs seconds to read what it is owed gets all of it before the goodbye, so a
/// publisher restarted resuming its numbering has no gap to announce. Before, the catch-up at
/// close had a fixed second, whatever the timeout, and the rest was announced as dropped (the
/// loss `demo --chaos` showed under load).
#[test]
fn close_lets_a_slow_subscriber_catch_up_from_the_history_within_its_timeout() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = publisher(&node, Policy::Drop, 4096);
    let addr = node.local_addr();
    let reader = std::thread::spawn(move || {
        let mut sub = common::subscriber::<Quote>(addr, "quotes", psk())
            .slots(64)
            .connect()
            .unwrap();
        let mut seqs = Vec::new();
        let mut gaps = Vec::new();
        loop {
            match sub.recv_timeout(Duration::from_secs(20)) {
                Ok(Some(Event::Message(m))) => {
                    seqs.push(m.seq());
                    // 2000 messages at about 1 ms each: two seconds of reading.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(Some(Event::Gap { first, count, .. })) => gaps.push((first, count)),
                Ok(Some(_)) => panic!("unexpected event"),
                Ok(None) => panic!("nothing for 20 s after {} messages", seqs.len()),
                Err(_) => break,
            }
        }
        (seqs, gaps)
    });
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    for i in 0..2000u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let stats = p.close(Duration::from_secs(30));
    let (seqs, gaps) = reader.join().unwrap();
    assert!(gaps.is_empty(), "{gaps:?} ({stats:?})");
    assert_eq!(seqs, (0..2000).collect::<Vec<_>>());
    assert_eq!(stats.subscribers[0].dropped, 0, "{stats:?}");
}

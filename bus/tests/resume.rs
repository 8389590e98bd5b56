//! What a reconnecting subscriber gets from the next publisher session, over the suite's
//! transport: the stream continues exactly (no gap, no duplicate) when the numbering is
//! resumed, starts again cleanly when it is not (even when the new numbering has already
//! passed the old position), skips a replay of what it has, and after a slow-consumer cut by
//! the same publisher it gets what it missed or an announced gap.

mod common;

use common::psk;
use rdmabus::proto::market::Quote;
use rdmabus::{Event, HistoryRequest, Policy, Publisher, Reconnect, SessionChange, Subscriber};
use std::time::{Duration, Instant};

/// What the subscriber saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Msg(u64),
    Gap(u64, u64, bool),
    Session(bool),
}

/// A publisher with a history of 1024, resuming a numbering at `first` if given.
fn publisher(node: &rdmabus::Node, first: Option<u64>, policy: Policy) -> Publisher<Quote> {
    let b = node
        .publisher::<Quote>("quotes")
        .max_payload(96)
        .history(1024)
        .policy(policy);
    match first {
        Some(s) => b.first_seq(s),
        None => b,
    }
    .build()
    .unwrap()
}

fn publish(p: &mut Publisher<Quote>, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(p.publish(&Quote::synthetic(i)).unwrap(), i);
    }
}

/// Polls (and pumps `p`, if any) until `until` says enough, at most 30 s; every message's
/// content is checked, and no error (a "corrupt" replay) is tolerated.
fn take(
    sub: &mut Subscriber<Quote>,
    mut p: Option<&mut Publisher<Quote>>,
    seen: &mut Vec<Seen>,
    sessions: &mut Vec<SessionChange>,
    until: impl Fn(&[Seen]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !until(seen) {
        assert!(Instant::now() < deadline, "stuck after {seen:?}");
        if let Some(p) = p.as_deref_mut() {
            p.pump();
        }
        match sub.poll() {
            Ok(None) => std::thread::yield_now(),
            Ok(Some(Event::Message(m))) => {
                assert!(Quote::synthetic_matches(m.archived(), m.seq()));
                seen.push(Seen::Msg(m.seq()));
            }
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => seen.push(Seen::Gap(first, count, announced)),
            Ok(Some(Event::Session(s))) => {
                seen.push(Seen::Session(s.continues));
                sessions.push(*s);
            }
            Ok(Some(_)) => panic!("unexpected event"),
            Err(e) => panic!("after {seen:?}: {e}"),
        }
    }
}

fn msgs(r: std::ops::Range<u64>) -> Vec<Seen> {
    r.map(Seen::Msg).collect()
}

fn has(n: usize) -> impl Fn(&[Seen]) -> bool {
    move |s| s.len() >= n
}

/// A publisher (new numbering, history 1024) and a reconnecting subscriber that has taken
/// its messages 0..100.
fn first_session(
    node: &rdmabus::Node,
) -> (
    Publisher<Quote>,
    Subscriber<Quote>,
    Vec<Seen>,
    Vec<SessionChange>,
) {
    let mut p1 = publisher(node, None, Policy::Block);
    let mut sub = subscriber(node, 1024);
    p1.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    publish(&mut p1, 0..100);
    let (mut seen, mut sessions) = (Vec::new(), Vec::new());
    take(&mut sub, Some(&mut p1), &mut seen, &mut sessions, has(100));
    (p1, sub, seen, sessions)
}

fn subscriber(node: &rdmabus::Node, slots: u32) -> Subscriber<Quote> {
    common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .history(HistoryRequest::All)
        .slots(slots)
        .reconnect(Reconnect::default())
        .connect()
        .unwrap()
}

#[test]
fn a_resumed_numbering_continues_without_a_gap_or_a_duplicate() {
    let node = common::node_builder(psk()).start().unwrap();
    let (p1, mut sub, mut seen, mut sessions) = first_session(&node);
    let (next, e1) = (p1.next_seq(), p1.epoch());
    drop(p1);
    // The new session publishes before the subscriber is back: its history covers that.
    let mut p2 = publisher(&node, Some(next), Policy::Block);
    publish(&mut p2, 100..150);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, has(151));
    publish(&mut p2, 150..200);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, has(201));
    let mut expected = msgs(0..100);
    expected.push(Seen::Session(true));
    expected.extend(msgs(100..200));
    assert_eq!(seen, expected);
    assert_eq!(
        (sessions[0].previous_epoch, sessions[0].epoch),
        (e1, p2.epoch())
    );
    assert_eq!(sub.stats().reconnects, 1);
}

#[test]
fn a_numbering_started_again_is_a_new_stream_even_past_the_old_position() {
    let node = common::node_builder(psk()).start().unwrap();
    let (p1, mut sub, mut seen, mut sessions) = first_session(&node);
    drop(p1);
    // From 0 again, and already past 100 when the subscriber is back.
    let mut p2 = publisher(&node, None, Policy::Block);
    publish(&mut p2, 0..150);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, has(251));
    let mut expected = msgs(0..100);
    expected.push(Seen::Session(false));
    expected.extend(msgs(0..150));
    assert_eq!(
        seen, expected,
        "the new session's history, as to a late joiner"
    );
    assert_eq!(sub.stats().corrupt, 0);
}

#[test]
fn a_numbering_resumed_below_the_subscriber_is_skipped_up_to_its_position() {
    let node = common::node_builder(psk()).start().unwrap();
    let (p1, mut sub, mut seen, mut sessions) = first_session(&node);
    drop(p1);
    let mut p2 = publisher(&node, Some(50), Policy::Block);
    publish(&mut p2, 50..90);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, has(101));
    // 50..100 again: the subscriber has them; it gets 100 on.
    publish(&mut p2, 90..130);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, has(131));
    let mut expected = msgs(0..100);
    expected.push(Seen::Session(true));
    expected.extend(msgs(100..130));
    assert_eq!(seen, expected);
    assert_eq!(sub.stats().corrupt, 0);
}

#[test]
fn after_a_slow_consumer_cut_the_same_publisher_announces_what_it_no_longer_holds() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .max_payload(96)
        .policy(Policy::Disconnect)
        .build()
        .unwrap();
    let mut sub = subscriber(&node, 8);
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    // It does not read: 8 fit, the 9th cuts it.
    publish(&mut p, 0..20);
    let (mut seen, mut sessions) = (Vec::new(), Vec::new());
    take(&mut sub, None, &mut seen, &mut sessions, has(9));
    p.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    publish(&mut p, 20..25);
    take(&mut sub, Some(&mut p), &mut seen, &mut sessions, has(15));
    let mut expected = msgs(0..8);
    expected.push(Seen::Session(true));
    expected.push(Seen::Gap(8, 12, true));
    expected.extend(msgs(20..25));
    assert_eq!(seen, expected);
    assert_eq!(
        sessions[0].epoch, sessions[0].previous_epoch,
        "same publisher"
    );
}

#[test]
fn a_loss_announced_at_the_end_is_not_announced_again_by_the_resumed_numbering() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p1 = publisher(&node, None, Policy::Block);
    let mut sub = subscriber(&node, 8);
    p1.wait_for_subscribers(1, Duration::from_secs(20)).unwrap();
    // It does not read: 8 fit, 12 wait in the history; at close they are announced dropped.
    publish(&mut p1, 0..20);
    let next = p1.next_seq();
    drop(p1);
    let (mut seen, mut sessions) = (Vec::new(), Vec::new());
    take(&mut sub, None, &mut seen, &mut sessions, has(9));
    let mut p2 = publisher(&node, Some(next), Policy::Block);
    publish(&mut p2, 20..25);
    take(&mut sub, Some(&mut p2), &mut seen, &mut sessions, |s| {
        s.last() == Some(&Seen::Msg(24))
    });
    let mut expected = msgs(0..8);
    expected.push(Seen::Gap(8, 12, true));
    expected.push(Seen::Session(true));
    expected.extend(msgs(20..25));
    assert_eq!(seen, expected);
    assert_eq!(sub.stats().lost, 12);
}

#[test]
fn a_refusal_that_waiting_cannot_heal_ends_reconnecting_once() {
    let node = common::node_builder(psk()).start().unwrap();
    let (p1, mut sub, mut seen, mut sessions) = first_session(&node);
    drop(p1);
    // The topic comes back with another message type: the schema refusal is final.
    let _other = node
        .publisher::<rdmabus::proto::market::Trade>("quotes")
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        assert!(Instant::now() < deadline, "no refusal after {seen:?}");
        match sub.poll() {
            Ok(Some(Event::Message(m))) => seen.push(Seen::Msg(m.seq())),
            Ok(Some(Event::Session(s))) => sessions.push(*s),
            Ok(_) => std::thread::yield_now(),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, rdmabus::Error::Rejected { code, .. }
            if *code == rdmabus::proto::handshake::RejectCode::SchemaMismatch),
        "{err}"
    );
    // Later polls report the end; they do not knock at the publisher again.
    for _ in 0..1000 {
        assert!(sub.poll().is_err());
    }
    std::thread::sleep(Duration::from_millis(200));
    let refusals = node
        .events()
        .iter()
        .filter(|e| matches!(e, rdmabus::NodeEvent::Rejected { .. }))
        .count();
    assert_eq!(refusals, 1, "{:?}", node.events());
    assert!(sessions.is_empty());
}

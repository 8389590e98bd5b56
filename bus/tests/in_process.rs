//! Publisher and subscriber in one process (threads): API behaviour that needs no second process.

mod common;

use rdmabus::proto::market::{BookUpdate, Quote};
use rdmabus::{Error, Event, Policy, Psk};
use std::time::Duration;

fn psk() -> Psk {
    Psk::parse("rdmabus-psk-v1:11111111111111111111111111111111111111111111111111111111111111ab")
        .unwrap()
}

#[test]
fn order_and_content_across_ring_wrap_from_near_u64_max() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut publisher = node
        .publisher::<Quote>("q")
        .max_payload(64)
        .build()
        .unwrap();
    let start = u64::MAX - 100;
    publisher.set_next_seq(start);
    let addr = node.local_addr();
    let reader = std::thread::spawn(move || {
        let mut sub = common::subscriber::<Quote>(addr, "q", psk())
            .slots(8)
            .connect()
            .unwrap();
        let mut expect = start;
        for _ in 0..1000 {
            match sub.recv().unwrap() {
                Event::Message(m) => {
                    assert_eq!(m.seq(), expect);
                    assert!(Quote::synthetic_matches(&m, expect));
                    expect = expect.wrapping_add(1);
                }
                Event::Gap { first, count, .. } => panic!("gap {first}+{count}"),
                _ => panic!("unexpected event"),
            }
        }
        sub.stats()
    });
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .unwrap();
    for i in 0..1000u64 {
        let seq = start.wrapping_add(i);
        assert_eq!(publisher.publish(&Quote::synthetic(seq)).unwrap(), seq);
    }
    let stats = reader.join().unwrap();
    assert_eq!(stats.received, 1000);
    assert_eq!(stats.gaps, 0);
}

#[test]
fn corrupted_archive_is_rejected_and_the_stream_goes_on() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut publisher = node
        .publisher::<BookUpdate>("books")
        .policy(Policy::Block)
        .build()
        .unwrap();
    let mut sub = common::subscriber::<BookUpdate>(node.local_addr(), "books", psk())
        .connect()
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .unwrap();

    // A relay forwards bytes it did not check: the archive's vector pointer is corrupted.
    #[repr(align(64))]
    struct A([u8; 1024]);
    let mut buf = A([0; 1024]);
    let n = rdmabus::proto::codec::encode_into(&BookUpdate::synthetic(1), &mut buf.0).unwrap();
    buf.0[n - 16..n - 8].fill(0x7f);
    publisher
        .loan()
        .unwrap()
        .write_bytes(&buf.0[..n])
        .unwrap()
        .send()
        .unwrap();
    publisher.publish(&BookUpdate::synthetic(2)).unwrap();

    match sub.recv() {
        Err(Error::Corrupt {
            seq: Some(0),
            reason,
        }) => assert!(reason.contains("invalid archived message"), "{reason}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a corrupt message was handed out"),
    }
    match sub.recv().unwrap() {
        Event::Message(m) => {
            assert_eq!(m.seq(), 1);
            assert!(BookUpdate::synthetic_matches(&m, 2));
        }
        _ => panic!("gap"),
    }
    assert_eq!(sub.stats().corrupt, 1);
}

#[test]
fn oversized_message_is_refused_before_sending() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut publisher = node
        .publisher::<BookUpdate>("small")
        .slot_size(128)
        .build()
        .unwrap();
    let err = publisher.publish(&BookUpdate::synthetic(3)).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not fit the 96-byte slot payload"),
        "{err}"
    );
    assert_eq!(publisher.next_seq(), 0, "nothing was sequenced");
}

#[test]
fn publisher_drop_is_reported_after_the_ring_drains() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut publisher = node.publisher::<Quote>("bye").build().unwrap();
    let mut sub = common::subscriber::<Quote>(node.local_addr(), "bye", psk())
        .connect()
        .unwrap();
    publisher
        .wait_for_subscribers(1, Duration::from_secs(5))
        .unwrap();
    for i in 0..10 {
        publisher.publish(&Quote::synthetic(i)).unwrap();
    }
    drop(publisher);
    for i in 0..10 {
        match sub.recv().unwrap() {
            Event::Message(m) => assert_eq!(m.seq(), i),
            _ => panic!("gap"),
        }
    }
    match sub.recv() {
        Err(Error::Closed { message, .. }) => {
            assert!(message.contains("publisher closed"), "{message}")
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("message after close"),
    }
}

#[test]
fn several_topics_per_node_and_several_nodes_per_process() {
    use rdmabus::proto::market::Trade;
    let a = common::node_builder(psk()).start().unwrap();
    let b = common::node_builder(psk()).start().unwrap();
    let mut qa = a.publisher::<Quote>("quotes").build().unwrap();
    let mut ta = a.publisher::<Trade>("trades").build().unwrap();
    let mut qb = b.publisher::<Quote>("quotes").build().unwrap();
    assert!(
        a.publisher::<Quote>("quotes").build().is_err(),
        "a topic has one publisher per node"
    );
    let mut sqa = common::subscriber::<Quote>(a.local_addr(), "quotes", psk())
        .connect()
        .unwrap();
    let mut sta = common::subscriber::<Trade>(a.local_addr(), "trades", psk())
        .connect()
        .unwrap();
    let mut sqb = common::subscriber::<Quote>(b.local_addr(), "quotes", psk())
        .connect()
        .unwrap();
    for p in [&mut qa, &mut qb] {
        p.wait_for_subscribers(1, Duration::from_secs(5)).unwrap();
    }
    ta.wait_for_subscribers(1, Duration::from_secs(5)).unwrap();
    qa.publish(&Quote::synthetic(10)).unwrap();
    ta.publish(&Trade::synthetic(20)).unwrap();
    qb.publish(&Quote::synthetic(30)).unwrap();
    let Event::Message(m) = sqa.recv().unwrap() else {
        panic!()
    };
    assert!(Quote::synthetic_matches(&m, 10));
    let Event::Message(m) = sta.recv().unwrap() else {
        panic!()
    };
    assert!(Trade::synthetic_matches(&m, 20));
    let Event::Message(m) = sqb.recv().unwrap() else {
        panic!()
    };
    assert!(Quote::synthetic_matches(&m, 30));
}

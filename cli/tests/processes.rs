//! The bus across real processes: subscribers (and one publisher) are `rdmabus` child processes
//! talking over shared memory and TCP to a publisher in the test process.

mod common;

use common::*;
use rdmabus::proto::market::Quote;
use rdmabus::{Error, Event, LinkEnd, Node, Policy};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A publisher of quotes under `policy`, on a node with fast heartbeats.
fn quotes(policy: Policy) -> (Node, rdmabus::Publisher<Quote>) {
    let node = node();
    let p = node
        .publisher::<Quote>("quotes")
        .policy(policy)
        .max_payload(96)
        .build()
        .unwrap();
    (node, p)
}

fn node() -> Node {
    common::node_builder(psk())
        .heartbeat(Duration::from_millis(200))
        .start()
        .unwrap()
}

fn publish(p: &mut rdmabus::Publisher<Quote>, n: u64) {
    for _ in 0..n {
        let seq = p.next_seq();
        p.publish(&Quote::synthetic(seq)).unwrap();
    }
}

#[test]
fn order_and_content_across_ring_and_sequence_wrap() {
    let (node, mut p) = quotes(Policy::Block);
    let start = u64::MAX - 2_000;
    p.set_next_seq(start);
    let s = sub(
        node.local_addr(),
        "-t quotes --slots 8 --count 5000 --verify",
    );
    p.wait_for_subscribers(1, WAIT).unwrap();
    publish(&mut p, 5000);
    let r = s.report(WAIT);
    let t = topic(&r, "quotes");
    assert_eq!(u(t, "received"), 5000, "{t}");
    assert_eq!(
        (
            u(t, "gaps"),
            u(t, "verify_failures"),
            u(t, "order_errors"),
            u(t, "corrupt")
        ),
        (0, 0, 0, 0),
        "{t}"
    );
    assert_eq!(u(t, "first_seq"), start);
    assert_eq!(u(t, "last_seq"), start.wrapping_add(4999));
    assert_eq!(t["end"], "count");
}

#[test]
fn fan_out_to_three_subscriber_processes() {
    let (node, mut p) = quotes(Policy::Block);
    // One per way of reading the ring (the `--unchecked` shorthand for the third).
    let access = ["--access copy", "--access in-place", "--unchecked"];
    let subs: Vec<_> = (0..3)
        .map(|i| {
            sub(
                node.local_addr(),
                &format!(
                    "-t quotes --slots 64 --count 3000 --verify --name s{i} {}",
                    access[i]
                ),
            )
        })
        .collect();
    p.wait_for_subscribers(3, WAIT).unwrap();
    publish(&mut p, 3000);
    for s in subs {
        let r = s.report(WAIT);
        let t = topic(&r, "quotes");
        assert_complete(t, 3000);
    }
    let stats = p.stats();
    assert_eq!(stats.subscribers.len(), 3);
    assert!(stats
        .subscribers
        .iter()
        .all(|s| s.sent == 3000 && s.dropped == 0));
}

#[test]
fn block_never_loses_with_a_slow_subscriber() {
    let (node, mut p) = quotes(Policy::Block);
    let slow = sub(
        node.local_addr(),
        "-t quotes --slots 8 --count 2000 --verify --delay-us 100 --name slow",
    );
    let fast = sub(
        node.local_addr(),
        "-t quotes --count 2000 --verify --name fast",
    );
    p.wait_for_subscribers(2, WAIT).unwrap();
    publish(&mut p, 2000);
    let reports: Vec<_> = [slow, fast].into_iter().map(|s| s.report(WAIT)).collect();
    let stats = p.stats();
    eprintln!("publisher: {stats:?}");
    for r in &reports {
        assert_complete(topic(r, "quotes"), 2000);
    }
    let slow = stats.subscribers.iter().find(|s| s.name == "slow").unwrap();
    assert!(
        slow.credit_stalls > 0,
        "the slow subscriber never filled its ring: {slow:?}"
    );
    assert_eq!(slow.dropped, 0);
}

#[test]
fn drop_reports_exactly_the_lost_sequences() {
    let (node, mut p) = quotes(Policy::Drop);
    let slow = sub(
        node.local_addr(),
        "-t quotes --slots 8 --count 3001 --verify --delay-us 50 --name slow",
    );
    p.wait_for_subscribers(1, WAIT).unwrap();
    publish(&mut p, 3000);
    // Let the subscriber drain, then one last message carries the count of any trailing drops.
    std::thread::sleep(Duration::from_millis(500));
    publish(&mut p, 1);
    let r = slow.report(WAIT);
    let t = topic(&r, "quotes");
    let dropped = p.stats().subscribers[0].dropped;
    let (received, lost) = (u(t, "received"), u(t, "lost"));
    assert!(
        dropped > 0,
        "nothing was dropped: the test did not exercise Drop"
    );
    assert_eq!(received + lost, 3001, "{t}");
    assert_eq!(
        lost, dropped,
        "subscriber's losses differ from the publisher's drops"
    );
    assert_eq!(
        u(t, "dropped_announced"),
        lost,
        "every gap was announced by the publisher"
    );
    assert_eq!(u(t, "verify_failures"), 0);
    // The ranges are in order, disjoint, inside the stream, and sum to the loss.
    let ranges: Vec<(u64, u64)> = serde_json::from_value(t["lost_ranges"].clone()).unwrap();
    let mut next = 0;
    for &(first, count) in &ranges {
        assert!(
            first >= next && count > 0 && first + count <= 3001,
            "{ranges:?}"
        );
        next = first + count;
    }
    assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), lost);
}

#[test]
fn disconnect_cuts_only_the_slow_subscriber() {
    let (node, mut p) = quotes(Policy::Disconnect);
    let slow = sub(
        node.local_addr(),
        "-t quotes --slots 8 --delay-us 500 --name slow",
    );
    let fast = sub(
        node.local_addr(),
        "-t quotes --slots 4096 --count 3000 --verify --name fast",
    );
    p.wait_for_subscribers(2, WAIT).unwrap();
    publish(&mut p, 3000);
    // Exit status 5: cut by the publisher as a slow consumer.
    let slow_r = slow.report_with_code(WAIT, 5);
    let t = topic(&slow_r, "quotes");
    assert!(t["end"].as_str().unwrap().contains("SlowConsumer"), "{t}");
    assert!(u(t, "received") < 3000);
    let fast_r = fast.report(WAIT);
    let t = topic(&fast_r, "quotes");
    assert_complete(t, 3000);
    let stats = p.stats();
    let slow = stats.subscribers.iter().find(|s| s.name == "slow").unwrap();
    assert!(
        matches!(&slow.end, LinkEnd::Cut(_, m) if m.contains("slow consumer")),
        "{slow:?}"
    );
    let fast = stats.subscribers.iter().find(|s| s.name == "fast").unwrap();
    // The fast one got everything and was never cut (it left in order after --count).
    assert_eq!(fast.sent, 3000);
    assert!(
        matches!(&fast.end, LinkEnd::Active | LinkEnd::Left(_)),
        "{fast:?}"
    );
}

#[test]
fn killed_subscriber_is_removed_without_disturbing_others() {
    let (node, mut p) = quotes(Policy::Block);
    // The victim is slow, so the publisher is blocked on it when it dies.
    let mut victim = sub(
        node.local_addr(),
        "-t quotes --slots 8 --delay-us 2000 --name victim",
    );
    let other = sub(
        node.local_addr(),
        "-t quotes --count 3000 --verify --name other",
    );
    p.wait_for_subscribers(2, WAIT).unwrap();
    let pid = victim.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        victim.kill();
    });
    publish(&mut p, 3000);
    killer.join().unwrap();
    let r = other.report(WAIT);
    let t = topic(&r, "quotes");
    assert_complete(t, 3000);
    let stats = p.stats();
    let o = stats
        .subscribers
        .iter()
        .find(|s| s.name == "other")
        .unwrap();
    assert_eq!(o.sent, 3000);
    assert!(
        matches!(&o.end, LinkEnd::Active | LinkEnd::Left(_)),
        "{o:?}"
    );
    let v = stats
        .subscribers
        .iter()
        .find(|s| s.name == "victim")
        .unwrap();
    assert!(
        matches!(&v.end, LinkEnd::Lost(_)),
        "victim (pid {pid}) should be lost: {v:?}"
    );
    assert!(v.sent < 3000);
}

#[test]
fn killed_publisher_is_reported_to_its_subscribers() {
    let (mut publisher, addr) = publisher("-t quotes --rate 2000 --seconds 60");
    let mut s = common::subscriber::<Quote>(addr, "quotes", psk())
        .connect()
        .unwrap();
    for _ in 0..100 {
        match s.recv_timeout(WAIT).unwrap() {
            Some(Event::Message(m)) => assert!(Quote::synthetic_matches(&m, m.seq())),
            Some(_) => panic!("gap under Block"),
            None => panic!("no message"),
        }
    }
    publisher.kill();
    let started = std::time::Instant::now();
    let err = loop {
        match s.recv_timeout(WAIT) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("publisher death not reported within {WAIT:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, Error::PublisherLost(why) if why.contains("connection lost")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

#[test]
fn frozen_subscriber_is_declared_lost_by_heartbeat_and_unblocks_the_publisher() {
    let (node, mut p) = quotes(Policy::Block);
    let frozen = sub(node.local_addr(), "-t quotes --slots 8 --name frozen");
    p.wait_for_subscribers(1, WAIT).unwrap();
    // Stopped, not killed: its TCP connection stays open, only the heartbeats stop.
    signal(frozen.pid(), "-STOP");
    let started = std::time::Instant::now();
    publish(&mut p, 100); // blocks on the full ring until the heartbeat timeout cuts it loose
    let stats = p.stats();
    let f = &stats.subscribers[0];
    assert!(
        matches!(&f.end, LinkEnd::Lost(why) if why.contains("no heartbeat")),
        "{f:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    signal(frozen.pid(), "-CONT");
}

#[test]
fn frozen_publisher_is_declared_lost_by_heartbeat() {
    let (publisher, addr) = publisher("-t quotes --rate 1000 --seconds 60");
    let mut s = common::subscriber::<Quote>(addr, "quotes", psk())
        .connect()
        .unwrap();
    assert!(s.recv_timeout(WAIT).unwrap().is_some());
    signal(publisher.pid(), "-STOP");
    let err = loop {
        match s.recv_timeout(WAIT) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("frozen publisher not detected within {WAIT:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, Error::PublisherLost(why) if why.contains("no heartbeat")),
        "{err}"
    );
    signal(publisher.pid(), "-CONT");
}

/// Bytes the Soft-RoCE guest's fabric bridge sent out of port `n`, i.e. to box `n`.
fn fabric_tx_bytes(port: u32) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            "fabric",
            "-s",
            "-j",
            "link",
            "show",
            &format!("port{port}"),
        ])
        .output()
        .expect("ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["stats64"]["tx"]["bytes"].as_u64().expect("tx bytes")
}

#[test]
#[ignore = "needs the Soft-RoCE guest's boxes; soft-roce-ci/test runs it"]
fn cross_box_fan_out_over_separate_links_and_devices() {
    // Publisher on box 1 (rxe1); subscribers bound to boxes 2 and 3, so they use rxe2 and rxe3
    // and every RDMA write crosses box1 → bridge → box2/box3.
    assert_eq!(
        common::transport(),
        rdmabus::Transport::Verbs,
        "run with RDMABUS_TEST_TRANSPORT=verbs"
    );
    let node = rdmabus::Node::builder()
        .bind("10.77.0.1:0")
        .psk(psk())
        .heartbeat(Duration::from_millis(200))
        .start()
        .unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .max_payload(96)
        .build()
        .unwrap();
    let before = [fabric_tx_bytes(2), fabric_tx_bytes(3)];
    let subs: Vec<_> = [2, 3]
        .iter()
        .map(|b| {
            sub(
                node.local_addr(),
                &format!(
                    "-t quotes --slots 64 --count 5000 --verify --name box{b} --bind 10.77.0.{b}"
                ),
            )
        })
        .collect();
    p.wait_for_subscribers(2, WAIT).unwrap();
    publish(&mut p, 5000);
    for s in subs {
        let r = s.report(WAIT);
        let t = topic(&r, "quotes");
        assert_complete(t, 5000);
    }
    // 5000 messages of 32 + ~56 bytes each reached each box over its own link.
    for (i, b) in [2u32, 3].iter().enumerate() {
        let crossed = fabric_tx_bytes(*b) - before[i];
        assert!(
            crossed > 5000 * 80,
            "only {crossed} bytes reached box {b} over the fabric"
        );
    }
}

//! The tail of a burst survives the publisher's close over verbs. A NIC executes work
//! requests asynchronously: with 20 ms of delay on the link (netem on the switch port of the
//! subscriber's box), hundreds of writes are still in the send queue when `close` returns.
//! The publisher must wait (bounded) for them before its goodbye and before destroying the QP;
//! before the fix the subscriber saw the tail as an unannounced gap.
//! Runs in the Soft-RoCE guest, box 1 to box 2 (soft-roce-ci/test runs ignored tests).

mod common;

use common::psk;
use rdmabus::proto::market::Quote;
use rdmabus::{Error, Event, Subscriber, Transport};
use std::process::Command;
use std::time::Duration;

const N: u64 = 2000;

/// Delays every packet leaving the switch towards box 2 while alive.
struct Netem;

impl Netem {
    fn delay(ms: u32) -> Self {
        let out = Command::new("ip")
            .args([
                "netns", "exec", "fabric", "tc", "qdisc", "replace", "dev", "port2",
            ])
            .args([
                "root",
                "netem",
                "delay",
                &format!("{ms}ms"),
                "limit",
                "100000",
            ])
            .output()
            .expect("run tc");
        assert!(
            out.status.success(),
            "tc netem on the guest's switch port (soft-roce-ci/run loads sch_netem): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netem
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", "fabric", "tc", "qdisc", "del", "dev", "port2", "root",
            ])
            .status();
    }
}

#[test]
#[ignore = "needs the Soft-RoCE guest's boxes; soft-roce-ci/test runs it"]
fn every_message_of_a_burst_arrives_when_the_publisher_closes_right_after_it() {
    assert_eq!(
        common::transport(),
        Transport::Verbs,
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
    let mut sub = Subscriber::<Quote>::builder(node.local_addr(), "quotes")
        .psk(psk())
        .transport(Transport::Verbs)
        .bind("10.77.0.2".parse().unwrap())
        .slots(4096)
        .timeout(Duration::from_secs(10))
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(30)).unwrap();
    let netem = Netem::delay(20);
    for i in 0..N {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    let stats = p.close(Duration::from_secs(5));
    assert_eq!(stats.subscribers[0].sent, N, "{stats:?}");
    let mut got = 0u64;
    let end = loop {
        match sub.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Event::Message(m))) => {
                assert_eq!(m.seq(), got, "out of order");
                assert!(
                    Quote::synthetic_matches(m.archived(), got),
                    "content of {got}"
                );
                got += 1;
            }
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => panic!(
                "after {got} messages: {count} lost from {first} (announced {announced}): the \
                 tail of the burst did not survive the close"
            ),
            Ok(Some(_)) => panic!("unexpected event"),
            Ok(None) => panic!("after {got} messages: nothing for 20 s"),
            Err(e) => break e,
        }
    };
    drop(netem);
    assert_eq!(got, N);
    assert!(matches!(end, Error::Closed { .. }), "{end:?}");
}

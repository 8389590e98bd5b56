//! Completion errors over verbs tear down only the subscriber they concern: a rogue subscriber
//! announces a wrong rkey for its ring, so the publisher's RDMA writes to it fail with a remote
//! access error, while a good subscriber on the same topic goes on receiving everything.
//! Runs in the Soft-RoCE guest (soft-roce-ci/test runs ignored tests).

#![cfg(feature = "verbs")]

mod common;

use common::psk;
use common::raw::RawSub;
use rdmabus::proto::handshake::*;
use rdmabus::proto::market::Quote;
use rdmabus::{Event, LinkEnd, Subscriber, Transport};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handshakes as a subscriber whose ring rkey is wrong, then keeps heartbeating (so only the
/// RDMA error can end it) until `stop`.
fn rogue(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sub = RawSub::connect(
            addr,
            &psk(),
            "quotes",
            std::any::type_name::<Quote>(),
            TransportKind::Verbs,
        );
        // The lie: a wrong rkey for its ring.
        let (ring, _, _, mut session) = sub.verbs_to_session(64, |ep| ep.rkey ^= 0x5a5a_5a5a);
        while !stop.load(Ordering::Relaxed) {
            let hb = session.seal(&ControlMsg::Heartbeat(Heartbeat { sent_ns: 0 }));
            if sub.fs.send_raw(&hb).is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            let _ = sub
                .fs
                .read_until(Instant::now() + Duration::from_millis(50), &mut buf);
        }
        drop(ring);
    })
}

#[test]
#[ignore = "needs an RDMA device; soft-roce-ci/test runs it in the Soft-RoCE guest"]
fn remote_access_error_tears_down_only_that_subscriber() {
    assert_eq!(
        common::transport(),
        Transport::Verbs,
        "run with RDMABUS_TEST_TRANSPORT=verbs"
    );
    let node = common::node_builder(psk())
        .heartbeat(Duration::from_millis(100))
        .start()
        .unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .max_payload(96)
        .build()
        .unwrap();
    let mut good = Subscriber::<Quote>::builder(node.local_addr(), "quotes")
        .psk(psk())
        .transport(Transport::Verbs)
        .name("good")
        .connect()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rogue = rogue(node.local_addr(), stop.clone());
    p.wait_for_subscribers(2, Duration::from_secs(20)).unwrap();
    for i in 0..500u64 {
        p.publish(&Quote::synthetic(i)).unwrap();
        match good.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Message(m)) => assert!(Quote::synthetic_matches(&m, i)),
            _ => panic!("the good subscriber lost message {i}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    rogue.join().unwrap();
    let stats = p.stats();
    let r = stats.subscribers.iter().find(|s| s.name == "raw").unwrap();
    assert_eq!(r.errors, 1, "{r:?}");
    assert!(
        matches!(&r.end, LinkEnd::Cut(_, why) if why.contains("write failed") && why.contains("remote access")),
        "{r:?}"
    );
    let g = stats.subscribers.iter().find(|s| s.name == "good").unwrap();
    assert_eq!((g.sent, g.errors, &g.end), (500, 0, &LinkEnd::Active));
}

//! Bad handshakes are refused with a clear error on both sides: the subscriber's error, and the
//! publisher node's `Rejected` event.

mod common;

use common::psk;
use common::raw::RawSub;
use rdmabus::control::framed::FramedStream;
use rdmabus::proto::frame::{FrameError, PROTOCOL_VERSION};
use rdmabus::proto::handshake::*;
use rdmabus::proto::market::{Quote, Trade};
use rdmabus::{Error, Node, NodeEvent, Psk, Subscriber};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn node_with_quotes() -> (Node, rdmabus::Publisher<Quote>) {
    let node = common::node_builder(psk()).start().unwrap();
    let p = node.publisher::<Quote>("quotes").build().unwrap();
    (node, p)
}

/// Waits for the node's refusal and returns its reason.
fn rejection(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for e in node.events() {
            if let NodeEvent::Rejected { reason, .. } = e {
                return reason;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the publisher recorded no refusal"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn raw(addr: SocketAddr) -> FramedStream {
    FramedStream::new(TcpStream::connect(addr).unwrap()).unwrap()
}

fn hello(topic: &str, nonce: [u8; 32]) -> ControlMsg {
    ControlMsg::Hello(Hello {
        topic: topic.into(),
        schema: std::any::type_name::<Quote>().into(),
        transport: TransportKind::Shm,
        client_nonce: nonce,
        client_name: "raw".into(),
    })
}

/// A raw subscriber with the right key that announces `ring`; returns the refusal.
fn authenticated_auth(
    addr: SocketAddr,
    ring: RingDescriptor,
    endpoint: SubEndpoint,
) -> HandshakeError {
    let mut sub = RawSub::connect(
        addr,
        &psk(),
        "quotes",
        std::any::type_name::<Quote>(),
        TransportKind::Shm,
    );
    sub.accepted();
    sub.hs.auth(
        Auth {
            ring,
            endpoint,
            history: 0,
            resume_from: None,
        },
        Instant::now(),
    );
    sub.refusal()
}

fn expect_reject(fs: &mut FramedStream) -> Reject {
    match fs.recv_within(Duration::from_secs(5), "Reject").unwrap() {
        ControlMsg::Reject(r) => r,
        other => panic!("expected Reject, got {other:?}"),
    }
}

#[test]
fn wrong_key() {
    let (node, _p) = node_with_quotes();
    let wrong = Psk::random();
    let err = Subscriber::<Quote>::builder(node.local_addr(), "quotes")
        .psk(wrong)
        .connect()
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("refused this subscriber's proof of the key")),
        "{err}"
    );
    let reason = rejection(&node);
    assert!(reason.contains("AuthFailed"), "{reason}");
}

#[test]
fn wrong_key_proof_from_a_subscriber() {
    // A client that sends a proof that is not one.
    let (node, _p) = node_with_quotes();
    let mut fs = raw(node.local_addr());
    fs.send(&hello("quotes", [1; 32])).unwrap();
    let ControlMsg::Challenge(_) = fs.recv_within(Duration::from_secs(5), "Challenge").unwrap()
    else {
        panic!()
    };
    fs.send(&ControlMsg::Proof(ProofMsg { proof: [0; 32] }))
        .unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::AuthFailed);
    assert_eq!(r.message, "wrong pre-shared key");
    assert!(rejection(&node).contains("wrong pre-shared key"));
}

#[test]
fn an_unauthenticated_peer_learns_nothing_of_topics_or_the_key() {
    // The same Hello for a topic that exists and one that does not: both get a bare nonce,
    // and nothing that depends on the key (no proof to guess against offline).
    let (node, _p) = node_with_quotes();
    for topic in ["quotes", "no.such.topic"] {
        let mut fs = raw(node.local_addr());
        fs.send(&hello(topic, [1; 32])).unwrap();
        let frame = fs.recv_frame_within(Duration::from_secs(5)).unwrap();
        assert!(!frame.header.sealed());
        let ControlMsg::Challenge(c) = frame.decode_plain().unwrap() else {
            panic!("expected a Challenge")
        };
        // The whole payload is the archive of a 32-byte nonce: no proof, no slot size.
        assert_eq!(
            ControlMsg::Challenge(Challenge {
                server_nonce: c.server_nonce
            })
            .encode(),
            frame.bytes
        );
        // And nothing else follows until the peer proves the key.
        assert!(fs
            .recv_until(Instant::now() + Duration::from_millis(200))
            .unwrap()
            .is_none());
    }
    std::thread::sleep(Duration::from_millis(100));
    for e in node.events() {
        assert!(
            matches!(&e, NodeEvent::Rejected { reason, .. } if !reason.contains("UnknownTopic")),
            "{e:?}"
        );
    }
}

#[test]
fn wrong_version_from_a_subscriber() {
    let (node, _p) = node_with_quotes();
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .write_all(&hello("quotes", [1; 32]).encode_with_version(PROTOCOL_VERSION + 1))
        .unwrap();
    let mut fs = FramedStream::new(stream).unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::VersionMismatch);
    assert!(
        r.message.contains(&format!(
            "subscriber speaks protocol version {}",
            PROTOCOL_VERSION + 1
        )),
        "{}",
        r.message
    );
    assert!(rejection(&node).contains("VersionMismatch"));
}

/// A fake publisher that answers any connection with `reply`, to test the subscriber's side.
fn fake_publisher(reply: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ = s.write_all(&reply);
        std::thread::sleep(Duration::from_millis(500));
    });
    addr
}

#[test]
fn wrong_version_from_a_publisher() {
    let reply = ControlMsg::Reject(Reject::new(RejectCode::BadMessage, "x")).encode_with_version(9);
    let addr = fake_publisher(reply);
    let err = common::subscriber::<Quote>(addr, "quotes", psk())
        .connect()
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::Frame(FrameError::VersionMismatch {
                theirs: 9,
                ours: PROTOCOL_VERSION
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("peer speaks version 9"), "{err}");
}

#[test]
fn garbage_from_a_publisher() {
    let addr = fake_publisher(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
    let err = common::subscriber::<Quote>(addr, "quotes", psk())
        .connect()
        .err()
        .unwrap();
    assert!(err.to_string().contains("not an rdmabus peer"), "{err}");
}

#[test]
fn unknown_topic() {
    let (node, _p) = node_with_quotes();
    let err = common::subscriber::<Quote>(node.local_addr(), "nope", psk())
        .connect()
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Rejected { code: RejectCode::UnknownTopic, message } if message.contains("no topic \"nope\"") && !message.contains("quotes")),
        "{err}"
    );
    assert!(rejection(&node).contains("UnknownTopic"));
}

#[test]
fn wrong_message_type() {
    let (node, _p) = node_with_quotes();
    let err = common::subscriber::<Trade>(node.local_addr(), "quotes", psk())
        .connect()
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Rejected { code: RejectCode::SchemaMismatch, message } if message.contains("Trade")),
        "{err}"
    );
    assert!(rejection(&node).contains("SchemaMismatch"));
}

#[test]
fn geometry_out_of_bounds() {
    let (node, _p) = node_with_quotes();
    // Refused locally before anything is sent.
    let err = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .slots(3)
        .connect()
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("slot count 3 must be a power of two"),
        "{err}"
    );
    assert!(node.events().is_empty(), "nothing reached the publisher");

    // And by the publisher, from a client that sends it anyway (correct key, bad geometry).
    for (slots, slot_size, want) in [
        (3, 1024, "slot count 3"),
        (8, 64, "smaller than the publisher's slot size"),
        (1 << 20, 1 << 20, "exceeds"),
    ] {
        let r = authenticated_auth(
            node.local_addr(),
            RingDescriptor { slots, slot_size },
            SubEndpoint::Shm,
        );
        let HandshakeError::Rejected {
            code,
            message,
            authenticated,
        } = r
        else {
            panic!("{r}")
        };
        assert_eq!(code, RejectCode::BadGeometry);
        assert!(authenticated, "the refusal was not sealed");
        assert!(message.contains(want), "{message}");
        assert!(rejection(&node).contains("BadGeometry"));
    }
}

#[test]
fn endpoint_of_another_transport() {
    let (node, _p) = node_with_quotes();
    let r = authenticated_auth(
        node.local_addr(),
        RingDescriptor {
            slots: 8,
            slot_size: 1024,
        },
        SubEndpoint::Verbs(VerbsEndpoint {
            qpn: 1,
            psn: 1,
            gid: [0; 16],
            lid: 0,
            mtu: 1024,
            addr: 0,
            rkey: 1,
            len: 8192,
        }),
    );
    assert!(
        matches!(&r, HandshakeError::Rejected { code: RejectCode::BadMessage, message, .. } if message.contains("does not match")),
        "{r}"
    );
}

#[test]
fn garbage_bytes_from_a_subscriber() {
    let (node, _p) = node_with_quotes();
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut fs = FramedStream::new(stream).unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::BadMessage);
    assert!(r.message.contains("not an rdmabus peer"), "{}", r.message);
    assert!(rejection(&node).contains("not an rdmabus peer"));
}

#[test]
fn valid_header_with_garbage_payload() {
    let (node, _p) = node_with_quotes();
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    let mut frame = rdmabus::proto::frame::encode_header(64).to_vec();
    frame.extend_from_slice(&[0xa5; 64]);
    stream.write_all(&frame).unwrap();
    let mut fs = FramedStream::new(stream).unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::BadMessage);
    assert!(
        r.message.contains("malformed control message"),
        "{}",
        r.message
    );
}

#[test]
fn oversized_frame() {
    let (node, _p) = node_with_quotes();
    let mut stream = TcpStream::connect(node.local_addr()).unwrap();
    stream
        .write_all(&rdmabus::proto::frame::encode_header(10 << 20))
        .unwrap();
    let mut fs = FramedStream::new(stream).unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::BadMessage);
    assert!(r.message.contains("outside 1..="), "{}", r.message);
}

#[test]
fn message_out_of_order() {
    let (node, _p) = node_with_quotes();
    let mut fs = raw(node.local_addr());
    fs.send(&ControlMsg::Heartbeat(Heartbeat { sent_ns: 0 }))
        .unwrap();
    let r = expect_reject(&mut fs);
    assert_eq!(r.code, RejectCode::BadMessage);
    assert!(
        r.message.contains("expected Hello, got Heartbeat"),
        "{}",
        r.message
    );
}

#[test]
fn a_refused_subscriber_does_not_disturb_a_connected_one() {
    let (node, mut p) = node_with_quotes();
    let mut good = common::subscriber::<Quote>(node.local_addr(), "quotes", psk())
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(5)).unwrap();
    let mut s = TcpStream::connect(node.local_addr()).unwrap();
    s.write_all(b"\x00\x01garbage").unwrap();
    let _ = rejection(&node);
    p.publish(&Quote::synthetic(0)).unwrap();
    match good.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(rdmabus::Event::Message(m)) => assert!(Quote::synthetic_matches(&m, 0)),
        _ => panic!("the connected subscriber lost its message"),
    }
}

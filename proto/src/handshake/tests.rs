//! Every path of both state machines, deterministically: bytes and time in, frames and
//! decisions out.

use super::*;
use crate::frame::{encode_header_with_version, FRAME_HEADER_LEN, PROTOCOL_VERSION};
use proptest::prelude::*;
use std::time::{Duration, Instant};

const KEY: [u8; 32] = *b"0123456789abcdefghijklmnopqrstuv";
const STEP: Duration = Duration::from_secs(5);

fn cfg(key: [u8; 32]) -> ClientConfig {
    ClientConfig {
        key,
        topic: "md.quotes".into(),
        schema: "Quote".into(),
        transport: TransportKind::Shm,
        name: "t".into(),
        step: STEP,
    }
}

fn welcome() -> Welcome {
    Welcome {
        subscriber_id: 3,
        heartbeat_ms: 200,
        next_seq: 10,
        epoch: 9,
        history: 0,
        endpoint: PubEndpoint::Shm(ShmCredit { offset: 0 }),
    }
}

fn auth() -> Auth {
    Auth {
        ring: RingDescriptor {
            slots: 64,
            slot_size: 128,
        },
        endpoint: SubEndpoint::Shm,
        history: 0,
        resume_from: None,
    }
}

/// Moves every queued frame from `from` into `to`.
fn pump_c2s(c: &mut ClientHandshake, s: &mut ServerHandshake, now: Instant) -> usize {
    let mut n = 0;
    while let Some(f) = c.poll_transmit() {
        s.handle_input(&f, now);
        n += 1;
    }
    n
}

fn pump_s2c(s: &mut ServerHandshake, c: &mut ClientHandshake, now: Instant) -> usize {
    let mut n = 0;
    while let Some(f) = s.poll_transmit() {
        c.handle_input(&f, now);
        n += 1;
    }
    n
}

/// A whole handshake with honest peers: both sides end with sessions that talk.
fn establish(ckey: [u8; 32], skey: [u8; 32]) -> (Option<ClientEvent>, Option<ServerEvent>) {
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(ckey), [1; 32], now);
    let mut s = ServerHandshake::new(skey, [2; 32], STEP, now);
    for _ in 0..10 {
        pump_c2s(&mut c, &mut s, now);
        while let Some(e) = s.poll_event() {
            match e {
                ServerEvent::Authenticated(h) => {
                    assert_eq!(h.topic, "md.quotes");
                    s.accept(
                        Accept {
                            slot_size: 128,
                            shm: None,
                            epoch: 9,
                            resumed_at: None,
                        },
                        now,
                    )
                }
                ServerEvent::Ring(a) => {
                    assert_eq!(a, auth());
                    s.welcome(welcome(), now)
                }
                e => {
                    pump_s2c(&mut s, &mut c, now);
                    return (c.poll_event(), Some(e));
                }
            }
        }
        pump_s2c(&mut s, &mut c, now);
        while let Some(e) = c.poll_event() {
            match e {
                ClientEvent::Accepted(a) => {
                    assert_eq!(a.slot_size, 128);
                    c.auth(auth(), now)
                }
                ClientEvent::Welcomed(w) => {
                    assert_eq!(w, welcome());
                    c.ready(1)
                }
                e => {
                    pump_c2s(&mut c, &mut s, now);
                    return (Some(e), s.poll_event());
                }
            }
        }
    }
    panic!("the handshake did not finish")
}

#[test]
fn honest_handshake_establishes_sessions_that_authenticate_each_frame() {
    let (Some(ClientEvent::Established(mut cs)), Some(ServerEvent::Established(mut ss))) =
        establish(KEY, KEY)
    else {
        panic!("not established")
    };
    let hb = ControlMsg::Heartbeat(Heartbeat { sent_ns: 5 });
    let f1 = cs.seal(&hb);
    let f2 = cs.seal(&hb);
    ss.handle_input(&f1).unwrap();
    assert_eq!(ss.poll_message().unwrap(), Some(hb.clone()));
    // A replay of the first frame does not verify (the counter moved on).
    ss.handle_input(&f1).unwrap();
    assert!(matches!(
        ss.poll_message(),
        Err(SessionError::Open(OpenError::BadTag))
    ));
    // The other direction, and reordering.
    let g1 = ss.seal(&hb);
    let g2 = ss.seal(&hb);
    cs.handle_input(&g2).unwrap();
    assert!(cs.poll_message().is_err());
    let _ = (f2, g1);
}

#[test]
fn a_forged_unsealed_goodbye_after_the_handshake_is_refused() {
    let (Some(ClientEvent::Established(mut cs)), Some(ServerEvent::Established(_))) =
        establish(KEY, KEY)
    else {
        panic!()
    };
    let forged = ControlMsg::Goodbye(Goodbye {
        reason: GoodbyeReason::Shutdown,
        message: "forged".into(),
        end: None,
    })
    .encode();
    cs.handle_input(&forged).unwrap();
    assert_eq!(
        cs.poll_message(),
        Err(SessionError::Open(OpenError::Unsealed))
    );
}

#[test]
fn wrong_key_is_refused_with_auth_failed_and_no_session() {
    let mut other = KEY;
    other[0] ^= 0x55;
    let (c, s) = establish(other, KEY);
    match c {
        Some(ClientEvent::Failed(HandshakeError::Rejected {
            code: RejectCode::AuthFailed,
            authenticated: false,
            ..
        })) => {}
        other => panic!("client: {:?}", other.map(|_| ())),
    }
    match s {
        Some(ServerEvent::Failed(r)) => {
            assert_eq!(r.code, Some(RejectCode::AuthFailed));
            assert!(!r.authenticated);
        }
        _ => panic!("server did not fail"),
    }
}

#[test]
fn publisher_sends_nothing_key_dependent_before_the_proof() {
    // An impostor subscriber gets the Challenge: a nonce, the same whatever the key is.
    let now = Instant::now();
    let hello = ControlMsg::Hello(Hello {
        topic: "secret.topic".into(),
        schema: "x".into(),
        transport: TransportKind::Shm,
        client_nonce: [9; 32],
        client_name: String::new(),
    })
    .encode();
    let mut other = KEY;
    other[5] ^= 1;
    let mut a = ServerHandshake::new(KEY, [4; 32], STEP, now);
    let mut b = ServerHandshake::new(other, [4; 32], STEP, now);
    a.handle_input(&hello, now);
    b.handle_input(&hello, now);
    let fa = a.poll_transmit().unwrap();
    let fb = b.poll_transmit().unwrap();
    assert_eq!(fa, fb, "the Challenge depends on the key");
    assert_eq!(
        ControlMsg::decode(&fa[FRAME_HEADER_LEN..]).unwrap(),
        ControlMsg::Challenge(Challenge {
            server_nonce: [4; 32]
        })
    );
    assert!(a.poll_transmit().is_none());
    assert!(a.poll_event().is_none(), "no lookup before the proof");
}

#[test]
fn relay_that_rewrites_auth_is_refused() {
    // An on-path relay forwards the genuine frames but swaps the ring in Auth.
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    pump_c2s(&mut c, &mut s, now); // Hello
    pump_s2c(&mut s, &mut c, now); // Challenge
    pump_c2s(&mut c, &mut s, now); // Proof
    let Some(ServerEvent::Authenticated(_)) = s.poll_event() else {
        panic!()
    };
    s.accept(
        Accept {
            slot_size: 128,
            shm: None,
            epoch: 9,
            resumed_at: None,
        },
        now,
    );
    pump_s2c(&mut s, &mut c, now);
    let Some(ClientEvent::Accepted(_)) = c.poll_event() else {
        panic!()
    };
    c.auth(auth(), now);
    let genuine = c.poll_transmit().unwrap();
    // The relay's Auth: same shape, another ring, sealed with no key (it has none).
    let mut evil = auth();
    evil.ring.slots = 1024;
    let mut forged = ControlMsg::Auth(evil).encode();
    let body_len = forged.len() - FRAME_HEADER_LEN;
    forged[6] = 1; // sealed flag
    forged[8..12].copy_from_slice(&((body_len + 32) as u32).to_le_bytes());
    forged.extend_from_slice(&genuine[genuine.len() - 32..]); // the genuine tag
    s.handle_input(&forged, now);
    match s.poll_event() {
        Some(ServerEvent::Failed(r)) => assert!(r.reason.contains("MAC"), "{}", r.reason),
        _ => panic!("the forged Auth was taken"),
    }
    // Bit flips of the genuine frame are refused as well.
    let mut s2 = ServerHandshake::new(KEY, [2; 32], STEP, now);
    let mut c2 = ClientHandshake::new(cfg(KEY), [1; 32], now);
    pump_c2s(&mut c2, &mut s2, now);
    pump_s2c(&mut s2, &mut c2, now);
    let mut proof = c2.poll_transmit().unwrap();
    proof[FRAME_HEADER_LEN + 3] ^= 1;
    s2.handle_input(&proof, now);
    assert!(matches!(s2.poll_event(), Some(ServerEvent::Failed(_))));
}

#[test]
fn relay_that_rewrites_hello_or_challenge_breaks_the_proof() {
    let now = Instant::now();
    // The relay changes the transport in Hello: the transcripts differ, the proof fails.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    let hello = c.poll_transmit().unwrap();
    let ControlMsg::Hello(mut h) = ControlMsg::decode(&hello[FRAME_HEADER_LEN..]).unwrap() else {
        panic!()
    };
    h.transport = TransportKind::Verbs;
    s.handle_input(&ControlMsg::Hello(h).encode(), now);
    pump_s2c(&mut s, &mut c, now);
    pump_c2s(&mut c, &mut s, now);
    match s.poll_event() {
        Some(ServerEvent::Failed(r)) => assert_eq!(r.code, Some(RejectCode::AuthFailed)),
        _ => panic!("a rewritten Hello was authenticated"),
    }
    // The relay changes the server nonce in Challenge.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    pump_c2s(&mut c, &mut s, now);
    let _ = s.poll_transmit().unwrap();
    c.handle_input(
        &ControlMsg::Challenge(Challenge {
            server_nonce: [3; 32],
        })
        .encode(),
        now,
    );
    pump_c2s(&mut c, &mut s, now);
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Failed(Refusal {
            code: Some(RejectCode::AuthFailed),
            ..
        }))
    ));
}

#[test]
fn an_impostor_publisher_cannot_accept() {
    // It receives the proof but, without the key, cannot seal Accept.
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let _hello = c.poll_transmit().unwrap();
    c.handle_input(
        &ControlMsg::Challenge(Challenge {
            server_nonce: [8; 32],
        })
        .encode(),
        now,
    );
    let _proof = c.poll_transmit().unwrap();
    let mut guess = KEY;
    guess[31] ^= 1;
    let mut fake = Sealer::new(guess);
    c.handle_input(
        &fake.seal(&ControlMsg::Accept(Accept {
            slot_size: 64,
            shm: None,
            epoch: 9,
            resumed_at: None,
        })),
        now,
    );
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::AuthFailed(_)))
    ));
    // An unsealed Accept is no better.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let _ = c.poll_transmit();
    c.handle_input(
        &ControlMsg::Challenge(Challenge {
            server_nonce: [8; 32],
        })
        .encode(),
        now,
    );
    c.handle_input(
        &ControlMsg::Accept(Accept {
            slot_size: 64,
            shm: None,
            epoch: 9,
            resumed_at: None,
        })
        .encode(),
        now,
    );
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Protocol(_)))
    ));
}

#[test]
fn sealed_rejects_after_authentication() {
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    pump_c2s(&mut c, &mut s, now);
    pump_s2c(&mut s, &mut c, now);
    pump_c2s(&mut c, &mut s, now);
    let Some(ServerEvent::Authenticated(_)) = s.poll_event() else {
        panic!()
    };
    s.reject(RejectCode::UnknownTopic, "no topic \"md.quotes\"");
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Failed(Refusal {
            code: Some(RejectCode::UnknownTopic),
            authenticated: true,
            ..
        }))
    ));
    pump_s2c(&mut s, &mut c, now);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Rejected {
            code: RejectCode::UnknownTopic,
            authenticated: true,
            ..
        }))
    ));
}

#[test]
fn other_versions_garbage_and_out_of_order_frames() {
    let now = Instant::now();
    // Another version: refused with VersionMismatch.
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    let hello = ClientHandshake::new(cfg(KEY), [1; 32], now)
        .poll_transmit()
        .unwrap();
    let mut old = hello.clone();
    old[4..6].copy_from_slice(&1u16.to_le_bytes());
    s.handle_input(&old, now);
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Failed(Refusal {
            code: Some(RejectCode::VersionMismatch),
            ..
        }))
    ));
    let reply = s.poll_transmit().unwrap();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    c.handle_input(&reply, now);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Rejected {
            code: RejectCode::VersionMismatch,
            ..
        }))
    ));
    // A publisher of another version answering: the client says so.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut frame = encode_header_with_version(4, 7).to_vec();
    frame.extend_from_slice(&[0; 4]);
    c.handle_input(&frame, now);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Frame(
            crate::frame::FrameError::VersionMismatch { theirs: 7, .. }
        )))
    ));
    // Garbage: refused at the first wrong byte.
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    s.handle_input(b"GET / HTTP/1.1\r\n", now);
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Failed(Refusal {
            code: Some(RejectCode::BadMessage),
            ..
        }))
    ));
    // A Proof before Hello.
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    s.handle_input(
        &ControlMsg::Proof(ProofMsg { proof: [0; 32] }).encode(),
        now,
    );
    match s.poll_event() {
        Some(ServerEvent::Failed(r)) => assert!(r.reason.contains("expected Hello"), "{r:?}"),
        _ => panic!(),
    }
    // An oversized length.
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    s.handle_input(&encode_header_with_version(u32::MAX, PROTOCOL_VERSION), now);
    assert!(matches!(s.poll_event(), Some(ServerEvent::Failed(_))));
}

#[test]
fn every_wait_on_the_peer_is_bounded() {
    let t0 = Instant::now();
    // Publisher waiting for Hello.
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + STEP));
    s.handle_timeout(t0 + STEP - Duration::from_millis(1));
    assert!(s.poll_event().is_none());
    s.handle_timeout(t0 + STEP);
    match s.poll_event() {
        Some(ServerEvent::Failed(r)) => assert!(r.reason.contains("no Hello"), "{r:?}"),
        _ => panic!(),
    }
    // Publisher waiting for the proof, then for the ready heartbeat.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], t0);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, t0);
    pump_c2s(&mut c, &mut s, t0);
    s.handle_timeout(t0 + STEP * 2);
    match s.poll_event() {
        Some(ServerEvent::Failed(r)) => assert!(r.reason.contains("no Proof"), "{r:?}"),
        _ => panic!(),
    }
    // Subscriber waiting for each answer.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], t0);
    assert_eq!(c.poll_timeout(), Some(t0 + STEP));
    c.handle_timeout(t0 + STEP);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Timeout(_)))
    ));
    // While the driver decides, the peer is not on the clock.
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], t0);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, t0);
    pump_c2s(&mut c, &mut s, t0);
    pump_s2c(&mut s, &mut c, t0);
    pump_c2s(&mut c, &mut s, t0);
    assert!(matches!(
        s.poll_event(),
        Some(ServerEvent::Authenticated(_))
    ));
    assert_eq!(s.poll_timeout(), None);
    let t1 = t0 + Duration::from_secs(60);
    s.accept(
        Accept {
            slot_size: 64,
            shm: None,
            epoch: 9,
            resumed_at: None,
        },
        t1,
    );
    assert_eq!(s.poll_timeout(), Some(t1 + STEP));
}

#[test]
fn frames_split_at_every_byte_still_work() {
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    let hello = c.poll_transmit().unwrap();
    for b in &hello {
        s.handle_input(std::slice::from_ref(b), now);
    }
    assert!(s.poll_transmit().is_some());
}

#[test]
fn a_welcome_with_an_absurd_heartbeat_is_refused() {
    let now = Instant::now();
    let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    pump_c2s(&mut c, &mut s, now);
    pump_s2c(&mut s, &mut c, now);
    pump_c2s(&mut c, &mut s, now);
    let _ = s.poll_event();
    s.accept(
        Accept {
            slot_size: 64,
            shm: None,
            epoch: 9,
            resumed_at: None,
        },
        now,
    );
    pump_s2c(&mut s, &mut c, now);
    let _ = c.poll_event();
    c.auth(auth(), now);
    pump_c2s(&mut c, &mut s, now);
    let _ = s.poll_event();
    let mut w = welcome();
    w.heartbeat_ms = 0;
    s.welcome(w, now);
    pump_s2c(&mut s, &mut c, now);
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Failed(HandshakeError::Protocol(_)))
    ));
}

/// Frames a peer without the key could send: any control message, sealed under a wrong key,
/// unsealed, of this or another version, or bytes.
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    let msg = prop_oneof![
        any::<[u8; 32]>().prop_map(|n| ControlMsg::Hello(Hello {
            topic: "md.quotes".into(),
            schema: "Quote".into(),
            transport: TransportKind::Shm,
            client_nonce: n,
            client_name: String::new(),
        })),
        any::<[u8; 32]>().prop_map(|n| ControlMsg::Challenge(Challenge { server_nonce: n })),
        any::<[u8; 32]>().prop_map(|p| ControlMsg::Proof(ProofMsg { proof: p })),
        Just(ControlMsg::Accept(Accept {
            slot_size: 64,
            shm: None,
            epoch: 1,
            resumed_at: None,
        })),
        Just(ControlMsg::Auth(auth())),
        Just(ControlMsg::Welcome(welcome())),
        Just(ControlMsg::Heartbeat(Heartbeat { sent_ns: 1 })),
        Just(ControlMsg::Reject(Reject::new(RejectCode::BadMessage, "x"))),
    ];
    prop_oneof![
        msg.clone().prop_map(|m| m.encode()),
        (msg.clone(), any::<[u8; 32]>()).prop_map(|(m, k)| Sealer::new(k).seal(&m)),
        (msg, any::<u16>()).prop_map(|(m, v)| m.encode_with_version(v)),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    /// Whatever a peer without the key sends, in any order, the publisher never reaches an
    /// authenticated state and never panics; it ends within its deadline.
    #[test]
    fn no_sequence_of_frames_without_the_key_authenticates(
        frames in proptest::collection::vec(arb_frame(), 0..8)
    ) {
        let now = Instant::now();
        let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
        for f in &frames {
            s.handle_input(f, now);
            while let Some(e) = s.poll_event() {
                prop_assert!(!matches!(e, ServerEvent::Authenticated(_) | ServerEvent::Ring(_) | ServerEvent::Established(_)));
            }
            while s.poll_transmit().is_some() {}
        }
        s.handle_timeout(now + STEP);
        prop_assert!(s.is_done());
    }

    /// The subscriber, fed anything a publisher without the key could send, never accepts.
    #[test]
    fn no_sequence_of_frames_without_the_key_is_accepted_by_a_subscriber(
        frames in proptest::collection::vec(arb_frame(), 0..8)
    ) {
        let now = Instant::now();
        let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
        for f in &frames {
            c.handle_input(f, now);
            while let Some(e) = c.poll_event() {
                prop_assert!(!matches!(e, ClientEvent::Accepted(_) | ClientEvent::Welcomed(_) | ClientEvent::Established(_)));
            }
        }
        c.handle_timeout(now + STEP);
        prop_assert!(c.is_done());
    }

    /// Flipping any byte of any frame of an honest handshake never yields a session on
    /// either side that the other side did not take part in.
    #[test]
    fn any_flipped_byte_fails_the_handshake(which in 0usize..5, idx in any::<prop::sample::Index>(), bit in 0u8..8) {
        let now = Instant::now();
        let mut c = ClientHandshake::new(cfg(KEY), [1; 32], now);
        let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
        let mut sent = 0usize;
        let mut tampered = false;
        let mut established = 0;
        for _ in 0..8 {
            while let Some(mut f) = c.poll_transmit() {
                if sent == which && !tampered { let i = idx.index(f.len()); f[i] ^= 1 << bit; tampered = true; }
                sent += 1;
                s.handle_input(&f, now);
            }
            while let Some(e) = s.poll_event() {
                match e {
                    ServerEvent::Authenticated(_) => s.accept(
                        Accept {
                            slot_size: 64,
                            shm: None,
                            epoch: 1,
                            resumed_at: None,
                        },
                        now,
                    ),
                    ServerEvent::Ring(_) => s.welcome(welcome(), now),
                    ServerEvent::Established(_) => established += 1,
                    ServerEvent::Failed(_) => {}
                }
            }
            while let Some(mut f) = s.poll_transmit() {
                if sent == which && !tampered { let i = idx.index(f.len()); f[i] ^= 1 << bit; tampered = true; }
                sent += 1;
                c.handle_input(&f, now);
            }
            while let Some(e) = c.poll_event() {
                match e {
                    ClientEvent::Accepted(_) => c.auth(auth(), now),
                    ClientEvent::Welcomed(_) => c.ready(1),
                    ClientEvent::Established(_) => established += 1,
                    ClientEvent::Failed(_) => {}
                }
            }
        }
        if tampered {
            prop_assert!(established < 2, "a tampered handshake established both sides");
        }
    }
}

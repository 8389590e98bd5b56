//! Both handshake state machines fed arbitrary bytes and times by a peer without the key:
//! never a panic, never authenticated, always finished by the deadline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdmabus_proto::handshake::*;
use std::time::{Duration, Instant};

const KEY: [u8; 32] = *b"fuzzing key, 32 bytes, not weak!";
const STEP: Duration = Duration::from_secs(5);

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut s = ServerHandshake::new(KEY, [2; 32], STEP, now);
    let mut c = ClientHandshake::new(
        ClientConfig {
            key: KEY,
            topic: "md.quotes".into(),
            schema: "Quote".into(),
            transport: TransportKind::Shm,
            name: "fuzz".into(),
            step: STEP,
        },
        [1; 32],
        now,
    );
    // The first byte of each chunk sets how far the clock moves; the rest is input.
    let mut t = now;
    for chunk in data.chunks(64) {
        t += Duration::from_millis(chunk[0] as u64 * 10);
        s.handle_input(&chunk[1..], t);
        c.handle_input(&chunk[1..], t);
        s.handle_timeout(t);
        c.handle_timeout(t);
        while s.poll_transmit().is_some() {}
        while c.poll_transmit().is_some() {}
        while let Some(e) = s.poll_event() {
            assert!(matches!(e, ServerEvent::Failed(_)), "authenticated without the key");
        }
        while let Some(e) = c.poll_event() {
            assert!(matches!(e, ClientEvent::Failed(_)), "accepted without the key");
        }
    }
    s.handle_timeout(t + STEP);
    c.handle_timeout(t + STEP);
    assert!(s.is_done() && c.is_done());
});

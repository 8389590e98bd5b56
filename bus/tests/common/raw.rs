//! Peers that speak the real protocol by hand (the proto state machines over a real TCP
//! connection), to play a rogue subscriber or publisher in tests.
#![allow(dead_code)]

use rdmabus::control::framed::FramedStream;
use rdmabus::proto::handshake::*;
use rdmabus::Psk;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A subscriber driven step by step.
pub struct RawSub {
    pub fs: FramedStream,
    pub hs: ClientHandshake,
}

impl RawSub {
    /// Connects and queues `Hello`.
    pub fn connect(
        addr: SocketAddr,
        key: &Psk,
        topic: &str,
        schema: &str,
        transport: TransportKind,
    ) -> Self {
        let fs = FramedStream::new(TcpStream::connect(addr).unwrap()).unwrap();
        let hs = ClientHandshake::new(
            ClientConfig {
                key: *key.bytes(),
                topic: topic.into(),
                schema: schema.into(),
                transport,
                name: "raw".into(),
                step: Duration::from_secs(10),
            },
            [5; 32],
            Instant::now(),
        );
        Self { fs, hs }
    }

    /// Sends what is queued and reads until the handshake has an event.
    pub fn next_event(&mut self) -> ClientEvent {
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(f) = self.hs.poll_transmit() {
                self.fs.send_raw(&f).unwrap();
            }
            if let Some(e) = self.hs.poll_event() {
                while let Some(f) = self.hs.poll_transmit() {
                    let _ = self.fs.send_raw(&f);
                }
                return e;
            }
            let deadline = self
                .hs
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
            match self.fs.read_until(deadline, &mut chunk) {
                Ok(Some(n)) => self.hs.handle_input(&chunk[..n], Instant::now()),
                Ok(None) => self.hs.handle_timeout(Instant::now()),
                Err(_) => self.hs.handle_close(),
            }
        }
    }

    /// Runs to `Accepted` (panics otherwise).
    pub fn accepted(&mut self) -> Accept {
        match self.next_event() {
            ClientEvent::Accepted(a) => a,
            ClientEvent::Failed(e) => panic!("handshake failed: {e}"),
            _ => panic!("expected Accepted"),
        }
    }

    /// The refusal the publisher answers with.
    pub fn refusal(&mut self) -> HandshakeError {
        match self.next_event() {
            ClientEvent::Failed(e) => e,
            _ => panic!("expected a refusal"),
        }
    }
}

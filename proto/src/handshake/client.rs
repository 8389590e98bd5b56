//! The subscriber's side of the handshake as a state machine.

use super::messages::*;
use super::session::Session;
use super::shared::Core;
use super::wire::{OpenError, RawFrame};
use super::HandshakeError;
use crate::auth::{subscriber_proof, Nonce, Role, KEY_LEN};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Longest heartbeat interval a subscriber accepts.
pub const MAX_HEARTBEAT_MS: u32 = 60_000;

/// What a subscriber asks for.
pub struct ClientConfig {
    /// The pre-shared key.
    pub key: [u8; KEY_LEN],
    /// Topic.
    pub topic: String,
    /// Message schema (the Rust type name).
    pub schema: String,
    /// Transport.
    pub transport: TransportKind,
    /// Name for the publisher's logs and stats.
    pub name: String,
    /// How long each answer of the publisher may take.
    pub step: Duration,
}

/// What the subscriber's handshake asks of its driver, or tells it.
pub enum ClientEvent {
    /// The publisher proved the key and takes the subscription: build the ring (at least
    /// `slot_size` per slot) and answer with [`ClientHandshake::auth`] (or
    /// [`ClientHandshake::abort`]).
    Accepted(Accept),
    /// The publisher set the link up: attach to its credit endpoint, then call
    /// [`ClientHandshake::ready`] (or [`ClientHandshake::abort`]).
    Welcomed(Welcome),
    /// Attached: the session carries heartbeats and the goodbye from here on.
    Established(Session),
    /// The handshake failed.
    Failed(HandshakeError),
}

enum State {
    AwaitChallenge,
    AwaitAccept,
    Building,
    AwaitWelcome,
    Connecting,
    Done,
}

impl State {
    /// What the subscriber waits for from the publisher in this state, if anything.
    fn awaited(&self) -> Option<&'static str> {
        match self {
            Self::AwaitChallenge => Some("Challenge"),
            Self::AwaitAccept => Some("Accept"),
            Self::AwaitWelcome => Some("Welcome"),
            Self::Building | Self::Connecting | Self::Done => None,
        }
    }
}

/// The subscriber's side of one handshake.
pub struct ClientHandshake {
    core: Core,
    state: State,
    events: VecDeque<ClientEvent>,
}

impl ClientHandshake {
    /// Starts a handshake: `Hello` is queued for sending.
    pub fn new(cfg: ClientConfig, client_nonce: Nonce, now: Instant) -> Self {
        let hello = ControlMsg::Hello(Hello {
            topic: cfg.topic,
            schema: cfg.schema,
            transport: cfg.transport,
            client_nonce,
            client_name: cfg.name,
        })
        .encode();
        let mut core = Core::new(cfg.key, cfg.step, now);
        core.transcript.add(&hello);
        core.send(hello);
        Self {
            core,
            state: State::AwaitChallenge,
            events: VecDeque::new(),
        }
    }

    /// Feeds bytes received from the publisher.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Done) {
            return;
        }
        if let Err(e) = self.core.push_input(bytes) {
            return self.fail(HandshakeError::Frame(e));
        }
        self.process(now);
    }

    /// The publisher closed the connection.
    pub fn handle_close(&mut self) {
        if !matches!(self.state, State::Done) {
            self.fail(HandshakeError::Protocol(
                "the publisher closed the connection during the handshake".into(),
            ));
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.deadline()
    }

    /// Lets time pass: a publisher that has not answered by its deadline fails the handshake.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (true, Some(what)) = (self.core.expired(now), self.state.awaited()) {
            let step = self.core.step;
            self.fail(HandshakeError::Timeout(format!(
                "no {what} from the publisher within {step:?}"
            )));
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether the handshake is over.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Answers [`ClientEvent::Accepted`] with the ring.
    pub fn auth(&mut self, auth: Auth, now: Instant) {
        if !matches!(self.state, State::Building) {
            return;
        }
        self.core.send_sealed(&ControlMsg::Auth(auth));
        self.state = State::AwaitWelcome;
        self.core.await_peer(now);
        self.process(now);
    }

    /// Answers [`ClientEvent::Welcomed`]: attached; `sent_ns` stamps the first heartbeat.
    pub fn ready(&mut self, sent_ns: u64) {
        if !matches!(self.state, State::Connecting) {
            return;
        }
        self.core
            .send_sealed(&ControlMsg::Heartbeat(Heartbeat { sent_ns }));
        self.state = State::Done;
        let session = self.core.take_session();
        self.events.push_back(ClientEvent::Established(session));
    }

    /// Gives up, telling the publisher why (sealed once the keys exist).
    pub fn abort(&mut self, code: RejectCode, message: impl Into<String>) {
        if matches!(self.state, State::Done) {
            return;
        }
        self.core.send_reject(code, message);
        self.state = State::Done;
        self.core.stop_clock();
    }

    fn fail(&mut self, e: HandshakeError) {
        self.state = State::Done;
        self.core.stop_clock();
        self.events.push_back(ClientEvent::Failed(e));
    }

    fn process(&mut self, now: Instant) {
        // A publisher's refusal of our version comes in its own version: either way the
        // versions differ, and `next_frame` says so.
        while self.state.awaited().is_some() {
            match self.core.next_frame() {
                Ok(Some(f)) => self.on_frame(f, now),
                Ok(None) => return,
                Err(e) => return self.fail(HandshakeError::Frame(e)),
            }
        }
    }

    fn on_frame(&mut self, frame: RawFrame, now: Instant) {
        // A plain Reject is possible until the publisher has the session keys (wrong key,
        // version, malformed Hello), and authenticates nothing.
        let sealed_phase = self.core.sealed();
        let msg = if sealed_phase && frame.header.sealed() {
            match self.core.opener().expect("sealed phase").open(&frame) {
                Ok(m) => m,
                Err(OpenError::Frame(e)) => return self.fail(HandshakeError::Frame(e)),
                Err(e) => {
                    self.abort(
                        RejectCode::AuthFailed,
                        "publisher's frame did not verify under the session key",
                    );
                    return self.fail(HandshakeError::AuthFailed(format!(
                        "the publisher could not prove it holds the pre-shared key ({e})"
                    )));
                }
            }
        } else {
            match frame.decode_plain() {
                Ok(ControlMsg::Reject(r)) => {
                    return self.fail(HandshakeError::Rejected {
                        code: r.code,
                        message: r.message,
                        authenticated: false,
                    })
                }
                Ok(m) if !sealed_phase => m,
                Ok(m) => {
                    return self.fail(HandshakeError::Protocol(format!(
                        "an unauthenticated {} after the proof",
                        m.kind()
                    )))
                }
                Err(e) => return self.fail(HandshakeError::Frame(e)),
            }
        };
        if let ControlMsg::Reject(r) = msg {
            return self.fail(HandshakeError::Rejected {
                code: r.code,
                message: r.message,
                authenticated: true,
            });
        }
        match (&self.state, msg) {
            (State::AwaitChallenge, ControlMsg::Challenge(_)) => {
                self.core.transcript.add(&frame.bytes);
                let proof = ControlMsg::Proof(ProofMsg {
                    proof: subscriber_proof(&self.core.key, &self.core.transcript.hash()),
                })
                .encode();
                self.core.transcript.add(&proof);
                self.core.send(proof);
                self.core.derive_keys(Role::Subscriber);
                self.state = State::AwaitAccept;
                self.core.await_peer(now);
            }
            (State::AwaitAccept, ControlMsg::Accept(a)) => {
                self.state = State::Building;
                self.core.stop_clock();
                self.events.push_back(ClientEvent::Accepted(a));
            }
            (State::AwaitWelcome, ControlMsg::Welcome(w)) => {
                if w.heartbeat_ms == 0 || w.heartbeat_ms > MAX_HEARTBEAT_MS {
                    self.abort(RejectCode::BadMessage, "heartbeat out of bounds");
                    return self.fail(HandshakeError::Protocol(format!(
                        "heartbeat of {} ms out of bounds",
                        w.heartbeat_ms
                    )));
                }
                self.state = State::Connecting;
                self.core.stop_clock();
                self.events.push_back(ClientEvent::Welcomed(w));
            }
            (state, other) => {
                let expected = state.awaited().unwrap_or("nothing");
                self.abort(RejectCode::BadMessage, format!("expected {expected}"));
                self.fail(HandshakeError::Protocol(format!(
                    "expected {expected}, got {}",
                    other.kind()
                )));
            }
        }
    }
}

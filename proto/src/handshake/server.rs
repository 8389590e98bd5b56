//! The publisher's side of the handshake as a state machine.

use super::messages::*;
use super::session::Session;
use super::shared::Core;
use super::wire::{OpenError, RawFrame};
use crate::auth::{verify_subscriber_proof, Nonce, Role, KEY_LEN};
use crate::frame::{FrameError, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why the publisher ended a handshake: what it told the peer, and what to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent to the peer, if a refusal was sent.
    pub code: Option<RejectCode>,
    /// Whether the peer had proven the key (so the refusal was sealed).
    pub authenticated: bool,
    /// Why, for the log (contains peer-chosen text: escape it when logging).
    pub reason: String,
}

/// What the publisher's handshake asks of its driver, or tells it.
pub enum ServerEvent {
    /// The subscriber proved the key. Look its topic up and answer with
    /// [`ServerHandshake::accept`] or [`ServerHandshake::reject`].
    Authenticated(Hello),
    /// The subscriber announced its ring. Set the link up and answer with
    /// [`ServerHandshake::welcome`] or [`ServerHandshake::reject`].
    Ring(Auth),
    /// The subscriber is attached and ready: hand the session to the link.
    Established(Session),
    /// The handshake ended without a link; any refusal is queued for sending.
    Failed(Refusal),
}

enum State {
    AwaitHello,
    AwaitProof,
    Deciding,
    AwaitAuth,
    Ringing,
    AwaitReady,
    Done,
}

impl State {
    /// What the publisher waits for from the subscriber in this state, if anything.
    fn awaited(&self) -> Option<&'static str> {
        match self {
            Self::AwaitHello => Some("Hello"),
            Self::AwaitProof => Some("Proof"),
            Self::AwaitAuth => Some("Auth"),
            Self::AwaitReady => Some("first Heartbeat"),
            Self::Deciding | Self::Ringing | Self::Done => None,
        }
    }
}

/// The publisher's side of one handshake.
pub struct ServerHandshake {
    core: Core,
    nonce: Nonce,
    state: State,
    events: VecDeque<ServerEvent>,
    hello: Option<Hello>,
}

impl ServerHandshake {
    /// A handshake that waits for `Hello`, each step of the peer's bounded by `step`.
    pub fn new(key: [u8; KEY_LEN], server_nonce: Nonce, step: Duration, now: Instant) -> Self {
        Self {
            core: Core::new(key, step, now),
            nonce: server_nonce,
            state: State::AwaitHello,
            events: VecDeque::new(),
            hello: None,
        }
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Done) {
            return;
        }
        if let Err(e) = self.core.push_input(bytes) {
            return self.fail_frame(e);
        }
        self.process(now);
    }

    /// The peer closed the connection.
    pub fn handle_close(&mut self) {
        if !matches!(self.state, State::Done) {
            self.finish(
                None,
                "the subscriber closed the connection during the handshake",
            );
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.deadline()
    }

    /// Lets time pass: a peer that has not answered by its deadline fails the handshake.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (true, Some(what)) = (self.core.expired(now), self.state.awaited()) {
            let step = self.core.step;
            self.finish(None, format!("no {what} within {step:?}"));
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Whether the handshake is over (established or failed).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Answers [`ServerEvent::Authenticated`]: the topic exists and takes this subscriber.
    pub fn accept(&mut self, accept: Accept, now: Instant) {
        self.answer(
            State::Deciding,
            ControlMsg::Accept(accept),
            State::AwaitAuth,
            now,
        );
    }

    /// Answers [`ServerEvent::Ring`]: the link is set up.
    pub fn welcome(&mut self, welcome: Welcome, now: Instant) {
        self.answer(
            State::Ringing,
            ControlMsg::Welcome(welcome),
            State::AwaitReady,
            now,
        );
    }

    /// Refuses the subscriber (sealed once it has proven the key).
    pub fn reject(&mut self, code: RejectCode, message: impl Into<String>) {
        if matches!(self.state, State::Done) {
            return;
        }
        let message = message.into();
        self.core.send_reject(code, message.as_str());
        self.finish(Some(code), format!("{code:?}: {message}"));
    }

    /// The driver's answer in state `from`: send `msg` sealed, then wait for the peer.
    fn answer(&mut self, from: State, msg: ControlMsg, to: State, now: Instant) {
        if std::mem::discriminant(&self.state) != std::mem::discriminant(&from) {
            return;
        }
        self.core.send_sealed(&msg);
        self.state = to;
        self.core.await_peer(now);
        self.process(now);
    }

    fn finish(&mut self, code: Option<RejectCode>, reason: impl Into<String>) {
        self.state = State::Done;
        self.core.stop_clock();
        self.events.push_back(ServerEvent::Failed(Refusal {
            code,
            authenticated: self.core.sealed(),
            reason: reason.into(),
        }));
    }

    fn fail_frame(&mut self, e: FrameError) {
        match e {
            FrameError::VersionMismatch { theirs, .. } => self.reject(
                RejectCode::VersionMismatch,
                format!(
                    "subscriber speaks protocol version {theirs}, this publisher speaks version \
                     {PROTOCOL_VERSION}"
                ),
            ),
            e => self.reject(RejectCode::BadMessage, format!("bad frame: {e}")),
        }
    }

    fn process(&mut self, now: Instant) {
        while self.state.awaited().is_some() {
            match self.core.next_frame() {
                Ok(Some(f)) => self.on_frame(f, now),
                Ok(None) => return,
                Err(e) => return self.fail_frame(e),
            }
        }
    }

    fn on_frame(&mut self, frame: RawFrame, now: Instant) {
        let msg = match self.core.opener() {
            None => frame.decode_plain().map_err(OpenError::Frame),
            Some(o) => o.open(&frame),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(OpenError::Frame(e)) => return self.fail_frame(e),
            Err(e) => {
                // Not from the holder of the session keys: answer nothing it could use.
                self.state = State::Done;
                self.core.stop_clock();
                self.events.push_back(ServerEvent::Failed(Refusal {
                    code: None,
                    authenticated: false,
                    reason: e.to_string(),
                }));
                return;
            }
        };
        if let ControlMsg::Reject(r) = &msg {
            return self.finish(
                None,
                format!(
                    "subscriber refused the publisher ({:?}): {}",
                    r.code, r.message
                ),
            );
        }
        match (&self.state, msg) {
            (State::AwaitHello, ControlMsg::Hello(hello)) => {
                self.core.transcript.add(&frame.bytes);
                let challenge = ControlMsg::Challenge(Challenge {
                    server_nonce: self.nonce,
                })
                .encode();
                self.core.transcript.add(&challenge);
                self.core.send(challenge);
                self.state = State::AwaitProof;
                self.core.await_peer(now);
                self.hello = Some(hello);
            }
            (State::AwaitProof, ControlMsg::Proof(p)) => {
                if !verify_subscriber_proof(&self.core.key, &self.core.transcript.hash(), &p.proof)
                {
                    return self.reject(RejectCode::AuthFailed, "wrong pre-shared key");
                }
                self.core.transcript.add(&frame.bytes);
                self.core.derive_keys(Role::Publisher);
                self.state = State::Deciding;
                self.core.stop_clock();
                let hello = self.hello.take().expect("Hello came first");
                self.events.push_back(ServerEvent::Authenticated(hello));
            }
            (State::AwaitAuth, ControlMsg::Auth(a)) => {
                self.state = State::Ringing;
                self.core.stop_clock();
                self.events.push_back(ServerEvent::Ring(a));
            }
            (State::AwaitReady, ControlMsg::Heartbeat(_)) => {
                self.state = State::Done;
                let session = self.core.take_session();
                self.events.push_back(ServerEvent::Established(session));
            }
            (state, other) => {
                let expected = state.awaited().unwrap_or("nothing");
                self.reject(
                    RejectCode::BadMessage,
                    format!("expected {expected}, got {}", other.kind()),
                );
            }
        }
    }
}

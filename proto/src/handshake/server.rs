//! The publisher's side of the handshake as a state machine.

use super::messages::*;
use super::session::Session;
use super::wire::{FrameDecoder, OpenError, Opener, RawFrame, Sealer};
use crate::auth::{verify_subscriber_proof, Nonce, Role, SessionKeys, Transcript, KEY_LEN};
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

/// The publisher's side of one handshake.
pub struct ServerHandshake {
    key: [u8; KEY_LEN],
    nonce: Nonce,
    step: Duration,
    deadline: Option<Instant>,
    state: State,
    decoder: FrameDecoder,
    transcript: Transcript,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<ServerEvent>,
    hello: Option<Hello>,
}

impl ServerHandshake {
    /// A handshake that waits for `Hello`, each step of the peer's bounded by `step`.
    pub fn new(key: [u8; KEY_LEN], server_nonce: Nonce, step: Duration, now: Instant) -> Self {
        Self {
            key,
            nonce: server_nonce,
            step,
            deadline: Some(now + step),
            state: State::AwaitHello,
            decoder: FrameDecoder::default(),
            transcript: Transcript::default(),
            sealer: None,
            opener: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            hello: None,
        }
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Done) {
            return;
        }
        if let Err(e) = self.decoder.push(bytes) {
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
        self.deadline
    }

    /// Lets time pass: a peer that has not answered by its deadline fails the handshake.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline {
            if now >= d && !matches!(self.state, State::Done) {
                let what = match self.state {
                    State::AwaitHello => "Hello",
                    State::AwaitProof => "Proof",
                    State::AwaitAuth => "Auth",
                    State::AwaitReady => "first Heartbeat",
                    _ => "answer",
                };
                self.finish(None, format!("no {what} within {:?}", self.step));
            }
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
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
        if !matches!(self.state, State::Deciding) {
            return;
        }
        self.send_sealed(&ControlMsg::Accept(accept));
        self.state = State::AwaitAuth;
        self.deadline = Some(now + self.step);
        self.process(now);
    }

    /// Answers [`ServerEvent::Ring`]: the link is set up.
    pub fn welcome(&mut self, welcome: Welcome, now: Instant) {
        if !matches!(self.state, State::Ringing) {
            return;
        }
        self.send_sealed(&ControlMsg::Welcome(welcome));
        self.state = State::AwaitReady;
        self.deadline = Some(now + self.step);
        self.process(now);
    }

    /// Refuses the subscriber (sealed once it has proven the key).
    pub fn reject(&mut self, code: RejectCode, message: impl Into<String>) {
        if matches!(self.state, State::Done) {
            return;
        }
        let message = message.into();
        self.send_reject(code, &message);
        self.finish(Some(code), format!("{code:?}: {message}"));
    }

    fn send_sealed(&mut self, msg: &ControlMsg) {
        let s = self
            .sealer
            .as_mut()
            .expect("sealed frames only after the proof");
        self.out.push_back(s.seal(msg));
    }

    fn send_reject(&mut self, code: RejectCode, message: &str) {
        let msg = ControlMsg::Reject(Reject::new(code, message));
        match self.sealer.as_mut() {
            Some(s) => self.out.push_back(s.seal(&msg)),
            None => self.out.push_back(msg.encode()),
        }
    }

    fn finish(&mut self, code: Option<RejectCode>, reason: impl Into<String>) {
        self.state = State::Done;
        self.deadline = None;
        self.events.push_back(ServerEvent::Failed(Refusal {
            code,
            authenticated: self.sealer.is_some(),
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

    fn expects_input(&self) -> bool {
        matches!(
            self.state,
            State::AwaitHello | State::AwaitProof | State::AwaitAuth | State::AwaitReady
        )
    }

    fn process(&mut self, now: Instant) {
        while self.expects_input() {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.fail_frame(e),
            };
            if frame.header.version != PROTOCOL_VERSION {
                return self.fail_frame(FrameError::VersionMismatch {
                    theirs: frame.header.version,
                    ours: PROTOCOL_VERSION,
                });
            }
            self.on_frame(frame, now);
        }
    }

    fn on_frame(&mut self, frame: RawFrame, now: Instant) {
        let msg = match &mut self.opener {
            None => frame.decode_plain().map_err(OpenError::Frame),
            Some(o) => o.open(&frame),
        };
        let msg = match msg {
            Ok(m) => m,
            Err(OpenError::Frame(e)) => return self.fail_frame(e),
            Err(e) => {
                // Not from the holder of the session keys: answer nothing it could use.
                self.state = State::Done;
                self.deadline = None;
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
                self.transcript.add(&frame.bytes);
                let challenge = ControlMsg::Challenge(Challenge {
                    server_nonce: self.nonce,
                })
                .encode();
                self.transcript.add(&challenge);
                self.out.push_back(challenge);
                self.state = State::AwaitProof;
                self.deadline = Some(now + self.step);
                self.hello = Some(hello);
            }
            (State::AwaitProof, ControlMsg::Proof(p)) => {
                if !verify_subscriber_proof(&self.key, &self.transcript.hash(), &p.proof) {
                    return self.reject(RejectCode::AuthFailed, "wrong pre-shared key");
                }
                self.transcript.add(&frame.bytes);
                let keys = SessionKeys::derive(&self.key, &self.transcript.hash());
                let (send, recv) = keys.for_role(Role::Publisher);
                self.sealer = Some(Sealer::new(send));
                self.opener = Some(Opener::new(recv));
                self.state = State::Deciding;
                self.deadline = None;
                let hello = self.hello.take().expect("Hello came first");
                self.events.push_back(ServerEvent::Authenticated(hello));
            }
            (State::AwaitAuth, ControlMsg::Auth(a)) => {
                self.state = State::Ringing;
                self.deadline = None;
                self.events.push_back(ServerEvent::Ring(a));
            }
            (State::AwaitReady, ControlMsg::Heartbeat(_)) => {
                self.state = State::Done;
                self.deadline = None;
                let decoder = std::mem::take(&mut self.decoder);
                let session = Session::new(
                    self.sealer.take().expect("sealed"),
                    self.opener.take().expect("sealed"),
                    decoder,
                );
                self.events.push_back(ServerEvent::Established(session));
            }
            (_, other) => {
                let expected = match self.state {
                    State::AwaitHello => "Hello",
                    State::AwaitProof => "Proof",
                    State::AwaitAuth => "Auth",
                    _ => "Heartbeat",
                };
                self.reject(
                    RejectCode::BadMessage,
                    format!("expected {expected}, got {}", other.kind()),
                );
            }
        }
    }
}

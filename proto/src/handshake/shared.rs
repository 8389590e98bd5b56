//! What both roles of the handshake keep alike: the key, the peer's deadline, the byte
//! decoder, the transcript, the session keys once derived, and the frames to send.

use super::messages::{ControlMsg, Reject, RejectCode};
use super::session::Session;
use super::wire::{FrameDecoder, Opener, RawFrame, Sealer};
use crate::auth::{Role, SessionKeys, Transcript, KEY_LEN};
use crate::frame::{FrameError, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(super) struct Core {
    pub key: [u8; KEY_LEN],
    pub step: Duration,
    deadline: Option<Instant>,
    decoder: FrameDecoder,
    pub transcript: Transcript,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    out: VecDeque<Vec<u8>>,
}

impl Core {
    /// Waiting for the peer's first frame until `now + step`.
    pub fn new(key: [u8; KEY_LEN], step: Duration, now: Instant) -> Self {
        Self {
            key,
            step,
            deadline: Some(now + step),
            decoder: FrameDecoder::default(),
            transcript: Transcript::default(),
            sealer: None,
            opener: None,
            out: VecDeque::new(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the peer's deadline has passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// The peer is on the clock again, for one step.
    pub fn await_peer(&mut self, now: Instant) {
        self.deadline = Some(now + self.step);
    }

    /// The driver decides, or the handshake is over: nobody is on the clock.
    pub fn stop_clock(&mut self) {
        self.deadline = None;
    }

    pub fn push_input(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.decoder.push(bytes)
    }

    /// The next whole frame, if it is of this protocol version.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        match self.decoder.next_frame()? {
            Some(f) if f.header.version != PROTOCOL_VERSION => Err(FrameError::VersionMismatch {
                theirs: f.header.version,
                ours: PROTOCOL_VERSION,
            }),
            f => Ok(f),
        }
    }

    pub fn send(&mut self, frame: Vec<u8>) {
        self.out.push_back(frame);
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Whether the session keys exist (every frame from here on is sealed).
    pub fn sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// Derives the session keys from the transcript so far.
    pub fn derive_keys(&mut self, role: Role) {
        let keys = SessionKeys::derive(&self.key, &self.transcript.hash());
        let (send, recv) = keys.for_role(role);
        self.sealer = Some(Sealer::new(send));
        self.opener = Some(Opener::new(recv));
    }

    pub fn send_sealed(&mut self, msg: &ControlMsg) {
        let s = self
            .sealer
            .as_mut()
            .expect("sealed frames only after the proof");
        let frame = s.seal(msg);
        self.out.push_back(frame);
    }

    /// A refusal: sealed once the keys exist, plain before.
    pub fn send_reject(&mut self, code: RejectCode, message: impl Into<String>) {
        let msg = ControlMsg::Reject(Reject::new(code, message));
        match self.sealer.as_mut() {
            Some(s) => self.out.push_back(s.seal(&msg)),
            None => self.out.push_back(msg.encode()),
        }
    }

    pub fn opener(&mut self) -> Option<&mut Opener> {
        self.opener.as_mut()
    }

    /// Hands the keys, and any bytes already received, to the session.
    pub fn take_session(&mut self) -> Session {
        self.deadline = None;
        Session::new(
            self.sealer.take().expect("sealed"),
            self.opener.take().expect("sealed"),
            std::mem::take(&mut self.decoder),
        )
    }
}

//! After the handshake: every control frame sealed under the session keys, in order.

use super::messages::ControlMsg;
use super::wire::{FrameDecoder, OpenError, Opener, Sealer};
use crate::frame::FrameError;

/// Why a frame after the handshake was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// The bytes are not frames.
    Frame(FrameError),
    /// A frame that is not authentic (or is replayed, reordered, or unsealed).
    Open(OpenError),
}

impl core::fmt::Display for SessionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Frame(e) => write!(f, "{e}"),
            Self::Open(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SessionError {}

/// The sealed control channel of one established link.
pub struct Session {
    sealer: Sealer,
    opener: Opener,
    decoder: FrameDecoder,
}

impl Session {
    pub(crate) fn new(sealer: Sealer, opener: Opener, decoder: FrameDecoder) -> Self {
        Self {
            sealer,
            opener,
            decoder,
        }
    }

    /// The whole sealed frame of `msg`, to send.
    pub fn seal(&mut self, msg: &ControlMsg) -> Vec<u8> {
        self.sealer.seal(msg)
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.decoder.push(bytes).map_err(SessionError::Frame)
    }

    /// The next authentic message received, if a whole one is buffered. After an error the
    /// session is unusable: close the link.
    pub fn poll_message(&mut self) -> Result<Option<ControlMsg>, SessionError> {
        let Some(frame) = self.decoder.next_frame().map_err(SessionError::Frame)? else {
            return Ok(None);
        };
        self.opener
            .open(&frame)
            .map(Some)
            .map_err(SessionError::Open)
    }
}

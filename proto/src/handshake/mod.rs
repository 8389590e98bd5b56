//! The control-plane handshake: its messages, and both roles as state machines that are fed
//! bytes and time and answer with frames to send and decisions to take (no I/O here; the bus
//! drives them over TCP).
//!
//! Subscriber (S) and publisher (P):
//! 1. S → P `Hello`: topic, message schema, transport, client nonce, name.
//! 2. P → S `Challenge`: the server nonce, and nothing else: no proof, no topic facts, so an
//!    unauthenticated peer learns nothing that depends on the key or the topics.
//! 3. S → P `Proof`: HMAC under the key over the transcript (every byte of frames 1 and 2).
//!    A wrong proof gets a plain `Reject(AuthFailed)`.
//! 4. From here every frame is sealed: a MAC under a per-direction session key (derived from
//!    the key and the transcript up to 3) over a per-direction counter, the header and the
//!    payload, so none can be forged, replayed, reordered or moved to another session.
//!    P → S `Accept` (the publisher's slot size; for shm, where to hand over memory) or a
//!    sealed `Reject` (unknown topic, schema, transport, capacity). Its valid MAC is the
//!    publisher's proof of the key.
//! 5. S → P `Auth`: the ring geometry and endpoint. Nothing the subscriber names is touched
//!    before its proof checked out.
//! 6. P → S `Welcome`: subscriber id, heartbeat interval, next sequence, credit endpoint.
//! 7. S → P `Heartbeat`: attached and ready. Then sealed `Heartbeat`s both ways, and `Goodbye`.
//!
//! Keys are full-entropy (see [`crate::auth`]): the subscriber proves first, to whatever
//! answered at the address it was given, and a guessable key would fall to an offline search
//! over that proof.

mod client;
mod messages;
mod server;
mod session;
mod shared;
mod wire;

pub use client::{ClientConfig, ClientEvent, ClientHandshake};
pub use messages::*;
pub use server::{Refusal, ServerEvent, ServerHandshake};
pub use session::{Session, SessionError};
pub use wire::{FrameDecoder, OpenError, Opener, RawFrame, Sealer, MAX_BUFFERED};

/// Why a handshake failed, as the subscriber sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The publisher refused; `authenticated` when the refusal carried a valid MAC.
    Rejected {
        /// Machine-readable reason.
        code: RejectCode,
        /// The publisher's words.
        message: String,
        /// Whether the refusal was sealed under the session key.
        authenticated: bool,
    },
    /// The peer could not prove it holds the key.
    AuthFailed(String),
    /// A malformed, unexpected or unauthenticated frame.
    Protocol(String),
    /// A framing error (including another protocol version).
    Frame(crate::frame::FrameError),
    /// The peer did not answer in time.
    Timeout(String),
}

impl core::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Rejected { code, message, .. } => write!(f, "refused ({code:?}): {message}"),
            Self::AuthFailed(m) | Self::Protocol(m) | Self::Timeout(m) => f.write_str(m),
            Self::Frame(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

#[cfg(test)]
mod tests;

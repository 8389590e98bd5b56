//! The crate's error type.

use rdmabus_proto::frame::FrameError;
use rdmabus_proto::handshake::{GoodbyeReason, RejectCode};
use rdmabus_proto::MessageError;

/// Everything that can go wrong, each with a message that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration the caller gave is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The peer refused the handshake.
    #[error("refused by publisher ({code:?}): {message}")]
    Rejected {
        /// Machine-readable reason.
        code: RejectCode,
        /// The publisher's explanation.
        message: String,
    },
    /// The peer broke the control protocol.
    #[error("control protocol: {0}")]
    Protocol(String),
    /// A control frame was malformed.
    #[error("control frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer could not prove it holds the pre-shared key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A message could not be serialized into, or validated in, its slot.
    #[error("message: {0}")]
    Message(#[from] MessageError),
    /// A message in the ring was corrupt; it was skipped, and the next poll goes on after it.
    #[error("corrupt message{}: {reason}", seq.map(|s| format!(" (sequence {s})")).unwrap_or_default())]
    Corrupt {
        /// The sequence from its header, when the header was readable.
        seq: Option<u64>,
        /// What was wrong.
        reason: String,
    },
    /// The publisher vanished without saying goodbye (killed, connection lost, heartbeat lost).
    #[error("publisher lost: {0}")]
    PublisherLost(String),
    /// The publisher closed this subscription in order.
    #[error("closed by publisher ({reason:?}): {message}")]
    Closed {
        /// Why it closed.
        reason: GoodbyeReason,
        /// Details.
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

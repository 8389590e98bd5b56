//! Frames on the byte stream: a bounded decoder, and sealing and opening of frames under a
//! session key with a per-direction counter.

use super::messages::ControlMsg;
use crate::auth::{frame_tag, verify_frame_tag, PROOF_LEN};
use crate::frame::{
    decode_header, encode_header_full, FrameError, FrameHeader, FLAG_SEALED, FRAME_HEADER_LEN,
    MAGIC, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// Most bytes a decoder buffers: two whole frames.
pub const MAX_BUFFERED: usize = 2 * (FRAME_HEADER_LEN + MAX_FRAME_LEN as usize);

/// One whole frame as it came off the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// Its decoded header.
    pub header: FrameHeader,
    /// Header and payload, every byte.
    pub bytes: Vec<u8>,
}

impl RawFrame {
    /// The payload (for a sealed frame: archive and tag).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[FRAME_HEADER_LEN..]
    }

    /// Decodes an unsealed frame's message.
    pub fn decode_plain(&self) -> Result<ControlMsg, FrameError> {
        if self.header.sealed() {
            return Err(FrameError::Invalid(
                "a sealed frame before the session keys exist".into(),
            ));
        }
        ControlMsg::decode(self.payload())
    }
}

/// Cuts a byte stream into frames; refuses garbage as soon as the magic is wrong, and never
/// buffers more than [`MAX_BUFFERED`] bytes.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.buf.len() + bytes.len() > MAX_BUFFERED {
            return Err(FrameError::Invalid(format!(
                "peer sent more than {MAX_BUFFERED} bytes without a whole frame being consumed"
            )));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if one is buffered. The version is returned in the header, not
    /// judged.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            let n = self.buf.len().min(4);
            if self.buf[..n] != MAGIC[..n] {
                let mut m = [0u8; 4];
                m[..n].copy_from_slice(&self.buf[..n]);
                return Err(FrameError::BadMagic(m));
            }
            return Ok(None);
        }
        let header = decode_header(self.buf[..FRAME_HEADER_LEN].try_into().unwrap())?;
        let end = FRAME_HEADER_LEN + header.len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let bytes: Vec<u8> = self.buf.drain(..end).collect();
        Ok(Some(RawFrame { header, bytes }))
    }

    /// Takes the buffered bytes (to hand them to the next stage).
    pub fn take(self) -> Vec<u8> {
        self.buf
    }
}

/// Seals frames in one direction.
pub struct Sealer {
    key: [u8; 32],
    counter: u64,
}

impl Sealer {
    /// A sealer with `key`, counting from 0.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key, counter: 0 }
    }

    /// The whole sealed frame of `msg`.
    pub fn seal(&mut self, msg: &ControlMsg) -> Vec<u8> {
        let body = msg.payload();
        let header = encode_header_full(
            (body.len() + PROOF_LEN) as u32,
            PROTOCOL_VERSION,
            FLAG_SEALED,
        );
        let tag = frame_tag(&self.key, self.counter, &header, &body);
        self.counter += 1;
        let mut out = Vec::with_capacity(header.len() + body.len() + PROOF_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        out
    }
}

/// Opens sealed frames in one direction, in order.
pub struct Opener {
    key: [u8; 32],
    counter: u64,
}

impl Opener {
    /// An opener with `key`, expecting counter 0 first.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key, counter: 0 }
    }

    /// Checks the frame's tag (it must be sealed, with the next counter) and decodes it.
    pub fn open(&mut self, frame: &RawFrame) -> Result<ControlMsg, OpenError> {
        if frame.header.version != PROTOCOL_VERSION {
            return Err(OpenError::Frame(FrameError::VersionMismatch {
                theirs: frame.header.version,
                ours: PROTOCOL_VERSION,
            }));
        }
        if !frame.header.sealed() {
            return Err(OpenError::Unsealed);
        }
        let p = frame.payload();
        if p.len() <= PROOF_LEN {
            return Err(OpenError::BadTag);
        }
        let (body, tag) = p.split_at(p.len() - PROOF_LEN);
        if !verify_frame_tag(
            &self.key,
            self.counter,
            &frame.bytes[..FRAME_HEADER_LEN],
            body,
            tag,
        ) {
            return Err(OpenError::BadTag);
        }
        self.counter += 1;
        ControlMsg::decode(body).map_err(OpenError::Frame)
    }
}

/// Why a frame that had to be sealed was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// It was not sealed.
    Unsealed,
    /// Its tag is wrong: forged, altered, replayed, reordered, or of another session.
    BadTag,
    /// Authentic but malformed, or of another version.
    Frame(FrameError),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unsealed => {
                f.write_str("an unauthenticated frame where a sealed one is required")
            }
            Self::BadTag => f.write_str(
                "a frame whose MAC does not verify (forged, altered, replayed or reordered)",
            ),
            Self::Frame(e) => write!(f, "{e}"),
        }
    }
}

//! Control-plane framing: a fixed 12-byte header (magic, protocol version, flags, length) in
//! front of each rkyv-encoded control message. The version sits outside the archive so that a
//! peer of another version is recognised before anything else is decoded. A sealed frame
//! (flag [`FLAG_SEALED`]) ends in a 32-byte MAC tag counted in the length.

/// Magic bytes that open every frame.
pub const MAGIC: [u8; 4] = *b"RDMB";
/// The control protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;
/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest frame payload accepted.
pub const MAX_FRAME_LEN: u32 = 16 * 1024;
/// Flag: the payload ends in a MAC tag under the session key.
pub const FLAG_SEALED: u16 = 1;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version of the sender.
    pub version: u16,
    /// Payload length that follows.
    pub len: u32,
    /// Flag bits ([`FLAG_SEALED`]).
    pub flags: u16,
}

impl FrameHeader {
    /// Whether the payload ends in a MAC tag.
    pub fn sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }
}

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes do not start with `MAGIC`: the peer is not an rdmabus peer.
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    VersionMismatch {
        /// The peer's version.
        theirs: u16,
        /// This build's version.
        ours: u16,
    },
    /// The frame announces more than `MAX_FRAME_LEN` bytes, or none.
    BadLength(u32),
    /// Reserved header bits are set.
    Reserved(u16),
    /// The payload is not a valid control message.
    Invalid(String),
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(m) => write!(
                f,
                "not an rdmabus peer (frame starts with {m:02x?}, expected \"RDMB\")"
            ),
            Self::VersionMismatch { theirs, ours } => {
                write!(f, "protocol version mismatch: peer speaks version {theirs}, this side speaks version {ours}")
            }
            Self::BadLength(n) => write!(f, "frame length {n} outside 1..={MAX_FRAME_LEN}"),
            Self::Reserved(bits) => write!(f, "reserved frame header bits {bits:#x} set"),
            Self::Invalid(why) => write!(f, "malformed control message: {why}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes a frame header for a payload of `len` bytes, with an explicit version and flags.
pub fn encode_header_full(len: u32, version: u16, flags: u16) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h
}

/// Encodes an unsealed frame header for a payload of `len` bytes, with an explicit version.
pub fn encode_header_with_version(len: u32, version: u16) -> [u8; FRAME_HEADER_LEN] {
    encode_header_full(len, version, 0)
}

/// Encodes a frame header for a payload of `len` bytes in this build's version.
pub fn encode_header(len: u32) -> [u8; FRAME_HEADER_LEN] {
    encode_header_with_version(len, PROTOCOL_VERSION)
}

/// Decodes and checks a frame header (magic, reserved bits, length); the version is returned,
/// not judged, so the caller can answer a peer of another version before hanging up.
pub fn decode_header(b: &[u8; FRAME_HEADER_LEN]) -> Result<FrameHeader, FrameError> {
    let magic: [u8; 4] = b[0..4].try_into().unwrap();
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    let flags = u16::from_le_bytes([b[6], b[7]]);
    if flags & !FLAG_SEALED != 0 {
        return Err(FrameError::Reserved(flags & !FLAG_SEALED));
    }
    let len = u32::from_le_bytes(b[8..12].try_into().unwrap());
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::BadLength(len));
    }
    Ok(FrameHeader {
        version,
        len,
        flags,
    })
}

impl FrameHeader {
    /// Fails unless the sender speaks this build's version.
    pub fn check_version(&self) -> Result<(), FrameError> {
        if self.version == PROTOCOL_VERSION {
            Ok(())
        } else {
            Err(FrameError::VersionMismatch {
                theirs: self.version,
                ours: PROTOCOL_VERSION,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip_and_errors() {
        let h = decode_header(&encode_header(100)).unwrap();
        assert_eq!(
            h,
            FrameHeader {
                version: PROTOCOL_VERSION,
                len: 100,
                flags: 0
            }
        );
        assert!(h.check_version().is_ok());
        let old = decode_header(&encode_header_with_version(5, 9)).unwrap();
        assert_eq!(
            old.check_version(),
            Err(FrameError::VersionMismatch {
                theirs: 9,
                ours: PROTOCOL_VERSION
            })
        );
        assert_eq!(
            decode_header(&encode_header(0)),
            Err(FrameError::BadLength(0))
        );
        assert_eq!(
            decode_header(&encode_header(MAX_FRAME_LEN + 1)),
            Err(FrameError::BadLength(MAX_FRAME_LEN + 1))
        );
        let mut g = encode_header(4);
        g[0] = b'G';
        assert!(matches!(decode_header(&g), Err(FrameError::BadMagic(_))));
        let mut r = encode_header(4);
        r[6] = 2;
        assert_eq!(decode_header(&r), Err(FrameError::Reserved(2)));
        assert!(
            decode_header(&encode_header_full(40, PROTOCOL_VERSION, FLAG_SEALED))
                .unwrap()
                .sealed()
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in any::<[u8; FRAME_HEADER_LEN]>()) {
            if let Ok(h) = decode_header(&b) {
                prop_assert!(h.len >= 1 && h.len <= MAX_FRAME_LEN);
                prop_assert_eq!(&b[0..4], &MAGIC);
            }
        }
    }
}

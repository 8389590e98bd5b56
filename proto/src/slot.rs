//! The slot header: 32 bytes stamped by the publisher in front of every message.

/// Size in bytes of [`SlotHeader`]; the payload starts right after it.
pub const HEADER_LEN: usize = core::mem::size_of::<SlotHeader>();

/// Set when `dropped_before` is non-zero: the publisher skipped this subscriber for that many
/// sequences just before this one (flow-control policy `Drop`).
pub const FLAG_DROPPED_BEFORE: u32 = 1 << 0;

/// Set when the message comes from the publisher's history (a late join or a catch-up), not
/// at the live edge.
pub const FLAG_FROM_HISTORY: u32 = 1 << 1;

/// Over shared memory, the completion itself: the publisher stores the flags word last, with
/// release, and this bit says which lap of the ring the slot was written in (set on even
/// laps, clear on odd ones, so that a zeroed ring and the previous lap read as "not yet").
/// The subscriber polls the flags word of the slot it reads next, and nothing else.
pub const FLAG_LAP: u32 = 1 << 2;

/// Byte offset of the flags word in the header (the word stored last over shm).
pub const FLAGS_OFFSET: usize = 20;

/// All flags this version understands; any other bit set means a corrupt or newer header.
pub const KNOWN_FLAGS: u32 = FLAG_DROPPED_BEFORE | FLAG_FROM_HISTORY | FLAG_LAP;

/// The [`FLAG_LAP`] value of ring position `pos` in a ring of `slots` slots (a power of two).
#[inline]
pub fn lap_flag(pos: u64, slots: u64) -> u32 {
    if (pos / slots) & 1 == 0 {
        FLAG_LAP
    } else {
        0
    }
}

/// Header at the start of every ring slot. `#[repr(C)]`, little-endian on the wire.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotHeader {
    /// Publisher-wide sequence number of the message on its topic.
    pub seq: u64,
    /// Publish time, nanoseconds since the Unix epoch (CLOCK_REALTIME), for one-way latency.
    pub publish_ns: u64,
    /// Length of the rkyv payload that follows the header.
    pub len: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
    /// Sequences the publisher dropped for this subscriber just before this one.
    pub dropped_before: u64,
}

const _: () = assert!(HEADER_LEN == 32);

/// Why a header read from a ring was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// `len` is larger than the slot can hold.
    LengthOutOfBounds {
        /// Length in the header.
        len: u32,
        /// Payload bytes the slot holds.
        capacity: usize,
    },
    /// A flag bit this version does not know.
    UnknownFlags(u32),
    /// `dropped_before` and `FLAG_DROPPED_BEFORE` disagree.
    InconsistentDropCount,
    /// The low 32 bits of `seq` differ from the completion's immediate.
    ImmediateMismatch {
        /// The completion's immediate.
        imm: u32,
        /// The header's sequence.
        seq: u64,
    },
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::LengthOutOfBounds { len, capacity } => {
                write!(f, "payload length {len} exceeds slot capacity {capacity}")
            }
            Self::UnknownFlags(bits) => write!(f, "unknown header flags {bits:#x}"),
            Self::InconsistentDropCount => write!(f, "drop count and drop flag disagree"),
            Self::ImmediateMismatch { imm, seq } => {
                write!(
                    f,
                    "completion immediate {imm:#x} does not match sequence {seq}"
                )
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// The low 32 bits of a sequence: what travels as the completion's immediate value.
pub fn imm_of(seq: u64) -> u32 {
    seq as u32
}

impl SlotHeader {
    /// Builds the header for `seq`, with the number of sequences dropped just before it.
    pub fn new(seq: u64, publish_ns: u64, len: u32, dropped_before: u64) -> Self {
        let flags = if dropped_before > 0 {
            FLAG_DROPPED_BEFORE
        } else {
            0
        };
        Self {
            seq,
            publish_ns,
            len,
            flags,
            dropped_before,
        }
    }

    /// The same header, marked as coming from the publisher's history.
    pub fn from_history(mut self) -> Self {
        self.flags |= FLAG_FROM_HISTORY;
        self
    }

    /// Encodes to the 32 wire bytes (little-endian).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.publish_ns.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.dropped_before.to_le_bytes());
        b
    }

    /// Decodes from wire bytes; `None` when fewer than [`HEADER_LEN`] bytes are given.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Some(Self {
            seq: u64_at(0),
            publish_ns: u64_at(8),
            len: u32_at(16),
            flags: u32_at(20),
            dropped_before: u64_at(24),
        })
    }

    /// Checks the header against the slot's payload capacity and the completion's immediate.
    pub fn validate(&self, capacity: usize, imm: u32) -> Result<(), HeaderError> {
        if self.len as usize > capacity {
            return Err(HeaderError::LengthOutOfBounds {
                len: self.len,
                capacity,
            });
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(self.flags & !KNOWN_FLAGS));
        }
        if (self.flags & FLAG_DROPPED_BEFORE != 0) != (self.dropped_before > 0) {
            return Err(HeaderError::InconsistentDropCount);
        }
        if imm_of(self.seq) != imm {
            return Err(HeaderError::ImmediateMismatch { imm, seq: self.seq });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validate() {
        let h = SlotHeader::new(u64::MAX - 1, 123, 40, 3);
        let back = SlotHeader::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(h, back);
        assert_eq!(back.validate(40, imm_of(u64::MAX - 1)), Ok(()));
        assert!(matches!(
            back.validate(39, imm_of(u64::MAX - 1)),
            Err(HeaderError::LengthOutOfBounds { .. })
        ));
        assert!(matches!(
            back.validate(40, 7),
            Err(HeaderError::ImmediateMismatch { .. })
        ));
        let mut bad = back;
        bad.flags |= 0x80;
        assert_eq!(
            bad.validate(40, imm_of(bad.seq)),
            Err(HeaderError::UnknownFlags(0x80))
        );
        bad.flags = 0;
        assert_eq!(
            bad.validate(40, imm_of(bad.seq)),
            Err(HeaderError::InconsistentDropCount)
        );
        assert!(SlotHeader::from_bytes(&[0u8; 31]).is_none());
    }
}

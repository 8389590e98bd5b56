//! Serialize-in-place into a slot and validated access, both without heap allocation.
//!
//! Serialization uses rkyv's low-level API with a writer over the slot's bytes and a fixed
//! scratch arena on the stack; access uses the low-level validator, which needs no hash map.

use core::{cell::Cell, mem::MaybeUninit};
use rkyv::{
    api::low::{LowSerializer, LowValidator},
    bytecheck::CheckBytes,
    rancor,
    ser::{allocator::SubAllocator, Positional, Writer},
    Archive, Portable, Serialize,
};

/// Bytes of stack scratch space serialization may use (for types that need it).
pub const SCRATCH_LEN: usize = 4096;

/// The serializer messages are written with.
pub type SlotSerializer<'a> = LowSerializer<SlotWriter<'a>, SubAllocator<'a>, rancor::Error>;

/// Any rkyv type that can travel on the bus: serializable in place, and validatable on access.
pub trait Message:
    Archive<Archived: Portable + for<'a> CheckBytes<LowValidator<'a, rancor::Error>>>
    + for<'a> Serialize<SlotSerializer<'a>>
{
}

impl<T> Message for T where
    T: Archive<Archived: Portable + for<'a> CheckBytes<LowValidator<'a, rancor::Error>>>
        + for<'a> Serialize<SlotSerializer<'a>>
{
}

/// Why a message could not be written or read.
#[derive(Debug)]
pub enum MessageError {
    /// The serialized message does not fit the slot.
    TooLarge {
        /// Bytes the slot's payload can hold.
        capacity: usize,
    },
    /// Serialization failed for another reason.
    Encode(rancor::Error),
    /// Validation of the archived bytes failed: the bytes are not a valid archive of the type.
    Invalid(rancor::Error),
}

impl core::fmt::Display for MessageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLarge { capacity } => {
                write!(f, "message does not fit the {capacity}-byte slot payload")
            }
            Self::Encode(e) => write!(f, "serialization failed: {e}"),
            Self::Invalid(e) => write!(f, "invalid archived message: {e}"),
        }
    }
}

impl std::error::Error for MessageError {}

#[derive(Debug)]
struct Overflow;

impl core::fmt::Display for Overflow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("slot overflow")
    }
}

impl std::error::Error for Overflow {}

/// An rkyv writer over a fixed byte slice that remembers whether it overflowed.
pub struct SlotWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflowed: &'a Cell<bool>,
}

impl<'a> SlotWriter<'a> {
    /// A writer that fills `buf` from its start and sets `overflowed` if it runs out of room.
    pub fn new(buf: &'a mut [u8], overflowed: &'a Cell<bool>) -> Self {
        Self {
            buf,
            pos: 0,
            overflowed,
        }
    }
}

impl Positional for SlotWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl Writer<rancor::Error> for SlotWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), rancor::Error> {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => {
                self.overflowed.set(true);
                Err(<rancor::Error as rancor::Source>::new(Overflow))
            }
        }
    }
}

/// Serializes `value` at the start of `buf`; returns the number of bytes written.
pub fn encode_into<T: Message>(value: &T, buf: &mut [u8]) -> Result<usize, MessageError> {
    let capacity = buf.len();
    let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH_LEN];
    let overflowed = Cell::new(false);
    let result = rkyv::api::low::to_bytes_in_with_alloc::<_, _, rancor::Error>(
        value,
        SlotWriter::new(buf, &overflowed),
        SubAllocator::new(&mut scratch),
    );
    match result {
        Ok(writer) => Ok(writer.pos),
        Err(_) if overflowed.get() => Err(MessageError::TooLarge { capacity }),
        Err(e) => Err(MessageError::Encode(e)),
    }
}

/// Validates `bytes` as an archived `T` and returns a reference into them.
pub fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archived, MessageError> {
    rkyv::api::low::access::<T::Archived, rancor::Error>(bytes).map_err(MessageError::Invalid)
}

/// Returns a reference to the archived `T` in `bytes` without validating it.
///
/// # Safety
/// `bytes` must hold a valid archive of `T` written by [`encode_into`] (a trusted publisher),
/// aligned as `T::Archived` requires.
pub unsafe fn access_unchecked<T: Message>(bytes: &[u8]) -> &T::Archived {
    // SAFETY: forwarded to the caller, see above.
    unsafe { rkyv::api::access_unchecked::<T::Archived>(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{BookUpdate, Quote, Trade};

    #[repr(align(64))]
    struct Aligned([u8; 2048]);

    #[test]
    fn roundtrip_market_types() {
        let mut buf = Aligned([0; 2048]);
        for seq in [0u64, 1, 99, u64::MAX] {
            let n = encode_into(&Quote::synthetic(seq), &mut buf.0).unwrap();
            assert!(Quote::synthetic_matches(
                access::<Quote>(&buf.0[..n]).unwrap(),
                seq
            ));
            let n = encode_into(&Trade::synthetic(seq), &mut buf.0).unwrap();
            assert!(Trade::synthetic_matches(
                access::<Trade>(&buf.0[..n]).unwrap(),
                seq
            ));
            let n = encode_into(&BookUpdate::synthetic(seq), &mut buf.0).unwrap();
            assert!(BookUpdate::synthetic_matches(
                access::<BookUpdate>(&buf.0[..n]).unwrap(),
                seq
            ));
        }
    }

    #[test]
    fn too_large_is_reported() {
        let mut buf = Aligned([0; 2048]);
        let err = encode_into(&BookUpdate::synthetic(3), &mut buf.0[..64]).unwrap_err();
        assert!(
            matches!(err, MessageError::TooLarge { capacity: 64 }),
            "{err}"
        );
    }

    #[test]
    fn corrupted_bytes_are_rejected() {
        let mut buf = Aligned([0; 2048]);
        let n = encode_into(&BookUpdate::synthetic(5), &mut buf.0).unwrap();
        // The root (32 bytes) ends the archive; `bids` (relative pointer + length) is at 16..24
        // of it. Point it out of the buffer.
        for b in &mut buf.0[n - 16..n - 8] {
            *b = 0x7f;
        }
        let err = access::<BookUpdate>(&buf.0[..n]).unwrap_err();
        assert!(matches!(err, MessageError::Invalid(_)), "{err}");
        // A truncated archive is rejected too.
        assert!(access::<Quote>(&buf.0[..8]).is_err());
    }
}

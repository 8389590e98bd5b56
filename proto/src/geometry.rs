//! Ring geometry: a power-of-two number of fixed-size slots, and the index math over it.

use crate::slot::HEADER_LEN;

/// Slot sizes are multiples of this (a cache line), so every slot and payload is aligned.
pub const SLOT_ALIGN: u32 = 64;
/// Fewest slots a ring may have.
pub const MIN_SLOTS: u32 = 2;
/// Most slots a ring may have.
pub const MAX_SLOTS: u32 = 1 << 20;
/// Smallest slot: a header and 32 bytes of payload.
pub const MIN_SLOT_SIZE: u32 = SLOT_ALIGN;
/// Largest slot (header included).
pub const MAX_SLOT_SIZE: u32 = 1 << 20;
/// Largest ring, in bytes.
pub const MAX_RING_BYTES: u64 = 1 << 30;

/// Why a geometry was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// Slot count not a power of two or outside `MIN_SLOTS..=MAX_SLOTS`.
    BadSlotCount(u32),
    /// Slot size not a multiple of `SLOT_ALIGN` or outside `MIN_SLOT_SIZE..=MAX_SLOT_SIZE`.
    BadSlotSize(u32),
    /// `slots × slot_size` above `MAX_RING_BYTES`.
    TooLarge(u64),
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadSlotCount(n) => write!(
                f,
                "slot count {n} must be a power of two between {MIN_SLOTS} and {MAX_SLOTS}"
            ),
            Self::BadSlotSize(n) => write!(
                f,
                "slot size {n} must be a multiple of {SLOT_ALIGN} between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE}"
            ),
            Self::TooLarge(n) => write!(f, "ring of {n} bytes exceeds the {MAX_RING_BYTES}-byte limit"),
        }
    }
}

impl std::error::Error for GeometryError {}

/// A validated ring geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    slots: u32,
    slot_size: u32,
}

impl RingGeometry {
    /// Validates `slots` (power of two) and `slot_size` (header included, multiple of 64).
    pub fn new(slots: u32, slot_size: u32) -> Result<Self, GeometryError> {
        if !slots.is_power_of_two() || !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
            return Err(GeometryError::BadSlotCount(slots));
        }
        if !slot_size.is_multiple_of(SLOT_ALIGN)
            || !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot_size)
        {
            return Err(GeometryError::BadSlotSize(slot_size));
        }
        let bytes = slots as u64 * slot_size as u64;
        if bytes > MAX_RING_BYTES {
            return Err(GeometryError::TooLarge(bytes));
        }
        Ok(Self { slots, slot_size })
    }

    /// The smallest slot size (rounded up to 64) that holds `max_payload` bytes after the header.
    pub fn slot_size_for_payload(max_payload: usize) -> Result<u32, GeometryError> {
        let need = max_payload.saturating_add(HEADER_LEN);
        let rounded = need
            .div_ceil(SLOT_ALIGN as usize)
            .saturating_mul(SLOT_ALIGN as usize);
        let size = u32::try_from(rounded).map_err(|_| GeometryError::BadSlotSize(u32::MAX))?;
        if size > MAX_SLOT_SIZE {
            return Err(GeometryError::BadSlotSize(size));
        }
        Ok(size.max(MIN_SLOT_SIZE))
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Bytes per slot, header included.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Bytes a payload may take in one slot.
    pub fn payload_capacity(&self) -> usize {
        self.slot_size as usize - HEADER_LEN
    }

    /// Total bytes of the ring.
    pub fn ring_bytes(&self) -> usize {
        self.slots as usize * self.slot_size as usize
    }

    /// Slot index of a free-running position (wraps at any `u64`).
    pub fn index(&self, pos: u64) -> u32 {
        (pos & (self.slots as u64 - 1)) as u32
    }

    /// Byte offset of slot `index` in the ring.
    pub fn offset_of_index(&self, index: u32) -> usize {
        index as usize * self.slot_size as usize
    }

    /// Byte offset of the slot a free-running position maps to.
    pub fn offset(&self, pos: u64) -> usize {
        self.offset_of_index(self.index(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds() {
        assert!(RingGeometry::new(8, 64).is_ok());
        assert_eq!(
            RingGeometry::new(6, 64),
            Err(GeometryError::BadSlotCount(6))
        );
        assert_eq!(
            RingGeometry::new(1, 64),
            Err(GeometryError::BadSlotCount(1))
        );
        assert_eq!(
            RingGeometry::new(0, 64),
            Err(GeometryError::BadSlotCount(0))
        );
        assert_eq!(
            RingGeometry::new(8, 100),
            Err(GeometryError::BadSlotSize(100))
        );
        assert_eq!(RingGeometry::new(8, 0), Err(GeometryError::BadSlotSize(0)));
        assert!(matches!(
            RingGeometry::new(1 << 20, 1 << 20),
            Err(GeometryError::TooLarge(_))
        ));
        assert_eq!(RingGeometry::slot_size_for_payload(0), Ok(64));
        assert_eq!(RingGeometry::slot_size_for_payload(32), Ok(64));
        assert_eq!(RingGeometry::slot_size_for_payload(33), Ok(128));
        assert!(RingGeometry::slot_size_for_payload(usize::MAX).is_err());
    }

    proptest! {
        #[test]
        fn index_math(shift in 1u32..=16, size_units in 1u32..=64, pos in any::<u64>(), k in 0u64..1000) {
            let g = RingGeometry::new(1 << shift, size_units * SLOT_ALIGN).unwrap();
            let idx = g.index(pos);
            prop_assert!(idx < g.slots());
            // Positions one ring apart share a slot, also across the u64 wrap.
            prop_assert_eq!(idx, g.index(pos.wrapping_add(g.slots() as u64 * k)));
            // Consecutive positions take consecutive slots modulo the ring.
            prop_assert_eq!(g.index(pos.wrapping_add(1)), (idx + 1) % g.slots());
            let off = g.offset(pos);
            prop_assert_eq!(off % SLOT_ALIGN as usize, 0);
            prop_assert!(off + g.slot_size() as usize <= g.ring_bytes());
        }

        #[test]
        fn payload_fits(max_payload in 0usize..(1 << 20) - 32) {
            let size = RingGeometry::slot_size_for_payload(max_payload).unwrap();
            let g = RingGeometry::new(2, size).unwrap();
            prop_assert!(g.payload_capacity() >= max_payload);
            prop_assert!(g.payload_capacity() < max_payload + SLOT_ALIGN as usize || size == MIN_SLOT_SIZE);
        }
    }
}

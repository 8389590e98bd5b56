//! The subscriber's end of a shared-memory subscription.

use super::ShmRegion;
use crate::transport::LocalRing;
use crate::Error;
use rdmabus_proto::slot::{imm_of, lap_flag, FLAGS_OFFSET, FLAG_LAP, HEADER_LEN};
use rdmabus_proto::RingGeometry;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// The subscriber's ring, and (after `Welcome`) the publisher's credit word.
pub struct ShmLocalRing {
    ring: ShmRegion,
    credit: Option<ShmRegion>,
    credit_offset: usize,
    geometry: RingGeometry,
    /// The ring position read next (its slot's flags word is polled).
    next: u64,
    /// Whether the last message took exactly two cache lines (header and payload), so that
    /// the next one's second line is worth prefetching while waiting.
    two_lines: bool,
}

impl ShmLocalRing {
    /// Creates the ring as a sealed memfd, to pass with [`Self::fds`]. (No completion queue:
    /// the slot's flags word, written last, is the completion.)
    pub fn create_sealed(geometry: RingGeometry) -> Result<Self, Error> {
        let ring = ShmRegion::memfd("ring", geometry.ring_bytes())?;
        Ok(Self {
            ring,
            credit: None,
            credit_offset: 0,
            geometry,
            next: 0,
            two_lines: false,
        })
    }

    /// The ring's descriptor, for the publisher.
    pub fn fds(&self) -> [BorrowedFd<'_>; 1] {
        [self.ring.fd()]
    }

    /// Maps the publisher's credit memfd (checked by [`ShmRegion::from_peer_fd`]) and stores
    /// `start` into its word at `offset`.
    pub fn attach_credit_fd(&mut self, fd: OwnedFd, offset: u64, start: u64) -> Result<(), Error> {
        let credit = ShmRegion::from_peer_fd(fd, super::link::CREDIT_FILE_LEN, "credit word")?;
        self.set_credit(credit, offset, start)
    }

    fn set_credit(&mut self, credit: ShmRegion, offset: u64, start: u64) -> Result<(), Error> {
        let offset = usize::try_from(offset)
            .map_err(|_| Error::Protocol("credit offset out of range".into()))?;
        if offset % 8 != 0 || offset.checked_add(8).is_none_or(|end| end > credit.len()) {
            return Err(Error::Protocol(format!(
                "credit offset {offset} outside the credit word's memfd"
            )));
        }
        credit.atomic_u64(offset).store(start, Ordering::Release);
        self.credit = Some(credit);
        self.credit_offset = offset;
        Ok(())
    }
}

impl ShmLocalRing {
    /// Writes `consumed` into the publisher's credit word, as the subscriber does every
    /// quarter ring (for tests that play a subscriber by hand).
    #[doc(hidden)]
    pub fn write_credit(&mut self, consumed: u64) {
        let _ = LocalRing::return_credit(self, consumed);
    }
}

impl LocalRing for ShmLocalRing {
    #[inline]
    fn poll(&mut self) -> Result<Option<u32>, Error> {
        // The completion is the flags word of the slot read next: written last, with release,
        // carrying that position's lap bit.
        let slots = self.geometry.slots() as u64;
        let slot = self.slot_ptr(self.geometry.index(self.next));
        // SAFETY: the flags word lies inside the slot (HEADER_LEN < slot size), 4-aligned (a
        // 64-aligned slot plus 20); the ring mapping lives as long as self. The real publisher
        // only ever stores this word atomically; whatever a rogue one does to it can only make
        // this load see another value, which the header's validation then judges.
        let flags =
            unsafe { (*(slot.add(FLAGS_OFFSET) as *const AtomicU32)).load(Ordering::Acquire) };
        if flags & FLAG_LAP != lap_flag(self.next, slots) {
            // When messages take two cache lines (the header's, then the rest), the next one's
            // second line is asked for again while the subscriber waits, so that it travels
            // while the publisher finishes the first instead of after it (64 B ping-pong p50
            // 245-259 -> 195-215 ns); for longer messages it was measured worse.
            #[cfg(target_arch = "x86_64")]
            if self.two_lines {
                // SAFETY: a prefetch is a hint that reads nothing into Rust's view and cannot
                // fault; `two_lines` is set only for slots over 64 bytes, so the address is
                // inside this slot, inside the ring mapping.
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                        slot.add(64) as *const i8,
                    )
                };
            }
            return Ok(None);
        }
        self.next = self.next.wrapping_add(1);
        // SAFETY: the sequence word is the slot's first 8 bytes, 8-aligned, inside the mapping;
        // a raw read of memory the publisher may write (see above), never a reference.
        let seq = unsafe { std::ptr::read_volatile(slot as *const u64) };
        // SAFETY: the length word is at offset 16, 4-aligned, inside the header (as above); a
        // rogue value only changes a prefetch hint.
        let len = unsafe { std::ptr::read_volatile(slot.add(16) as *const u32) };
        let total = HEADER_LEN as u64 + u32::from_le(len) as u64;
        self.two_lines = total > 64 && total <= 128 && self.geometry.slot_size() > 64;
        Ok(Some(imm_of(u64::from_le(seq))))
    }

    #[inline]
    fn slot_ptr(&self, index: u32) -> *const u8 {
        let offset = self.geometry.offset(index as u64);
        // SAFETY: offset + slot_size lies inside the ring mapping (sized from the geometry), so
        // the result stays inside that one mapping. No reference is made: the publisher's
        // process can write the slot at any time.
        unsafe { self.ring.as_ptr().add(offset) }
    }

    #[inline]
    fn return_credit(&mut self, consumed: u64) -> Result<(), Error> {
        if let Some(c) = &self.credit {
            c.atomic_u64(self.credit_offset)
                .store(consumed, Ordering::Release);
        }
        Ok(())
    }
}

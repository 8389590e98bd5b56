//! The publisher's end of a shared-memory subscription.

use super::ShmRegion;
use crate::transport::RemoteRing;
use crate::Error;
use rdmabus_proto::slot::{lap_flag, FLAGS_OFFSET, HEADER_LEN};
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes of the publisher's credit memfd: one cache line holding the consumed position.
pub const CREDIT_FILE_LEN: usize = 64;

/// Writes into a subscriber's mapped ring; reads its credit word.
pub struct ShmRemoteRing {
    ring: ShmRegion,
    credit: ShmRegion,
    geometry: RingGeometry,
}

impl ShmRemoteRing {
    /// Maps the subscriber's ring memfd (checked by
    /// [`ShmRegion::from_peer_fd`]: regular, on tmpfs, exact size, sealed against shrinking and
    /// growing, then against hole punching, and without holes), with this link's credit word made beforehand by
    /// `ShmRegion::memfd("credit", CREDIT_FILE_LEN)`: the fd exchange sends that reply (the
    /// credit descriptor) as the subscriber's descriptors arrive.
    pub fn from_fds_with_credit(
        ring: OwnedFd,
        credit: ShmRegion,
        geometry: RingGeometry,
    ) -> Result<Self, Error> {
        if credit.len() != CREDIT_FILE_LEN {
            return Err(Error::Config(format!(
                "credit region is {} bytes, expected {CREDIT_FILE_LEN}",
                credit.len()
            )));
        }
        let ring = ShmRegion::from_peer_fd(ring, geometry.ring_bytes(), "ring")?;
        Ok(Self {
            ring,
            credit,
            geometry,
        })
    }

    /// The credit memfd's descriptor, to pass to the subscriber.
    pub fn credit_fd(&self) -> BorrowedFd<'_> {
        self.credit.fd()
    }
}

impl RemoteRing for ShmRemoteRing {
    #[inline]
    fn write(
        &mut self,
        pos: u64,
        header: &SlotHeader,
        payload: &[u8],
        imm: u32,
    ) -> Result<(), Error> {
        let _ = imm; // over shm the completion is the slot's flags word
        let offset = self.geometry.offset(pos);
        let flags = header.flags | lap_flag(pos, self.geometry.slots() as u64);
        debug_assert!(payload.len() <= self.geometry.payload_capacity());
        let len = payload.len().min(self.geometry.payload_capacity());
        let header = header.to_bytes();
        // SAFETY: index < slots (from RingGeometry::index), so offset + slot_size lies inside
        // the ring mapping, whose length was checked (a sealed memfd cannot shrink under it,
        // and no hole can be punched into it: every page stays there);
        // the payload is clamped to the slot; the pointer has write provenance (MmapRaw).
        // Credit guarantees the subscriber has released this slot, so it is not reading it;
        // if it misbehaves, it only garbles its own copy.
        // The flags word goes last, with release: it is the completion the subscriber polls.
        unsafe {
            let dst = self.ring.as_mut_ptr().add(offset);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(HEADER_LEN), len);
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, FLAGS_OFFSET);
            std::ptr::copy_nonoverlapping(
                header.as_ptr().add(FLAGS_OFFSET + 4),
                dst.add(FLAGS_OFFSET + 4),
                HEADER_LEN - FLAGS_OFFSET - 4,
            );
            (*(dst.add(FLAGS_OFFSET) as *const AtomicU32)).store(flags, Ordering::Release);
        }
        Ok(())
    }

    #[inline]
    fn consumed(&self) -> u64 {
        self.credit.atomic_u64(0).load(Ordering::Acquire)
    }
}

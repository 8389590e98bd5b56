//! The publisher's end of a shared-memory subscription.

use super::{CompletionQueue, ShmRegion};
use crate::transport::RemoteRing;
use crate::Error;
use rdmabus_proto::slot::HEADER_LEN;
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::path::Path;
use std::sync::atomic::Ordering;

/// Bytes of the publisher's credit file: one cache line holding the consumed position.
pub const CREDIT_FILE_LEN: usize = 64;

/// Writes into a subscriber's mapped ring and completion queue; reads its credit word.
pub struct ShmRemoteRing {
    ring: ShmRegion,
    cq: CompletionQueue,
    credit: ShmRegion,
    geometry: RingGeometry,
}

impl ShmRemoteRing {
    /// Maps the subscriber's ring and queue, and creates this link's credit file.
    pub fn open(ring_path: &Path, cq_path: &Path, geometry: RingGeometry) -> Result<Self, Error> {
        let ring = ShmRegion::open(ring_path, geometry.ring_bytes())?;
        let cq = CompletionQueue::open(cq_path, geometry.slots())?;
        let credit = ShmRegion::create("credit", CREDIT_FILE_LEN)?;
        Ok(Self {
            ring,
            cq,
            credit,
            geometry,
        })
    }

    /// Path of the credit file to announce in `Welcome`.
    pub fn credit_path(&self) -> String {
        self.credit.path_str()
    }

    /// Removes the credit file's name once the subscriber mapped it.
    pub fn unlink_credit(&mut self) {
        self.credit.unlink();
    }
}

impl RemoteRing for ShmRemoteRing {
    #[inline]
    fn write(
        &mut self,
        index: u32,
        header: &SlotHeader,
        payload: &[u8],
        imm: u32,
    ) -> Result<(), Error> {
        let offset = self.geometry.offset_of_index(index);
        debug_assert!(payload.len() <= self.geometry.payload_capacity());
        let len = payload.len().min(self.geometry.payload_capacity());
        let header = header.to_bytes();
        // SAFETY: index < slots (from RingGeometry::index), so offset + slot_size lies inside
        // the ring mapping, whose length `open` checked; the payload is clamped to the slot.
        // Credit guarantees the subscriber has released this slot, so it is not reading it.
        unsafe {
            let dst = self.ring.as_ptr().add(offset);
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, HEADER_LEN);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(HEADER_LEN), len);
        }
        self.cq.push(imm);
        Ok(())
    }

    #[inline]
    fn consumed(&self) -> u64 {
        self.credit.atomic_u64(0).load(Ordering::Acquire)
    }

    fn established(&mut self) {
        self.unlink_credit();
    }
}

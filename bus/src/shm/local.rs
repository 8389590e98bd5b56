//! The subscriber's end of a shared-memory subscription.

use super::{CompletionQueue, ShmRegion};
use crate::transport::LocalRing;
use crate::Error;
use rdmabus_proto::RingGeometry;
use std::path::Path;
use std::sync::atomic::Ordering;

/// The subscriber's ring and completion queue, and (after `Welcome`) the publisher's credit word.
pub struct ShmLocalRing {
    ring: ShmRegion,
    cq: CompletionQueue,
    credit: Option<ShmRegion>,
    credit_offset: usize,
    geometry: RingGeometry,
}

impl ShmLocalRing {
    /// Creates the ring and completion queue files.
    pub fn create(geometry: RingGeometry) -> Result<Self, Error> {
        let ring = ShmRegion::create("ring", geometry.ring_bytes())?;
        let cq = CompletionQueue::create(geometry.slots())?;
        Ok(Self {
            ring,
            cq,
            credit: None,
            credit_offset: 0,
            geometry,
        })
    }

    /// Paths of the ring and queue files, for `Auth`.
    pub fn paths(&self) -> (String, String) {
        (self.ring.path_str(), self.cq.region().path_str())
    }

    /// Maps the publisher's credit file, and unlinks our files (both sides have them now).
    pub fn attach_credit(&mut self, path: &Path, offset: u64, start: u64) -> Result<(), Error> {
        let credit = ShmRegion::open(path, super::link::CREDIT_FILE_LEN)?;
        let offset = usize::try_from(offset)
            .map_err(|_| Error::Protocol("credit offset out of range".into()))?;
        if offset % 8 != 0 || offset + 8 > credit.len() {
            return Err(Error::Protocol(format!(
                "credit offset {offset} outside the credit file"
            )));
        }
        credit.atomic_u64(offset).store(start, Ordering::Release);
        self.credit = Some(credit);
        self.credit_offset = offset;
        self.ring.unlink();
        self.cq.region_mut().unlink();
        Ok(())
    }
}

impl LocalRing for ShmLocalRing {
    #[inline]
    fn poll(&mut self) -> Result<Option<u32>, Error> {
        self.cq.pop()
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

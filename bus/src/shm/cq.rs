//! The completion queue in shared memory: a single-producer single-consumer ring of 32-bit
//! immediates, in a sealed memfd the subscriber creates and passes to the publisher. Layout: producer tail (own cache line), consumer head (own cache line), then
//! `capacity` entries of `u32`.

use super::ShmRegion;
use crate::Error;
use std::sync::atomic::{AtomicU32, Ordering};

const TAIL: usize = 0;
const HEAD: usize = 64;
const ENTRIES: usize = 128;

fn check_capacity(capacity: u32) -> Result<(), Error> {
    if capacity.is_power_of_two() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "completion queue capacity {capacity} is not a power of two"
        )))
    }
}

/// One side of a shared completion queue.
pub struct CompletionQueue {
    region: ShmRegion,
    capacity: u64,
    /// Producer: next tail; consumer: next head. Kept locally to avoid reading our own word.
    local: u64,
}

impl CompletionQueue {
    /// Bytes a queue of `capacity` entries takes.
    pub fn bytes_for(capacity: u32) -> usize {
        ENTRIES + 4 * capacity as usize
    }

    /// Creates a queue of `capacity` (power of two) entries in a sealed memfd: the
    /// subscriber's side.
    pub fn create_sealed(capacity: u32) -> Result<Self, Error> {
        check_capacity(capacity)?;
        let region = ShmRegion::memfd("cq", Self::bytes_for(capacity))?;
        Ok(Self {
            region,
            capacity: capacity as u64,
            local: 0,
        })
    }

    /// Maps the queue memfd the subscriber passed (checked by [`ShmRegion::from_peer_fd`]):
    /// the publisher's side.
    pub fn from_fd(fd: std::os::fd::OwnedFd, capacity: u32) -> Result<Self, Error> {
        check_capacity(capacity)?;
        let region = ShmRegion::from_peer_fd(fd, Self::bytes_for(capacity), "completion queue")?;
        let local = region.atomic_u64(TAIL).load(Ordering::Acquire);
        Ok(Self {
            region,
            capacity: capacity as u64,
            local,
        })
    }

    /// The backing memfd.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    fn entry(&self, pos: u64) -> &AtomicU32 {
        let idx = (pos & (self.capacity - 1)) as usize;
        // SAFETY: idx < capacity, so the entry lies inside the mapping that `bytes_for` sized;
        // 4-aligned because ENTRIES is; the pointer has write provenance (MmapRaw) and every
        // access to entries, from either process, is atomic.
        unsafe { &*(self.region.as_mut_ptr().add(ENTRIES + 4 * idx) as *const AtomicU32) }
    }

    /// Producer: appends `imm`. The caller guarantees room (credit bounds outstanding entries).
    #[inline]
    pub fn push(&mut self, imm: u32) {
        self.entry(self.local).store(imm, Ordering::Relaxed);
        self.local = self.local.wrapping_add(1);
        // Release: the slot bytes and the entry are visible before the new tail.
        self.region
            .atomic_u64(TAIL)
            .store(self.local, Ordering::Release);
    }

    /// Consumer: takes the next immediate, if the producer posted one.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<u32>, Error> {
        let tail = self.region.atomic_u64(TAIL).load(Ordering::Acquire);
        if tail == self.local {
            return Ok(None);
        }
        if tail.wrapping_sub(self.local) > self.capacity {
            return Err(Error::Corrupt {
                seq: None,
                reason: format!(
                    "completion queue overrun: tail {tail}, head {}, capacity {}",
                    self.local, self.capacity
                ),
            });
        }
        let imm = self.entry(self.local).load(Ordering::Relaxed);
        self.local = self.local.wrapping_add(1);
        self.region
            .atomic_u64(HEAD)
            .store(self.local, Ordering::Relaxed);
        Ok(Some(imm))
    }
}

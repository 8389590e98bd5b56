//! The transport abstraction: the same semantics (a remote write into a subscriber's ring,
//! then a completion carrying an immediate that the subscriber polls, and a credit word written
//! back) over shared memory now, and over RDMA verbs in the same shape.

use crate::Error;
use rdmabus_proto::SlotHeader;

/// Which transport carries a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Shared memory files under /dev/shm: processes on one machine.
    #[default]
    Shm,
    /// RDMA verbs (RoCE, InfiniBand, Soft-RoCE).
    Verbs,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shm" => Ok(Self::Shm),
            "verbs" => Ok(Self::Verbs),
            _ => Err(format!("unknown transport {s:?}: use shm or verbs")),
        }
    }
}

/// The publisher's end of one subscriber: writes into that subscriber's ring.
pub trait RemoteRing: Send {
    /// Writes `header` and `payload` into the slot of ring position `pos` of the subscriber's
    /// ring, then completes it (over shm: the header's flags word with the position's lap
    /// bit, stored last; over verbs: a completion carrying `imm`). Must not allocate.
    fn write(
        &mut self,
        pos: u64,
        header: &SlotHeader,
        payload: &[u8],
        imm: u32,
    ) -> Result<(), Error>;

    /// The consumed position the subscriber last wrote into this link's credit word.
    fn consumed(&self) -> u64;

    /// Whether the transport has a queue of its own that can fill up (over verbs: the send
    /// queue); only then does the publisher ask [`has_room`](Self::has_room).
    fn bounded_queue(&self) -> bool {
        false
    }

    /// Whether the transport can take a write now, besides the ring's credit (over verbs:
    /// room in the send queue). The publisher treats `false` as "no credit". Must not
    /// allocate or block.
    fn has_room(&mut self) -> Result<bool, Error> {
        Ok(true)
    }

    /// Waits, until `deadline` at most, for every write made so far to have landed in the
    /// subscriber's ring (over verbs: completed by the NIC). Transports that copy
    /// synchronously have nothing to wait for.
    fn flush(&mut self, deadline: std::time::Instant) -> Result<(), Error> {
        let _ = deadline;
        Ok(())
    }

    /// Waits until no posted write still reads staging slot `staging_slot`, so it can be
    /// reused. Transports that copy synchronously have nothing to wait for.
    fn reclaim(&mut self, staging_slot: u32) -> Result<(), Error> {
        let _ = staging_slot;
        Ok(())
    }

    /// From here until [`end_batch`](Self::end_batch), writes may be held and posted
    /// together, with one doorbell (over verbs: one chained work-request list); their order
    /// is kept. Transports that copy synchronously write at once.
    fn begin_batch(&mut self) {}

    /// Posts the writes held so far, staying in the batch (for a publisher about to wait
    /// for credit: the subscriber returns it only for writes it got). Must not allocate.
    fn post_held(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Posts the writes held and ends the batch. Must not allocate.
    fn end_batch(&mut self) -> Result<(), Error> {
        self.post_held()
    }

    /// Called once the subscriber confirmed it is attached (its first heartbeat).
    fn established(&mut self) {}
}

/// The subscriber's end: its ring, how it learns of completions, and its credit writer.
pub trait LocalRing: Send {
    /// The next completion's immediate, if one arrived. Must not allocate.
    fn poll(&mut self) -> Result<Option<u32>, Error>;

    /// Start of slot `index`: `slot_size` bytes (from the ring's geometry) that stay mapped
    /// as long as `self`. A raw pointer, never a reference: the publisher (over verbs, anyone
    /// holding the ring's rkey) can write these bytes at any time, so readers copy out of them
    /// (volatile or raw-pointer copies) and treat what they read as untrusted.
    fn slot_ptr(&self, index: u32) -> *const u8;

    /// The shortest time between two credit returns made because the subscriber is idle
    /// (a return is a store over shm, one RDMA write over verbs).
    fn idle_credit_interval_ns(&self) -> u64 {
        10_000
    }

    /// Writes the consumed position back to the publisher's credit word.
    fn return_credit(&mut self, consumed: u64) -> Result<(), Error>;
}

/// Whether this build has the verbs transport (cargo feature `verbs`, on by default).
pub const VERBS: bool = cfg!(feature = "verbs");

/// The error for `Transport::Verbs` in a build without the `verbs` feature.
pub fn no_verbs() -> Error {
    Error::Config(
        "this build of rdmabus has no RDMA verbs transport (built without the `verbs` \
         feature): use --transport shm, or a build with the default features"
            .into(),
    )
}

/// The publisher's staging ring, as a transport that reads it asynchronously (verbs) registers it.
#[derive(Clone, Copy, Debug)]
pub struct Staging {
    /// Start address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// Slot size.
    pub slot_size: usize,
}

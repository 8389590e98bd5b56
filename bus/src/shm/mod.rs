//! The shared-memory transport: the subscriber's ring and completion queue, and the publisher's
//! credit word, are files under the shared-memory directory (default `/dev/shm`, or
//! `RDMABUS_SHM_DIR`) mapped into both processes. Files are unlinked once both sides have
//! mapped them, so nothing is left behind when a process dies.

mod cq;
mod link;
mod local;
mod region;

pub use cq::CompletionQueue;
pub use link::ShmRemoteRing;
pub use local::ShmLocalRing;
pub use region::{shm_dir, ShmRegion};

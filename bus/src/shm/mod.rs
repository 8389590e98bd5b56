//! The shared-memory transport: the subscriber's ring and completion queue, and the publisher's
//! credit word, are shared memory mapped into both processes: sealed memfds passed over an
//! abstract Unix socket ([`fdpass`]), or (the older path) files under the shared-memory
//! directory (default `/dev/shm`, or `RDMABUS_SHM_DIR`), unlinked once both sides have
//! mapped them, so nothing is left behind when a process dies.

mod cq;
pub mod fdpass;
mod link;
mod local;
mod region;
#[cfg(test)]
mod tests;

pub use cq::CompletionQueue;
pub use fdpass::{FdExchange, Registration};
pub use link::{ShmRemoteRing, CREDIT_FILE_LEN};
pub use local::ShmLocalRing;
pub(crate) use region::reserve;
pub use region::{shm_dir, ShmRegion};

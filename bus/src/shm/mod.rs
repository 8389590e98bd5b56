//! The shared-memory transport: the subscriber's ring and the publisher's credit word are
//! memfds mapped into both processes (no completion queue: each slot's flags word, stored last
//! with release, is its completion). Each side creates its own, reserves and
//! writes all of it (no SIGBUS on first touch) and seals it against shrinking and growing; the
//! subscriber passes its ring over the publisher's abstract Unix socket ([`fdpass`]), against
//! the ticket the publisher sent in its sealed `Accept`, and gets the credit word back in the
//! same exchange. Each side maps the peer's memfds only after checking them
//! ([`ShmRegion::from_peer_fd`]: a regular tmpfs file, of the exact size, sealed), then seals
//! them against hole punching and checks they have none ([`seal_mapped`]), so that the peer
//! can neither truncate nor punch out memory under the other's mapping; the publisher seals
//! its own credit word the same way once the subscriber has mapped it. No file is created in
//! any directory: nothing to plant, swap or leave behind when a process dies (the
//! shared-memory directory, [`shm_dir`], holds only the stats files).

pub mod fdpass;
mod link;
mod local;
mod region;
#[cfg(test)]
mod tests;

pub use fdpass::{FdExchange, Registration};
pub use link::{ShmRemoteRing, CREDIT_FILE_LEN};
pub use local::ShmLocalRing;
pub(crate) use region::reserve;
pub use region::{seal_mapped, shm_dir, ShmRegion};

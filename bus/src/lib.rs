//! rdmabus: a kernel-bypass message bus for colocated machines.
//!
//! Publishers serialize rkyv messages in place into a staging slot and write them into every
//! subscriber's ring (over shared memory, or RDMA verbs); subscribers busy-poll a completion
//! queue and read each message as `&Archived<T>`, by default from a validated copy of its slot
//! (see [`Access`] for the modes and what each guarantees).
//!
//! ```no_run
//! use rdmabus::{Node, Policy, Psk, Subscriber, Event};
//! use rdmabus_proto::market::Quote;
//!
//! # fn main() -> Result<(), rdmabus::Error> {
//! let psk = Psk::random(); // or Psk::from_file("/etc/rdmabus/psk")?
//! let node = Node::builder().bind("127.0.0.1:7400").psk(psk.clone()).start()?;
//! let mut quotes = node.publisher::<Quote>("md.quotes").policy(Policy::Block).build()?;
//!
//! let mut sub = Subscriber::<Quote>::builder(node.local_addr(), "md.quotes").psk(psk).connect()?;
//! quotes.wait_for_subscribers(1, std::time::Duration::from_secs(5))?;
//! quotes.loan()?.write(&Quote::synthetic(1))?.send()?;
//! if let Event::Message(m) = sub.recv()? {
//!     println!("seq {} bid {}", m.seq(), m.bid_px);
//! }
//! # Ok(()) }
//! ```

pub mod affinity;
pub mod clock;
pub mod control;
mod error;
mod idle;
pub mod numa;
pub mod pages;
mod policy;
mod psk;
mod publisher;
mod reconnect;
pub mod shm;
pub mod stages;
mod stats;
pub mod stats_file;
mod subscriber;
pub mod transport;
#[cfg(feature = "verbs")]
pub mod verbs;
pub mod verbs_options;

pub use control::node::{Node, NodeBuilder, NodeEvent};
pub use error::Error;
pub use idle::IdleStrategy;
pub use policy::Policy;
pub use psk::Psk;
pub use publisher::{
    Loan, Publisher, PublisherBuilder, Written, DEFAULT_BLOCK_TIMEOUT, DEFAULT_STAGING_SLOTS,
};
pub use rdmabus_proto as proto;
pub use rdmabus_proto::Message;
pub use reconnect::{Reconnect, SessionChange};
/// The rkyv this crate serializes with: derive `Archive`, `Serialize` and `Deserialize` for your
/// messages from here, so that the versions always match.
pub use rkyv;
pub use stats::{LinkEnd, PublisherStats, SubscriberInfo, SubscriberStats};
pub use subscriber::{
    Access, Event, HistoryRequest, Received, Subscriber, SubscriberBuilder, DEFAULT_SLOTS,
};
pub use transport::Transport;
pub use verbs_options::VerbsOptions;

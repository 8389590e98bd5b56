//! rdmabus wire format and protocol logic, free of I/O so it can be tested deterministically.
//!
//! - [`slot`]: the header stamped in front of every message in a ring slot.
//! - [`geometry`]: ring geometry (power-of-two slots, slot size, alignment) and index math.
//! - [`credit`]: flow-control accounting on both ends; [`credit_word`]: the verbs credit
//!   word's torn-read-proof format.
//! - [`gap`]: sequence tracking and gap detection, wrap-around safe.
//! - [`history`]: the publisher's retained messages and each subscriber's cursor into them.
//! - [`frame`], [`handshake`], [`auth`]: the control-plane messages and their validation.
//! - [`codec`]: zero-allocation serialize-in-place and validated access of rkyv messages.
//! - [`market`]: market-data message types (`Quote`, `Trade`, `BookUpdate`).

pub mod auth;
pub mod bench;
pub mod codec;
pub mod credit;
pub mod credit_word;
pub mod frame;
pub mod gap;
pub mod geometry;
pub mod handshake;
pub mod history;
pub mod market;
pub mod slot;

pub use codec::{Message, MessageError};
pub use geometry::RingGeometry;
pub use slot::SlotHeader;

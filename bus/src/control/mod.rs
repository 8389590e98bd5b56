//! The control plane: one TCP connection per subscription carrying the handshake, then
//! heartbeats and an orderly goodbye.

mod accept;
mod connect;
pub mod framed;
pub(crate) mod limits;
pub mod node;
pub(crate) mod session;

pub(crate) use connect::{connect, ConnectParams, Connected};

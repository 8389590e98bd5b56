//! Helpers for the integration tests: the suite's key, transport and address, builders for
//! them, and raw protocol peers (`raw`). The CLI's tests add process helpers (cli/tests/common).
#![allow(dead_code)]

pub mod raw;

use rdmabus::Psk;
use std::net::SocketAddr;

pub const KEY: &str =
    "rdmabus-psk-v1:0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

pub fn psk() -> Psk {
    Psk::parse(KEY).unwrap()
}

/// The transport the suite runs over: `RDMABUS_TEST_TRANSPORT` (shm by default, verbs in the
/// Soft-RoCE guest).
pub fn transport() -> rdmabus::Transport {
    std::env::var("RDMABUS_TEST_TRANSPORT")
        .ok()
        .map(|t| t.parse().expect("RDMABUS_TEST_TRANSPORT"))
        .unwrap_or_default()
}

/// The transport's name for the CLI.
pub fn transport_arg() -> &'static str {
    match transport() {
        rdmabus::Transport::Shm => "shm",
        rdmabus::Transport::Verbs => "verbs",
    }
}

/// Where test nodes listen: `RDMABUS_TEST_ADDR` (127.0.0.1 by default; over verbs an address
/// with an RDMA GID).
pub fn test_ip() -> String {
    std::env::var("RDMABUS_TEST_ADDR").unwrap_or_else(|_| "127.0.0.1".into())
}

/// A node builder listening on the test address with `key`.
/// A subscriber builder with `key` and the suite's transport (`RDMABUS_TEST_TRANSPORT`).
pub fn subscriber<T: rdmabus::Message>(
    addr: SocketAddr,
    topic: &str,
    key: Psk,
) -> rdmabus::SubscriberBuilder<T> {
    rdmabus::Subscriber::<T>::builder(addr, topic)
        .psk(key)
        .transport(transport())
}

pub fn node_builder(key: Psk) -> rdmabus::NodeBuilder {
    rdmabus::Node::builder()
        .bind(format!("{}:0", test_ip()))
        .psk(key)
}

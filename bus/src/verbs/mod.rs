//! The verbs transport: one-sided RDMA `WRITE_WITH_IMM` into the subscriber's registered ring,
//! the immediate carrying the sequence; the subscriber busy-polls its completion queue and
//! RDMA-writes its consumed position into the publisher's registered credit word.
//!
//! Device and GID discovery use the `ibverbs` crate. Everything on the data path (context, PD,
//! CQ, RC QP, memory regions over our own memory, RDMA WRITE with immediate, inline data,
//! selective signaling) goes through `rdma-sys`, because `ibverbs` 0.9 exposes neither its raw
//! handles nor those operations. Both link the system's libibverbs, so the usual providers
//! (rxe, mlx5, …) load at run time. One small file per verbs object; `unsafe` stays here.

mod context;
mod cq;
pub mod device;
pub(crate) mod link;
mod local;
mod mr;
mod pd;
mod qp;

pub use device::{choose, Choice};
pub use link::VerbsRemoteRing;
pub use local::VerbsLocalRing;

use crate::Error;

/// A verbs call failed: `what`, with errno.
pub(crate) fn os_error(what: &str) -> Error {
    Error::io(format!("verbs: {what}"), std::io::Error::last_os_error())
}

/// A verbs call that returns an errno value failed.
pub(crate) fn errno_error(what: &str, errno: i32) -> Error {
    Error::io(
        format!("verbs: {what}"),
        std::io::Error::from_raw_os_error(errno),
    )
}

/// Path MTU enum value for a byte count (the largest standard MTU not above it).
pub(crate) fn mtu_enum(bytes: u32) -> rdma_sys::ibv_mtu::Type {
    use rdma_sys::ibv_mtu::*;
    match bytes {
        4096.. => IBV_MTU_4096,
        2048.. => IBV_MTU_2048,
        1024.. => IBV_MTU_1024,
        512.. => IBV_MTU_512,
        _ => IBV_MTU_256,
    }
}

/// Bytes of a path MTU enum value.
pub(crate) fn mtu_bytes(mtu: rdma_sys::ibv_mtu::Type) -> u32 {
    128u32 << mtu.clamp(1, 5)
}

/// A random 24-bit packet sequence number.
pub(crate) fn random_psn() -> u32 {
    let mut b = [0u8; 4];
    getrandom::getrandom(&mut b).expect("OS random source");
    u32::from_le_bytes(b) & 0x00ff_ffff
}

/// Active MTU, in bytes, of port 1 of device `name`.
pub fn port_mtu(name: &str) -> Result<u32, Error> {
    let ctx = context::Context::open(name)?;
    Ok(mtu_bytes(ctx.active_mtu))
}

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

pub use context::DeviceLimits;
pub use device::{choose, Choice};
pub use link::VerbsRemoteRing;
pub use local::VerbsLocalRing;

use crate::Error;
use rdmabus_proto::RingGeometry;

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

/// The limits of device `name` (`ibv_query_device`; its port 1 must be active).
pub fn limits(name: &str) -> Result<DeviceLimits, Error> {
    Ok(context::Context::open(name, 1)?.limits)
}

/// Whether a subscriber's ring of `geometry` fits device `device` with limits `limits`: one
/// receive per slot on its QP and its completion queue, and the ring as one memory region.
/// A ring that does not fit is refused with the limit it passes, before any verbs object is
/// made (the device itself would say only `Invalid argument`).
pub fn check_geometry(
    device: &str,
    limits: &DeviceLimits,
    geometry: RingGeometry,
) -> Result<(), Error> {
    let slots = geometry.slots() as u64;
    let too_big = |what: String| {
        Err(Error::Config(format!(
            "a ring of {slots} slots of {} bytes does not fit RDMA device {device:?}: {what}; \
             use fewer slots",
            geometry.slot_size()
        )))
    };
    if slots > limits.max_qp_wr as u64 {
        return too_big(format!(
            "it takes one receive per slot, the device allows {} per queue (max_qp_wr)",
            limits.max_qp_wr
        ));
    }
    if slots + local::CQ_SPARE as u64 > limits.max_cqe as u64 {
        return too_big(format!(
            "its completion queue needs {} entries, the device allows {} (max_cqe)",
            slots + local::CQ_SPARE as u64,
            limits.max_cqe
        ));
    }
    if geometry.ring_bytes() as u64 > limits.max_mr_size {
        return too_big(format!(
            "it spans {} bytes, the device registers at most {} (max_mr_size)",
            geometry.ring_bytes(),
            limits.max_mr_size
        ));
    }
    Ok(())
}

/// Active MTU, in bytes, of port 1 of device `name`.
pub fn port_mtu(name: &str) -> Result<u32, Error> {
    port_mtu_on(name, 1)
}

/// Active MTU, in bytes, of port `port` of device `name`.
pub fn port_mtu_on(name: &str, port: u8) -> Result<u32, Error> {
    let ctx = context::Context::open(name, port)?;
    Ok(mtu_bytes(ctx.active_mtu))
}

#[cfg(test)]
mod tests {
    use super::link::Staging;
    use super::*;
    use crate::transport::{LocalRing, RemoteRing};
    use rdmabus_proto::slot::{imm_of, HEADER_LEN};
    use rdmabus_proto::{RingGeometry, SlotHeader};
    use std::time::{Duration, Instant};

    /// Over verbs only (the Soft-RoCE guest sets `RDMABUS_TEST_TRANSPORT=verbs` and
    /// `RDMABUS_TEST_ADDR`): the memory peers write into, the subscriber's ring and the
    /// publisher's credit word, is announced at address 0, and writes at offsets from 0 land
    /// where they belong (a slot's header and payload, the credit word).
    #[test]
    fn rings_and_credit_words_are_announced_zero_based() {
        if std::env::var("RDMABUS_TEST_TRANSPORT").as_deref() != Ok("verbs") {
            eprintln!("skipped: RDMABUS_TEST_TRANSPORT is not verbs");
            return;
        }
        let ip = std::env::var("RDMABUS_TEST_ADDR")
            .expect("RDMABUS_TEST_ADDR")
            .parse()
            .unwrap();
        let choice = choose(None, None, ip, &Default::default()).unwrap();
        let slot_size = 2048u32;
        let geometry = RingGeometry::new(8, slot_size).unwrap();
        let mut local = VerbsLocalRing::create(&choice, geometry).unwrap();
        let ring = local.endpoint();
        let mut staging = memmap2::MmapMut::map_anon(geometry.ring_bytes()).unwrap();
        let mut remote = VerbsRemoteRing::new(
            &choice,
            Staging {
                addr: staging.as_ptr() as usize,
                len: staging.len(),
                slot_size: slot_size as usize,
            },
            geometry,
            ring,
        )
        .unwrap();
        let credit = remote.endpoint();
        assert_eq!(
            (ring.addr, credit.addr),
            (0, 0),
            "{}: ring and credit word must be announced zero-based (a device that refuses \
             zero-based registrations logs the fallback at debug level)",
            choice.device
        );
        remote.connect().unwrap();
        local.connect(&credit).unwrap();

        // Larger than any inline size, so the payload goes by SGE from staging slot 1.
        let len = 1000;
        let at = slot_size as usize + HEADER_LEN;
        for (i, b) in staging[at..at + len].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let header = SlotHeader::new(77, 12345, len as u32, 0);
        remote
            .write(5, &header, &staging[at..at + len], imm_of(77))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let imm = loop {
            if let Some(imm) = local.poll().unwrap() {
                break imm;
            }
            assert!(Instant::now() < deadline, "no completion");
            std::thread::yield_now();
        };
        assert_eq!(imm, imm_of(77));
        let mut got = vec![0u8; HEADER_LEN + len];
        // SAFETY: slot 5 holds slot_size >= HEADER_LEN + len bytes of the live ring; nothing
        // writes it now (the only write has completed), and `got` is our own buffer.
        unsafe { std::ptr::copy_nonoverlapping(local.slot_ptr(5), got.as_mut_ptr(), got.len()) };
        assert_eq!(&got[..HEADER_LEN], &header.to_bytes()[..]);
        assert_eq!(&got[HEADER_LEN..], &staging[at..at + len]);

        local.return_credit(6).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while remote.consumed() != 6 {
            assert!(Instant::now() < deadline, "the credit word never arrived");
            std::thread::yield_now();
        }
        drop(remote);
    }
}

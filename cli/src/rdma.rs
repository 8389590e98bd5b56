//! The RDMA device queries the CLI makes, in one place: with the `verbs` feature off they
//! answer that this build has no verbs (and `--transport verbs` is refused when parsed).

use rdmabus::Error;
use std::net::Ipv4Addr;

/// Whether this machine has an RDMA device the verbs transport can use; if not, says what to
/// do (rather than the OS error of listing devices where no RDMA driver is loaded).
#[cfg(feature = "verbs")]
pub fn check_rdma() -> Result<(), Error> {
    let what = match rdmabus::verbs::device::list() {
        Ok(gids) if !gids.is_empty() => return Ok(()),
        Ok(_) => "no RDMA device found with an active port and a GID",
        Err(_) => "no RDMA device found (no RDMA driver is loaded)",
    };
    Err(Error::Config(format!(
        "{what}: load a NIC's RDMA driver, or Soft-RoCE (`modprobe rdma_rxe && rdma link add \
         rxe0 type rxe netdev eth0`, README: Soft-RoCE), or use --transport shm on one machine; \
         see `rdmabus doctor`"
    )))
}

/// This build has no verbs transport.
#[cfg(not(feature = "verbs"))]
pub fn check_rdma() -> Result<(), Error> {
    Err(rdmabus::transport::no_verbs())
}

/// The first IPv4 address with a RoCE v2 GID, as the default address over verbs.
pub fn first_ipv4() -> Result<Ipv4Addr, Error> {
    #[cfg(not(feature = "verbs"))]
    return Err(rdmabus::transport::no_verbs());
    #[cfg(feature = "verbs")]
    rdmabus::verbs::device::first_ipv4().ok_or_else(|| {
        Error::Config(
            "no RDMA device with an IPv4 RoCE v2 GID; see `rdma link` (README: Soft-RoCE)".into(),
        )
    })
}

/// The active MTU of port 1 of device `name`.
pub fn port_mtu(name: &str) -> Result<u32, String> {
    #[cfg(feature = "verbs")]
    return rdmabus::verbs::port_mtu(name).map_err(|e| e.to_string());
    #[cfg(not(feature = "verbs"))]
    return Err(format!("{name}: not read, this build has no verbs"));
}

//! Which RDMA device and GID to use for a control connection's local address.

use crate::verbs_options::VerbsOptions;
use crate::Error;
use std::net::IpAddr;

/// RoCE v2 GID type, as the kernel reports it.
const ROCE_V2: u32 = 2;

/// A device, the port and GID that carry our traffic, and how to set up the queue pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Device name (for example `rxe0`, `mlx5_0`).
    pub device: String,
    /// Port number (from 1).
    pub port: u8,
    /// GID table index.
    pub gid_index: u8,
    /// GID type: 0 IB, 1 RoCE v1, 2 RoCE v2.
    pub gid_type: u32,
    /// The GID.
    pub gid: [u8; 16],
    /// Traffic class, service level, MTU cap, timeout and retries.
    pub options: VerbsOptions,
}

/// One GID table entry of a device, for listings.
#[derive(Clone, Debug)]
pub struct GidInfo {
    /// Device name.
    pub device: String,
    /// Port number (from 1).
    pub port: u8,
    /// Table index.
    pub index: u32,
    /// The GID bytes.
    pub gid: [u8; 16],
    /// 0 IB, 1 RoCE v1, 2 RoCE v2.
    pub gid_type: u32,
}

/// The GID form of an IP address (IPv4-mapped for IPv4).
pub fn gid_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Formats a GID as an IPv6 address.
pub fn format_gid(gid: &[u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(*gid);
    match v6.to_ipv4_mapped() {
        Some(v4) => format!("::ffff:{v4}"),
        None => v6.to_string(),
    }
}

/// Every GID of every port of every device (ports that are down have none).
pub fn list() -> Result<Vec<GidInfo>, Error> {
    let devices = ibverbs::devices().map_err(|e| Error::io("verbs: listing RDMA devices", e))?;
    let mut out = Vec::new();
    for d in devices.iter() {
        let name = d
            .name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(ctx) = d.open() else { continue };
        for e in ctx.gid_table() {
            let mut gid = [0u8; 16];
            gid[..8].copy_from_slice(&e.gid.subnet_prefix().to_be_bytes());
            gid[8..].copy_from_slice(&e.gid.interface_id().to_be_bytes());
            out.push(GidInfo {
                device: name.clone(),
                port: e.port_num as u8,
                index: e.gid_index,
                gid,
                gid_type: e.gid_type,
            });
        }
    }
    Ok(out)
}

/// Picks the device, port and RoCE v2 GID for `local` (the control connection's local
/// address), unless `device`, `gid_index` and/or `options.port` say otherwise.
pub fn choose(
    device: Option<&str>,
    gid_index: Option<u8>,
    local: IpAddr,
    options: &VerbsOptions,
) -> Result<Choice, Error> {
    options.check()?;
    let gids = list()?;
    if gids.is_empty() {
        return Err(Error::Config(
            "no RDMA device with an active port (is rdma_rxe loaded and `rdma link add` done? see README)".into(),
        ));
    }
    let want = gid_of(local);
    let pick = gids.iter().find(|g| {
        device.is_none_or(|d| g.device == d)
            && options.port.is_none_or(|p| g.port == p)
            && match gid_index {
                Some(i) => g.index == i as u32,
                None => g.gid_type == ROCE_V2 && g.gid == want,
            }
    });
    match pick {
        Some(g) => Ok(Choice {
            device: g.device.clone(),
            port: g.port,
            gid_index: g.index as u8,
            gid_type: g.gid_type,
            gid: g.gid,
            options: *options,
        }),
        None => {
            let have: Vec<String> = gids
                .iter()
                .map(|g| {
                    format!(
                        "{}/{}[{}]={}",
                        g.device,
                        g.port,
                        g.index,
                        format_gid(&g.gid)
                    )
                })
                .collect();
            Err(Error::Config(format!(
                "no RDMA device has a RoCE v2 GID for {local}{}{}; GIDs (device/port[index]): {} (pass --device and --gid-index, or connect over the RDMA interface's address)",
                device.map(|d| format!(" on {d}")).unwrap_or_default(),
                options.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                have.join(", ")
            )))
        }
    }
}

/// The IPv4 address of the first RoCE v2 GID of any device (a default place to listen).
pub fn first_ipv4() -> Option<std::net::Ipv4Addr> {
    list().ok()?.into_iter().find_map(|g| {
        (g.gid_type == ROCE_V2)
            .then(|| std::net::Ipv6Addr::from(g.gid).to_ipv4_mapped())
            .flatten()
    })
}

//! What sysfs says about the RDMA devices: every port of every device, its GIDs and rate.

use super::sys::{names, read};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

/// Where the kernel lists RDMA devices.
pub const SYS_IB: &str = "/sys/class/infiniband";

/// One GID table entry in use.
#[derive(Debug, Clone)]
pub struct Gid {
    /// Table index.
    pub index: u32,
    /// The GID as an address (`::ffff:10.0.0.1`, `fe80::…`).
    pub addr: String,
    /// `RoCE v2`, `IB/RoCE v1`, or `?` when unreadable.
    pub ty: String,
    /// The netdev it belongs to (`-` for none).
    pub ndev: String,
}

impl Gid {
    /// Whether this is a RoCE v2 GID.
    pub fn is_roce_v2(&self) -> bool {
        self.ty.contains("v2")
    }
}

/// One port of a device, as sysfs shows it.
#[derive(Debug, Clone)]
pub struct Port {
    /// Port number (from 1).
    pub num: u32,
    /// `4: ACTIVE` and the like (`?` when unreadable).
    pub state: String,
    /// `5: LinkUp` and the like.
    pub phys_state: String,
    /// `Ethernet` or `InfiniBand`.
    pub link_layer: String,
    /// `100 Gb/sec (4X EDR)`, when readable.
    pub rate: Option<String>,
    /// The GIDs in use.
    pub gids: Vec<Gid>,
}

impl Port {
    /// The port's state is ACTIVE.
    pub fn active(&self) -> bool {
        self.state.contains("ACTIVE")
    }

    /// The physical link is up.
    pub fn link_up(&self) -> bool {
        self.phys_state.contains("LinkUp")
    }

    /// Ethernet link layer: RoCE.
    pub fn roce(&self) -> bool {
        self.link_layer == "Ethernet"
    }

    /// Usable by the verbs transport: active, and InfiniBand or with a RoCE v2 GID.
    pub fn usable(&self) -> bool {
        self.active() && (!self.roce() || self.gids.iter().any(Gid::is_roce_v2))
    }

    /// The netdevs its GIDs belong to, without repeats.
    pub fn netdevs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .gids
            .iter()
            .map(|g| g.ndev.clone())
            .filter(|n| n != "-" && !n.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// One RDMA device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Name (`mlx5_0`, `rxe0`).
    pub name: String,
    /// Its ports, in order.
    pub ports: Vec<Port>,
    /// Its PCI address (`0000:3b:00.0`), none for a virtual device such as Soft-RoCE.
    pub pci: Option<String>,
    /// Its netdevs: the PCI device's, Soft-RoCE's parent, and those of its GIDs.
    pub netdevs: Vec<String>,
}

impl Device {
    /// `/sys/class/infiniband/<name>`.
    pub fn dir(&self) -> PathBuf {
        Path::new(SYS_IB).join(&self.name)
    }
}

/// The GID in the sysfs form (`0000:…:ffff:0a4d:0001`) as an address; `None` for an unused one.
fn gid_addr(s: &str) -> Option<String> {
    let a: Ipv6Addr = s.parse().ok()?;
    if a.is_unspecified() {
        return None;
    }
    Some(match a.to_ipv4_mapped() {
        Some(v4) => format!("::ffff:{v4}"),
        None => a.to_string(),
    })
}

fn port(dir: &Path, num: u32) -> Port {
    let unknown = || "?".to_string();
    let gids = names(dir.join("gids"))
        .iter()
        .filter_map(|i| {
            let index: u32 = i.parse().ok()?;
            let addr = gid_addr(&read(dir.join("gids").join(i))?)?;
            Some(Gid {
                index,
                addr,
                ty: read(dir.join(format!("gid_attrs/types/{i}"))).unwrap_or_else(unknown),
                ndev: read(dir.join(format!("gid_attrs/ndevs/{i}"))).unwrap_or_else(|| "-".into()),
            })
        })
        .collect();
    Port {
        num,
        state: read(dir.join("state")).unwrap_or_else(unknown),
        phys_state: read(dir.join("phys_state")).unwrap_or_else(unknown),
        link_layer: read(dir.join("link_layer")).unwrap_or_else(unknown),
        rate: read(dir.join("rate")),
        gids,
    }
}

/// A PCI address (`0000:3b:00.0`).
fn is_pci(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
}

/// Every RDMA device sysfs lists (none when the directory is missing).
pub fn scan() -> Vec<Device> {
    names(SYS_IB)
        .into_iter()
        .map(|name| {
            let dir = Path::new(SYS_IB).join(&name);
            let ports: Vec<Port> = names(dir.join("ports"))
                .iter()
                .filter_map(|p| Some(port(&dir.join("ports").join(p), p.parse().ok()?)))
                .collect();
            let pci = std::fs::canonicalize(dir.join("device"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .filter(|f| is_pci(f));
            let mut netdevs = names(dir.join("device/net"));
            netdevs.extend(read(dir.join("parent")));
            netdevs.extend(ports.iter().flat_map(Port::netdevs));
            netdevs.sort();
            netdevs.dedup();
            Device {
                name,
                ports,
                pci,
                netdevs,
            }
        })
        .collect()
}

/// A rate line's speed in Gb/s and its width (`4X` → 4): `100 Gb/sec (4X EDR)`.
pub fn parse_rate(s: &str) -> Option<(f64, u32)> {
    let gbps = s.split_whitespace().next()?.parse::<f64>().ok()?;
    let width = s
        .split(['(', ' '])
        .find_map(|w| w.strip_suffix('X').and_then(|n| n.parse::<u32>().ok()));
    Some((gbps, width.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_read_as_addresses() {
        assert_eq!(
            gid_addr("0000:0000:0000:0000:0000:ffff:0a4d:0001").as_deref(),
            Some("::ffff:10.77.0.1")
        );
        assert_eq!(
            gid_addr("fe80:0000:0000:0000:ccb6:4dff:fe25:c5e5").as_deref(),
            Some("fe80::ccb6:4dff:fe25:c5e5")
        );
        assert_eq!(gid_addr("0000:0000:0000:0000:0000:0000:0000:0000"), None);
    }

    #[test]
    fn rates_give_speed_and_width() {
        assert_eq!(parse_rate("100 Gb/sec (4X EDR)"), Some((100.0, 4)));
        assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)"), Some((2.5, 1)));
        assert_eq!(parse_rate("25 Gb/sec"), Some((25.0, 0)));
        assert_eq!(parse_rate("?"), None);
        assert!(is_pci("0000:3b:00.0") && !is_pci("rxe0"));
    }
}

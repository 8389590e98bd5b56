//! NUMA placement of the bus's private memory (staging rings, verbs rings and the regions
//! registered with a NIC). `RDMABUS_NUMA_NODE` chooses:
//! - `auto` (the default): verbs rings (and other registered regions of 512 KiB or more) on
//!   their RDMA device's node, where the machine has more than one node and the device
//!   reports its own; nothing else is placed. Where the kernel refuses (a container's seccomp
//!   profile without `CAP_SYS_NICE`, a cpuset that excludes the node), a warning says so and
//!   the memory stays where first touch puts it.
//! - a node number: those and the staging rings on that node, which must be online, have
//!   memory and be allowed to this process; a refusal is then an error.
//! - `off`: none of it placed (the kernel's first-touch default).
//!
//! The policy is *preferred* (`MPOL_PREFERRED`): pages come from that node while it has
//! memory, from another one otherwise, so placement never turns into a fault for want of
//! memory there (a bound hugetlb mapping on an empty node would). It is set before the memory
//! is first touched. The shared-memory rings a subscriber creates (memfds) are not placed
//! here: they are allocated by the subscriber's own thread, on its node.

use crate::Error;

/// `get_mempolicy` flags (linux/mempolicy.h; libc does not export them): the node of the page
/// at the address, and the policy of the address rather than the thread's.
const MPOL_F_NODE: libc::c_ulong = 1 << 0;
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// What `RDMABUS_NUMA_NODE` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Auto,
    Off,
    Node(u32),
}

fn want() -> Result<Want, Error> {
    match std::env::var("RDMABUS_NUMA_NODE")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        None | Some("") | Some("auto") => Ok(Want::Auto),
        Some("off") => Ok(Want::Off),
        Some(n) => match n.parse::<u32>() {
            Ok(n) => Ok(Want::Node(n)),
            Err(_) => Err(Error::Config(format!(
                "RDMABUS_NUMA_NODE={:?}: use auto, off or a node number",
                n.escape_debug().to_string()
            ))),
        },
    }
}

/// Where memory is to be placed, and whether that was asked for by number (then a refusal is
/// an error) or chosen under `auto` (then it is a warning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The NUMA node.
    pub node: u32,
    /// `RDMABUS_NUMA_NODE` named it.
    pub explicit: bool,
}

/// The online NUMA nodes (`/sys/devices/system/node/online`, as "0-1,3"); `[0]` where the
/// kernel does not say.
pub fn online_nodes() -> Vec<u32> {
    node_file("online").unwrap_or_else(|| vec![0])
}

fn node_file(name: &str) -> Option<Vec<u32>> {
    std::fs::read_to_string(format!("/sys/devices/system/node/{name}"))
        .ok()
        .and_then(|s| parse_node_list(s.trim()))
}

/// The nodes this process may take memory from (`Mems_allowed_list` of /proc/self/status, its
/// cpuset), if the kernel says.
fn allowed_nodes() -> Option<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Mems_allowed_list:"))?;
    parse_node_list(line.trim())
}

/// Parses a kernel node list ("0", "0-3", "0,2-3"); `None` when it names no node.
fn parse_node_list(s: &str) -> Option<Vec<u32>> {
    crate::affinity::parse_list(s)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.into_iter().map(|n| u32::try_from(n).ok()).collect())
}

/// The NUMA node an RDMA device sits on (`/sys/class/infiniband/DEV/device/numa_node`), if it
/// reports one (a VM's or a software device says -1 or has none).
pub fn device_node(device: &str) -> Option<u32> {
    let path = format!("/sys/class/infiniband/{device}/device/numa_node");
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
}

/// Where `RDMABUS_NUMA_NODE` places memory: the node asked for, or under `auto` the RDMA
/// device's (`device_node`, `None` for memory no device uses), where there is more than one
/// node. An asked-for node that is not online, has no memory or is outside this process's
/// cpuset, or a value that is no node, is an error.
pub fn choose(device_node: Option<u32>) -> Result<Option<Placement>, Error> {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    match want()? {
        Want::Off => Ok(None),
        Want::Node(n) => {
            let online = online_nodes();
            if !online.contains(&n) {
                return Err(Error::Config(format!(
                    "RDMABUS_NUMA_NODE={n}: no such node online (online: {})",
                    list(&online)
                )));
            }
            if let Some(with_memory) = node_file("has_memory") {
                if !with_memory.contains(&n) {
                    return Err(Error::Config(format!(
                        "RDMABUS_NUMA_NODE={n}: that node has no memory (nodes with memory: {})",
                        list(&with_memory)
                    )));
                }
            }
            if let Some(allowed) = allowed_nodes() {
                if !allowed.contains(&n) {
                    return Err(Error::Config(format!(
                        "RDMABUS_NUMA_NODE={n}: this process may not take memory there (its \
                         cpuset allows nodes {})",
                        list(&allowed)
                    )));
                }
            }
            Ok(Some(Placement {
                node: n,
                explicit: true,
            }))
        }
        Want::Auto => Ok(device_node
            .filter(|_| online_nodes().len() > 1)
            .map(|node| Placement {
                node,
                explicit: false,
            })),
    }
}

/// [`prefer`] as `placement` asks: a refusal is an error for an explicit node, a warning (and
/// no placement) under `auto`.
pub(crate) fn place(
    addr: *mut u8,
    len: usize,
    placement: Placement,
    what: &str,
) -> Result<(), Error> {
    match prefer(addr, len, placement.node, what) {
        Err(e) if !placement.explicit => {
            tracing::warn!(
                what,
                node = placement.node,
                "not placed on the RDMA device's NUMA node ({e}); set RDMABUS_NUMA_NODE=off to \
                 stop trying, or allow mbind (CAP_SYS_NICE under a container's seccomp profile)"
            );
            Ok(())
        }
        r => r,
    }
}

/// Asks the kernel to take the pages of `addr..addr + len` (a mapping of ours, not yet
/// touched) from `node` while it has memory (`mbind`, `MPOL_PREFERRED`).
pub(crate) fn prefer(addr: *mut u8, len: usize, node: u32, what: &str) -> Result<(), Error> {
    const BITS: usize = u64::BITS as usize;
    if node as usize >= 64 * BITS {
        return Err(Error::Config(format!("NUMA node {node} is out of range")));
    }
    let mut mask = [0u64; 64];
    mask[node as usize / BITS] |= 1 << (node as usize % BITS);
    // SAFETY: mbind only changes the policy of pages of our own mapping `addr..addr + len`
    // (page-aligned: it comes from mmap); `mask` is a live array of 64 * 64 bits, and the
    // kernel reads maxnode - 1 bits of it. No memory is written through `addr`. Every
    // argument is passed at the width of a long, as the variadic `syscall` reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr,
            len,
            libc::MPOL_PREFERRED as libc::c_ulong,
            mask.as_ptr(),
            (64 * BITS + 1) as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(Error::io(
            format!("placing {what} on NUMA node {node} (mbind)"),
            std::io::Error::last_os_error(),
        ));
    }
    tracing::debug!(what, node, bytes = len, "memory placed on NUMA node");
    Ok(())
}

/// Whether the kernel takes a preferred policy for `node` on a page of our own (what
/// [`choose`]'s placement will ask of it), for `doctor`.
pub fn try_prefer(node: u32) -> Result<(), Error> {
    let mut map = memmap2::MmapMut::map_anon(4096)
        .map_err(|e| Error::io("mapping a page to try a NUMA placement", e))?;
    let len = map.len();
    prefer(map.as_mut_ptr(), len, node, "a test page")
}

/// The node the page holding address `addr` is on (`get_mempolicy` with `MPOL_F_NODE |
/// MPOL_F_ADDR`; nothing is read at the address); `None` if the kernel does not say, or
/// `addr` is not mapped. The page must have been touched.
pub fn node_of(addr: usize) -> Option<u32> {
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int to `node` (a live local) and reads nothing of
    // `addr` but its page's placement; no node mask is asked for (null, maxnode 0).
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (r == 0 && node >= 0).then_some(node as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy set is the one asked for, as the kernel reports it for the mapping.
    #[test]
    fn prefer_sets_a_preferred_policy_on_the_mapping() {
        let mut map = memmap2::MmapMut::map_anon(8192).unwrap();
        prefer(map.as_mut_ptr(), map.len(), 0, "a test mapping").unwrap();
        map[0] = 1;
        let (mut mode, mut mask) = (-1 as libc::c_int, [0u64; 16]);
        // SAFETY: get_mempolicy writes the mode to `mode` and at most 1024 bits (16 words)
        // to `mask`, both live locals; `map` is our live mapping, only its policy is read.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                1024 as libc::c_ulong,
                map.as_ptr(),
                MPOL_F_ADDR,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(mode, libc::MPOL_PREFERRED);
        assert_eq!(mask[0], 1, "node 0 only");
        assert_eq!(node_of(map.as_ptr() as usize), Some(0));
    }

    /// A node the kernel refuses (one past the online ones): an error when asked for by
    /// number, a warning and no placement under `auto`.
    #[test]
    fn a_refused_placement_fails_only_when_asked_for() {
        let mut map = memmap2::MmapMut::map_anon(4096).unwrap();
        let node = online_nodes().iter().max().unwrap() + 1;
        let (addr, len) = (map.as_mut_ptr(), map.len());
        let auto = Placement {
            node,
            explicit: false,
        };
        assert!(place(addr, len, auto, "a test mapping").is_ok());
        let asked = Placement {
            node,
            explicit: true,
        };
        let e = place(addr, len, asked, "a test mapping").unwrap_err();
        assert!(e.to_string().contains(&format!("NUMA node {node}")), "{e}");
    }

    #[test]
    fn node_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_node_list("0"), Some(vec![0]));
        assert_eq!(parse_node_list("0-3"), Some(vec![0, 1, 2, 3]));
        assert_eq!(parse_node_list("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_node_list(""), None);
        assert_eq!(parse_node_list("3-1"), None);
        assert_eq!(parse_node_list("x"), None);
    }
}

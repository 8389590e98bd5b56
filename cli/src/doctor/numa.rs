//! The NIC's NUMA node against the CPUs this process may run on.

use super::report::{Report, Verdict};
use super::sys::{cpu_list, cpu_ranges, names, read};
use super::Ctx;

/// One check per device.
pub fn check(ctx: &Ctx, r: &mut Report) {
    let nodes = names("/sys/devices/system/node")
        .into_iter()
        .filter(|n| n.starts_with("node"))
        .count();
    for d in &ctx.devices {
        let id = format!("numa.{}", d.name);
        let what = format!("{} NUMA node", d.name);
        let Some(node) = read(d.dir().join("device/numa_node")).and_then(|s| s.parse::<i64>().ok())
        else {
            r.add(
                &id,
                Verdict::Info,
                &what,
                "unknown, no device/numa_node (a virtual device such as Soft-RoCE)",
                None,
            );
            continue;
        };
        if node < 0 {
            let why = if nodes <= 1 {
                "none given; this machine has one NUMA node"
            } else {
                "none given by the firmware"
            };
            r.add(&id, Verdict::Info, &what, why, None);
            continue;
        }
        let Some(local) =
            read(format!("/sys/devices/system/node/node{node}/cpulist")).and_then(|s| cpu_list(&s))
        else {
            r.add(
                &id,
                Verdict::Info,
                &what,
                &format!("node {node}, its CPUs unknown (cannot read node{node}/cpulist)"),
                None,
            );
            continue;
        };
        let near: Vec<usize> = ctx
            .allowed
            .iter()
            .copied()
            .filter(|c| local.contains(c))
            .collect();
        let detail = format!(
            "node {node} (CPUs {}); this process may run on {}",
            cpu_ranges(&local),
            cpu_ranges(&ctx.allowed)
        );
        if near.len() == ctx.allowed.len() {
            r.add(&id, Verdict::Ok, &what, &detail, None);
        } else if near.is_empty() {
            r.add(&id, ctx.rdma(Verdict::Warn), &what, &format!("{detail}: none of them on the NIC's node"), Some("run the pollers on the NIC's node (`numactl -N NODE`, taskset, `--cpu`): every access to the ring otherwise crosses the interconnect"));
        } else {
            r.add(
                &id,
                Verdict::Info,
                &what,
                &format!("{detail}: {} are on the NIC's node", cpu_ranges(&near)),
                Some("pin the pollers to the NIC's node (`--cpu` one of those)"),
            );
        }
    }
}

/// Where `RDMABUS_NUMA_NODE` puts the bus's memory here, tried for real (`mbind` on a page
/// of our own): an asked-for node that is not usable fails (publishers and verbs subscribers
/// would refuse to start); under `auto`, a device's node the kernel refuses is a warning (the
/// bus warns and leaves that memory unplaced).
pub fn placement(ctx: &Ctx, r: &mut Report) {
    let what = "memory placement (RDMABUS_NUMA_NODE)";
    let asked = std::env::var("RDMABUS_NUMA_NODE").unwrap_or_else(|_| "auto".into());
    let nodes = rdmabus::numa::online_nodes()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let staging = match rdmabus::numa::choose(None) {
        Err(e) => {
            return r.add(
                "numa.placement",
                Verdict::Fail,
                what,
                &e.to_string(),
                Some("use auto, off or a node that is online, has memory and is in this process's cpuset"),
            )
        }
        Ok(p) => p,
    };
    let mut refused = Vec::new();
    let mut try_place = |p: Option<rdmabus::numa::Placement>| -> String {
        let Some(p) = p else {
            return "not placed (first touch)".into();
        };
        match rdmabus::numa::try_prefer(p.node) {
            Ok(()) => format!("node {}", p.node),
            Err(e) => {
                refused.push((p.explicit, e.to_string()));
                format!("node {} REFUSED", p.node)
            }
        }
    };
    let staging = try_place(staging);
    let per_device: Vec<String> = ctx
        .devices
        .iter()
        .map(|d| {
            let p = rdmabus::numa::choose(rdmabus::numa::device_node(&d.name))
                .ok()
                .flatten();
            format!("{}: {}", d.name, try_place(p))
        })
        .collect();
    let detail = format!(
        "{asked}; online nodes {nodes}; staging rings {staging}{}{}{}",
        if per_device.is_empty() {
            ""
        } else {
            "; verbs rings of "
        },
        per_device.join(", "),
        refused
            .first()
            .map(|(_, e)| format!(" ({e})"))
            .unwrap_or_default()
    );
    let hint = "allow mbind (CAP_SYS_NICE under a container's seccomp profile, a cpuset that includes the node), or RDMABUS_NUMA_NODE=off";
    if refused.iter().any(|(explicit, _)| *explicit) {
        r.add("numa.placement", Verdict::Fail, what, &detail, Some(hint));
    } else if !refused.is_empty() {
        r.add("numa.placement", Verdict::Warn, what, &detail, Some(hint));
    } else {
        r.add("numa.placement", Verdict::Ok, what, &detail, None);
    }
}

//! RDMA devices and every port of each: state, link, GIDs (RoCE v2?), rate and width, MTU;
//! whether userspace verbs sees them; Soft-RoCE.

use super::devices::{parse_rate, Device, Port, SYS_IB};
use super::report::{Report, Verdict};
use super::sys::read;
use super::{Ctx, Want};

const SOFT_ROCE_HINT: &str = "no RDMA NIC: Soft-RoCE works on any netdev: `modprobe crc32_generic rdma_rxe && rdma link add rxe0 type rxe netdev eth0` (README: Soft-RoCE); the shm transport needs no device";

/// The device checks; returns whether the checks that follow devices (RoCE, access, IRQs,
/// NUMA) are worth making: RDMA asked for, or a device present.
pub fn check(ctx: &Ctx, r: &mut Report, filtered: bool) -> bool {
    build(ctx, r);
    if ctx.devices.is_empty() {
        if !filtered {
            let (v, why) = match ctx.want {
                Want::Verbs => (Verdict::Fail, "the verbs transport cannot run here"),
                _ => (Verdict::Info, "fine for shm; the RDMA checks were skipped"),
            };
            let what = if std::path::Path::new(SYS_IB).exists() {
                format!("none in {SYS_IB}")
            } else {
                format!("none ({SYS_IB} is missing: no RDMA driver loaded)")
            };
            r.add(
                "rdma.devices",
                v,
                "RDMA devices",
                &format!("{what}: {why}"),
                Some(SOFT_ROCE_HINT),
            );
        }
        return ctx.want == Want::Verbs;
    }
    let names: Vec<&str> = ctx.devices.iter().map(|d| d.name.as_str()).collect();
    r.add(
        "rdma.devices",
        Verdict::Ok,
        "RDMA devices",
        &format!("{} ({})", names.len(), names.join(", ")),
        None,
    );
    let mut usable = Vec::new();
    for d in &ctx.devices {
        if d.ports.is_empty() {
            r.add(
                &format!("rdma.port.{}", d.name),
                ctx.rdma(Verdict::Warn),
                &format!("{} ports", d.name),
                &format!("none listed in {}/ports", d.dir().display()),
                None,
            );
        }
        for p in &d.ports {
            port(ctx, r, d, p);
            rate(ctx, r, d, p);
            mtu(r, d, p);
            if p.usable() {
                usable.push(format!("{}/{}", d.name, p.num));
            }
        }
    }
    if usable.is_empty() {
        r.add(
            "rdma.usable",
            ctx.rdma(Verdict::Fail),
            "usable RDMA ports",
            "none: no port is ACTIVE with a RoCE v2 GID (or InfiniBand)",
            Some("bring the link up (`ip link`, cable), and give a RoCE netdev an IP address: RoCE v2 GIDs follow its addresses"),
        );
    } else {
        r.add(
            "rdma.usable",
            Verdict::Ok,
            "usable RDMA ports",
            &usable.join(", "),
            None,
        );
    }
    verbs_sees(ctx, r);
    if std::path::Path::new("/sys/module/rdma_rxe").exists() {
        r.add(
            "rdma.softroce",
            Verdict::Info,
            "Soft-RoCE",
            "rdma_rxe loaded (software RoCE: correct but far slower than a NIC; compare against ib_write_lat on the same device)",
            None,
        );
    }
    true
}

/// Whether this build has verbs at all.
fn build(ctx: &Ctx, r: &mut Report) {
    if rdmabus::transport::VERBS {
        return;
    }
    r.add(
        "rdma.build",
        if ctx.want == Want::Verbs { Verdict::Fail } else { Verdict::Info },
        "verbs in this build",
        "no: built without the `verbs` feature; the RDMA checks that open a device were skipped (sysfs is still read)",
        Some("build with the default features (`cargo build -p rdmabus-cli`) to use RDMA"),
    );
}

fn port(ctx: &Ctx, r: &mut Report, d: &Device, p: &Port) {
    let gids: Vec<String> = p
        .gids
        .iter()
        .map(|g| format!("{} {} ({}, {})", g.index, g.addr, g.ty, g.ndev))
        .collect();
    let detail = format!(
        "{}, {}, link layer {}; GIDs: {}",
        p.state,
        p.phys_state,
        p.link_layer,
        if gids.is_empty() {
            "none".into()
        } else {
            gids.join("; ")
        }
    );
    let (v, hint) = if !p.active() || !p.link_up() {
        (Verdict::Warn, Some("the port is not ACTIVE/LinkUp: check the cable or the netdev's link (`ip link`), then `rdma link`"))
    } else if p.roce() && !p.gids.iter().any(|g| g.is_roce_v2()) {
        (Verdict::Warn, Some("no RoCE v2 GID: give the netdev an IP address (RoCE v2 GIDs follow its addresses); rdmabus speaks RoCE v2"))
    } else {
        (Verdict::Ok, None)
    };
    r.add(
        &format!("rdma.port.{}.{}", d.name, p.num),
        ctx.rdma(v),
        &format!("{} port {}", d.name, p.num),
        &detail,
        hint,
    );
}

/// Rate and width against the device's other ports (and 1X on InfiniBand).
fn rate(ctx: &Ctx, r: &mut Report, d: &Device, p: &Port) {
    let id = format!("rdma.rate.{}.{}", d.name, p.num);
    let what = format!("{} port {} rate", d.name, p.num);
    let Some(text) = &p.rate else {
        let why = "unknown, cannot read the port's rate file";
        return r.add(&id, Verdict::Info, &what, why, None);
    };
    let Some((gbps, width)) = parse_rate(text) else {
        return r.add(
            &id,
            Verdict::Info,
            &what,
            &format!("{text} (not understood)"),
            None,
        );
    };
    if !p.active() {
        return r.add(
            &id,
            Verdict::Info,
            &what,
            &format!("{text} (port not active)"),
            None,
        );
    }
    let others: Vec<(f64, u32)> = d
        .ports
        .iter()
        .filter(|q| q.num != p.num && q.active())
        .filter_map(|q| q.rate.as_deref().and_then(parse_rate))
        .collect();
    let fastest = others.iter().map(|o| o.0).fold(0.0, f64::max);
    let widest = others.iter().map(|o| o.1).max().unwrap_or(0);
    let (v, note) = if gbps < fastest {
        (
            Verdict::Warn,
            format!("slower than another port of {} ({fastest} Gb/sec)", d.name),
        )
    } else if width < widest {
        (
            Verdict::Warn,
            format!(
                "narrower than another port of {} ({widest}X): a lane is down",
                d.name
            ),
        )
    } else if !p.roce() && width == 1 {
        (
            Verdict::Warn,
            "1X on InfiniBand: a reduced width (most links are 4X or 2X)".to_string(),
        )
    } else {
        (Verdict::Ok, String::new())
    };
    let detail = if note.is_empty() {
        text.clone()
    } else {
        format!("{text}: {note}")
    };
    let hint = (v == Verdict::Warn).then_some("reseat or replace the cable/transceiver; `ibstat`/`ethtool` show the negotiated speed and lanes");
    r.add(&id, ctx.rdma(v), &what, &detail, hint);
}

/// Active MTU: port 1 through verbs; other ports of RoCE from their netdev's MTU.
fn mtu(r: &mut Report, d: &Device, p: &Port) {
    let id = format!("rdma.mtu.{}.{}", d.name, p.num);
    let what = format!("{} port {} active MTU", d.name, p.num);
    let from_netdev = || {
        let nd = p.netdevs().into_iter().next()?;
        let mtu: u32 = read(format!("/sys/class/net/{nd}/mtu"))?.parse().ok()?;
        // RoCE: the largest IB MTU that fits the netdev's MTU less the RoCE headers (as the
        // kernel's iboe_get_mtu does: GRH, BTH, extended headers, ICRC).
        let room = mtu.checked_sub(88)?;
        let ib = [4096u32, 2048, 1024, 512, 256]
            .into_iter()
            .find(|m| *m <= room)?;
        Some((ib, format!("from {nd}'s MTU {mtu}")))
    };
    let got = if p.num == 1 {
        crate::rdma::port_mtu(&d.name).map(|m| (m, "verbs".to_string()))
    } else {
        Err("verbs queries port 1 only".into())
    };
    let (m, src) = match (got, p.roce()) {
        (Ok(v), _) => v,
        (Err(e), true) => match from_netdev() {
            Some(v) => v,
            None => {
                return r.add(
                    &id,
                    Verdict::Info,
                    &what,
                    &format!("unknown ({e}, no netdev MTU)"),
                    None,
                )
            }
        },
        (Err(e), false) => {
            return r.add(&id, Verdict::Info, &what, &format!("unknown ({e})"), None)
        }
    };
    let header = rdmabus::proto::slot::HEADER_LEN;
    let detail = format!(
        "{m} ({src}): a message is one packet while its archive is at most {} B (MTU minus the {header}-byte slot header)",
        m as usize - header
    );
    if m >= 4096 {
        r.add(&id, Verdict::Ok, &what, &detail, None);
    } else {
        let hint = if p.roce() {
            "for larger single-packet messages, raise the netdev MTU (`ip link set DEV mtu 9000`, jumbo frames end to end) for an active MTU of 4096"
        } else {
            "the subnet manager sets InfiniBand MTUs (opensm partitions: mtu=5 is 4096)"
        };
        r.add(&id, Verdict::Info, &what, &detail, Some(hint));
    }
}

/// Whether userspace verbs opens the devices sysfs lists (the provider library).
#[cfg(feature = "verbs")]
fn verbs_sees(ctx: &Ctx, r: &mut Report) {
    let hint = "install the userspace provider (`ibverbs-providers`: mlx5, rxe, …) and check /dev/infiniband access";
    match rdmabus::verbs::device::list() {
        Ok(gids) => {
            let mut seen: Vec<&str> = gids.iter().map(|g| g.device.as_str()).collect();
            seen.dedup();
            let missing: Vec<&str> = ctx
                .devices
                .iter()
                .filter(|d| d.ports.iter().any(Port::active) && !seen.contains(&d.name.as_str()))
                .map(|d| d.name.as_str())
                .collect();
            let (v, detail) = if missing.is_empty() {
                (
                    Verdict::Ok,
                    format!(
                        "libibverbs opens {} with {} GIDs",
                        if seen.is_empty() {
                            "no device".into()
                        } else {
                            seen.join(", ")
                        },
                        gids.len()
                    ),
                )
            } else {
                (
                    Verdict::Fail,
                    format!(
                        "libibverbs does not open {} (active in sysfs)",
                        missing.join(", ")
                    ),
                )
            };
            r.add(
                "rdma.verbs",
                ctx.rdma(v),
                "userspace verbs",
                &detail,
                (v != Verdict::Ok).then_some(hint),
            );
        }
        Err(e) => r.add(
            "rdma.verbs",
            ctx.rdma(Verdict::Fail),
            "userspace verbs",
            &format!("cannot list devices: {e}"),
            Some(hint),
        ),
    }
}

/// Without verbs in this build, there is nothing to open (said by `rdma.build`).
#[cfg(not(feature = "verbs"))]
fn verbs_sees(_: &Ctx, _: &mut Report) {}

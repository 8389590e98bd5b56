//! What RoCE needs of the Ethernet side, per netdev of a RoCE port: ECN (DCQCN), PFC and
//! DSCP trust. Read from what exists (mlx5's sysfs, `mlnx_qos`, iproute2's `dcb`); what
//! cannot be read is said as such, never a failure.

use super::report::{Report, Verdict};
use super::sys::{names, read, run_tool, Tool};
use super::Ctx;
use std::path::Path;

/// Makes the three checks for every netdev of every RoCE port.
pub fn check(ctx: &Ctx, r: &mut Report) {
    let mut netdevs: Vec<String> = ctx
        .devices
        .iter()
        .flat_map(|d| {
            d.ports
                .iter()
                .filter(|p| p.roce())
                .flat_map(|p| p.netdevs())
        })
        .collect();
    netdevs.sort();
    netdevs.dedup();
    for nd in &netdevs {
        ecn(ctx, r, nd);
        let qos = run_tool("mlnx_qos", &["-i", nd]);
        pfc(ctx, r, nd, &qos);
        trust(ctx, r, nd, &qos);
    }
}

/// The priorities (0..7) enabled in `dir/0`..`dir/7`; `None` when the directory is missing.
fn enabled_prios(dir: &Path) -> Option<Vec<u32>> {
    let files = names(dir);
    if files.is_empty() {
        return None;
    }
    Some(
        files
            .iter()
            .filter(|f| read(dir.join(f)).as_deref() == Some("1"))
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

fn list(p: &[u32]) -> String {
    p.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn ecn(ctx: &Ctx, r: &mut Report, nd: &str) {
    let id = format!("roce.ecn.{nd}");
    let what = format!("{nd} ECN (DCQCN)");
    let base = Path::new("/sys/class/net").join(nd).join("ecn");
    let rp = enabled_prios(&base.join("roce_rp/enable"));
    let np = enabled_prios(&base.join("roce_np/enable"));
    match (rp, np) {
        (Some(rp), Some(np)) if !rp.is_empty() && !np.is_empty() => r.add(
            &id,
            Verdict::Ok,
            &what,
            &format!("reaction point on priorities {}, notification point on {}", list(&rp), list(&np)),
            None,
        ),
        (Some(rp), Some(np)) => r.add(
            &id,
            ctx.rdma(Verdict::Warn),
            &what,
            &format!("reaction point on priorities [{}], notification point on [{}]: congestion control is off", list(&rp), list(&np)),
            Some("enable both on the RoCE priority (`echo 1 > /sys/class/net/DEV/ecn/roce_rp/enable/3`, same for roce_np), or congestion turns into PFC pauses or drops"),
        ),
        _ => r.add(
            &id,
            Verdict::Info,
            &what,
            &format!("unknown, cannot read ({} is missing: only some drivers, mlx5, expose it)", base.join("roce_rp/enable").display()),
            None,
        ),
    }
}

/// PFC per priority from `mlnx_qos` ("enabled  0 0 0 1 0 0 0 0" under "PFC configuration").
fn pfc_from_mlnx_qos(out: &str) -> Option<Vec<u32>> {
    let mut lines = out.lines().skip_while(|l| !l.contains("PFC configuration"));
    let row = lines.find(|l| l.trim_start().starts_with("enabled"))?;
    let flags: Vec<&str> = row.split_whitespace().skip(1).collect();
    (flags.len() == 8).then(|| (0..8u32).filter(|&i| flags[i as usize] == "1").collect())
}

/// PFC per priority from `dcb pfc show dev DEV` ("prio-pfc 0:off 1:off 2:off 3:on …").
fn pfc_from_dcb(out: &str) -> Option<Vec<u32>> {
    let words: Vec<&str> = out
        .split_whitespace()
        .skip_while(|w| *w != "prio-pfc")
        .skip(1)
        .take_while(|w| w.contains(':'))
        .collect();
    (!words.is_empty()).then(|| {
        words
            .iter()
            .filter_map(|w| w.split_once(':'))
            .filter(|(_, s)| *s == "on")
            .filter_map(|(p, _)| p.parse().ok())
            .collect()
    })
}

fn pfc(ctx: &Ctx, r: &mut Report, nd: &str, qos: &Tool) {
    let id = format!("roce.pfc.{nd}");
    let what = format!("{nd} PFC");
    let (prios, src) = match qos {
        Tool::Output(o) => (pfc_from_mlnx_qos(o), "mlnx_qos".to_string()),
        _ => match run_tool("dcb", &["pfc", "show", "dev", nd]) {
            Tool::Output(o) => (pfc_from_dcb(&o), "dcb".to_string()),
            Tool::Absent => (None, "neither mlnx_qos nor dcb is installed".to_string()),
            Tool::Failed(e) => (None, format!("dcb: {e}")),
        },
    };
    match prios {
        Some(p) if !p.is_empty() => r.add(&id, Verdict::Ok, &what, &format!("on for priorities {} ({src})", list(&p)), None),
        Some(_) => r.add(
            &id,
            ctx.rdma(Verdict::Warn),
            &what,
            &format!("off on every priority ({src})"),
            Some("without PFC, RoCE loses packets under congestion and recovers by retransmission (milliseconds) unless ECN holds the fabric: `mlnx_qos -i DEV --pfc 0,0,0,1,0,0,0,0` or `dcb pfc set dev DEV prio-pfc 3:on`, matching the switch"),
        ),
        None => r.add(&id, Verdict::Info, &what, &format!("unknown, cannot read ({src})"), None),
    }
}

/// Trust from `mlnx_qos` ("Priority trust state: dscp"), else DSCP app entries from `dcb`.
fn trust(ctx: &Ctx, r: &mut Report, nd: &str, qos: &Tool) {
    let id = format!("roce.trust.{nd}");
    let what = format!("{nd} QoS trust");
    let found = match qos {
        Tool::Output(o) => o
            .lines()
            .find_map(|l| {
                l.split_once("trust state:")
                    .map(|(_, t)| t.trim().to_string())
            })
            .map(|t| (t, "mlnx_qos".to_string()))
            .ok_or_else(|| "mlnx_qos printed no trust state".to_string()),
        _ => match run_tool("dcb", &["app", "show", "dev", nd, "dscp-prio"]) {
            Tool::Output(o) => {
                let entries = o.split_whitespace().filter(|w| w.contains(':')).count();
                Ok((
                    if entries > 0 {
                        "dscp".to_string()
                    } else {
                        "pcp".to_string()
                    },
                    format!("dcb: {entries} DSCP-to-priority entries"),
                ))
            }
            Tool::Absent => Err("neither mlnx_qos nor dcb is installed".into()),
            Tool::Failed(e) => Err(format!("dcb: {e}")),
        },
    };
    match found {
        Ok((t, src)) if t == "dscp" => r.add(&id, Verdict::Ok, &what, &format!("dscp ({src})"), None),
        Ok((t, src)) => r.add(
            &id,
            ctx.rdma(Verdict::Warn),
            &what,
            &format!("{t} ({src}): RoCE v2 packets are classified by their VLAN priority, not their DSCP"),
            Some("routed RoCE v2 marks traffic with DSCP: `mlnx_qos -i DEV --trust dscp` (or DSCP app entries with `dcb app add dev DEV dscp-prio 26:3`)"),
        ),
        Err(why) => r.add(&id, Verdict::Info, &what, &format!("unknown, cannot read ({why})"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfc_reads_both_tools() {
        let mlnx = "DCBX mode: OS controlled\nPriority trust state: dscp\nPFC configuration:\n\tpriority    0   1   2   3   4   5   6   7\n\tenabled     0   0   0   1   0   0   0   0   \n";
        assert_eq!(pfc_from_mlnx_qos(mlnx), Some(vec![3]));
        let dcb = "pfc-cap 8 macsec-bypass off delay 0\nprio-pfc 0:off 1:off 2:off 3:on 4:off 5:off 6:off 7:off\n";
        assert_eq!(pfc_from_dcb(dcb), Some(vec![3]));
        assert_eq!(pfc_from_dcb("nothing"), None);
    }
}

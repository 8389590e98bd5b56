//! Interrupts: whether irqbalance moves them around, and where the NIC's land.

use super::devices::Device;
use super::report::{Report, Verdict};
use super::sys::{cpu_list, cpu_ranges, processes, read};
use super::Ctx;

/// irqbalance running?
pub fn irqbalance(r: &mut Report) {
    if processes().iter().any(|p| p == "irqbalance") {
        r.add(
            "irq.irqbalance",
            Verdict::Warn,
            "irqbalance",
            "running: it moves interrupts, the NIC's too, between CPUs as load shifts",
            Some("stop it (`systemctl disable --now irqbalance`) and set the NIC's IRQ affinity by hand, or keep it off the pollers' CPUs (IRQBALANCE_BANNED_CPULIST)"),
        );
    } else {
        r.add(
            "irq.irqbalance",
            Verdict::Ok,
            "irqbalance",
            "not running",
            None,
        );
    }
}

/// The IRQs in /proc/interrupts named after `d`'s PCI address, name or netdevs.
fn irqs_of(interrupts: &str, d: &Device) -> Vec<u32> {
    let mut keys: Vec<&str> = d.netdevs.iter().map(String::as_str).collect();
    keys.extend(d.pci.as_deref());
    keys.push(&d.name);
    interrupts
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.split_once(':')?;
            let n: u32 = n.trim().parse().ok()?;
            let name = rest.split_whitespace().last()?;
            keys.iter()
                .any(|k| {
                    name == *k
                        || name.contains(&format!("@pci:{k}"))
                        || name.starts_with(&format!("{k}-"))
                        || name.ends_with(&format!("@{k}"))
                        || name.contains(&format!("{k}:"))
                })
                .then_some(n)
        })
        .collect()
}

/// Per device: which CPUs its IRQs may land on, against the isolated CPUs.
pub fn affinity(ctx: &Ctx, r: &mut Report) {
    let interrupts = read("/proc/interrupts");
    for d in &ctx.devices {
        let id = format!("irq.affinity.{}", d.name);
        let what = format!("{} IRQ affinity", d.name);
        let Some(interrupts) = &interrupts else {
            r.add(
                &id,
                Verdict::Info,
                &what,
                "unknown, cannot read /proc/interrupts",
                None,
            );
            continue;
        };
        let irqs = irqs_of(interrupts, d);
        if irqs.is_empty() {
            let named = match &d.pci {
                Some(p) => format!("{p}, {}", d.netdevs.join(", ")),
                None => d.netdevs.join(", "),
            };
            r.add(&id, Verdict::Info, &what, &format!("no IRQ named after {} or {named} in /proc/interrupts (a virtual device such as Soft-RoCE has none)", d.name), None);
            continue;
        }
        let mut cpus = Vec::new();
        let mut on_isolated = Vec::new();
        for n in &irqs {
            let Some(list) =
                read(format!("/proc/irq/{n}/smp_affinity_list")).and_then(|s| cpu_list(&s))
            else {
                continue;
            };
            if list.iter().any(|c| ctx.isolated.contains(c)) {
                on_isolated.push(*n);
            }
            cpus.extend(list);
        }
        cpus.sort_unstable();
        cpus.dedup();
        let detail = format!("{} IRQs, on CPUs {}", irqs.len(), cpu_ranges(&cpus));
        if on_isolated.is_empty() {
            r.add(&id, Verdict::Ok, &what, &detail, None);
        } else {
            let first = on_isolated
                .iter()
                .take(8)
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            r.add(
                &id,
                ctx.rdma(Verdict::Warn),
                &what,
                &format!("{detail}; {} of them may run on isolated CPUs {} (IRQs {first}…)", on_isolated.len(), cpu_ranges(&ctx.isolated)),
                Some("keep interrupts off the pollers' cores: `echo HOUSEKEEPING_CPUS > /proc/irq/N/smp_affinity_list` for each"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irqs_are_found_by_pci_address_and_netdev() {
        let d = Device {
            name: "mlx5_0".into(),
            ports: vec![],
            pci: Some("0000:3b:00.0".into()),
            netdevs: vec!["ens1f0".into()],
        };
        let s = "           CPU0       CPU1\n 34:  1  2  IR-PCI-MSI 1  mlx5_comp0@pci:0000:3b:00.0\n 35:  0  0  IR-PCI-MSI 2  ens1f0-TxRx-0\n 36:  0  0  IR-PCI-MSI 3  nvme0q1\nNMI:  0  0  Non-maskable interrupts\n";
        assert_eq!(irqs_of(s, &d), vec![34, 35]);
    }
}

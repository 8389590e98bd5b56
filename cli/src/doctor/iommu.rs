//! The IOMMU: does it translate the NIC's DMA (an IOTLB miss on RDMA accesses), or pass it
//! through (`iommu=pt`)?

use super::report::{Report, Verdict};
use super::sys::{names, read};
use super::Ctx;

const HINT: &str = "boot with `iommu=pt` (with `intel_iommu=on` or `amd_iommu=on`): the NIC's DMA then bypasses translation, no IOTLB misses on ring accesses";

/// One check, over the IOMMU and the devices' IOMMU groups.
pub fn check(ctx: &Ctx, r: &mut Report) {
    let what = "IOMMU";
    let units = names("/sys/class/iommu");
    let cmd: Vec<String> = ["iommu", "intel_iommu", "amd_iommu", "iommu.passthrough"]
        .iter()
        .filter_map(|k| ctx.param(k).map(|v| format!("{k}={v}")))
        .collect();
    let cmd = if cmd.is_empty() {
        "no iommu parameter on the kernel command line".to_string()
    } else {
        cmd.join(" ")
    };
    if units.is_empty() {
        return r.add(
            "platform.iommu",
            Verdict::Ok,
            what,
            &format!("no IOMMU translates DMA (none in /sys/class/iommu; {cmd})"),
            None,
        );
    }
    // The domain type of each device's IOMMU group: identity is passthrough.
    let groups: Vec<(String, Option<String>)> = ctx
        .devices
        .iter()
        .filter_map(|d| {
            d.pci.as_ref().map(|_| {
                (
                    d.name.clone(),
                    read(d.dir().join("device/iommu_group/type")),
                )
            })
        })
        .collect();
    let translated: Vec<String> = groups
        .iter()
        .filter(|(_, t)| t.as_deref().is_some_and(|t| t.starts_with("DMA")))
        .map(|(n, t)| format!("{n} ({})", t.as_deref().unwrap_or("?")))
        .collect();
    let base = format!("on ({}; {cmd})", units.join(", "));
    if !translated.is_empty() {
        return r.add(
            "platform.iommu",
            ctx.rdma(Verdict::Warn),
            what,
            &format!("{base}: translates the DMA of {}", translated.join(", ")),
            Some(HINT),
        );
    }
    if groups.iter().any(|(_, t)| t.is_some()) {
        return r.add(
            "platform.iommu",
            Verdict::Ok,
            what,
            &format!("{base}: the RDMA devices' groups are identity (passthrough)"),
            None,
        );
    }
    let pt = ctx.param("iommu").as_deref() == Some("pt")
        || ctx.param("iommu.passthrough").as_deref() == Some("1");
    if pt {
        r.add(
            "platform.iommu",
            Verdict::Ok,
            what,
            &format!("{base}: passthrough"),
            None,
        );
    } else {
        r.add("platform.iommu", Verdict::Info, what, &format!("{base}: no RDMA device's group to read, so whether the NIC's DMA is translated is unknown"), Some(HINT));
    }
}

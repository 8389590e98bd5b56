//! The CPUs: frequency governor, idle states, and whether a busy-poll thread can be pinned.

use super::report::{Report, Verdict};
use super::sys::{cpu_ranges, names, read};
use super::Ctx;
use std::path::Path;

/// The frequency governor of every CPU.
pub fn governor(r: &mut Report) {
    let mut governors: Vec<String> = names("/sys/devices/system/cpu")
        .iter()
        .filter(|n| {
            n.strip_prefix("cpu")
                .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()) && !i.is_empty())
        })
        .filter_map(|n| {
            read(format!(
                "/sys/devices/system/cpu/{n}/cpufreq/scaling_governor"
            ))
        })
        .collect();
    governors.sort();
    governors.dedup();
    let what = "CPU frequency governor";
    match governors.as_slice() {
        [] => r.add("cpu.governor", Verdict::Info, what, "unknown, not exposed (a VM, or a fixed-frequency CPU)", None),
        [g] if g == "performance" => r.add("cpu.governor", Verdict::Ok, what, "performance", None),
        gs => r.add(
            "cpu.governor",
            Verdict::Warn,
            what,
            &gs.join(", "),
            Some("`cpupower frequency-set -g performance`: a core that clocks down between messages adds microseconds"),
        ),
    }
}

/// An idle state's exit latency above this (µs) counts as deep.
const DEEP_US: u64 = 2;

/// Idle states deeper than [`DEEP_US`] still enabled on the CPUs this process may use.
pub fn cstates(ctx: &Ctx, r: &mut Report) {
    let what = "C-states";
    let mut limits: Vec<String> = ["idle", "processor.max_cstate", "intel_idle.max_cstate"]
        .iter()
        .filter_map(|k| ctx.param(k).map(|v| format!("{k}={v}")))
        .collect();
    if let Some(m) = read("/sys/module/intel_idle/parameters/max_cstate") {
        limits.push(format!("intel_idle max_cstate {m}"));
    }
    let driver =
        read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_else(|| "?".into());
    let limits = if limits.is_empty() {
        String::new()
    } else {
        format!("; {}", limits.join(", "))
    };
    if ctx.param("idle").as_deref() == Some("poll") {
        return r.add(
            "cpu.cstates",
            Verdict::Ok,
            what,
            &format!("idle=poll: CPUs never sleep{limits}"),
            None,
        );
    }
    // deep state name (latency) -> the CPUs where it is enabled
    let mut deep: Vec<(String, u64, Vec<usize>)> = Vec::new();
    let mut seen_any = false;
    for &cpu in &ctx.allowed {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
        for s in names(&dir).iter().filter(|s| s.starts_with("state")) {
            seen_any = true;
            let p = Path::new(&dir).join(s);
            let (Some(name), Some(lat)) = (
                read(p.join("name")),
                read(p.join("latency")).and_then(|l| l.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if lat <= DEEP_US || read(p.join("disable")).as_deref() == Some("1") {
                continue;
            }
            match deep.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => e.2.push(cpu),
                None => deep.push((name, lat, vec![cpu])),
            }
        }
    }
    if !seen_any {
        return r.add("cpu.cstates", Verdict::Info, what, &format!("unknown, no cpuidle states exposed (driver {driver}; a VM idles as its host decides){limits}"), None);
    }
    if deep.is_empty() {
        return r.add(
            "cpu.cstates",
            Verdict::Ok,
            what,
            &format!(
                "no state deeper than {DEEP_US} µs exit latency enabled (driver {driver}){limits}"
            ),
            None,
        );
    }
    let list: Vec<String> = deep
        .iter()
        .map(|(n, l, cpus)| format!("{n} ({l} µs) on CPUs {}", cpu_ranges(cpus)))
        .collect();
    r.add(
        "cpu.cstates",
        Verdict::Warn,
        what,
        &format!("deep states enabled: {} (driver {driver}){limits}", list.join(", ")),
        Some("a core waking from a deep state takes that long to answer: `cpupower idle-set -D 2`, or boot with `intel_idle.max_cstate=1 processor.max_cstate=1`"),
    );
}

/// Whether a thread can be pinned to one of the CPUs this process may run on.
pub fn pinning(ctx: &Ctx, r: &mut Report) {
    let what = "pinning a busy-poll thread";
    let allowed = ctx.allowed.clone();
    let target = allowed.last().copied().unwrap_or(0);
    let pinned = std::thread::spawn(move || rdmabus::affinity::pin_current_thread(target)).join();
    match pinned {
        Ok(Ok(())) => r.add(
            "cpu.pinning",
            Verdict::Ok,
            what,
            &format!("works (tried CPU {target} of {})", cpu_ranges(&allowed)),
            None,
        ),
        Ok(Err(e)) => r.add(
            "cpu.pinning",
            Verdict::Fail,
            what,
            &e.to_string(),
            Some("check the cgroup's cpuset (`grep Cpus_allowed /proc/self/status`)"),
        ),
        Err(_) => r.add(
            "cpu.pinning",
            Verdict::Fail,
            what,
            "the test thread panicked",
            None,
        ),
    }
}

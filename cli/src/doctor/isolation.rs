//! CPU isolation for busy pollers: `isolcpus`, `nohz_full` and `rcu_nocbs`.

use super::report::{Report, Verdict};
use super::sys::{cpu_list, cpu_ranges, read};
use super::Ctx;

const BOOT_HINT: &str =
    "boot with `isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3`, then pin pollers there (`--cpu 2,3`)";

/// The three checks.
pub fn check(ctx: &Ctx, r: &mut Report) {
    isolcpus(ctx, r);
    let nohz = nohz_full(ctx, r);
    rcu_nocbs(ctx, r, &nohz);
}

fn isolcpus(ctx: &Ctx, r: &mut Report) {
    let what = "isolated CPUs (isolcpus)";
    if ctx.isolated.is_empty() {
        return r.add(
            "cpu.isolcpus",
            Verdict::Warn,
            what,
            "none: busy pollers share their cores with everything else",
            Some(BOOT_HINT),
        );
    }
    let mine: Vec<usize> = ctx
        .allowed
        .iter()
        .copied()
        .filter(|c| ctx.isolated.contains(c))
        .collect();
    r.add(
        "cpu.isolcpus",
        Verdict::Ok,
        what,
        &format!(
            "{} (this process may run on {} of them)",
            cpu_ranges(&ctx.isolated),
            cpu_ranges(&mine)
        ),
        None,
    );
}

/// nohz_full CPUs, from sysfs (what the kernel applied) or the command line.
fn nohz_full(ctx: &Ctx, r: &mut Report) -> Vec<usize> {
    let what = "tickless CPUs (nohz_full)";
    let cpus = read("/sys/devices/system/cpu/nohz_full")
        .filter(|s| s != "(null)" && !s.is_empty())
        .and_then(|s| cpu_list(&s))
        .or_else(|| ctx.param("nohz_full").and_then(|v| cpu_list(&v)))
        .unwrap_or_default();
    let uncovered: Vec<usize> = ctx
        .isolated
        .iter()
        .copied()
        .filter(|c| !cpus.contains(c))
        .collect();
    if cpus.is_empty() {
        let v = if ctx.isolated.is_empty() {
            Verdict::Info
        } else {
            Verdict::Warn
        };
        let hint = (v == Verdict::Warn).then_some("give nohz_full= the same CPUs as isolcpus=");
        r.add(
            "cpu.nohz_full",
            v,
            what,
            "none: every CPU takes the scheduler tick (a few µs, hundreds of times a second)",
            hint,
        );
    } else if !uncovered.is_empty() {
        r.add(
            "cpu.nohz_full",
            Verdict::Warn,
            what,
            &format!(
                "{}, but isolated CPUs {} still tick",
                cpu_ranges(&cpus),
                cpu_ranges(&uncovered)
            ),
            Some("give nohz_full= the same CPUs as isolcpus="),
        );
    } else {
        r.add("cpu.nohz_full", Verdict::Ok, what, &cpu_ranges(&cpus), None);
    }
    cpus
}

/// rcu_nocbs CPUs (nohz_full implies them on current kernels).
fn rcu_nocbs(ctx: &Ctx, r: &mut Report, nohz: &[usize]) {
    let what = "RCU callback offload (rcu_nocbs)";
    let cpus = ctx
        .param("rcu_nocbs")
        .and_then(|v| cpu_list(&v))
        .unwrap_or_default();
    let mut all: Vec<usize> = cpus.iter().chain(nohz).copied().collect();
    all.sort_unstable();
    all.dedup();
    let uncovered: Vec<usize> = ctx
        .isolated
        .iter()
        .copied()
        .filter(|c| !all.contains(c))
        .collect();
    let src = if cpus.is_empty() {
        "implied by nohz_full".to_string()
    } else {
        format!("rcu_nocbs={}", cpu_ranges(&cpus))
    };
    if all.is_empty() {
        let v = if ctx.isolated.is_empty() {
            Verdict::Info
        } else {
            Verdict::Warn
        };
        let hint = (v == Verdict::Warn).then_some("give rcu_nocbs= the same CPUs as isolcpus=");
        r.add(
            "cpu.rcu_nocbs",
            v,
            what,
            "none: RCU callbacks run on every CPU",
            hint,
        );
    } else if !uncovered.is_empty() {
        r.add(
            "cpu.rcu_nocbs",
            Verdict::Warn,
            what,
            &format!(
                "{} ({src}), but isolated CPUs {} still run RCU callbacks",
                cpu_ranges(&all),
                cpu_ranges(&uncovered)
            ),
            Some("give rcu_nocbs= the same CPUs as isolcpus="),
        );
    } else {
        r.add(
            "cpu.rcu_nocbs",
            Verdict::Ok,
            what,
            &format!("{} ({src})", cpu_ranges(&all)),
            None,
        );
    }
}

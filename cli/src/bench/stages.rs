//! `bench pingpong --stages`: the per-stage cycle counts of `rdmabus::stages`, per message.

use rdmabus::stages::{self, StageTotal, ALL};
use rdmabus::Error;

/// Refuses `--stages` in a build without the probes.
pub fn check_enabled() -> Result<(), Error> {
    if stages::ENABLED {
        Ok(())
    } else {
        Err(Error::Config(
            "--stages needs an rdmabus built with the stage-clock feature \
             (cargo build --release -p rdmabus-cli --features stage-clock)"
                .into(),
        ))
    }
}

/// Prints, per size, each stage's runs and nanoseconds per one-way message (`messages` of
/// them), beside that size's one-way p50.
pub fn print(breakdowns: &[(usize, [StageTotal; ALL.len()], u64)], p50s: &[u64]) {
    let per_ns = rdmabus::clock::ticks_per_ns();
    let probe = stages::probe_cost_ticks() as f64 / per_ns;
    println!();
    println!(
        "where one message's time goes (ns per one-way message, both sides' threads; \
         a probe costs {probe:.0} ns: \"less probes\" subtracts it; \"write/post\" includes \"reap\")"
    );
    for ((size, totals, messages), p50) in breakdowns.iter().zip(p50s) {
        let m = (*messages).max(1) as f64;
        println!("{size} B (one-way p50 {p50} ns):");
        println!(
            "  {:<18} {:>10} {:>10} {:>12}",
            "stage", "runs/msg", "ns/msg", "less probes"
        );
        let (mut sum, mut net) = (0.0, 0.0);
        for (stage, t) in ALL.iter().zip(totals) {
            if t.count == 0 {
                continue;
            }
            let runs = t.count as f64 / m;
            let ns = t.ticks as f64 / per_ns / m;
            let less = (ns - runs * probe).max(0.0);
            if *stage != stages::Stage::Reap {
                sum += ns;
                net += less;
            }
            println!(
                "  {:<18} {:>10.3} {:>10.1} {:>12.1}",
                stage.name(),
                runs,
                ns,
                less
            );
        }
        println!("  {:<18} {:>10} {:>10.1} {:>12.1}", "sum", "", sum, net);
    }
}

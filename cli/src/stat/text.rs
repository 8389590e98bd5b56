//! `rdmabus stat`'s text views: the counters table and the error list.

use super::snapshot::{escape, Proc, Row};
use rdmabus::stats_file::{names, StatsFile};
use serde::Serialize;
use std::io::Write;

/// A duration in ns, in the unit that suits it.
pub fn duration(ns: u64) -> String {
    let n = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.2} us", n / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", n / 1e6)
    } else {
        format!("{:.2} s", n / 1e9)
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

/// `short value (rate)` for each value of the row, in the table's order; the first counter's
/// rate is always shown when measured, the others' when not zero.
fn values(r: &Row) -> String {
    names::of(r.entry_kind)
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut s = format!("{} {}", d.short, r.value(d));
            if let Some(v) = r.rates.as_ref().and_then(|m| m.get(d.name)) {
                if i == 0 || *v > 0.0 {
                    s += &format!(" ({})", rate(*v));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Prints the counters table.
pub fn print_table(procs: &[Proc], out: &mut impl Write) -> std::io::Result<()> {
    if procs.is_empty() {
        writeln!(
            out,
            "no running rdmabus processes (stats files live in {})",
            rdmabus::shm::shm_dir()
        )?;
    }
    for p in procs {
        write!(
            out,
            "pid {} · {} · up {:.0} s",
            p.pid, p.command, p.uptime_s
        )?;
        if p.errors_noted > 0 {
            write!(out, " · {} errors noted (stat --errors)", p.errors_noted)?;
        }
        writeln!(out)?;
        for r in &p.rows {
            let (indent, label) = match r.kind {
                "topic" => ("  ", "topic"),
                "link" => ("    ", "→"),
                _ => ("  ", "sub  "),
            };
            let who = match r.kind {
                "topic" => r.name.clone(),
                _ => format!("{} #{}", r.name, r.id),
            };
            writeln!(out, "{indent}{label} {who:<28} {}", values(r))?;
            if let Some(l) = r.latency.as_ref().filter(|l| l.samples > 0) {
                let q = |v: Option<u64>| v.map(duration).unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{indent}      latency p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ({} sampled)",
                    q(l.p50_ns),
                    q(l.p90_ns),
                    q(l.p99_ns),
                    q(l.p999_ns),
                    q(l.max_ns),
                    l.samples
                )?;
            }
        }
    }
    Ok(())
}

/// One error as listed.
#[derive(Serialize, Debug)]
pub struct ErrorRow {
    /// Times noted.
    pub count: u64,
    /// First noted, ns since the epoch.
    pub first_ns: u64,
    /// Last noted, ns since the epoch.
    pub last_ns: u64,
    /// Seconds since it was last noted.
    pub last_ago_s: f64,
    /// Its text (escaped).
    pub message: String,
}

/// A process's errors as listed.
#[derive(Serialize, Debug)]
pub struct ProcErrors {
    /// Its pid.
    pub pid: u32,
    /// Whether it is in our PID namespace.
    pub same_pid_ns: bool,
    /// Its command line (escaped).
    pub command: String,
    /// Errors noted since it started.
    pub errors_noted: u64,
    /// The recent distinct ones, most recent first.
    pub errors: Vec<ErrorRow>,
}

/// The errors of the processes of `files` (of `only`, or all).
pub fn errors(files: &[StatsFile], only: Option<u32>) -> Vec<ProcErrors> {
    let now = rdmabus::clock::now_ns();
    files
        .iter()
        .filter(|f| super::snapshot::selected(f, only))
        .map(|f| {
            let p = super::snapshot::process(f, now);
            ProcErrors {
                pid: p.pid,
                same_pid_ns: p.same_pid_ns,
                command: p.command,
                errors_noted: p.errors_noted,
                errors: f
                    .errors()
                    .into_iter()
                    .map(|e| ErrorRow {
                        count: e.count,
                        first_ns: e.first_ns,
                        last_ns: e.last_ns,
                        last_ago_s: now.saturating_sub(e.last_ns) as f64 / 1e9,
                        message: escape(&e.text),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Prints the error list.
pub fn print_errors(procs: &[ProcErrors], out: &mut impl Write) -> std::io::Result<()> {
    let now = rdmabus::clock::now_ns();
    if procs.is_empty() {
        writeln!(out, "no running rdmabus processes")?;
    }
    for p in procs {
        writeln!(
            out,
            "pid {} · {} · {} errors noted",
            p.pid, p.command, p.errors_noted
        )?;
        if p.errors.is_empty() {
            writeln!(out, "  none")?;
        }
        for e in &p.errors {
            let ago = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
            writeln!(
                out,
                "  {:>5}x  last {:.1} s ago, first {:.1} s ago  {}",
                e.count,
                ago(e.last_ns),
                ago(e.first_ns),
                e.message
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_pick_their_unit() {
        assert_eq!(duration(640), "640 ns");
        assert_eq!(duration(4_608), "4.61 us");
        assert_eq!(duration(3_500_000), "3.50 ms");
        assert_eq!(duration(2_000_000_000), "2.00 s");
    }
}

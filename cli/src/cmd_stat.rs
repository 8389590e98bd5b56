//! `rdmabus stat`: the counters of every running rdmabus process, live, like top.

use rdmabus::stats_file::{self, link as L, sub as S, topic as T, Entry, Kind, StatsFile, BUCKETS};
use rdmabus::Error;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Arguments of `rdmabus stat`.
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Print snapshots as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh interval in milliseconds (50 to 3,600,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub interval: u64,
    /// Stop after this many refreshes (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// One entry as shown.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    pub id: u32,
    pub counters: Vec<u64>,
    /// Per-second rate of the first counter since the previous refresh.
    pub rate: Option<f64>,
    /// Latency p50 / p99 upper bounds in ns (subscriptions, from the sampled histogram).
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
}

/// One process as shown.
#[derive(Serialize, Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    /// Whether the process is in our PID namespace (otherwise its pid means nothing here,
    /// and whether it still runs cannot be told).
    pub same_pid_ns: bool,
    pub command: String,
    pub uptime_s: f64,
    pub rows: Vec<Row>,
}

fn percentile(h: &[u64; BUCKETS], q: f64) -> Option<u64> {
    stats_file::histogram::quantile(h, q)
}

fn command(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let parts: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let mut s = parts.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
    if let Some(first) = parts.first() {
        s = s.replacen(first, first.rsplit('/').next().unwrap_or(first), 1);
    }
    s
}

fn row(e: &Entry) -> Option<Row> {
    let kind = match e.kind() {
        Kind::Free => return None,
        Kind::Topic => "topic",
        Kind::Link => "link",
        Kind::Subscription => "subscription",
    };
    let counters: Vec<u64> = (0..stats_file::COUNTERS).map(|i| e.get(i)).collect();
    let (p50_ns, p99_ns) = if e.kind() == Kind::Subscription {
        let h = e.histogram();
        (percentile(&h, 0.5), percentile(&h, 0.99))
    } else {
        (None, None)
    };
    Some(Row {
        kind,
        name: e.name(),
        id: e.id(),
        counters,
        rate: None,
        p50_ns,
        p99_ns,
    })
}

fn snapshot(files: &[StatsFile], only: Option<u32>) -> Vec<Proc> {
    let now = rdmabus::clock::now_ns();
    files
        .iter()
        .filter(|f| only.is_none_or(|p| p == f.pid() && f.in_our_pid_ns()))
        .map(|f| Proc {
            pid: f.pid(),
            same_pid_ns: f.in_our_pid_ns(),
            command: if f.in_our_pid_ns() {
                command(f.pid())
            } else {
                format!("(another PID namespace, {})", f.pid_ns())
            },
            uptime_s: now.saturating_sub(f.started_ns()) as f64 / 1e9,
            rows: (0..stats_file::CAPACITY)
                .filter_map(|i| row(f.entry(i)))
                .collect(),
        })
        .collect()
}

/// Messages received so far by the subscriptions of process `pid` (from its stats file).
pub fn received_by(pid: u32) -> Option<u64> {
    let procs = snapshot(&stats_file::list(), Some(pid));
    let p = procs.first()?;
    Some(
        p.rows
            .iter()
            .filter(|r| r.kind == "subscription")
            .map(|r| r.counters[S::RECEIVED])
            .sum(),
    )
}

fn us(ns: Option<u64>) -> String {
    ns.map(|n| format!("<{:.1}", n as f64 / 1e3))
        .unwrap_or_else(|| "-".into())
}

fn print_table(procs: &[Proc], out: &mut impl Write) -> std::io::Result<()> {
    if procs.is_empty() {
        writeln!(
            out,
            "no running rdmabus processes (stats files live in {})",
            rdmabus::shm::shm_dir()
        )?;
    }
    for p in procs {
        writeln!(
            out,
            "pid {} · {} · up {:.0} s",
            p.pid, p.command, p.uptime_s
        )?;
        let rate = |r: &Row| {
            r.rate
                .map(|v| format!("{v:.0}/s"))
                .unwrap_or_else(|| "-".into())
        };
        for r in p.rows.iter().filter(|r| r.kind == "topic") {
            let c = &r.counters;
            writeln!(
                out,
                "  topic {:<28} published {:>12} {:>11}  joins {} leaves {}",
                r.name,
                c[T::PUBLISHED],
                rate(r),
                c[T::JOINS],
                c[T::LEAVES]
            )?;
        }
        for r in p.rows.iter().filter(|r| r.kind == "link") {
            let c = &r.counters;
            writeln!(
                out,
                "    → {:<26} sent {:>12} {:>11}  dropped {} stalls {} errors {} from history {}",
                r.name,
                c[L::SENT],
                rate(r),
                c[L::DROPPED],
                c[L::CREDIT_STALLS],
                c[L::ERRORS],
                c[L::REPAIRED]
            )?;
        }
        for r in p.rows.iter().filter(|r| r.kind == "subscription") {
            let c = &r.counters;
            writeln!(
                out,
                "  sub   {:<28} received {:>11} {:>11}  gaps {} lost {} corrupt {} repaired {} reconnects {}  latency p50 {} us p99 {} us",
                r.name, c[S::RECEIVED], rate(r), c[S::GAPS], c[S::LOST], c[S::CORRUPT], c[S::REPAIRED], c[S::RECONNECTS], us(r.p50_ns), us(r.p99_ns)
            )?;
        }
    }
    Ok(())
}

/// Runs `rdmabus stat`.
pub fn run(a: StatArgs) -> Result<(), Error> {
    let tty = std::io::stdout().is_terminal() && !a.json && !a.once;
    let mut previous: HashMap<(u32, &'static str, String, u32), (u64, Instant)> = HashMap::new();
    let mut n = 0u64;
    loop {
        let files = stats_file::list();
        let mut procs = snapshot(&files, a.pid);
        let now = Instant::now();
        for p in &mut procs {
            for r in &mut p.rows {
                let key = (p.pid, r.kind, r.name.clone(), r.id);
                if let Some((v, t)) = previous.get(&key) {
                    let dt = now.duration_since(*t).as_secs_f64().max(1e-6);
                    r.rate = Some(r.counters[0].saturating_sub(*v) as f64 / dt);
                }
                previous.insert(key, (r.counters[0], now));
            }
        }
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&procs).expect("serializes")
            )
            .ok();
        } else {
            if tty {
                write!(out, "\x1b[2J\x1b[H").ok();
            }
            print_table(&procs, &mut out).ok();
            if !tty && !a.once {
                writeln!(out).ok();
            }
        }
        out.flush().ok();
        n += 1;
        if a.once || a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        // In slices, so that a signal ends it at once (and in order: exit 0).
        let until = Instant::now() + Duration::from_millis(a.interval);
        while Instant::now() < until {
            if crate::signals::stopped().is_some() {
                return Ok(());
            }
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20)),
            );
        }
    }
}

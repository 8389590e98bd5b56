//! `rdmabus stat`: the counters of every running rdmabus process, live, like top; once with
//! rates; as JSON; in the Prometheus text format, or served over HTTP; their recent errors.

#[path = "stat/prom.rs"]
mod prom;
#[path = "stat/serve.rs"]
mod serve;
#[path = "stat/snapshot.rs"]
mod snapshot;
#[path = "stat/text.rs"]
mod text;

use rdmabus::stats_file::{self, sub as S, StatsFile};
use rdmabus::Error;
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `rdmabus stat`.
#[derive(clap::Args, Debug)]
pub struct StatArgs {
    /// Print one snapshot and exit, with per-second rates measured over --interval.
    #[arg(long)]
    pub once: bool,
    /// Print snapshots as JSON lines instead of a table (values by name).
    #[arg(long)]
    pub json: bool,
    /// Print the counters once in the Prometheus text format (for node_exporter's textfile
    /// collector) and exit.
    #[arg(long, conflicts_with_all = ["json", "once", "errors", "listen"])]
    pub prometheus: bool,
    /// Serve the counters over HTTP at ADDR (e.g. 127.0.0.1:9464), path /metrics, until
    /// SIGINT or SIGTERM, or --count answers.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["json", "once", "errors"])]
    pub listen: Option<std::net::SocketAddr>,
    /// List each process's recent distinct errors (links cut, corrupt messages, refused
    /// handshakes, lost sessions) and exit.
    #[arg(long, conflicts_with = "once")]
    pub errors: bool,
    /// Refresh interval in milliseconds (50 to 3,600,000); with --once, the time between
    /// the two snapshots the rates come from.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub interval: u64,
    /// Stop after this many refreshes (with --listen: answers with the metrics; at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Messages received so far by the subscriptions of process `pid` (from its stats file).
pub fn received_by(pid: u32) -> Option<u64> {
    let procs = snapshot::snapshot(&stats_file::list(), Some(pid));
    let p = procs.first()?;
    Some(
        p.rows
            .iter()
            .filter(|r| r.kind == "subscription")
            .map(|r| r.counters[S::RECEIVED])
            .sum(),
    )
}

/// The stats files, saying once on stderr which files are skipped and why.
fn files(warned: &mut HashSet<PathBuf>) -> Vec<StatsFile> {
    let scan = stats_file::scan();
    for (path, why) in scan.skipped {
        if warned.insert(path) {
            eprintln!("rdmabus stat: skipped {}", snapshot::escape(&why));
        }
    }
    scan.files
}

/// Sleeps `d` in slices, so that a signal ends it at once; false when stopped.
fn sleep(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if crate::signals::stopped().is_some() {
            return false;
        }
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20)),
        );
    }
    true
}

/// Runs `rdmabus stat`.
pub fn run(a: StatArgs) -> Result<(), Error> {
    let mut warned = HashSet::new();
    let mut out = std::io::stdout().lock();
    if a.errors {
        let procs = text::errors(&files(&mut warned), a.pid);
        if a.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&procs).expect("serializes")
            )
            .ok();
        } else {
            text::print_errors(&procs, &mut out).ok();
        }
        out.flush().ok();
        return Ok(());
    }
    if a.prometheus {
        let procs = snapshot::snapshot(&files(&mut warned), a.pid);
        out.write_all(prom::encode(procs, false).as_bytes()).ok();
        out.flush().ok();
        return Ok(());
    }
    drop(out);
    if let Some(addr) = a.listen {
        return serve::run(addr, a.count, a.pid);
    }
    let interval = Duration::from_millis(a.interval);
    let tty = std::io::stdout().is_terminal() && !a.json && !a.once;
    let mut previous: Option<(Vec<snapshot::Proc>, Instant)> = None;
    if a.once {
        // A first snapshot, for the rates of the one printed.
        previous = Some((
            snapshot::snapshot(&files(&mut warned), a.pid),
            Instant::now(),
        ));
        if !sleep(interval) {
            return Ok(());
        }
    }
    let mut n = 0u64;
    loop {
        let mut procs = snapshot::snapshot(&files(&mut warned), a.pid);
        let now = Instant::now();
        if let Some((before, at)) = &previous {
            snapshot::set_rates(before, &mut procs, now.duration_since(*at).as_secs_f64());
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
            text::print_table(&procs, &mut out).ok();
            if !tty && !a.once {
                writeln!(out).ok();
            }
        }
        out.flush().ok();
        drop(out);
        previous = Some((procs, now));
        n += 1;
        if a.once || a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        if !sleep(interval) {
            return Ok(());
        }
    }
}

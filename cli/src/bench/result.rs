//! Benchmark results: percentiles, the table, and the JSON file.

use crate::report::Latency;
use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds, 1 ns to 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Percentiles plotted and stored.
pub const CURVE: &[f64] = &[
    0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Summary of one histogram: the percentiles every report carries, and a curve for plots.
#[derive(Serialize, Clone, Debug)]
pub struct Percentiles {
    /// count, p50/p99/p99.9/max in ns (flattened: the JSON keeps them at this level).
    #[serde(flatten)]
    pub summary: Latency,
    /// (percentile, ns) along `CURVE`, for plots.
    pub curve: Vec<(f64, u64)>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            summary: Latency::from_histogram(h),
            curve: CURVE
                .iter()
                .map(|&p| (p, h.value_at_percentile(p)))
                .collect(),
        }
    }
}

/// One measured configuration.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// Series label for the plot ("64 B", "4 subs, 64 B").
    pub label: String,
    /// Payload bytes.
    pub size: usize,
    /// Subscribers (1 for ping-pong).
    pub subscribers: usize,
    /// Messages measured (per subscriber).
    pub messages: u64,
    /// One-way latency.
    pub latency: Percentiles,
    /// Messages per second (ping-pong: round trips; fan-out: published and delivered to all).
    pub msgs_per_s: f64,
    /// Payload megabytes per second delivered (all subscribers together).
    pub mb_per_s: f64,
    /// p50 as a multiple of the one-cache-line hand-off measured in the same run (`bench
    /// pingpong` and `bench limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_limit: Option<f64>,
    /// Fan-out: the publisher's time per `send()` to all subscribers, in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_ns: Option<f64>,
    /// Fan-out: per message, the time between the first and the last subscriber reading it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skew: Option<Latency>,
}

/// A whole run, as written with `--json`.
#[derive(Serialize, Debug)]
pub struct Report {
    pub benchmark: &'static str,
    pub transport: String,
    pub idle: String,
    pub access: String,
    pub host: String,
    /// The one-cache-line hand-off between the same CPUs, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Percentiles>,
    pub rows: Vec<Row>,
}

impl Report {
    /// Prints the table.
    pub fn print(&self) {
        println!(
            "{} over {} ({} idle, {} access, {})",
            self.benchmark, self.transport, self.idle, self.access, self.host
        );
        if let Some(l) = &self.limit {
            println!(
                "limit (one cache line between the same CPUs, this run): p50 {} ns, p99 {} ns",
                l.summary.p50_ns, l.summary.p99_ns
            );
        }
        println!(
            "{:>6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10} {:>8}",
            "size",
            "subs",
            "msgs",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us",
            "msgs/s",
            "MB/s",
            "x limit"
        );
        let fanout = self.rows.iter().any(|r| r.send_ns.is_some());
        for r in &self.rows {
            println!(
                "{:>6} {:>5} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>12.0} {:>10.2} {:>8}",
                r.size,
                r.subscribers,
                r.messages,
                r.latency.summary.p50_ns as f64 / 1e3,
                r.latency.summary.p99_ns as f64 / 1e3,
                r.latency.summary.p999_ns as f64 / 1e3,
                r.latency.summary.max_ns as f64 / 1e3,
                r.msgs_per_s,
                r.mb_per_s,
                r.x_limit.map_or("-".into(), |x| format!("{x:.2}"))
            );
        }
        if fanout {
            println!(
                "{:>6} {:>5} {:>14} {:>18} {:>15} {:>15}",
                "size", "subs", "send ns", "send ns per sub", "skew p50 us", "skew p99 us"
            );
            for r in &self.rows {
                let (Some(send), Some(skew)) = (r.send_ns, &r.skew) else {
                    continue;
                };
                println!(
                    "{:>6} {:>5} {:>14.1} {:>18.1} {:>15.3} {:>15.3}",
                    r.size,
                    r.subscribers,
                    send,
                    send / r.subscribers as f64,
                    skew.p50_ns as f64 / 1e3,
                    skew.p99_ns as f64 / 1e3
                );
            }
        }
    }

    /// Writes `--json` and `--svg` outputs.
    pub fn save(
        &self,
        json: Option<&std::path::Path>,
        svg: Option<&std::path::Path>,
    ) -> Result<(), rdmabus::Error> {
        if let Some(p) = json {
            let text = serde_json::to_string_pretty(self).expect("report serializes");
            std::fs::write(p, text)
                .map_err(|e| rdmabus::Error::io(format!("writing {}", p.display()), e))?;
        }
        if let Some(p) = svg {
            let title = format!(
                "rdmabus {} over {} — one-way latency by percentile",
                self.benchmark, self.transport
            );
            std::fs::write(p, super::plot::svg(&title, &self.rows))
                .map_err(|e| rdmabus::Error::io(format!("writing {}", p.display()), e))?;
        }
        Ok(())
    }
}

/// `uname -srm`-like description of where this ran.
pub fn host() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Linux {} {}, {} CPUs",
        release.trim(),
        std::env::consts::ARCH,
        rdmabus::affinity::allowed_cpus().len()
    )
}

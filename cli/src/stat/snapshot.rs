//! What `rdmabus stat` shows, read from the stats files: processes, their entries with named
//! values (the table in `rdmabus::stats_file::names`), latency summaries, rates.

use rdmabus::stats_file::{self, histogram, names, Entry, Kind, StatsFile, BUCKETS};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Escapes what a terminal or a log would act on in a string a peer may have supplied:
/// control characters (C0, DEL, C1), bidirectional overrides, and the backslash itself.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A subscription's latency, from its sampled histogram.
#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    /// Messages sampled (one in eight received).
    pub samples: u64,
    /// Sum of the sampled latencies, in seconds.
    pub sum_seconds: f64,
    /// Quantiles: upper bounds (ns) of the buckets holding them (3 % wide).
    pub p50_ns: Option<u64>,
    /// 90th percentile.
    pub p90_ns: Option<u64>,
    /// 99th percentile.
    pub p99_ns: Option<u64>,
    /// 99.9th percentile.
    pub p999_ns: Option<u64>,
    /// The largest sample's bucket.
    pub max_ns: Option<u64>,
}

/// One entry as shown.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// `topic`, `link` or `subscription`.
    pub kind: &'static str,
    /// The entry's name: the topic, or `topic/subscriber` (escaped).
    pub name: String,
    /// The topic.
    pub topic: String,
    /// The subscriber's name, for links and subscriptions (escaped).
    pub subscriber: Option<String>,
    /// The subscriber's id (0 for a topic).
    pub id: u32,
    /// The entry's index in the stats file.
    pub slot: usize,
    /// The values by name.
    pub values: BTreeMap<&'static str, u64>,
    /// Per-second rates of the counters (not the gauges), when measured.
    pub rates: Option<BTreeMap<&'static str, f64>>,
    /// Latency, for a subscription.
    pub latency: Option<Latency>,
    /// The same values by index, in the file's order (for this program; `--json` has
    /// `values`, by name).
    #[serde(skip)]
    pub counters: Vec<u64>,
    /// The entry's kind.
    #[serde(skip)]
    pub entry_kind: Kind,
    /// A subscription's histogram buckets and sum (ns).
    #[serde(skip)]
    pub histogram: Option<(Box<[u64; BUCKETS]>, u64)>,
}

impl Row {
    /// The value of the counter defined by `d`.
    pub fn value(&self, d: &names::Def) -> u64 {
        self.counters[d.index]
    }
}

/// One process as shown.
#[derive(Serialize, Clone, Debug)]
pub struct Proc {
    /// Its pid (in its PID namespace).
    pub pid: u32,
    /// Whether the process is in our PID namespace (otherwise its pid means nothing here,
    /// and whether it still runs cannot be told).
    pub same_pid_ns: bool,
    /// Its PID namespace (inode).
    pub pid_ns: u64,
    /// Its command line, shortened (escaped).
    pub command: String,
    /// Its name (`/proc/<pid>/comm`; `?` in another PID namespace).
    pub process: String,
    /// Seconds since it made its stats file.
    pub uptime_s: f64,
    /// Start time, seconds since the epoch.
    pub started_s: f64,
    /// Errors it noted since it started (`--errors` lists the recent distinct ones).
    pub errors_noted: u64,
    /// Its entries.
    pub rows: Vec<Row>,
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
    escape(&s)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| escape(s.trim_end()))
        .unwrap_or_else(|_| "?".into())
}

fn latency(h: &[u64; BUCKETS], sum_ns: u64) -> Latency {
    Latency {
        samples: h.iter().sum(),
        sum_seconds: sum_ns as f64 / 1e9,
        p50_ns: histogram::quantile(h, 0.5),
        p90_ns: histogram::quantile(h, 0.9),
        p99_ns: histogram::quantile(h, 0.99),
        p999_ns: histogram::quantile(h, 0.999),
        max_ns: histogram::quantile(h, 1.0),
    }
}

/// The entry as shown, `None` when free.
pub fn row(slot: usize, e: &Entry) -> Option<Row> {
    let kind = e.kind();
    if kind == Kind::Free {
        return None;
    }
    // The histogram first, then the counters: the samples counted (one message in eight)
    // never run ahead of the messages received.
    let (histogram, latency) = if kind == Kind::Subscription {
        let h = Box::new(e.histogram());
        let sum = e.latency_sum_ns();
        let l = latency(&h, sum);
        (Some((h, sum)), Some(l))
    } else {
        (None, None)
    };
    let counters: Vec<u64> = (0..stats_file::COUNTERS).map(|i| e.get(i)).collect();
    let raw = e.name();
    let (topic, subscriber) = match (kind, raw.split_once('/')) {
        (Kind::Topic, _) | (_, None) => (raw.clone(), None),
        (_, Some((t, s))) => (t.to_string(), Some(escape(s))),
    };
    let values = names::of(kind)
        .iter()
        .map(|d| (d.name, counters[d.index]))
        .collect();
    Some(Row {
        kind: names::kind_name(kind),
        name: escape(&raw),
        topic: escape(&topic),
        subscriber,
        id: e.id(),
        slot,
        values,
        rates: None,
        latency,
        counters,
        entry_kind: kind,
        histogram,
    })
}

/// Whether `f` is of process `pid` (in our PID namespace), or any when `None`.
pub fn selected(f: &StatsFile, only: Option<u32>) -> bool {
    only.is_none_or(|p| p == f.pid() && f.in_our_pid_ns())
}

/// The process behind `f` (without its rows).
pub fn process(f: &StatsFile, now_ns: u64) -> Proc {
    let ours = f.in_our_pid_ns();
    Proc {
        pid: f.pid(),
        same_pid_ns: ours,
        pid_ns: f.pid_ns(),
        command: if ours {
            command(f.pid())
        } else {
            format!("(another PID namespace, {})", f.pid_ns())
        },
        process: if ours { comm(f.pid()) } else { "?".into() },
        uptime_s: now_ns.saturating_sub(f.started_ns()) as f64 / 1e9,
        started_s: f.started_ns() as f64 / 1e9,
        errors_noted: f.errors_noted(),
        rows: Vec::new(),
    }
}

/// A snapshot of `files` (of process `only`, or all).
pub fn snapshot(files: &[StatsFile], only: Option<u32>) -> Vec<Proc> {
    let now = rdmabus::clock::now_ns();
    files
        .iter()
        .filter(|f| selected(f, only))
        .map(|f| Proc {
            rows: (0..stats_file::CAPACITY)
                .filter_map(|i| row(i, f.entry(i)))
                .collect(),
            ..process(f, now)
        })
        .collect()
}

/// Sets the rates of `now`'s rows from the same rows in `before`, taken `dt` seconds earlier.
pub fn set_rates(before: &[Proc], now: &mut [Proc], dt: f64) {
    let dt = dt.max(1e-6);
    let old: HashMap<(u32, u64, usize, &'static str, &str, u32), &Row> = before
        .iter()
        .flat_map(|p| {
            p.rows
                .iter()
                .map(move |r| ((p.pid, p.pid_ns, r.slot, r.kind, r.name.as_str(), r.id), r))
        })
        .collect();
    for p in now.iter_mut() {
        for r in &mut p.rows {
            let key = (p.pid, p.pid_ns, r.slot, r.kind, r.name.as_str(), r.id);
            let Some(o) = old.get(&key) else { continue };
            let rates = names::of(r.entry_kind)
                .iter()
                .filter(|d| d.ty == names::Type::Counter)
                .map(|d| (d.name, r.value(d).saturating_sub(o.value(d)) as f64 / dt))
                .collect();
            r.rates = Some(rates);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_text_and_escapes_controls() {
        assert_eq!(escape("quotes/sub-1 é"), "quotes/sub-1 é");
        assert_eq!(escape("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(escape("x\u{202e}y\u{85}\\"), "x\\u{202e}y\\u{85}\\\\");
    }
}

//! Reports printed by `sub --json` and `pub --json`, and the demo's table.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// What one subscriber saw on one topic.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct TopicReport {
    pub topic: String,
    pub subscriber_id: u32,
    pub received: u64,
    pub gaps: u64,
    pub lost: u64,
    pub dropped_announced: u64,
    /// Lost sequences as (first, count), at most 10,000 entries.
    pub lost_ranges: Vec<(u64, u64)>,
    pub corrupt: u64,
    /// Of the messages received, those that came from the publisher's history.
    #[serde(default)]
    pub repaired: u64,
    /// Times the subscription reconnected (sub --reconnect).
    #[serde(default)]
    pub reconnects: u64,
    /// The publisher sessions reached by reconnecting, in order.
    #[serde(default)]
    pub sessions: Vec<SessionReport>,
    pub verify_failures: u64,
    pub order_errors: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// How it ended: "count", "seconds", "closed: …", "lost: …".
    pub end: String,
    pub latency: Latency,
}

/// A publisher session a subscriber reconnected to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SessionReport {
    /// The session's epoch, in hex.
    pub epoch: String,
    /// Whether its numbering continued the previous session's.
    pub continues: bool,
    /// Its next sequence when the subscriber joined it.
    pub next_seq: u64,
    /// Time without a publisher, in ms.
    pub down_ms: f64,
    /// How the previous session ended.
    pub previous_end: String,
}

/// What `rdmabus sub --json` prints.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SubReport {
    pub name: String,
    /// "shm" or "verbs".
    pub transport: String,
    pub pid: u32,
    pub topics: Vec<TopicReport>,
    pub latency: Latency,
}

/// One subscriber as a publisher saw it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PubSubscriber {
    pub id: u32,
    pub name: String,
    pub sent: u64,
    pub dropped: u64,
    pub credit_stalls: u64,
    pub errors: u64,
    pub end: String,
}

/// One topic as `rdmabus pub --json` reports it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PubTopic {
    pub topic: String,
    pub published: u64,
    pub subscribers: Vec<PubSubscriber>,
}

impl PubTopic {
    pub fn from_stats(topic: &str, s: &rdmabus::PublisherStats) -> Self {
        Self {
            topic: topic.to_string(),
            published: s.published,
            subscribers: s
                .subscribers
                .iter()
                .map(|i| PubSubscriber {
                    id: i.id,
                    name: i.name.clone(),
                    sent: i.sent,
                    dropped: i.dropped,
                    credit_stalls: i.credit_stalls,
                    errors: i.errors,
                    end: format!("{:?}", i.end),
                })
                .collect(),
        }
    }
}

/// Formats nanoseconds as microseconds with one decimal.
pub fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// Formats a count with thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

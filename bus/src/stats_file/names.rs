//! What every counter of an entry is called: one table, read by `rdmabus stat` for its text
//! view, `--json` (the field names) and `--prometheus` (the metric names, with a `rdmabus_`
//! and kind prefix: `rdmabus_link_dropped_messages_total`).

use super::{link as L, sub as S, topic as T, Kind};

/// Whether a value only grows (a counter) or goes up and down (a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// Only grows while the entry lives (Prometheus `counter`).
    Counter,
    /// A level (Prometheus `gauge`).
    Gauge,
}

/// One counter of an entry.
#[derive(Clone, Copy, Debug)]
pub struct Def {
    /// Its index in the entry (`topic::PUBLISHED`, ...).
    pub index: usize,
    /// Its full name: `base`, then `_unit` if any, then `_total` for a counter.
    pub name: &'static str,
    /// The name without unit and `_total`.
    pub base: &'static str,
    /// Its unit (`messages`), if any.
    pub unit: Option<&'static str>,
    /// Counter or gauge.
    pub ty: Type,
    /// A short label for the text view.
    pub short: &'static str,
    /// One line saying what it counts.
    pub help: &'static str,
}

const fn c(
    index: usize,
    name: &'static str,
    base: &'static str,
    unit: Option<&'static str>,
    short: &'static str,
    help: &'static str,
) -> Def {
    Def {
        index,
        name,
        base,
        unit,
        ty: Type::Counter,
        short,
        help,
    }
}

const fn connected(index: usize, help: &'static str) -> Def {
    Def {
        index,
        name: "connected",
        base: "connected",
        unit: None,
        ty: Type::Gauge,
        short: "connected",
        help,
    }
}

const MSG: Option<&str> = Some("messages");

/// A topic's counters (a publisher's).
#[rustfmt::skip]
pub const TOPIC: &[Def] = &[
    c(T::PUBLISHED, "published_messages_total", "published", MSG, "published",
        "Messages published (sequenced), with or without subscribers."),
    c(T::JOINS, "subscriber_joins_total", "subscriber_joins", None, "joins",
        "Subscribers that joined (one that reconnects counts again)."),
    c(T::LEAVES, "subscriber_leaves_total", "subscriber_leaves", None, "leaves",
        "Subscribers that left or were cut."),
];

/// A link's counters (one subscriber as its publisher sees it).
#[rustfmt::skip]
pub const LINK: &[Def] = &[
    c(L::SENT, "sent_messages_total", "sent", MSG, "sent",
        "Messages written into the subscriber's ring."),
    c(L::DROPPED, "dropped_messages_total", "dropped", MSG, "dropped",
        "Messages skipped for the subscriber (policy Drop)."),
    c(L::CREDIT_STALLS, "credit_stalls_total", "credit_stalls", None, "stalls",
        "Times the subscriber's ring was found full."),
    c(L::ERRORS, "transport_errors_total", "transport_errors", None, "errors",
        "Transport or protocol errors on the link (completion errors, bad credit)."),
    connected(L::ACTIVE, "1 while the subscriber is connected."),
    c(L::STALL_CUTS, "stall_cuts_total", "stall_cuts", None, "stall-cuts",
        "Times the subscriber was cut for holding a Block publisher past its stall budget."),
    c(L::REPAIRED, "history_sent_messages_total", "history_sent", MSG, "from-history",
        "Messages written to the subscriber from the history (a late join or a catch-up)."),
];

/// A subscription's counters (a subscriber's).
#[rustfmt::skip]
pub const SUBSCRIPTION: &[Def] = &[
    c(S::RECEIVED, "received_messages_total", "received", MSG, "received",
        "Messages handed to the application."),
    c(S::GAPS, "gaps_total", "gaps", None, "gaps", "Gap events."),
    c(S::LOST, "lost_messages_total", "lost", MSG, "lost", "Sequences lost in gaps."),
    c(S::CORRUPT, "corrupt_messages_total", "corrupt", MSG, "corrupt",
        "Messages refused as corrupt."),
    connected(S::ACTIVE, "1 while the subscription is connected."),
    c(S::ANNOUNCED, "announced_dropped_messages_total", "announced_dropped", MSG, "announced",
        "Of the lost sequences, those the publisher announced it dropped (policy Drop)."),
    c(S::REPAIRED, "repaired_messages_total", "repaired", MSG, "repaired",
        "Messages received from the publisher's history (a late join or a catch-up)."),
    c(S::RECONNECTS, "reconnects_total", "reconnects", None, "reconnects",
        "Times the subscription reconnected to its publisher."),
];

/// The subscription's latency histogram.
pub const LATENCY: Histogram = Histogram {
    name: "latency_seconds",
    base: "latency",
    unit: "seconds",
    help: "One-way latency from the publisher's send() to the subscriber's read, \
           sampled (one message in eight).",
};

/// A histogram's names.
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    /// Full name: `base` then `_unit`.
    pub name: &'static str,
    /// The name without unit.
    pub base: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// One line saying what it measures.
    pub help: &'static str,
}

/// The counters of an entry of `kind` (none for a free entry).
pub fn of(kind: Kind) -> &'static [Def] {
    match kind {
        Kind::Free => &[],
        Kind::Topic => TOPIC,
        Kind::Link => LINK,
        Kind::Subscription => SUBSCRIPTION,
    }
}

/// The name of `kind` in metric names and JSON (`topic`, `link`, `subscription`).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Free => "free",
        Kind::Topic => "topic",
        Kind::Link => "link",
        Kind::Subscription => "subscription",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_of_base_unit_and_type_and_unique() {
        for kind in [Kind::Topic, Kind::Link, Kind::Subscription] {
            let defs = of(kind);
            let mut seen = std::collections::HashSet::new();
            for d in defs {
                let mut n = d.base.to_string();
                if let Some(u) = d.unit {
                    n = format!("{n}_{u}");
                }
                if d.ty == Type::Counter {
                    n += "_total";
                }
                assert_eq!(n, d.name);
                assert!(d.index < super::super::COUNTERS);
                assert!(seen.insert(d.index), "{kind:?}: index {} twice", d.index);
                assert!(d.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            }
            let names: std::collections::HashSet<_> = defs.iter().map(|d| d.name).collect();
            assert_eq!(names.len(), defs.len());
        }
        assert_eq!(format!("{}_{}", LATENCY.base, LATENCY.unit), LATENCY.name);
    }
}

//! `rdmabus stat --prometheus` and `/metrics`: a snapshot in the Prometheus text format
//! (version 0.0.4, what node_exporter's textfile collector reads) or OpenMetrics, encoded by
//! `prometheus-client`.
//!
//! Metric names: `rdmabus_<kind>_<name>` from the table in `rdmabus::stats_file::names`
//! (`rdmabus_topic_published_messages_total`, `rdmabus_link_dropped_messages_total`,
//! `rdmabus_subscription_latency_seconds`...). Labels: `pid`, `process`, `role`
//! (`publisher` or `subscriber`), `topic`, `subscriber` and `subscriber_id` (links and
//! subscriptions), `slot` (the entry's index in the stats file: two topics of the same name
//! in one process stay apart) and, for a process of another PID namespace, `pid_ns`.

use super::snapshot::{Proc, Row};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rdmabus::stats_file::{histogram, names, Kind};
use std::collections::HashMap;

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Snapshot(Vec<Proc>);

type Labels = Vec<(&'static str, String)>;

fn proc_labels(p: &Proc) -> Labels {
    let mut l = vec![("pid", p.pid.to_string()), ("process", p.process.clone())];
    if !p.same_pid_ns {
        l.push(("pid_ns", p.pid_ns.to_string()));
    }
    l
}

fn row_labels(p: &Proc, r: &Row) -> Labels {
    let mut l = proc_labels(p);
    let role = if r.entry_kind == Kind::Subscription {
        "subscriber"
    } else {
        "publisher"
    };
    l.push(("role", role.into()));
    l.push(("topic", r.topic.clone()));
    if r.entry_kind != Kind::Topic {
        l.push(("subscriber", r.subscriber.clone().unwrap_or_default()));
        l.push(("subscriber_id", r.id.to_string()));
    }
    l.push(("slot", r.slot.to_string()));
    l
}

impl Snapshot {
    fn rows(&self, kind: Kind) -> impl Iterator<Item = (&Proc, &Row)> {
        self.0
            .iter()
            .flat_map(|p| p.rows.iter().map(move |r| (p, r)))
            .filter(move |(_, r)| r.entry_kind == kind)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.0.is_empty() {
            let mut m = enc.encode_descriptor(
                "rdmabus_process_start_time",
                "When the process made its stats file, seconds since the epoch.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for p in &self.0 {
                m.encode_family(&proc_labels(p))?
                    .encode_gauge(&p.started_s)?;
            }
            let mut m = enc.encode_descriptor(
                "rdmabus_errors_noted",
                "Errors the process noted (`rdmabus stat --errors` lists the recent ones).",
                None,
                MetricType::Counter,
            )?;
            for p in &self.0 {
                m.encode_family(&proc_labels(p))?
                    .encode_counter::<NoLabelSet, _, u64>(&p.errors_noted, None)?;
            }
        }
        for kind in [Kind::Topic, Kind::Link, Kind::Subscription] {
            if self.rows(kind).next().is_none() {
                continue;
            }
            for d in names::of(kind) {
                let name = format!("rdmabus_{}_{}", names::kind_name(kind), d.base);
                let unit = d.unit.map(|u| Unit::Other(u.into()));
                let ty = match d.ty {
                    names::Type::Counter => MetricType::Counter,
                    names::Type::Gauge => MetricType::Gauge,
                };
                let mut m = enc.encode_descriptor(&name, d.help, unit.as_ref(), ty)?;
                for (p, r) in self.rows(kind) {
                    let labels = row_labels(p, r);
                    let mut f = m.encode_family(&labels)?;
                    match d.ty {
                        names::Type::Counter => {
                            f.encode_counter::<NoLabelSet, _, u64>(&r.value(d), None)?
                        }
                        names::Type::Gauge => f.encode_gauge(&r.value(d))?,
                    }
                }
            }
        }
        if self.rows(Kind::Subscription).next().is_some() {
            let h = names::LATENCY;
            let name = format!("rdmabus_subscription_{}", h.base);
            let mut m =
                enc.encode_descriptor(&name, h.help, Some(&Unit::Seconds), MetricType::Histogram)?;
            for (p, r) in self.rows(Kind::Subscription) {
                let Some((buckets, sum_ns)) = &r.histogram else {
                    continue;
                };
                let folded: Vec<(f64, u64)> = histogram::fold(buckets)
                    .into_iter()
                    .map(|(b, n)| {
                        let le = if b == u64::MAX {
                            f64::INFINITY
                        } else {
                            b as f64 / 1e9
                        };
                        (le, n)
                    })
                    .collect();
                let count = buckets.iter().sum();
                let labels = row_labels(p, r);
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    *sum_ns as f64 / 1e9,
                    count,
                    &folded,
                    None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                )?;
            }
        }
        Ok(())
    }
}

/// `procs` in the Prometheus text format (or OpenMetrics, ending in `# EOF`).
pub fn encode(procs: Vec<Proc>, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(procs)));
    let mut out = String::new();
    let r = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    r.expect("writing into a String does not fail");
    out
}

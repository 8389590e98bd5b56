//! `rdmabus stat`, a separate process, reads this process's live counters from its stats file.

mod common;

use common::psk;
use rdmabus::proto::market::Quote;
use rdmabus::Event;
use serde_json::Value;
use std::time::Duration;

fn stat_once() -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args([
            "stat",
            "--once",
            "--json",
            "--interval",
            "50",
            "--pid",
            &std::process::id().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn counter(procs: &Value, kind: &str, name: &str, value: &str) -> u64 {
    procs[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {procs}"))["values"][value]
        .as_u64()
        .unwrap_or_else(|| panic!("no {value} in {procs}"))
}

#[test]
fn another_process_reads_the_live_counters() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node.publisher::<Quote>("stat.q").build().unwrap();
    let mut s = common::subscriber::<Quote>(node.local_addr(), "stat.q", psk())
        .name("watcher")
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    for round in 1..=2u64 {
        for i in 0..100 {
            p.publish(&Quote::synthetic(i)).unwrap();
            assert!(matches!(s.recv().unwrap(), Event::Message(_)));
        }
        // The counters move between two reads by another process.
        let procs = stat_once();
        assert_eq!(procs[0]["pid"], std::process::id());
        assert_eq!(
            counter(&procs, "topic", "stat.q", "published_messages_total"),
            100 * round
        );
        assert_eq!(
            counter(&procs, "link", "stat.q/watcher", "sent_messages_total"),
            100 * round
        );
        // The last message's slot is released on the next poll, and counted on delivery.
        assert_eq!(
            counter(
                &procs,
                "subscription",
                "stat.q/watcher",
                "received_messages_total"
            ),
            100 * round
        );
    }
    // Connected subscriptions and links say so; a subscription whose publisher left says not.
    let procs = stat_once();
    // One message in eight was timed: 25 of the 200, under a second each.
    let row = procs[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "subscription")
        .unwrap();
    assert_eq!(row["latency"]["samples"], 25, "{row}");
    let p50 = row["latency"]["p50_ns"].as_u64().unwrap();
    assert!(
        p50 > 0 && p50 <= row["latency"]["max_ns"].as_u64().unwrap(),
        "{row}"
    );
    assert!(
        row["latency"]["sum_seconds"].as_f64().unwrap() < 25.0,
        "{row}"
    );
    assert_eq!(row["subscriber"], "watcher");
    assert_eq!(row["topic"], "stat.q");
    assert_eq!(
        counter(&procs, "subscription", "stat.q/watcher", "connected"),
        1
    );
    assert_eq!(counter(&procs, "link", "stat.q/watcher", "connected"), 1);
    drop(p);
    let end = loop {
        match s.recv_timeout(Duration::from_secs(5)) {
            Err(e) => break e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("no end"),
        }
    };
    assert!(matches!(end, rdmabus::Error::Closed { .. }), "{end}");
    assert_eq!(
        counter(&stat_once(), "subscription", "stat.q/watcher", "connected"),
        0
    );
}

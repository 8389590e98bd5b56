//! `rdmabus bench`: the limit (one cache line between the same CPUs) is measured in the same
//! run as the bus's ping-pong, and every ping-pong row carries its p50 as a multiple of it.
//! Structure only: speed is for the benchmark's readers, never asserted here.

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let dir =
        std::env::temp_dir().join(format!("rdmabus-bench-{}-{}", std::process::id(), args[0]));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join(format!("{}.json", args[0]));
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .arg("bench")
        .args(args)
        .args(["--iters", "2000", "--warmup", "200", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    v
}

#[test]
fn pingpong_reports_the_limit_of_the_same_run_and_each_row_as_a_multiple_of_it() {
    let v = bench(&["pingpong", "--sizes", "64,1024"]);
    let limit = v["limit"]["p50_ns"]
        .as_u64()
        .expect("a limit in the report");
    assert!(limit > 0, "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let x = r["x_limit"].as_f64().expect("x_limit on every row");
        let p50 = r["latency"]["p50_ns"].as_u64().unwrap() as f64;
        assert!((x - p50 / limit as f64).abs() < 0.05 * x.max(1.0), "{r}");
    }
}

#[test]
fn limit_alone_is_one_row() {
    let v = bench(&["limit"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["x_limit"].as_f64(), Some(1.0));
    assert!(rows[0]["latency"]["p50_ns"].as_u64().unwrap() > 0);
}

#[test]
fn fanout_reports_the_publishers_cost_per_send_and_the_delivery_skew() {
    let v = bench(&[
        "fanout",
        "--sizes",
        "64",
        "--subscribers",
        "1,2",
        "--idle",
        "yield",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        assert!(r["send_ns"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["skew"]["p50_ns"].as_u64().is_some(), "{r}");
    }
    // One subscriber is both the first and the last to read every message.
    assert!(
        rows[0]["skew"]["max_ns"].as_u64().unwrap() <= 1,
        "{}",
        rows[0]
    );
}

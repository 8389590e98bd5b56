//! `rdmabus stat` against real `rdmabus pub` and `rdmabus sub` processes: `--prometheus`
//! parsed by a real exposition-format parser, `--listen` over real TCP (with a client that
//! never speaks), `--errors` after a real refused handshake, `--once` rates, and stats files
//! of another layout version.

mod common;

use common::{publisher, sub, Proc};
use prometheus_parse::{Sample, Scrape, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rdmabus(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rdmabus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition format parses")
}

fn scrape(pid: u32) -> (String, Scrape) {
    let out = rdmabus(&["stat", "--prometheus", "--pid", &pid.to_string()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let s = parse(&text);
    (text, s)
}

fn find<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

fn counter(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(s, metric, labels)?.value {
        Value::Counter(v) => Some(v),
        ref other => panic!("{metric} is not a counter: {other:?}"),
    }
}

/// Scrapes `pid` until `ok` holds (30 s at most).
fn scrape_until(pid: u32, what: &str, ok: impl Fn(&Scrape) -> bool) -> (String, Scrape) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, s) = scrape(pid);
        if ok(&s) {
            return (text, s);
        }
        assert!(Instant::now() < deadline, "never {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A subscriber that runs for a while, named `name`.
fn watcher(addr: std::net::SocketAddr, name: &str) -> Proc {
    sub(addr, &format!("-t quotes --seconds 60 --name {name}"))
}

#[test]
fn prometheus_output_of_real_processes_parses_with_the_right_labels() {
    let (p, addr) = publisher("-t quotes --rate 2000");
    let s = watcher(addr, "prom-watcher");
    let pid = p.pid().to_string();
    let link = [
        ("pid", pid.as_str()),
        ("role", "publisher"),
        ("topic", "quotes"),
        ("subscriber", "prom-watcher"),
    ];
    let (text, scrape) = scrape_until(p.pid(), "sent to the subscriber", |s| {
        counter(s, "rdmabus_link_sent_messages_total", &link).is_some_and(|v| v > 0.0)
    });
    let published = counter(
        &scrape,
        "rdmabus_topic_published_messages_total",
        &[("pid", &pid), ("role", "publisher"), ("topic", "quotes")],
    )
    .unwrap_or_else(|| panic!("no published counter:\n{text}"));
    let sent = counter(&scrape, "rdmabus_link_sent_messages_total", &link).unwrap();
    assert!(published >= sent && sent > 0.0, "{published} {sent}");
    let t = find(&scrape, "rdmabus_topic_published_messages_total", &[]).unwrap();
    assert_eq!(t.labels.get("process"), Some("rdmabus"));
    assert!(t.labels.get("subscriber").is_none(), "{:?}", t.labels);
    assert!(text.contains("# TYPE rdmabus_topic_published_messages_total counter"));
    assert!(text.contains("# TYPE rdmabus_link_connected gauge"));
    match &find(&scrape, "rdmabus_link_connected", &link)
        .unwrap()
        .value
    {
        Value::Gauge(v) => assert_eq!(*v, 1.0),
        v => panic!("{v:?}"),
    }
    // Only the process asked for.
    assert!(scrape
        .samples
        .iter()
        .all(|x| x.labels.get("pid") == Some(&pid)));

    // The subscriber's side: its latency histogram, cumulative, on the fixed bounds.
    let sub_pid = s.pid().to_string();
    let lat = "rdmabus_subscription_latency_seconds";
    let (text, scrape) = scrape_until(s.pid(), "sampled a latency", |sc| {
        counter(
            sc,
            "rdmabus_subscription_received_messages_total",
            &[("role", "subscriber")],
        )
        .is_some_and(|v| v >= 64.0)
    });
    let received = counter(
        &scrape,
        "rdmabus_subscription_received_messages_total",
        &[
            ("pid", &sub_pid),
            ("topic", "quotes"),
            ("subscriber", "prom-watcher"),
        ],
    )
    .unwrap();
    let h = find(&scrape, lat, &[("pid", &sub_pid), ("role", "subscriber")])
        .unwrap_or_else(|| panic!("no histogram:\n{text}"));
    let Value::Histogram(buckets) = &h.value else {
        panic!("{lat} is not a histogram: {:?}", h.value)
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert_eq!(bounds.len(), 59, "{bounds:?}");
    assert_eq!(bounds[0], 128e-9);
    assert_eq!(bounds[1], 192e-9);
    assert_eq!(bounds[57], 1.5 * 2f64.powi(35) / 1e9);
    assert_eq!(bounds[58], f64::INFINITY);
    assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "not cumulative: {counts:?}"
    );
    let count_line = |suffix: &str| {
        scrape
            .samples
            .iter()
            .find(|x| x.metric == format!("{lat}_{suffix}"))
            .map(|x| match x.value {
                Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v) => v,
                _ => panic!(),
            })
            .unwrap_or_else(|| panic!("no {lat}_{suffix}:\n{text}"))
    };
    let (count, sum) = (count_line("count"), count_line("sum"));
    assert_eq!(counts[58], count, "+Inf is the count");
    // One message in eight is sampled (the histogram is read before the counters).
    assert!(
        count >= 1.0 && count <= (received / 8.0).floor(),
        "{count} of {received}"
    );
    // Latencies are positive and (on any machine that runs this) under 10 s each.
    assert!(sum > 0.0 && sum < count * 10.0, "{sum} for {count}");
    drop(s);
    drop(p);
}

/// Starts `rdmabus stat --listen 127.0.0.1:0` with extra arguments; returns it and its address.
fn listener(args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["stat", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("stat printed nothing").unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (Proc(Some(child)), addr)
}

/// One HTTP/1.1 request; returns the status line, the head and the body.
fn get(addr: &str, head: &str) -> (String, String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    let (h, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = h.lines().next().unwrap_or("").to_string();
    (status, h.to_string(), body.to_string())
}

#[test]
fn listen_serves_metrics_and_a_silent_client_blocks_no_one() {
    let (p, _addr) = publisher("-t quotes --rate 1000");
    let pid = p.pid().to_string();
    let (server, addr) = listener(&["--count", "2", "--pid", &pid]);
    // A client that connects and never sends a byte, held open all along.
    let silent = TcpStream::connect(&addr).unwrap();
    // One that sends half a request and stops.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let start = Instant::now();
    let (status, _, _) = get(&addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    let (status, _, _) = get(&addr, "POST /metrics HTTP/1.1\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    let (status, head, body) = get(&addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    // Answered while the two others still hold their connections (they get 5 s).
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let s = parse(&body);
    let published = counter(
        &s,
        "rdmabus_topic_published_messages_total",
        &[("pid", &pid), ("topic", "quotes")],
    );
    assert!(published.is_some(), "{body}");
    // OpenMetrics when asked for.
    let (status, head, body) = get(
        &addr,
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("rdmabus_topic_published_messages_total{"),
        "{body}"
    );
    // Two answers with the metrics: it stops by itself.
    let (status, _) = server.finish(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    drop((silent, half));
}

#[test]
fn a_refused_handshake_is_listed_by_errors() {
    let (p, addr) = publisher("-t quotes --rate 100");
    let pid = p.pid().to_string();
    let wrong = "rdmabus-psk-v1:33333333333333333333333333333333333333333333333333333333333333cd";
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
            .args([
                "sub",
                "--connect",
                &addr.to_string(),
                "-t",
                "quotes",
                "--count",
                "1",
            ])
            .env("RDMABUS_PSK", wrong)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("keys differ"), "{stderr}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let out = rdmabus(&["stat", "--errors", "--json", "--pid", &pid]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["pid"], p.pid());
        let found = v[0]["errors"].as_array().unwrap().iter().find(|e| {
            let m = e["message"].as_str().unwrap();
            m.contains("refused subscriber") && m.contains("AuthFailed")
        });
        // The same refusal twice: one entry, counted twice.
        if let Some(e) = found.filter(|e| e["count"] == 2) {
            assert!(v[0]["errors_noted"].as_u64().unwrap() >= 2, "{v}");
            break e["message"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no refusal listed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        refusal.contains("(peer 127.0.0.1)") || refusal.contains("(peer "),
        "{refusal}"
    );
    let out = rdmabus(&["stat", "--errors", "--pid", &pid]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&refusal) && text.contains("2x"), "{text}");
    // The counters view points at them.
    let out = rdmabus(&["stat", "--once", "--interval", "50", "--pid", &pid]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("errors noted (stat --errors)"), "{text}");
}

#[test]
fn once_prints_rates_measured_over_the_interval() {
    let (p, _addr) = publisher("-t quotes --rate 1000");
    let pid = p.pid().to_string();
    let out = rdmabus(&[
        "stat",
        "--once",
        "--json",
        "--interval",
        "500",
        "--pid",
        &pid,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let topic = v[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "topic" && r["topic"] == "quotes")
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    let rate = topic["rates"]["published_messages_total"].as_f64().unwrap();
    // 1000/s asked for; a busy 2-core machine may pace it unevenly.
    assert!((100.0..5000.0).contains(&rate), "{rate}: {topic}");
    assert!(
        topic["values"]["published_messages_total"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(topic["rates"]["subscriber_joins_total"], 0.0);
    // Gauges have no rate.
    assert!(topic["rates"].get("connected").is_none());
    let started = Instant::now();
    let out = rdmabus(&["stat", "--once", "--interval", "300", "--pid", &pid]);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("topic quotes"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("published ") && line.contains("/s)"),
        "{line}"
    );
}

#[test]
fn a_stats_file_of_another_version_is_skipped_with_a_message() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("rdmabus-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Version 2's layout: 64-byte header, 256 entries of 640 bytes.
    let v2 = |pid: u32, name: &str| {
        let mut b = vec![0u8; 64 + 256 * 640];
        b[..8].copy_from_slice(b"RDMBSTAT");
        b[8..12].copy_from_slice(&pid.to_le_bytes());
        b[12..16].copy_from_slice(&2u32.to_le_bytes());
        b[24..32].copy_from_slice(&rdmabus::stats_file::own_pid_ns().to_le_bytes());
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(&b).unwrap();
        path
    };
    // One of a live process (this one), one of a process that is gone.
    let live = v2(std::process::id(), "rdmabus-stats-1-00000000000000aa");
    let mut t = Command::new("true").spawn().unwrap();
    let gone_pid = t.id();
    t.wait().unwrap();
    let gone = v2(gone_pid, "rdmabus-stats-2-00000000000000bb");
    let junk = dir.join("rdmabus-stats-3-00000000000000cc");
    std::fs::write(&junk, b"not a stats file at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["stat", "--once", "--interval", "50"])
        .env("RDMABUS_SHM_DIR", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("no running rdmabus processes"), "{stdout}");
    let about = |p: &std::path::Path| {
        stderr
            .lines()
            .filter(|l| l.contains(&*p.to_string_lossy()))
            .collect::<Vec<_>>()
    };
    // Said once (not at each of the two snapshots), naming the version.
    let l = about(&live);
    assert_eq!(l.len(), 1, "{stderr}");
    assert!(
        l[0].contains("layout version 2") && l[0].contains("reads version 3"),
        "{stderr}"
    );
    assert!(live.exists());
    assert!(about(&gone).is_empty() && !gone.exists(), "{stderr}");
    let j = about(&junk);
    assert!(
        j.len() == 1 && j[0].contains("not an rdmabus stats file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

//! A subscriber with reconnect rides through its publisher's death and restarts, as processes
//! (`rdmabus pub`, `rdmabus sub --reconnect`), over the suite's transport: the publisher is
//! killed with SIGKILL and restarted on the same address (numbering starts again), then
//! stopped with SIGTERM and restarted resuming its numbering (`--first-seq`); the subscriber
//! reports both sessions correctly, every message it got is intact and in order within its
//! session, and the resumed session continues without a gap or a duplicate.

mod common;

use common::{u, Proc};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `rdmabus pub` on `addr` (port 0 for any) with extra arguments.
fn publisher_at(addr: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["pub", "--listen", addr, "-t", "quotes", "--json"])
        .args(args)
        .env("RDMABUS_PSK", common::KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, _) = common::pub_address(&mut lines);
    std::thread::spawn(move || for _ in lines {});
    (Proc(Some(child)), addr)
}

/// The subscription counters of process `pid` (from `rdmabus stat`, by name: messages
/// received and reconnects), if it has one yet.
fn sub_counters(pid: u32) -> Option<[u64; 2]> {
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["stat", "--once", "--json", "--interval", "50"])
        .args(["--pid", &pid.to_string()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let rows = v[0]["rows"].as_array()?;
    let row = rows.iter().find(|r| r["kind"] == "subscription")?;
    let v = &row["values"];
    Some([
        v["received_messages_total"].as_u64()?,
        v["reconnects_total"].as_u64()?,
    ])
}

/// Waits (60 s at most) until the subscriber has received `received` messages in all and
/// reconnected `reconnects` times.
fn wait_for(sub: &Proc, received: u64, reconnects: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(c) = sub_counters(sub.pid()) {
            if c[0] >= received && c[1] >= reconnects {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber did not reach {received} messages and {reconnects} reconnects: {:?}",
            sub_counters(sub.pid())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(p: &Proc) {
    // SAFETY: kill(2) on our own child, not yet reaped (Proc holds it).
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

#[test]
fn a_subscriber_with_reconnect_survives_sigkill_and_sigterm_restarts_of_its_publisher() {
    let rate = ["--rate", "2000", "--history", "4096"];
    let (mut a, addr) = publisher_at(&format!("{}:0", common::test_ip()), &rate);
    let sub = common::sub(
        addr,
        "-t quotes --reconnect --history all --verify --slots 1024",
    );
    wait_for(&sub, 300, 0);

    // 1. SIGKILL, then a new publisher on the same address, numbering from 0 again.
    a.kill();
    let here = addr.to_string();
    let (b, _) = publisher_at(&here, &rate);
    wait_for(&sub, 600, 1);

    // 2. SIGTERM (an orderly goodbye), then one that resumes the numbering where it ended.
    sigterm(&b);
    let (status, out) = b.finish(Duration::from_secs(20));
    assert!(status.success(), "pub ended with {status}");
    let b_published = u(
        &serde_json::from_str::<Value>(out.trim()).unwrap()[0],
        "published",
    );
    let first = b_published.to_string();
    let (c, _) = publisher_at(
        &here,
        &["--rate", "2000", "--history", "4096", "--first-seq", &first],
    );
    let before = sub_counters(sub.pid()).unwrap()[0];
    wait_for(&sub, before + 300, 2);

    sigterm(&sub);
    let report = sub.report(Duration::from_secs(20));
    sigterm(&c);
    let _ = c.finish(Duration::from_secs(20));
    let t = common::topic(&report, "quotes");
    eprintln!("{t}");
    assert_eq!(u(t, "reconnects"), 2, "{t}");
    let sessions = t["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{t}");
    assert_eq!(
        sessions[0]["continues"], false,
        "a restart from 0 starts again: {t}"
    );
    assert!(
        sessions[0]["previous_end"]
            .as_str()
            .unwrap()
            .contains("lost"),
        "{t}"
    );
    assert_eq!(sessions[1]["continues"], true, "--first-seq resumes: {t}");
    assert!(
        sessions[1]["previous_end"]
            .as_str()
            .unwrap()
            .contains("closed"),
        "{t}"
    );
    assert_ne!(sessions[0]["epoch"], sessions[1]["epoch"]);
    // Intact, in order within each session, and nothing lost at the resumed seam.
    assert_eq!(
        (u(t, "verify_failures"), u(t, "order_errors"), u(t, "gaps")),
        (0, 0, 0),
        "{t}"
    );
    assert!(u(t, "repaired") > 0, "history was offered on rejoin: {t}");
    assert!(u(t, "last_seq") >= b_published, "{t}");
}

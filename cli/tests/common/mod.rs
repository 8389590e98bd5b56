//! Helpers for the CLI's tests, which run subscribers and publishers as separate processes;
//! the library's helpers (key, transport, address, raw peers) are shared with bus/tests.
#![allow(dead_code)]

#[path = "../../../bus/tests/common/mod.rs"]
mod shared;
pub use shared::*;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped (so a failing test leaves none behind).
pub struct Proc(pub Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let c = self.0.as_mut().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Waits (up to `timeout`) for exit; returns its status and what it printed on stdout.
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("process {} did not finish within {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (child.wait().unwrap(), out)
    }

    /// Waits for a successful exit and parses the JSON report it printed on stdout.
    pub fn report(self, timeout: Duration) -> Value {
        let (status, out) = self.finish(timeout);
        assert!(
            status.success(),
            "process exited with {status}; stdout: {out}"
        );
        parse_report(&out)
    }

    /// Like [`Proc::report`], for a process that must exit with status `code` (see
    /// `rdmabus --help`: 3 publisher lost, 5 cut as a slow consumer, ...).
    pub fn report_with_code(self, timeout: Duration, code: i32) -> Value {
        let (status, out) = self.finish(timeout);
        assert_eq!(
            status.code(),
            Some(code),
            "process exited with {status}; stdout: {out}"
        );
        parse_report(&out)
    }
}

/// A `sub --json` report; every subscriber process ran over the transport this suite tests.
pub fn parse_report(out: &str) -> Value {
    let report: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad report {out:?}: {e}"));
    assert_eq!(
        report["transport"],
        transport_arg(),
        "subscriber ran over another transport"
    );
    report
}

/// Starts `rdmabus sub --json` against `addr` with extra arguments (split on spaces).
pub fn sub(addr: SocketAddr, args: &str) -> Proc {
    let args: Vec<&str> = args.split_whitespace().collect();
    let child = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args([
            "sub",
            "--connect",
            &addr.to_string(),
            "--json",
            "--idle",
            "yield",
            "--transport",
            transport_arg(),
        ])
        .args(args)
        .env("RDMABUS_PSK", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    Proc(Some(child))
}

/// Reads `rdmabus pub`'s stderr up to the line that says where it listens ("… on ADDR …");
/// returns the address and the lines before it.
pub fn pub_address(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> (SocketAddr, Vec<String>) {
    let mut early = Vec::new();
    loop {
        let line = lines.next().expect("pub printed no address").unwrap();
        if let Some(a) = line
            .split(" on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        {
            return (a, early);
        }
        early.push(line);
    }
}

/// Starts `rdmabus pub` on an ephemeral port (extra arguments split on spaces) and returns it
/// with the address it printed.
pub fn publisher(args: &str) -> (Proc, SocketAddr) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["pub", "--listen", &format!("{}:0", test_ip())])
        .args(&args)
        .env("RDMABUS_PSK", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, _) = pub_address(&mut lines);
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Proc(Some(child)), addr)
}

/// The report of `topic` in a `sub --json` report.
pub fn topic<'a>(report: &'a Value, topic: &str) -> &'a Value {
    report["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap()
}

pub fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Asserts that a topic report (`topic()`) holds all `n` messages: none lost, none failing
/// `--verify`.
#[track_caller]
pub fn assert_complete(t: &Value, n: u64) {
    assert_eq!(
        (
            u(t, "received"),
            u(t, "gaps"),
            u(t, "lost"),
            u(t, "verify_failures")
        ),
        (n, 0, 0, 0),
        "{t}"
    );
}

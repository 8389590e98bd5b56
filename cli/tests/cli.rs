//! The `rdmabus` command as scripts and systemd see it: real processes, real signals, exit
//! statuses, odd numbers on the command line, and what is left in the shm directory.

mod common;

use common::{psk, KEY};
use rdmabus::proto::market::Quote;
use rdmabus::{Error, Event, LinkEnd};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

// The exit statuses documented in `rdmabus --help` and the README.
const EXIT_OK: i32 = 0;
const EXIT_ERROR: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_PUBLISHER_LOST: i32 = 3;
const EXIT_REFUSED: i32 = 4;

/// A fresh shm directory (`RDMABUS_SHM_DIR`) per test, removed when dropped.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rdmabus-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    /// Stats files in it (of `pid`, or of anyone).
    fn stats_files(&self, pid: Option<u32>) -> Vec<PathBuf> {
        let prefix = match pid {
            Some(p) => format!("rdmabus-stats-{p}-"),
            None => "rdmabus-stats-".into(),
        };
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Waits until `pid` has made its stats file.
    fn wait_for_stats_file(&self, pid: u32) -> PathBuf {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(f) = self.stats_files(Some(pid)).pop() {
                return f;
            }
            assert!(Instant::now() < deadline, "{pid} made no stats file");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits until the subscriber process whose stats file is `file` has received `n` messages
/// (summed over its subscriptions, read live from that file).
fn wait_received(file: &Path, n: u64) {
    use rdmabus::stats_file::{sub, Kind, StatsFile, CAPACITY};
    let deadline = Instant::now() + WAIT;
    // The name appears before the header is written.
    let f = loop {
        match StatsFile::open(file) {
            Ok(f) if f.pid() != 0 => break f,
            r => assert!(Instant::now() < deadline, "{:?}", r.err()),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    loop {
        let got: u64 = (0..CAPACITY)
            .map(|i| f.entry(i))
            .filter(|e| e.kind() == Kind::Subscription)
            .map(|e| e.get(sub::RECEIVED))
            .sum();
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "received {got} of {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Kid(Option<Child>);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a child ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn report(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("bad report {:?}: {e}; stderr {}", self.stdout, self.stderr))
    }
}

impl Kid {
    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold it).
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// Waits (at most `timeout`) for the child to end, with what it printed.
    fn ended(mut self, timeout: Duration) -> Ended {
        let mut child = self.0.take().unwrap();
        let out = std::thread::spawn({
            let mut o = child.stdout.take();
            move || {
                let mut s = String::new();
                if let Some(o) = &mut o {
                    let _ = o.read_to_string(&mut s);
                }
                s
            }
        });
        let err = std::thread::spawn({
            let mut e = child.stderr.take();
            move || {
                let mut s = String::new();
                if let Some(e) = &mut e {
                    let _ = e.read_to_string(&mut s);
                }
                s
            }
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("process {} did not end within {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ended {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
}

fn rdmabus(dir: &ShmDir) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_rdmabus"));
    // SAFETY: only signal(2), async-signal-safe, between fork and exec. The signals this
    // suite sends take their default action in the child even where the test runner was
    // started with them ignored (a background job), as a service's would.
    unsafe {
        c.pre_exec(|| {
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    c.env("RDMABUS_PSK", KEY)
        .env("RDMABUS_SHM_DIR", &dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `rdmabus ARGS` to its end (at most 60 s).
fn run(dir: &ShmDir, args: &[&str]) -> Ended {
    Kid(Some(rdmabus(dir).args(args).spawn().unwrap())).ended(Duration::from_secs(60))
}

/// `rdmabus pub` on an ephemeral port, with the address it printed; its stderr is drained.
fn publisher(dir: &ShmDir, args: &[&str]) -> (Kid, SocketAddr) {
    let mut child = rdmabus(dir)
        .args(["pub", "--listen", &format!("{}:0", common::test_ip())])
        .args(args)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("pub printed nothing").unwrap();
    let addr = line
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    std::thread::spawn(move || for _ in lines {});
    (Kid(Some(child)), addr)
}

/// `rdmabus sub --json` to `addr` over the suite's transport.
fn subscriber(dir: &ShmDir, addr: SocketAddr, args: &[&str]) -> Kid {
    let child = rdmabus(dir)
        .args(["sub", "--connect", &addr.to_string(), "--json"])
        .args(["--idle", "yield", "--transport", common::transport_arg()])
        .args(args)
        .spawn()
        .unwrap();
    Kid(Some(child))
}

fn topic_end(report: &Value, topic: &str) -> String {
    common::topic(report, topic)["end"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn sigterm_and_sigint_close_pub_in_order() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = ShmDir::new(&format!("pub-sig{sig}"));
        // The subscriber here stops reading for a while: no stall budget, this is about signals.
        let (publisher, addr) = publisher(
            &dir,
            &["-t", "quotes", "--rate", "2000", "--block-timeout-ms", "0"],
        );
        let file = dir.wait_for_stats_file(publisher.pid());
        // One subscriber in this process, to see the goodbye itself, and one `rdmabus sub`.
        let mut s = common::subscriber::<Quote>(addr, "quotes", psk())
            .connect()
            .unwrap();
        let cli = subscriber(&dir, addr, &["-t", "quotes"]);
        for _ in 0..100 {
            assert!(matches!(
                s.recv_timeout(WAIT).unwrap(),
                Some(Event::Message(_))
            ));
        }
        dir.wait_for_stats_file(cli.pid());
        std::thread::sleep(Duration::from_millis(200));
        publisher.signal(sig);
        let err = loop {
            match s.recv_timeout(WAIT) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no end within {WAIT:?}"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                &err,
                Error::Closed {
                    reason: rdmabus::proto::handshake::GoodbyeReason::Shutdown,
                    ..
                }
            ),
            "signal {sig}: the subscriber saw {err} instead of an orderly close"
        );
        let p = publisher.ended(WAIT);
        assert_eq!(
            p.code(),
            Some(EXIT_OK),
            "pub after signal {sig}: {}",
            p.status
        );
        assert!(!file.exists(), "pub left its stats file after signal {sig}");
        let c = cli.ended(WAIT);
        assert_eq!(c.code(), Some(EXIT_OK), "sub: {}", c.stderr);
        assert!(
            topic_end(&c.report(), "quotes").contains("Shutdown"),
            "{}",
            c.stdout
        );
    }
}

#[test]
fn sigterm_and_sigint_end_sub_with_its_report() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = ShmDir::new(&format!("sub-sig{sig}"));
        let node = common::node_builder(psk()).start().unwrap();
        let mut p = node
            .publisher::<Quote>("quotes")
            .max_payload(96)
            .build()
            .unwrap();
        let s = subscriber(&dir, node.local_addr(), &["-t", "quotes", "--name", "sig"]);
        p.wait_for_subscribers(1, WAIT).unwrap();
        let file = dir.wait_for_stats_file(s.pid());
        for i in 0..200 {
            p.publish(&Quote::synthetic(i)).unwrap();
        }
        wait_received(&file, 200);
        s.signal(sig);
        let e = s.ended(WAIT);
        assert_eq!(
            e.code(),
            Some(EXIT_OK),
            "sub after signal {sig}: {}",
            e.stderr
        );
        let r = e.report();
        let t = common::topic(&r, "quotes");
        assert_eq!(common::u(t, "received"), 200, "{t}");
        assert!(t["end"].as_str().unwrap().starts_with("signal"), "{t}");
        assert!(!file.exists(), "sub left its stats file after signal {sig}");
        // It left in order: the publisher saw it go, not lose its connection.
        let deadline = Instant::now() + WAIT;
        loop {
            let st = p.stats();
            let l = st.subscribers.iter().find(|l| l.name == "sig").unwrap();
            match &l.end {
                LinkEnd::Left(_) => break,
                LinkEnd::Active if Instant::now() < deadline => {}
                other => panic!("the publisher saw {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_second_signal_ends_at_once() {
    let dir = ShmDir::new("second");
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node
        .publisher::<Quote>("quotes")
        .policy(rdmabus::Policy::Drop)
        .max_payload(96)
        .build()
        .unwrap();
    // Busy for 5 s on each message: the first signal is not seen before that.
    let mut s = subscriber(
        &dir,
        node.local_addr(),
        &["-t", "quotes", "--delay-us", "5000000"],
    );
    p.wait_for_subscribers(1, WAIT).unwrap();
    let file = dir.wait_for_stats_file(s.pid());
    for i in 0..3 {
        p.publish(&Quote::synthetic(i)).unwrap();
    }
    wait_received(&file, 1);
    std::thread::sleep(Duration::from_millis(100));
    s.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.running(), "the first signal ended it at once");
    let sent = Instant::now();
    s.signal(libc::SIGTERM);
    let e = s.ended(WAIT);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(e.status.signal(), Some(libc::SIGTERM), "{}", e.status);
    assert!(!file.exists(), "left its stats file");
}

#[test]
fn sub_exit_status_says_how_it_ended() {
    let dir = ShmDir::new("status");
    // The publisher killed outright: "publisher lost", not success.
    let (mut victim, addr) = publisher(&dir, &["-t", "quotes", "--rate", "1000"]);
    let s = subscriber(&dir, addr, &["-t", "quotes"]);
    dir.wait_for_stats_file(s.pid());
    std::thread::sleep(Duration::from_millis(200));
    let mut c = victim.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let e = s.ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_PUBLISHER_LOST), "{}", e.stderr);
    assert!(
        topic_end(&e.report(), "quotes").starts_with("lost"),
        "{}",
        e.stdout
    );

    // Refusals: a topic the publisher does not have, a wrong key.
    let (_publisher, addr) = publisher(&dir, &["-t", "quotes", "--rate", "1000"]);
    let e = subscriber(&dir, addr, &["-t", "trades"]).ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_REFUSED), "{}", e.stderr);
    assert!(e.stderr.contains("UnknownTopic"), "{}", e.stderr);
    let wrong = KEY.replace("0f1e", "1f1e");
    let mut c = rdmabus(&dir);
    c.args(["sub", "--connect", &addr.to_string(), "-t", "quotes"])
        .args(["--transport", common::transport_arg()])
        .env("RDMABUS_PSK", wrong);
    let e = Kid(Some(c.spawn().unwrap())).ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_REFUSED), "{}", e.stderr);

    // Nothing listening: another runtime error (worth retrying).
    let closed = std::net::TcpListener::bind(format!("{}:0", common::test_ip())).unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let e = subscriber(&dir, nobody, &["-t", "quotes"]).ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_ERROR), "{}", e.stderr);

    // A key that is not one, a missing key file: bad configuration.
    let mut c = rdmabus(&dir);
    c.args(["sub", "--connect", &addr.to_string(), "-t", "quotes"])
        .env("RDMABUS_PSK", "hunter2");
    assert_eq!(
        Kid(Some(c.spawn().unwrap())).ended(WAIT).code(),
        Some(EXIT_USAGE)
    );
    let e = run(
        &dir,
        &[
            "sub",
            "-c",
            &addr.to_string(),
            "-t",
            "quotes",
            "--key-file",
            "/nonexistent/psk",
        ],
    );
    assert_eq!(e.code(), Some(EXIT_USAGE), "{}", e.stderr);
}

#[test]
fn sub_count_zero_consumes_nothing() {
    let dir = ShmDir::new("count0");
    let (_publisher, addr) = publisher(&dir, &["-t", "quotes", "--rate", "5000"]);
    // Let the feed run so that a message is there to be taken.
    std::thread::sleep(Duration::from_millis(200));
    let e = subscriber(&dir, addr, &["-t", "quotes", "--count", "0"]).ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_OK), "{}", e.stderr);
    let r = e.report();
    let t = common::topic(&r, "quotes");
    assert_eq!(common::u(t, "received"), 0, "{t}");
    assert_eq!(t["end"], "count", "{t}");
}

#[test]
fn odd_numbers_are_clear_usage_errors() {
    let dir = ShmDir::new("usage");
    let (c, l) = ("127.0.0.1:9", "127.0.0.1:0");
    let cases: &[(&[&str], &str)] = &[
        (&["demo", "--seconds", "nan"], "--seconds"),
        (&["demo", "--seconds", "inf"], "--seconds"),
        (&["demo", "--seconds", "-1"], "--seconds"),
        (&["demo", "--seconds", "1e300"], "--seconds"),
        (&["demo", "--seconds", "0"], "--seconds"),
        (&["demo", "--seconds", "1e-300"], "--seconds"),
        (&["demo", "--seconds", "5s"], "--seconds"),
        (&["pub", "-l", l, "--seconds", "nan"], "--seconds"),
        (&["pub", "-l", l, "--seconds=-1"], "--seconds"),
        (
            &["sub", "-c", c, "-t", "quotes", "--seconds", "inf"],
            "--seconds",
        ),
        (&["demo", "--rate", "-5"], "--rate"),
        (&["pub", "-l", l, "--rate", "5000000000"], "--rate"),
        (&["demo", "--slots", "1000"], "power of two"),
        (
            &["sub", "-c", c, "-t", "quotes", "--slots", "1000"],
            "power of two",
        ),
        (
            &["sub", "-c", c, "-t", "quotes", "--slots", "0"],
            "power of two",
        ),
        (
            &["sub", "-c", c, "-t", "quotes", "--slots", "4194304"],
            "power of two",
        ),
        (
            &["sub", "-c", c, "-t", "quotes", "--delay-us", "99999999999"],
            "--delay-us",
        ),
        (&["demo", "--slow-us", "99999999999"], "--slow-us"),
        (&["demo", "--subscribers", "0"], "--subscribers"),
        (&["demo", "--subscribers", "65"], "--subscribers"),
        (
            &["pub", "-l", l, "--wait-subscribers", "65"],
            "--wait-subscribers",
        ),
        (&["stat", "--interval", "0"], "--interval"),
        (&["stat", "--count", "0"], "--count"),
        (&["pub", "-l", l, "--cpu", "999"], "CPU 999"),
        (&["sub", "-c", c, "-t", "quotes", "--cpu", "999"], "CPU 999"),
        (
            &["sub", "-c", c, "-t", "quotes", "--rnr-retry", "7"],
            "--rnr-retry",
        ),
        (
            &["sub", "-c", c, "-t", "quotes", "--retry-count", "8"],
            "--retry-count",
        ),
        (
            &["sub", "-c", c, "-t", "quotes", "--qp-timeout", "0"],
            "--qp-timeout",
        ),
        (&["sub", "-c", c, "-t", "quotes", "--sl", "16"], "--sl"),
        (&["sub", "-c", c, "-t", "quotes", "--dscp", "64"], "--dscp"),
        (&["sub", "-c", c, "-t", "quotes", "--mtu", "1500"], "--mtu"),
        (
            &["sub", "-c", c, "-t", "quotes", "--ib-port", "0"],
            "--ib-port",
        ),
        (&["pub", "-l", l, "--tclass", "256"], "--tclass"),
        (&["pub", "-l", l, "--tclass", "4", "--dscp", "1"], "--dscp"),
    ];
    for (args, says) in cases {
        let e = run(&dir, args);
        let what = format!("rdmabus {}", args.join(" "));
        assert!(
            !e.stderr.contains("panicked"),
            "{what} panicked: {}",
            e.stderr
        );
        assert_eq!(e.code(), Some(EXIT_USAGE), "{what}: {}", e.stderr);
        assert!(
            e.stderr.contains(says),
            "{what} does not say {says:?}: {}",
            e.stderr
        );
    }
    // --cpu names the CPUs there are.
    let e = run(&dir, &["pub", "-l", l, "--cpu", "999"]);
    assert!(e.stderr.contains("CPUs"), "{}", e.stderr);
}

#[test]
fn sigint_ends_the_demo_in_order() {
    let dir = ShmDir::new("demo");
    let mut c = rdmabus(&dir);
    c.args([
        "demo",
        "--subscribers",
        "1",
        "--rate",
        "1000",
        "--seconds",
        "60",
    ])
    .args(["--transport", common::transport_arg()]);
    let demo = Kid(Some(c.spawn().unwrap()));
    // Until its subscriber has joined and messages flow.
    let deadline = Instant::now() + WAIT;
    while dir.stats_files(None).len() < 2 {
        assert!(Instant::now() < deadline, "the demo did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let sent = Instant::now();
    demo.signal(libc::SIGINT);
    let e = demo.ended(WAIT);
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(e.code(), Some(EXIT_OK), "{}{}", e.stdout, e.stderr);
    assert!(
        e.stdout.contains("closed: Shutdown"),
        "the subscriber did not see an orderly close: {}",
        e.stdout
    );
    // Its subscriber process ended too, and nothing is left.
    let deadline = Instant::now() + WAIT;
    while !dir.stats_files(None).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left {:?}",
            dir.stats_files(None)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether this machine has an RDMA device the verbs transport could use.
#[cfg(feature = "verbs")]
fn has_rdma() -> bool {
    rdmabus::verbs::device::list().is_ok_and(|l| !l.is_empty())
}

/// A CLI built without the `verbs` feature refuses verbs where it is asked for, in one line.
#[cfg(not(feature = "verbs"))]
#[test]
fn a_build_without_verbs_refuses_it_in_one_line() {
    let dir = ShmDir::new("noverbs");
    for args in [
        &[
            "sub",
            "-c",
            "127.0.0.1:9",
            "-t",
            "quotes",
            "--transport",
            "verbs",
        ][..],
        &["demo", "--transport", "verbs"][..],
        &["bench", "pingpong", "--transport", "verbs"][..],
    ] {
        let e = run(&dir, args);
        assert_eq!(e.code(), Some(EXIT_USAGE), "{args:?}: {}", e.stderr);
        let first = e.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("no RDMA verbs transport"),
            "{args:?}: {}",
            e.stderr
        );
    }
}

#[cfg(feature = "verbs")]
#[test]
fn verbs_without_a_device_is_a_clear_error() {
    if has_rdma() {
        eprintln!("cli: this machine has RDMA devices: the no-device message was not checked");
        return;
    }
    let dir = ShmDir::new("verbs");
    let (_publisher, addr) = publisher(&dir, &["-t", "quotes", "--rate", "100"]);
    let e = run(
        &dir,
        &[
            "sub",
            "-c",
            &addr.to_string(),
            "-t",
            "quotes",
            "--transport",
            "verbs",
        ],
    );
    assert_eq!(e.code(), Some(EXIT_USAGE), "{}", e.stderr);
    assert!(
        e.stderr.contains("no RDMA device found") && e.stderr.contains("rdmabus doctor"),
        "{}",
        e.stderr
    );
    assert!(!e.stderr.contains("os error 38"), "{}", e.stderr);
}

#[test]
fn doctor_exit_status_follows_its_checks() {
    let dir = ShmDir::new("doctor");
    let e = run(&dir, &["doctor"]);
    let failed = e.stdout.contains("[FAIL]");
    let want = if failed { EXIT_ERROR } else { EXIT_OK };
    assert_eq!(e.code(), Some(want), "{}{}", e.stdout, e.stderr);
}

#[test]
fn help_documents_the_exit_statuses() {
    let dir = ShmDir::new("help");
    for cmd in ["pub", "sub", "doctor", "demo"] {
        let e = run(&dir, &[cmd, "--help"]);
        assert_eq!(e.code(), Some(EXIT_OK));
        assert!(
            e.stdout.contains("Exit status") && e.stdout.contains("publisher lost"),
            "rdmabus {cmd} --help: {}",
            e.stdout
        );
    }
}

/// A stats file for another PID namespace (whose pid means nothing here), made by hand.
fn foreign_stats_file(dir: &Path, pid: u32) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("rdmabus-stats-{pid}-f0f0f0f0f0f0f0f0"));
    drop(rdmabus::stats_file::StatsFile::create_at(&path).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(
        &(rdmabus::stats_file::own_pid_ns() ^ 0x5a5a).to_le_bytes(),
        24,
    )
    .unwrap();
    f.write_all_at(&pid.to_le_bytes(), 8).unwrap();
    path
}

#[test]
fn nothing_is_left_in_the_shm_directory_after_a_death() {
    let dir = ShmDir::new("left");
    // A dead pid, for a file of another PID namespace: never removed.
    let mut t = Command::new("true").spawn().unwrap();
    let gone = t.id();
    t.wait().unwrap();
    let foreign = foreign_stats_file(&dir.0, gone);

    // SIGTERM: the orderly path removes the file at once.
    let (p, _) = publisher(&dir, &["-t", "quotes", "--rate", "100"]);
    let file = dir.wait_for_stats_file(p.pid());
    p.signal(libc::SIGTERM);
    assert_eq!(p.ended(WAIT).code(), Some(EXIT_OK));
    assert!(!file.exists(), "SIGTERM left {}", file.display());

    // SIGKILL leaves one; the next `rdmabus stat` removes it.
    let (mut p, _) = publisher(&dir, &["-t", "quotes", "--rate", "100"]);
    let killed = dir.wait_for_stats_file(p.pid());
    let mut c = p.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(killed.exists());
    let e = run(&dir, &["stat", "--once"]);
    assert_eq!(e.code(), Some(EXIT_OK), "{}", e.stderr);
    assert!(!killed.exists(), "stat left {}", killed.display());

    // SIGKILL again; the next rdmabus process of any kind removes it, and keeps the files of
    // live processes (a running publisher's) and of other PID namespaces.
    let (live, _) = publisher(&dir, &["-t", "quotes", "--rate", "100"]);
    let live_file = dir.wait_for_stats_file(live.pid());
    let (mut p, _) = publisher(&dir, &["-t", "quotes", "--rate", "100"]);
    let killed = dir.wait_for_stats_file(p.pid());
    let mut c = p.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let key = dir.0.join("psk");
    let e = run(&dir, &["keygen", key.to_str().unwrap()]);
    assert_eq!(e.code(), Some(EXIT_OK), "{}", e.stderr);
    assert!(
        !killed.exists(),
        "the next rdmabus process left {}",
        killed.display()
    );
    assert!(live_file.exists(), "a live process's file was removed");
    assert!(foreign.exists(), "another PID namespace's file was removed");
    live.signal(libc::SIGTERM);
    assert_eq!(live.ended(WAIT).code(), Some(EXIT_OK));
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(&foreign).unwrap();
    assert_eq!(dir.stats_files(None), Vec::<PathBuf>::new());
}

/// `RDMABUS_LOG_FORMAT=json`: every log line is one JSON object (here the publisher's line
/// about a subscriber it refused, whose peer-chosen name cannot break the line); no ANSI
/// escapes when stderr is not a terminal; an unknown format is a usage error.
#[test]
fn logs_are_json_lines_on_request_and_plain_when_redirected() {
    let dir = ShmDir::new("logs");
    for format in ["json", "text"] {
        let mut child = rdmabus(&dir)
            .args(["pub", "--listen", &format!("{}:0", common::test_ip())])
            .args(["-t", "quotes", "--rate", "100"])
            .env("RDMABUS_LOG_FORMAT", format)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let pub_proc = Kid(Some(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(WAIT).expect("pub printed nothing");
        let addr: SocketAddr = first
            .split(" on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.trim_end_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        // A subscriber with the wrong key, and a name full of terminal escapes.
        let key_file = dir.0.join("wrong.key");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_file)
                .unwrap();
            std::io::Write::write_all(
                &mut f,
                b"rdmabus-psk-v1:00112233445566778899aabbccddeeff00112233445566778899aabbccddee01\n",
            )
            .unwrap();
        }
        let e = run(
            &dir,
            &[
                "sub",
                "-c",
                &addr.to_string(),
                "-t",
                "quotes",
                "--name",
                "evil\x1b[2J",
                "--key-file",
                key_file.to_str().unwrap(),
            ],
        );
        assert_ne!(e.code(), Some(0), "{}", e.stderr);
        let mut lines = Vec::new();
        let deadline = Instant::now() + WAIT;
        let logged = |l: &String| l.contains("refused") || l.contains("handshake failed");
        while !lines.iter().any(logged) {
            assert!(Instant::now() < deadline, "no refusal logged: {lines:?}");
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(l);
            }
        }
        drop(pub_proc);
        for l in lines.iter().filter(|l| logged(l)) {
            assert!(!l.contains('\x1b'), "an escape reached the log: {l:?}");
            if format == "json" {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
            } else {
                assert!(serde_json::from_str::<serde_json::Value>(l).is_err(), "{l}");
            }
        }
    }
    let e = Kid(Some(
        rdmabus(&dir)
            .args(["keygen"])
            .env("RDMABUS_LOG_FORMAT", "yaml")
            .spawn()
            .unwrap(),
    ))
    .ended(WAIT);
    assert_eq!(e.code(), Some(EXIT_USAGE), "{}", e.stderr);
    assert!(e.stderr.contains("RDMABUS_LOG_FORMAT"), "{}", e.stderr);
}

/// Over verbs (in the Soft-RoCE guest): the RDMA knobs reach the queue pair, and the link's
/// device, GID, path MTU, inline size and QP numbers are logged at info when it connects.
#[test]
fn verbs_knobs_are_applied_and_logged() {
    if common::transport() != rdmabus::Transport::Verbs {
        eprintln!("skipped: RDMABUS_TEST_TRANSPORT is not verbs");
        return;
    }
    let dir = ShmDir::new("knobs");
    let (_publisher, addr) = publisher(&dir, &["-t", "quotes", "--rate", "1000", "--dscp", "26"]);
    let mut c = rdmabus(&dir);
    c.args([
        "sub",
        "--connect",
        &addr.to_string(),
        "--transport",
        "verbs",
    ])
    .args([
        "-t", "quotes", "--count", "100", "--mtu", "1024", "--sl", "3",
    ])
    .args([
        "--qp-timeout",
        "12",
        "--retry-count",
        "5",
        "--rnr-retry",
        "4",
    ])
    .env("RDMABUS_LOG", "info");
    let e = Kid(Some(c.spawn().unwrap())).ended(WAIT);
    assert_eq!(e.code(), Some(0), "{}", e.stderr);
    let line = e
        .stderr
        .lines()
        .find(|l| l.contains("verbs: connected"))
        .unwrap_or_else(|| panic!("no connect line: {}", e.stderr));
    for want in [
        "path_mtu=1024",
        "service_level=3",
        "timeout=12",
        "retry_count=5",
        "rnr_retry=4",
        "gid_type=\"RoCE v2\"",
        "max_inline=",
        "qpn=",
        "remote_qpn=",
        "device=rxe",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
}

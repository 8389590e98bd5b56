//! `rdmabus demo`: a market-data feed to subscribers in separate processes.

use crate::cmd_pub::Pacer;
use crate::report::{thousands, us, SubReport};
use crate::topics::AnyPublisher;
use rdmabus::{Error, IdleStrategy, Node, Policy, Psk, Transport};
use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `rdmabus demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Number of subscriber processes.
    #[arg(long, default_value_t = 3)]
    pub subscribers: usize,
    /// How long to publish, in seconds (above 0, fractions allowed).
    #[arg(long, default_value = "5", value_name = "SECONDS", allow_negative_numbers = true, value_parser = crate::parse::seconds)]
    pub seconds: Duration,
    /// Messages per second over both topics (quotes and trades, 3 to 1; 0: as fast as the
    /// subscribers allow).
    #[arg(long, default_value_t = 50_000, allow_negative_numbers = true, value_parser = crate::parse::rate)]
    pub rate: u64,
    /// What to do when a subscriber's ring is full: block, drop, disconnect.
    #[arg(long, default_value = "block")]
    pub policy: Policy,
    /// Transport between publisher and subscribers.
    #[arg(long, default_value = "shm", value_parser = crate::parse::transport)]
    pub transport: Transport,
    /// Ring slots per subscriber and topic (a power of two from 2 to 1048576).
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true, value_parser = crate::parse::slots)]
    pub slots: u32,
    /// Make the last subscriber spend this many microseconds per message (shows the policy;
    /// at most 10 s).
    #[arg(long, default_value_t = 0, value_name = "US", allow_negative_numbers = true, value_parser = crate::parse::delay_us)]
    pub slow_us: u64,
    /// Address to listen on (default: loopback for shm, the first RDMA interface for verbs).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// How subscribers wait when idle (yield shares the CPU when there are more pollers
    /// than cores; spin is lowest latency with a core each).
    #[arg(long, default_value = "yield")]
    pub idle: IdleStrategy,
    /// Inject faults during the run: the publisher (then a separate process) is killed and
    /// restarted, one subscriber is killed and restarted, the publisher is stopped and
    /// restarted resuming its numbering; subscribers reconnect and take the history. The
    /// table shows reconnects, messages from history, and that nothing was lost (exit 1 if
    /// anything was, under block).
    #[arg(long)]
    pub chaos: bool,
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    /// On an early return: SIGTERM (they end in order and remove their stats files), then
    /// SIGKILL for any still there after 3 s.
    fn drop(&mut self) {
        for c in &self.0 {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut self.0 {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> Result<(), Error> {
    if a.subscribers == 0 || a.subscribers > 64 {
        return Err(Error::Config("--subscribers must be 1 to 64".into()));
    }
    if a.transport == Transport::Verbs {
        crate::rdma::check_rdma()?;
    }
    let psk = Psk::random();
    // Over verbs the control connection's address picks the RDMA device: listen on one.
    let listen = match (&a.listen, a.transport) {
        (Some(l), _) => l.clone(),
        (None, Transport::Shm) => "127.0.0.1:0".to_string(),
        (None, Transport::Verbs) => format!("{}:0", crate::rdma::first_ipv4()?),
    };
    if a.chaos {
        return crate::cmd_demo_chaos::run(&a, &listen);
    }
    let node = Node::builder().bind(listen).psk(psk.clone()).start()?;
    let mut quotes = AnyPublisher::new(
        &node,
        "quotes",
        a.policy,
        IdleStrategy::Yield,
        Some(rdmabus::DEFAULT_BLOCK_TIMEOUT),
        0,
        None,
    )?;
    let mut trades = AnyPublisher::new(
        &node,
        "trades",
        a.policy,
        IdleStrategy::Yield,
        Some(rdmabus::DEFAULT_BLOCK_TIMEOUT),
        0,
        None,
    )?;
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding the rdmabus executable", e))?;
    println!(
        "rdmabus demo: {} subscriber processes, quotes + trades at {} msg/s for {} s over {:?}, policy {:?}",
        a.subscribers,
        thousands(a.rate),
        a.seconds.as_secs_f64(),
        a.transport,
        a.policy
    );
    let mut kids = Kids(Vec::new());
    for i in 1..=a.subscribers {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "sub",
            "--connect",
            &node.local_addr().to_string(),
            "-t",
            "quotes",
            "-t",
            "trades",
            "--json",
        ])
        .args([
            "--name",
            &format!("sub-{i}"),
            "--slots",
            &a.slots.to_string(),
        ])
        .args([
            "--transport",
            match a.transport {
                Transport::Shm => "shm",
                Transport::Verbs => "verbs",
            },
        ])
        .args([
            "--idle",
            match a.idle {
                IdleStrategy::BusySpin => "spin",
                IdleStrategy::Yield => "yield",
                IdleStrategy::Backoff => "backoff",
            },
        ])
        .env("RDMABUS_PSK", psk.to_text())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        // Their own process group: a Ctrl-C at the terminal reaches the demo alone, which
        // then closes its topics in order, so they see the goodbye and report.
        .process_group(0);
        if i == a.subscribers && a.slow_us > 0 {
            cmd.args(["--delay-us", &a.slow_us.to_string()]);
        }
        kids.0.push(
            cmd.spawn()
                .map_err(|e| Error::io("starting a subscriber process", e))?,
        );
    }
    // Returns false on a signal (the loop below then does not start).
    if quotes.wait_for_subscribers_or_signal(a.subscribers, Duration::from_secs(15))? {
        trades.wait_for_subscribers_or_signal(a.subscribers, Duration::from_secs(15))?;
    }

    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let end = start + a.seconds;
    let mut pacer = Pacer::new(a.rate);
    let mut next_status = start;
    let mut n = 0u64;
    while Instant::now() < end && crate::signals::stopped().is_none() {
        pacer.wait();
        if n % 4 == 3 {
            trades.publish_next()?
        } else {
            quotes.publish_next()?
        };
        n += 1;
        if n.is_multiple_of(1024) && Instant::now() >= next_status {
            status(tty, start, n, &mut quotes, &mut trades);
            next_status += if tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(1)
            };
        }
    }
    status(tty, start, n, &mut quotes, &mut trades);
    let elapsed = start.elapsed().as_secs_f64();
    if tty {
        eprintln!();
    }
    if let Some(sig) = crate::signals::stopped() {
        eprintln!(
            "{} after {elapsed:.1} s: closing the topics in order",
            crate::signals::name(sig)
        );
    }
    // The demo's subscribers keep up (Block); 2 s is plenty for any last catch-up.
    let t = Duration::from_secs(2);
    let pub_stats = [quotes.close(t), trades.close(t)];

    let mut reports = Vec::new();
    let waited = Instant::now();
    for child in kids.0.iter_mut() {
        while child.try_wait().ok().flatten().is_none()
            && waited.elapsed() < Duration::from_secs(15)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for child in std::mem::take(&mut kids.0) {
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("collecting a subscriber's report", e))?;
        let line = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<SubReport>(line.trim()) {
            Ok(r) => reports.push(r),
            // Stopped before it had joined: nothing to report.
            Err(_) if crate::signals::stopped().is_some() => {}
            Err(e) => {
                return Err(Error::Protocol(format!(
                    "a subscriber gave no report ({e}); exit {:?}",
                    out.status
                )))
            }
        }
    }

    println!();
    println!(
        "{:<8} {:>10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}  ended",
        "sub", "messages", "gaps", "drops", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for r in &reports {
        let received: u64 = r.topics.iter().map(|t| t.received).sum();
        let gaps: u64 = r.topics.iter().map(|t| t.gaps).sum();
        let drops: u64 = pub_stats
            .iter()
            .flat_map(|s| s.subscribers.iter())
            .filter(|s| s.name == r.name)
            .map(|s| s.dropped)
            .sum();
        let ended = r.topics.first().map(|t| t.end.clone()).unwrap_or_default();
        println!(
            "{:<8} {:>10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}  {}",
            r.name,
            thousands(received),
            gaps,
            drops,
            us(r.latency.p50_ns),
            us(r.latency.p99_ns),
            us(r.latency.p999_ns),
            us(r.latency.max_ns),
            ended
        );
    }
    println!(
        "published {} messages in {:.2} s ({} msg/s); latency is one-way, publish to read",
        thousands(n),
        elapsed,
        thousands((n as f64 / elapsed.max(1e-9)) as u64)
    );
    Ok(())
}

fn status(tty: bool, start: Instant, n: u64, q: &mut AnyPublisher, t: &mut AnyPublisher) {
    let secs = start.elapsed().as_secs_f64();
    let (qs, ts) = (q.stats(), t.stats());
    let subs = q.subscriber_count().min(t.subscriber_count());
    let all = qs.subscribers.iter().chain(ts.subscribers.iter());
    let (drops, stalls) = all.fold((0, 0), |(d, s), i| (d + i.dropped, s + i.credit_stalls));
    let line = format!(
        "{secs:6.1} s | published {:>11} ({:>9} msg/s) | subscribers {subs} | dropped {drops} | ring-full stalls {stalls}",
        thousands(n),
        thousands((n as f64 / secs.max(1e-9)) as u64)
    );
    if tty {
        eprint!("\r{line}");
        let _ = std::io::stderr().flush();
    } else {
        eprintln!("{line}");
    }
}

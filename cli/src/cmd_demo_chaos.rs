//! `rdmabus demo --chaos`: the feed as separate processes, with faults during the run. The
//! publisher is killed (SIGKILL) and restarted on the same address (numbering again), one
//! subscriber is killed and restarted (a late joiner), then the publisher is stopped (SIGTERM)
//! and restarted resuming its numbering. Subscribers reconnect and ask for the history; the
//! table shows reconnects, messages from history, and that nothing was lost or corrupt.

use crate::cmd_demo::DemoArgs;
use crate::report::{thousands, PubTopic, SubReport};
use rdmabus::{Error, IdleStrategy, Psk, Transport};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Messages each publisher keeps for late joiners and reconnecting subscribers.
const HISTORY: &str = "65536";

/// Children killed (SIGKILL) and reaped when dropped, so an early return leaves none.
struct Kid(Option<Child>);

impl Kid {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.0 {
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Waits (up to `t`) for it to exit; returns what it printed on stdout.
    fn finish(mut self, t: Duration) -> Result<String, Error> {
        let mut c = self.0.take().expect("running");
        let deadline = Instant::now() + t;
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(Error::Timeout(format!("process {} did not end", c.id())));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = String::new();
        if let Some(mut o) = c.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let _ = c.wait();
        Ok(out)
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Chaos<'a> {
    a: &'a DemoArgs,
    exe: std::path::PathBuf,
    psk: Psk,
}

impl Chaos<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("RDMABUS_PSK", self.psk.to_text())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Their own process group: a Ctrl-C reaches the demo alone.
            .process_group(0);
        c
    }

    /// Starts a publisher of quotes and trades on `listen`; returns it and its address.
    fn publisher(&self, listen: &str, first: &[(String, u64)]) -> Result<(Kid, SocketAddr), Error> {
        let rate = self.a.rate.to_string();
        let policy = format!("{:?}", self.a.policy).to_lowercase();
        let mut args = vec![
            "pub",
            "--listen",
            listen,
            "-t",
            "quotes",
            "-t",
            "trades",
            "--json",
            "--rate",
            &rate,
            "--history",
            HISTORY,
            "--policy",
            &policy,
            "--idle",
            "yield",
        ];
        let firsts: Vec<String> = first.iter().map(|(t, s)| format!("{t}={s}")).collect();
        for f in &firsts {
            args.extend(["--first-seq", f.as_str()]);
        }
        let mut cmd = self.command(&args);
        cmd.stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("starting the publisher process", e))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let kid = Kid(Some(child));
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                return Err(Error::Protocol(
                    "the publisher ended before listening".into(),
                ));
            };
            if let Some(a) = line
                .split(" on ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                break a;
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok((kid, addr))
    }

    fn subscriber(&self, addr: SocketAddr, name: &str) -> Result<Kid, Error> {
        let (addr, slots) = (addr.to_string(), self.a.slots.to_string());
        let transport = match self.a.transport {
            Transport::Shm => "shm",
            Transport::Verbs => "verbs",
        };
        let idle = match self.a.idle {
            IdleStrategy::BusySpin => "spin",
            IdleStrategy::Yield => "yield",
            IdleStrategy::Backoff => "backoff",
        };
        let c = self
            .command(&[
                "sub",
                "--connect",
                &addr,
                "-t",
                "quotes",
                "-t",
                "trades",
                "--json",
                "--verify",
                "--reconnect",
                "--history",
                "all",
                "--name",
                name,
                "--slots",
                &slots,
                "--transport",
                transport,
                "--idle",
                idle,
            ])
            .spawn()
            .map_err(|e| Error::io("starting a subscriber process", e))?;
        Ok(Kid(Some(c)))
    }
}

/// Waits until every subscriber has received at least `n` messages more than `base` (60 s).
fn wait_received(subs: &[Kid], base: &[u64], n: u64) -> Result<Vec<u64>, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Vec<u64> = subs
            .iter()
            .map(|k| crate::cmd_stat::received_by(k.pid()).unwrap_or(0))
            .collect();
        if now.iter().zip(base).all(|(r, b)| *r >= b + n) {
            return Ok(now);
        }
        if Instant::now() >= deadline || crate::signals::stopped().is_some() {
            return Err(Error::Timeout(format!(
                "subscribers did not receive {n} more messages: {now:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the chaos demo; fails if a subscriber lost or refused anything.
pub fn run(a: &DemoArgs, listen: &str) -> Result<(), Error> {
    let c = Chaos {
        a,
        exe: std::env::current_exe().map_err(|e| Error::io("finding the rdmabus executable", e))?,
        psk: Psk::random(),
    };
    // Four phases, each until every subscriber got a quarter of the run's messages.
    let step = ((a.rate as f64 * a.seconds.as_secs_f64() / 4.0) as u64).max(200);
    println!(
        "rdmabus demo --chaos: {} subscriber processes over {:?}, {} msg/s, history {HISTORY}; \
         faults: publisher SIGKILL + restart, subscriber SIGKILL + restart, publisher SIGTERM + \
         restart resuming its numbering",
        a.subscribers,
        a.transport,
        thousands(a.rate)
    );
    let (mut publisher, addr) = c.publisher(listen, &[])?;
    let here = addr.to_string();
    let mut subs = (1..=a.subscribers)
        .map(|i| c.subscriber(addr, &format!("sub-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let zero = vec![0; subs.len()];
    let mut seen = wait_received(&subs, &zero, step)?;
    println!(
        "  all {} subscribers receiving; SIGKILL the publisher",
        subs.len()
    );

    publisher.signal(libc::SIGKILL);
    drop(publisher);
    let (p, _) = c.publisher(&here, &[])?;
    publisher = p;
    seen = wait_received(&subs, &seen, step)?;
    println!("  publisher restarted (numbering again); SIGKILL the last subscriber");

    let last = subs.len() - 1;
    subs[last].signal(libc::SIGKILL);
    subs[last] = c.subscriber(addr, &format!("sub-{}-again", last + 1))?;
    seen[last] = 0;
    seen = wait_received(&subs, &seen, step)?;
    println!("  subscriber restarted (a late joiner); SIGTERM the publisher");

    publisher.signal(libc::SIGTERM);
    let out = publisher.finish(Duration::from_secs(20))?;
    let topics: Vec<PubTopic> = serde_json::from_str(out.trim())
        .map_err(|e| Error::Protocol(format!("the publisher's report: {e}")))?;
    let first: Vec<(String, u64)> = topics
        .iter()
        .map(|t| (t.topic.clone(), t.published))
        .collect();
    let (p, _) = c.publisher(&here, &first)?;
    publisher = p;
    wait_received(&subs, &seen, step)?;
    println!("  publisher restarted resuming its numbering; closing in order");

    publisher.signal(libc::SIGTERM);
    let out = publisher.finish(Duration::from_secs(20))?;
    let published: u64 = serde_json::from_str::<Vec<PubTopic>>(out.trim())
        .map(|t| t.iter().map(|t| t.published).sum())
        .unwrap_or(0);
    // Let the last messages and the goodbye land before asking the subscribers to report.
    let mut last_counts = Vec::new();
    for _ in 0..250 {
        let now: Vec<u64> = subs
            .iter()
            .map(|k| crate::cmd_stat::received_by(k.pid()).unwrap_or(0))
            .collect();
        if now == last_counts {
            break;
        }
        last_counts = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut reports = Vec::new();
    for k in subs {
        k.signal(libc::SIGTERM);
        let out = k.finish(Duration::from_secs(20))?;
        reports.push(
            serde_json::from_str::<SubReport>(out.trim())
                .map_err(|e| Error::Protocol(format!("a subscriber's report: {e}")))?,
        );
    }

    println!();
    println!(
        "{:<12} {:>10} {:>12} {:>10} {:>6} {:>6} {:>9} {:>7}",
        "sub", "messages", "from history", "reconnects", "gaps", "lost", "corrupt", "bad"
    );
    let mut lost_total = 0;
    for r in &reports {
        let sum = |f: fn(&crate::report::TopicReport) -> u64| r.topics.iter().map(f).sum::<u64>();
        let (lost, bad) = (sum(|t| t.lost), sum(|t| t.verify_failures + t.order_errors));
        let corrupt = sum(|t| t.corrupt);
        lost_total += lost + bad + corrupt;
        println!(
            "{:<12} {:>10} {:>12} {:>10} {:>6} {:>6} {:>9} {:>7}",
            r.name,
            thousands(sum(|t| t.received)),
            thousands(sum(|t| t.repaired)),
            // Per subscription: quotes and trades reconnect together.
            r.topics.iter().map(|t| t.reconnects).max().unwrap_or(0),
            sum(|t| t.gaps),
            lost,
            corrupt,
            bad
        );
    }
    println!(
        "faults: 2 publisher restarts (SIGKILL, SIGTERM), 1 subscriber restart; the last \
         publisher published {}; messages lost, corrupt or out of order: {lost_total}",
        thousands(published)
    );
    if lost_total > 0 && a.policy == rdmabus::Policy::Block {
        return Err(Error::Protocol(format!(
            "chaos: {lost_total} messages lost, corrupt or out of order"
        )));
    }
    Ok(())
}

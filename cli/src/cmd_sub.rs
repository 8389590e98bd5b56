//! `rdmabus sub`: subscribe to topics and print or count what arrives.

use crate::keyopt::KeyArgs;
use crate::report::{Latency, SubReport, TopicReport};
use crate::topics;
use crate::Exit;
use hdrhistogram::Histogram;
use rdmabus::proto::market::{BookUpdate, Quote, Trade};
use rdmabus::{Access, Error, Event, IdleStrategy, Message, Psk, Subscriber, Transport};
use std::time::{Duration, Instant};

/// Arguments of `rdmabus sub`.
#[derive(clap::Args, Clone, Debug)]
pub struct SubArgs {
    /// Publisher node to connect to (HOST:PORT, as printed by `rdmabus pub`).
    #[arg(long, short = 'c', value_name = "HOST:PORT")]
    pub connect: String,
    /// Topic to subscribe to (quotes, trades or books); repeat for several.
    #[arg(long = "topic", short = 't', required = true, value_parser = topics::parse)]
    pub topics: Vec<String>,
    /// Stop after this many sequences per topic (received or lost). 0 consumes none: it
    /// connects (checking the key, topic and transport), then leaves in order at once.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds (above 0, fractions allowed).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = crate::parse::seconds)]
    pub seconds: Option<Duration>,
    /// Print every message.
    #[arg(long)]
    pub print: bool,
    /// Check every message against the synthetic feed that `rdmabus pub` sends.
    #[arg(long)]
    pub verify: bool,
    /// Spend this many microseconds per message (to play a slow consumer; at most 10 s).
    #[arg(long, default_value_t = 0, value_name = "US", allow_negative_numbers = true, value_parser = crate::parse::delay_us)]
    pub delay_us: u64,
    /// Ring slots per topic (a power of two from 2 to 1048576).
    #[arg(long, default_value_t = 1024, allow_negative_numbers = true, value_parser = crate::parse::slots)]
    pub slots: u32,
    /// Retained messages to receive first, before the live stream: none, all, or a number
    /// (the publisher keeps what its --history says)
    #[arg(long, default_value = "none", value_name = "none|all|N", value_parser = crate::parse::history_request)]
    pub history: rdmabus::HistoryRequest,
    /// Ride through a lost, stopped or restarted publisher: reconnect with backoff (50 ms
    /// doubling to 2 s), forever, instead of ending; each new session is counted and listed
    /// in --json (sessions)
    #[arg(long)]
    pub reconnect: bool,
    /// Name shown in the publisher's stats.
    #[arg(long, default_value = "")]
    pub name: String,
    /// How to wait when idle: spin (lowest latency, burns a core), yield, backoff.
    #[arg(long, default_value = "spin")]
    pub idle: IdleStrategy,
    /// How messages are read: copy (default: a validated copy, safe against any publisher),
    /// in-place (validated in the ring: only for publishers trusted not to rewrite a slot
    /// being read), unchecked (no validation: fully trusted publishers only).
    #[arg(long, default_value = "copy", value_name = "MODE")]
    pub access: Access,
    /// Same as `--access unchecked`.
    #[arg(long, conflicts_with = "access")]
    pub unchecked: bool,
    /// Print a JSON report on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// Pin the polling thread to this CPU (give it an isolated core for steady latency;
    /// checked at start: it must exist and be allowed).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Transport: shm (same machine) or verbs (RDMA).
    #[arg(long, default_value = "shm", value_parser = crate::parse::transport)]
    pub transport: Transport,
    /// Local address for the control connection; over verbs it picks the RDMA interface.
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    /// RDMA device (default: the one whose RoCE v2 GID is the local address).
    #[arg(long)]
    pub device: Option<String>,
    /// GID index (default: the RoCE v2 GID of the local address).
    #[arg(long)]
    pub gid_index: Option<u8>,
    #[command(flatten)]
    pub verbs: crate::verbsopt::VerbsArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

trait TopicReader {
    /// One poll; true if something happened.
    fn step(&mut self, args: &SubArgs) -> bool;
    fn done(&self) -> bool;
    /// How the topic ended, as an exit status.
    fn exit(&self) -> Exit;
    fn finish(&mut self, end: &str) -> (TopicReport, Histogram<u64>);
}

struct Reader<T: Message> {
    sub: Subscriber<T>,
    verify: fn(&T::Archived, u64) -> bool,
    report: TopicReport,
    hist: Histogram<u64>,
    seen: u64,
    count: Option<u64>,
    done: bool,
    exit: Exit,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

impl<T: Message + 'static> Reader<T>
where
    T::Archived: std::fmt::Debug,
{
    fn connect(
        args: &SubArgs,
        psk: &Psk,
        topic: &str,
        verify: fn(&T::Archived, u64) -> bool,
    ) -> Result<Box<dyn TopicReader>, Error> {
        let mut b = Subscriber::<T>::builder(args.connect.as_str(), topic)
            .psk(psk.clone())
            .slots(args.slots)
            .name(if args.name.is_empty() {
                format!("sub-{}", std::process::id())
            } else {
                args.name.clone()
            })
            .idle(args.idle)
            .transport(args.transport)
            .history(args.history)
            .access(if args.unchecked {
                Access::Unchecked
            } else {
                args.access
            });
        if let Some(ip) = args.bind {
            b = b.bind(ip);
        }
        if args.reconnect {
            b = b.reconnect(rdmabus::Reconnect::default());
        }
        if let Some(d) = &args.device {
            b = b.device(d.clone());
        }
        if let Some(g) = args.gid_index {
            b = b.gid_index(g);
        }
        let sub = b.verbs_options(args.verbs.options()?).connect()?;
        let report = TopicReport {
            topic: topic.to_string(),
            subscriber_id: sub.id(),
            end: if args.count == Some(0) {
                "count".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        Ok(Box::new(Reader {
            sub,
            verify,
            report,
            hist: histogram(),
            seen: 0,
            count: args.count,
            // --count 0: connected, and done before reading anything.
            done: args.count == Some(0),
            exit: Exit::Ok,
        }))
    }
}

impl<T: Message> TopicReader for Reader<T>
where
    T::Archived: std::fmt::Debug,
{
    fn step(&mut self, args: &SubArgs) -> bool {
        if self.done {
            return false;
        }
        let r = &mut self.report;
        match self.sub.poll() {
            Ok(None) => return false,
            Ok(Some(Event::Gap {
                first,
                count,
                announced,
            })) => {
                if r.lost_ranges.len() < 10_000 {
                    r.lost_ranges.push((first, count));
                }
                if args.print {
                    println!(
                        "{} gap: {count} lost from #{first} (announced: {announced})",
                        r.topic
                    );
                }
                self.seen += count;
            }
            Ok(Some(Event::Message(m))) => {
                let now = rdmabus::clock::now_ns();
                let _ = self.hist.record(now.saturating_sub(m.publish_ns()).max(1));
                let seq = m.seq();
                // Serial-number comparison: correct across the u64 wrap.
                if r.last_seq.is_some_and(|l| seq.wrapping_sub(l) as i64 <= 0) {
                    r.order_errors += 1;
                }
                r.first_seq.get_or_insert(seq);
                r.last_seq = Some(seq);
                if args.verify && !(self.verify)(m.archived(), seq) {
                    r.verify_failures += 1;
                }
                if args.print {
                    println!("{} #{seq} {:?}", r.topic, m.archived());
                }
                self.seen += 1;
                if args.delay_us > 0 {
                    work_for(Duration::from_micros(args.delay_us));
                }
            }
            Ok(Some(Event::Session(c))) => {
                if !args.json {
                    eprintln!(
                        "{}: reconnected after {:?} ({} attempts): new session {:016x}, numbering {} at #{} (previous session ended: {})",
                        r.topic,
                        c.down_for,
                        c.attempts,
                        c.epoch,
                        if c.continues { "continues" } else { "starts again" },
                        c.next_seq,
                        c.reason
                    );
                }
                if !c.continues {
                    // Sequences of the new session are not comparable with the old one's.
                    r.last_seq = None;
                }
                r.sessions.push(crate::report::SessionReport {
                    epoch: format!("{:016x}", c.epoch),
                    continues: c.continues,
                    next_seq: c.next_seq,
                    down_ms: c.down_for.as_secs_f64() * 1e3,
                    previous_end: c.reason.clone(),
                });
            }
            Ok(Some(_)) => {}
            Err(Error::Corrupt { seq, reason }) => {
                eprintln!("{}: corrupt message {seq:?}: {reason}", r.topic);
                self.seen += 1;
            }
            Err(e) => {
                r.end = match &e {
                    Error::Closed { reason, message } => format!("closed: {reason:?}: {message}"),
                    Error::PublisherLost(why) => format!("lost: {why}"),
                    other => format!("error: {other}"),
                };
                self.exit = Exit::of(&e);
                if !args.json {
                    eprintln!("{}: {e}", r.topic);
                }
                self.done = true;
                return true;
            }
        }
        if self.count.is_some_and(|c| self.seen >= c) {
            self.report.end = "count".into();
            self.done = true;
        }
        true
    }

    fn done(&self) -> bool {
        self.done
    }

    fn exit(&self) -> Exit {
        self.exit
    }

    fn finish(&mut self, end: &str) -> (TopicReport, Histogram<u64>) {
        let s = self.sub.stats();
        let mut r = self.report.clone();
        r.received = s.received;
        r.gaps = s.gaps;
        r.lost = s.lost;
        r.dropped_announced = s.dropped_announced;
        r.corrupt = s.corrupt;
        r.repaired = s.repaired;
        r.reconnects = s.reconnects;
        r.latency = Latency::from_histogram(&self.hist);
        if r.end.is_empty() {
            r.end = end.to_string();
        }
        (r, self.hist.clone())
    }
}

/// Busy-waits for `d` (a sleep would overshoot short delays by tens of microseconds).
fn work_for(d: Duration) {
    if d >= Duration::from_millis(2) {
        std::thread::sleep(d);
        return;
    }
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Runs `rdmabus sub`; the exit status says how the topics ended (the worst of them).
pub fn run(args: SubArgs) -> Result<Exit, Error> {
    let psk = args.key.load()?;
    if let Some(cpu) = args.cpu {
        rdmabus::affinity::check_cpu(cpu)?;
    }
    // Odd RDMA options are usage errors before anything connects.
    args.verbs.options()?;
    if args.transport == Transport::Verbs {
        crate::rdma::check_rdma()?;
    }
    let mut readers: Vec<Box<dyn TopicReader>> = Vec::new();
    for topic in &args.topics {
        readers.push(match topic.as_str() {
            "quotes" => Reader::<Quote>::connect(&args, &psk, topic, Quote::synthetic_matches)?,
            "trades" => Reader::<Trade>::connect(&args, &psk, topic, Trade::synthetic_matches)?,
            _ => Reader::<BookUpdate>::connect(&args, &psk, topic, BookUpdate::synthetic_matches)?,
        });
    }
    if !args.json {
        eprintln!(
            "subscribed to {} at {}",
            args.topics.join(", "),
            args.connect
        );
    }
    if let Some(cpu) = args.cpu {
        rdmabus::affinity::pin_current_thread(cpu)?;
    }
    let deadline = args.seconds.map(|s| Instant::now() + s);
    let mut rounds = 0u32;
    let end = loop {
        let mut progressed = false;
        for r in readers.iter_mut() {
            progressed |= r.step(&args);
        }
        if readers.iter().all(|r| r.done()) {
            break "done".to_string();
        }
        if let Some(sig) = crate::signals::stopped() {
            break format!("signal: {}", crate::signals::name(sig));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "seconds".to_string();
        }
        if progressed {
            rounds = 0;
        } else {
            args.idle.idle(rounds);
            rounds = rounds.saturating_add(1);
        }
    };
    let mut all = histogram();
    let mut report = SubReport {
        transport: match args.transport {
            Transport::Shm => "shm".into(),
            Transport::Verbs => "verbs".into(),
        },
        name: args.name.clone(),
        pid: std::process::id(),
        ..Default::default()
    };
    let exit = readers
        .iter()
        .fold(Exit::Ok, |worst, r| worst.worse(r.exit()));
    for r in readers.iter_mut() {
        let (t, h) = r.finish(&end);
        let _ = all.add(&h);
        report.topics.push(t);
    }
    report.latency = Latency::from_histogram(&all);
    drop(readers);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        for t in &report.topics {
            eprintln!(
                "{}: received {} gaps {} lost {} corrupt {} verify-failures {} p50 {} us p99 {} us ({})",
                t.topic, t.received, t.gaps, t.lost, t.corrupt, t.verify_failures,
                crate::report::us(t.latency.p50_ns), crate::report::us(t.latency.p99_ns), t.end
            );
        }
    }
    Ok(exit)
}

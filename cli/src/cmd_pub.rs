//! `rdmabus pub`: publish synthetic market data.

use crate::keyopt::KeyArgs;
use crate::report::PubTopic;
use crate::topics::{self, AnyPublisher};
use rdmabus::{Error, IdleStrategy, Node, Policy};
use std::time::{Duration, Instant};

/// Arguments of `rdmabus pub`.
#[derive(clap::Args, Clone, Debug)]
pub struct PubArgs {
    /// Address to accept subscribers on.
    #[arg(
        long,
        short = 'l',
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT"
    )]
    pub listen: String,
    /// Topics to publish (quotes, trades, books); repeat for several.
    #[arg(long = "topic", short = 't', default_values_t = ["quotes".to_string(), "trades".to_string()], value_parser = topics::parse)]
    pub topics: Vec<String>,
    /// Messages per second over all topics (0: as fast as the subscribers allow; at most
    /// 1,000,000,000).
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true, value_parser = crate::parse::rate)]
    pub rate: u64,
    /// Stop after this many messages per topic (0: publish none, close in order).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds (above 0, fractions allowed).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = crate::parse::seconds)]
    pub seconds: Option<Duration>,
    /// What to do when a subscriber's ring is full: block, drop, disconnect.
    #[arg(long, default_value = "block")]
    pub policy: Policy,
    /// Wait for this many subscribers on every topic before publishing (at most 64; gives up
    /// after 60 s).
    #[arg(long, default_value_t = 0, value_parser = crate::parse::subscribers)]
    pub wait_subscribers: usize,
    /// Under block, the longest a subscriber with a full ring may hold the publisher, in
    /// milliseconds, before it is cut as a slow consumer (0: as long as it stays connected).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub block_timeout_ms: u64,
    /// At the end (SIGTERM, --count, --seconds), how long subscribers that are behind get to
    /// catch up from the history before each topic says goodbye, in seconds.
    #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = crate::parse::seconds)]
    pub close_timeout: std::time::Duration,
    /// Keep the last N messages of each topic for late joiners and for Drop subscribers that
    /// fall behind (sub --history asks for them); 0 keeps none.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = crate::parse::history_depth)]
    pub history: u64,
    /// The first sequence number, for every topic (SEQ) or one (TOPIC=SEQ; repeat for more):
    /// to resume a feed's numbering after a restart, so that reconnecting subscribers see it
    /// continue
    #[arg(long, value_name = "[TOPIC=]SEQ", value_parser = crate::parse::first_seq)]
    pub first_seq: Vec<(Option<String>, u64)>,
    /// How to wait when blocked: spin, yield, backoff.
    #[arg(long, default_value = "spin")]
    pub idle: IdleStrategy,
    /// Pin the publishing thread to this CPU (checked at start: it must exist and be allowed).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Print a JSON report on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// RDMA device for verbs subscribers (default: the one whose GID is the address they use).
    #[arg(long)]
    pub device: Option<String>,
    /// GID index for verbs subscribers (default: the RoCE v2 GID of that address).
    #[arg(long)]
    pub gid_index: Option<u8>,
    #[command(flatten)]
    pub verbs: crate::verbsopt::VerbsArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Paces a loop at `rate` iterations per second (0: unpaced).
pub struct Pacer {
    start: Instant,
    per: Option<Duration>,
    n: u64,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Self {
            start: Instant::now(),
            per: (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64)),
            n: 0,
        }
    }

    /// Waits until the next iteration is due.
    #[inline]
    pub fn wait(&mut self) {
        if let Some(per) = self.per {
            let due = self.start + per.mul_f64(self.n as f64);
            let mut rounds = 0;
            while Instant::now() < due {
                IdleStrategy::Yield.idle(rounds);
                rounds += 1;
            }
        }
        self.n += 1;
    }
}

/// Runs `rdmabus pub`.
pub fn run(args: PubArgs) -> Result<(), Error> {
    if let Some(cpu) = args.cpu {
        // Before anything starts; the pinning itself waits for the node's threads to exist.
        rdmabus::affinity::check_cpu(cpu)?;
    }
    let mut builder = Node::builder()
        .bind(args.listen.clone())
        .psk(args.key.load()?);
    if let Some(d) = &args.device {
        builder = builder.device(d.clone());
    }
    if let Some(g) = args.gid_index {
        builder = builder.gid_index(g);
    }
    let node = builder.verbs_options(args.verbs.options()?).start()?;
    let mut pubs = args
        .topics
        .iter()
        .map(|t| {
            let budget =
                (args.block_timeout_ms > 0).then(|| Duration::from_millis(args.block_timeout_ms));
            let first = args
                .first_seq
                .iter()
                .rev()
                .find(|(topic, _)| topic.as_deref().is_none_or(|x| x == t))
                .map(|(_, seq)| *seq);
            AnyPublisher::new(
                &node,
                t,
                args.policy,
                args.idle,
                budget,
                args.history,
                first,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "publishing {} on {} (policy {:?})",
        args.topics.join(", "),
        node.local_addr(),
        args.policy
    );
    for p in pubs.iter_mut() {
        if !p.wait_for_subscribers_or_signal(args.wait_subscribers, Duration::from_secs(60))? {
            break;
        }
    }
    if let Some(cpu) = args.cpu {
        rdmabus::affinity::pin_current_thread(cpu)?;
    }
    let deadline = args.seconds.map(|s| Instant::now() + s);
    let mut pacer = Pacer::new(args.rate);
    let mut sent = 0u64;
    'outer: loop {
        for p in pubs.iter_mut() {
            if args.count.is_some_and(|c| sent >= c)
                || deadline.is_some_and(|d| Instant::now() >= d)
                || crate::signals::stopped().is_some()
            {
                break 'outer;
            }
            pacer.wait();
            p.publish_next()?;
            if args.history > 0 && args.rate > 0 {
                // Paced: between sends, late joiners and laggards catch up from the history.
                p.pump();
            }
        }
        sent += 1;
    }
    if let Some(sig) = crate::signals::stopped() {
        eprintln!(
            "{}: closing every topic in order",
            crate::signals::name(sig)
        );
    }
    // Each subscriber gets its goodbye (Closed: Shutdown) after what was sent to it.
    let reports: Vec<PubTopic> = pubs
        .into_iter()
        .map(|p| {
            let topic = p.topic().to_string();
            PubTopic::from_stats(&topic, &p.close(args.close_timeout))
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&reports).expect("report serializes")
        );
    } else {
        for r in &reports {
            eprintln!(
                "{}: published {} to {} subscribers",
                r.topic,
                r.published,
                r.subscribers.len()
            );
        }
    }
    Ok(())
}

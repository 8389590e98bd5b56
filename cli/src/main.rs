//! `rdmabus`: run a market-data demo, publish, or subscribe, from the command line.

mod bench;
mod cmd_demo;
mod cmd_demo_chaos;
mod cmd_doctor;
mod cmd_keygen;
mod cmd_pub;
mod cmd_stat;
mod cmd_sub;
mod keyopt;
mod logging;
mod rdma;
mod report;
mod topics;
mod verbsopt;

use clap::{Parser, Subcommand};
use rdmabus::proto::handshake::{GoodbyeReason, RejectCode};
use rdmabus::Error;

/// The exit statuses, as every command's `--help` shows them (the README and
/// `deploy/systemd/*` say the same).
pub const EXIT_HELP: &str = "\
Exit status:
  0  orderly end: --count or --seconds reached, the publisher closed the topic, or
     SIGTERM/SIGINT/SIGHUP (pub closes its topics in order, sub prints its report; a second
     signal ends the process at once, killed by that signal)
  1  other runtime error: I/O, connection refused, a timeout, a protocol error (retrying may
     help)
  2  bad usage or configuration: an option or its value, the key, no RDMA device, a CPU that
     does not exist (fix it: retrying will not help)
  3  publisher lost: killed, connection lost or heartbeats stopped (retry: a restarted sub
     connects once the publisher is back)
  4  refused by the publisher: wrong key, unknown topic, another message type, ring size,
     transport or protocol version (retrying will not help)
  5  cut by the publisher as a slow consumer (its policy is disconnect)
  6  publisher busy: no room for another subscriber or handshake now (retry later)
doctor exits 0 when no check failed (warnings allowed), 1 when one did, 2 on bad usage";

/// How the process ends: the exit statuses of [`EXIT_HELP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: orderly end.
    Ok,
    /// 1: any other runtime error.
    Error,
    /// 2: bad usage or configuration (clap's own usage errors are 2 as well).
    Usage,
    /// 3: the publisher vanished without a goodbye.
    PublisherLost,
    /// 4: the publisher refused us, or we it (the key).
    Refused,
    /// 5: cut as a slow consumer.
    SlowConsumer,
    /// 6: the publisher has no room now.
    Busy,
    /// 1: a `doctor` check failed.
    DoctorFailed,
}

impl Exit {
    /// The status the process exits with.
    pub fn code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::Usage => 2,
            Self::PublisherLost => 3,
            Self::Refused => 4,
            Self::SlowConsumer => 5,
            Self::Busy => 6,
            Self::DoctorFailed => 1,
        }
    }

    /// The status for a run that ended with `e`.
    pub fn of(e: &Error) -> Self {
        match e {
            Error::Config(_) => Self::Usage,
            Error::PublisherLost(_) => Self::PublisherLost,
            Error::Rejected {
                code: RejectCode::Unavailable,
                ..
            } => Self::Busy,
            Error::Rejected { .. } | Error::Auth(_) => Self::Refused,
            Error::Closed { reason, .. } => match reason {
                GoodbyeReason::Shutdown => Self::Ok,
                GoodbyeReason::SlowConsumer => Self::SlowConsumer,
                GoodbyeReason::Error => Self::Error,
            },
            Error::Io { .. }
            | Error::Protocol(_)
            | Error::Frame(_)
            | Error::Message(_)
            | Error::Corrupt { .. }
            | Error::Timeout(_) => Self::Error,
        }
    }

    /// Of two endings (of several topics), the one to report: publisher lost, then slow
    /// consumer, then any other error, then the rest.
    pub fn worse(self, other: Self) -> Self {
        let rank = |e: Self| match e {
            Self::Ok => 0,
            Self::PublisherLost => 4,
            Self::SlowConsumer => 3,
            Self::Error => 2,
            _ => 1,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

/// Parsers of the numbers on the command line: each odd value (NaN, infinities, negative,
/// zero where it means nothing, absurdly large) is a usage error that says what is accepted.
pub mod parse {
    use std::time::Duration;

    /// The longest `--seconds`: 10^9 s, about 31 years.
    pub const MAX_SECONDS: f64 = 1e9;
    /// The highest paced `--rate` (one message a nanosecond).
    pub const MAX_RATE: u64 = 1_000_000_000;
    /// The longest `--delay-us` / `--slow-us`: 10 s a message.
    pub const MAX_DELAY_US: u64 = 10_000_000;
    /// The most subscribers a topic takes (the node's default `max_subscribers`).
    pub const MAX_SUBSCRIBERS: usize = 64;

    /// A duration in seconds: finite, above 0, at most [`MAX_SECONDS`] (`2`, `0.5`, `1e-3`).
    pub fn seconds(s: &str) -> Result<Duration, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("not a number of seconds (for example 2 or 0.5): {s:?}"))?;
        if !v.is_finite() || v <= 0.0 || v > MAX_SECONDS {
            return Err(format!(
                "seconds must be a finite number above 0 and at most {MAX_SECONDS} (about 31 years)"
            ));
        }
        match Duration::try_from_secs_f64(v) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err("seconds must be at least 1 ns".into()),
        }
    }

    /// Messages per second: 0 (as fast as the subscribers allow) to [`MAX_RATE`].
    pub fn rate(s: &str) -> Result<u64, String> {
        match s.trim().parse::<u64>() {
            Ok(v) if v <= MAX_RATE => Ok(v),
            _ => Err(format!(
                "a rate is a whole number of messages per second from 1 to {MAX_RATE}, or 0 for \
                 as fast as the subscribers allow"
            )),
        }
    }

    /// A transport, `shm` or `verbs`; `verbs` is refused by a build without it.
    pub fn transport(s: &str) -> Result<rdmabus::Transport, String> {
        let t: rdmabus::Transport = s.parse()?;
        if t == rdmabus::Transport::Verbs && !rdmabus::transport::VERBS {
            return Err(rdmabus::transport::no_verbs().to_string());
        }
        Ok(t)
    }

    /// A first sequence: `SEQ` (every topic) or `TOPIC=SEQ`.
    pub fn first_seq(s: &str) -> Result<(Option<String>, u64), String> {
        let (topic, seq) = match s.split_once('=') {
            Some((t, n)) => (Some(t.trim().to_string()), n),
            None => (None, s),
        };
        if let Some(t) = &topic {
            crate::topics::check(t)?;
        }
        seq.trim()
            .parse::<u64>()
            .map(|n| (topic, n))
            .map_err(|_| "a first sequence is SEQ or TOPIC=SEQ, SEQ a whole number".to_string())
    }

    /// Largest history a publisher may keep.
    pub const MAX_HISTORY: u64 = 1 << 24;

    /// A publisher's history depth: 0 to [`MAX_HISTORY`] messages.
    pub fn history_depth(s: &str) -> Result<u64, String> {
        match s.trim().parse::<u64>() {
            Ok(v) if v <= MAX_HISTORY => Ok(v),
            _ => Err(format!(
                "a history is a whole number of messages from 0 to {MAX_HISTORY}"
            )),
        }
    }

    /// How much history a subscriber asks for: `none`, `all` or a number of messages.
    pub fn history_request(s: &str) -> Result<rdmabus::HistoryRequest, String> {
        match s.trim() {
            "none" | "0" => Ok(rdmabus::HistoryRequest::None),
            "all" => Ok(rdmabus::HistoryRequest::All),
            n => match n.parse::<u64>() {
                Ok(k) if k <= MAX_HISTORY => Ok(rdmabus::HistoryRequest::Last(k)),
                _ => Err(format!(
                    "history is none, all, or a whole number of messages up to {MAX_HISTORY}"
                )),
            },
        }
    }

    /// Ring slots: a power of two in the ring's bounds.
    pub fn slots(s: &str) -> Result<u32, String> {
        use rdmabus::proto::geometry::{MAX_SLOTS, MIN_SLOTS};
        match s.trim().parse::<u32>() {
            Ok(v) if v.is_power_of_two() && (MIN_SLOTS..=MAX_SLOTS).contains(&v) => Ok(v),
            _ => Err(format!(
                "slots must be a power of two from {MIN_SLOTS} to {MAX_SLOTS} (64, 1024, ...)"
            )),
        }
    }

    /// Microseconds spent on each message: 0 to [`MAX_DELAY_US`].
    pub fn delay_us(s: &str) -> Result<u64, String> {
        match s.trim().parse::<u64>() {
            Ok(v) if v <= MAX_DELAY_US => Ok(v),
            _ => Err(format!(
                "microseconds per message, a whole number from 0 to {MAX_DELAY_US} (10 s)"
            )),
        }
    }

    /// A number of subscribers to wait for: 0 to [`MAX_SUBSCRIBERS`].
    pub fn subscribers(s: &str) -> Result<usize, String> {
        match s.trim().parse::<usize>() {
            Ok(v) if v <= MAX_SUBSCRIBERS => Ok(v),
            _ => Err(format!(
                "a whole number from 0 to {MAX_SUBSCRIBERS} (a topic takes at most {MAX_SUBSCRIBERS} subscribers)"
            )),
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP. The handler only sets a flag (and, for a second signal or a
/// command that does not poll the flag, removes the stats file and re-raises the signal with
/// its default action: async-signal-safe calls only). The commands' loops poll [`stopped`].
pub mod signals {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

    static STOP: AtomicI32 = AtomicI32::new(0);
    static GRACEFUL: AtomicBool = AtomicBool::new(false);
    const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

    extern "C" fn on_signal(sig: libc::c_int) {
        let first = STOP
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if first && GRACEFUL.load(Ordering::SeqCst) {
            return;
        }
        rdmabus::stats_file::remove_own_file_on_signal();
        // SAFETY: signal(2) and raise(3) are async-signal-safe; the signal stays blocked
        // until this handler returns, then its default action (termination) is taken.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// Installs the handler. `graceful`: the command polls [`stopped`] and ends in order on
    /// the first signal; otherwise the first signal ends the process at once. A signal that
    /// was ignored when the process started (`nohup`, a background job) stays ignored.
    pub fn install(graceful: bool) {
        GRACEFUL.store(graceful, Ordering::SeqCst);
        for sig in SIGNALS {
            // SAFETY: sigaction is plain data, valid all zero; the calls get valid pointers,
            // and the handler is an extern "C" fn(c_int) that only does async-signal-safe
            // things.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// The first signal received, if any.
    #[inline]
    pub fn stopped() -> Option<i32> {
        match STOP.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    /// A signal's name.
    pub fn name(sig: i32) -> &'static str {
        match sig {
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            _ => "signal",
        }
    }
}

/// rdmabus moves typed messages between processes and machines without the kernel on the
/// data path: publishers write zero-copy rkyv messages straight into each subscriber's ring
/// (shared memory on one box, RDMA between boxes); subscribers busy-poll and read a validated copy.
///
/// Start with `rdmabus demo`. Keys: publishers and subscribers prove a shared key, made with
/// `rdmabus keygen FILE` and given with --key-file FILE or in the RDMABUS_PSK environment
/// variable (passphrases are refused: they could be guessed offline).
#[derive(Parser)]
#[command(name = "rdmabus", version, propagate_version = true, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a synthetic market-data feed (quotes and trades) to subscribers in separate
    /// processes, with a live status line and a final per-subscriber table.
    #[command(after_help = EXIT_HELP)]
    Demo(cmd_demo::DemoArgs),
    /// Publish synthetic market data on one or more topics (quotes, trades, books).
    #[command(after_help = EXIT_HELP)]
    Pub(cmd_pub::PubArgs),
    /// Subscribe to topics of a publisher, and print or count what arrives.
    #[command(after_help = EXIT_HELP)]
    Sub(cmd_sub::SubArgs),
    /// Measure: ping-pong latency and fan-out throughput, per size, over either transport.
    #[command(after_help = EXIT_HELP)]
    Bench(bench::BenchArgs),
    /// Show the live counters of every running rdmabus process, refreshing, like top.
    #[command(after_help = EXIT_HELP)]
    Stat(cmd_stat::StatArgs),
    /// Check this machine for a transport: every RDMA port, GIDs, MTU, RoCE ECN/PFC/DSCP
    /// trust, IOMMU, IRQ affinity, NUMA, C-states, isolated CPUs, memlock, hugepages, clock
    /// sync, /dev/shm; each with a verdict and a hint (--json for tools).
    #[command(after_help = EXIT_HELP)]
    Doctor(cmd_doctor::DoctorArgs),
    /// Write a new random pre-shared key to a new file (mode 0600, never overwrites).
    #[command(after_help = EXIT_HELP)]
    Keygen(cmd_keygen::KeygenArgs),
}

fn main() {
    match logging::format_from_env() {
        Ok(f) => logging::init(f),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(Exit::Usage.code());
        }
    }
    // Usage errors exit 2 here (clap).
    let cli = Cli::parse();
    // Stats files that killed rdmabus processes left in the shm directory go now.
    rdmabus::stats_file::sweep();
    // pub, sub, demo and stat end in order on a signal; the others at once.
    signals::install(matches!(
        cli.command,
        Command::Demo(_) | Command::Pub(_) | Command::Sub(_) | Command::Stat(_)
    ));
    let ok = |r: Result<(), Error>| r.map(|()| Exit::Ok);
    let result = match cli.command {
        Command::Demo(a) => ok(cmd_demo::run(a)),
        Command::Pub(a) => ok(cmd_pub::run(a)),
        Command::Sub(a) => cmd_sub::run(a),
        Command::Bench(a) => ok(bench::run(a)),
        Command::Stat(a) => ok(cmd_stat::run(a)),
        Command::Doctor(a) => cmd_doctor::run(a),
        Command::Keygen(a) => ok(cmd_keygen::run(a)),
    };
    rdmabus::stats_file::remove_own_file();
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => {
            let exit = Exit::of(&e);
            if exit == Exit::Ok {
                eprintln!("rdmabus: {e}");
            } else {
                eprintln!("rdmabus: error: {e}");
            }
            exit
        }
    };
    std::process::exit(exit.code());
}

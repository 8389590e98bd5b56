//! `rdmabus bench`: ping-pong and fan-out, with HDR histograms, a table, JSON and an SVG plot.

mod compare;
mod fanout;
mod limit;
mod perftest;
mod pingpong;
mod plot;
mod result;
mod stages;

use rdmabus::{Access, Error, IdleStrategy, Transport};
use std::path::PathBuf;

/// Arguments of `rdmabus bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: Kind,
}

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Kind {
    /// Round trips between two nodes: one-way latency (half the round trip, as perftest's
    /// ib_write_lat reports it) and round trips per second, per message size.
    Pingpong(pingpong::PingpongArgs),
    /// One publisher, N subscribers: delivered messages/s, MB/s and one-way latency, per
    /// subscriber count and message size.
    Fanout(fanout::FanoutArgs),
    /// Print perftest's raw-verbs figures beside bench results, with ratios per size.
    Compare(compare::CompareArgs),
    /// Print the bytes a bench message of each size takes on the wire (slot header and
    /// archive), for perftest runs of the same wire size (`compare --wire`).
    Wire(compare::WireArgs),
    /// The limit: one cache line handed between two pinned threads and back (one-way, half
    /// the round trip), the floor of any shared-memory hand-off between those CPUs.
    Limit(limit::LimitArgs),
}

/// Options every benchmark takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Transport: shm or verbs.
    #[arg(long, default_value = "shm", value_parser = crate::parse::transport)]
    pub transport: Transport,
    /// Payload sizes in bytes, comma-separated (16 B to 64 KiB).
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 64, 256, 1024, 4096, 16384, 65536])]
    pub sizes: Vec<usize>,
    /// Measured messages per size.
    #[arg(long, default_value_t = 20_000)]
    pub iters: u64,
    /// Warm-up messages per size (not measured).
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,
    /// CPUs to pin the busy-polling threads to, comma-separated (one per poller).
    #[arg(long, value_delimiter = ',')]
    pub cpu: Vec<usize>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the latency percentiles as an SVG plot into this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// How pollers wait: spin (default; give each a core), yield, backoff.
    #[arg(long, default_value = "spin")]
    pub idle: IdleStrategy,
    /// How every subscriber reads messages: copy (default), in-place, unchecked.
    #[arg(long, default_value = "copy", value_name = "MODE")]
    pub access: Access,
}

impl Common {
    fn check(&self) -> Result<(), Error> {
        check_sizes(&self.sizes)?;
        if self.iters == 0 {
            return Err(Error::Config("--iters must be at least 1".into()));
        }
        Ok(())
    }

    /// `ip` if given, else the default address for a node: loopback for shm, the first RDMA
    /// interface for verbs.
    fn ip_or_default(&self, ip: Option<std::net::IpAddr>) -> Result<std::net::IpAddr, Error> {
        if let Some(ip) = ip {
            return Ok(ip);
        }
        match self.transport {
            Transport::Shm => Ok([127, 0, 0, 1].into()),
            Transport::Verbs => crate::rdma::first_ipv4().map(Into::into),
        }
    }

    /// Prints the rows as a table and writes `--json` and `--svg`. `host` is taken before any
    /// thread is pinned, so that it counts every CPU the benchmark may use.
    fn report(
        &self,
        benchmark: &'static str,
        host: String,
        rows: Vec<result::Row>,
        limit: Option<result::Percentiles>,
    ) -> Result<(), Error> {
        let report = result::Report {
            benchmark,
            transport: format!("{:?}", self.transport).to_lowercase(),
            idle: format!("{:?}", self.idle),
            access: self.access.to_string(),
            host,
            limit,
            rows,
        };
        report.print();
        report.save(self.json.as_deref(), self.svg.as_deref())
    }

    /// Pins the calling thread to the `i`th CPU of `--cpu`, if given.
    fn pin(&self, i: usize) -> Result<(), Error> {
        match self.cpu.get(i) {
            Some(&cpu) => rdmabus::affinity::pin_current_thread(cpu),
            None => Ok(()),
        }
    }
}

/// Refuses an empty `--sizes` or a size over 64 KiB.
fn check_sizes(sizes: &[usize]) -> Result<(), Error> {
    if sizes.is_empty() || sizes.iter().any(|&s| s > 64 * 1024) {
        return Err(Error::Config(
            "--sizes must name sizes from 0 to 65536 bytes".into(),
        ));
    }
    Ok(())
}

/// Runs `rdmabus bench`.
pub fn run(a: BenchArgs) -> Result<(), Error> {
    match a.kind {
        Kind::Pingpong(p) => pingpong::run(p),
        Kind::Fanout(f) => fanout::run(f),
        Kind::Compare(c) => compare::run(c),
        Kind::Wire(w) => compare::run_wire(w),
        Kind::Limit(l) => limit::run(l),
    }
}

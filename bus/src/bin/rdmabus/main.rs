//! `rdmabus`: run a market-data demo, publish, or subscribe, from the command line.

mod bench;
mod cmd_demo;
mod cmd_doctor;
mod cmd_keygen;
mod cmd_pub;
mod cmd_stat;
mod cmd_sub;
mod keyopt;
mod report;
mod topics;

use clap::{Parser, Subcommand};

/// rdmabus moves typed messages between processes and machines without the kernel on the
/// data path: publishers write zero-copy rkyv messages straight into each subscriber's ring
/// (shared memory on one box, RDMA between boxes); subscribers busy-poll and read a validated copy.
///
/// Start with `rdmabus demo`. Keys: publishers and subscribers prove a shared key, made with
/// `rdmabus keygen FILE` and given with --key-file FILE or in the RDMABUS_PSK environment
/// variable (passphrases are refused: they could be guessed offline).
#[derive(Parser)]
#[command(name = "rdmabus", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a synthetic market-data feed (quotes and trades) to subscribers in separate
    /// processes, with a live status line and a final per-subscriber table.
    Demo(cmd_demo::DemoArgs),
    /// Publish synthetic market data on one or more topics (quotes, trades, books).
    Pub(cmd_pub::PubArgs),
    /// Subscribe to topics of a publisher, and print or count what arrives.
    Sub(cmd_sub::SubArgs),
    /// Measure: ping-pong latency and fan-out throughput, per size, over either transport.
    Bench(bench::BenchArgs),
    /// Show the live counters of every running rdmabus process, refreshing, like top.
    Stat(cmd_stat::StatArgs),
    /// Check this machine: RDMA devices, ports, GIDs, MTU, memlock, hugepages, CPU governor,
    /// isolated CPUs, thread pinning; each with a verdict and a hint.
    Doctor(cmd_doctor::DoctorArgs),
    /// Write a new random pre-shared key to a new file (mode 0600, never overwrites).
    Keygen(cmd_keygen::KeygenArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RDMABUS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => cmd_demo::run(a),
        Command::Pub(a) => cmd_pub::run(a),
        Command::Sub(a) => cmd_sub::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Stat(a) => cmd_stat::run(a),
        Command::Doctor(a) => cmd_doctor::run(a),
        Command::Keygen(a) => cmd_keygen::run(a),
    };
    rdmabus::stats_file::remove_own_file();
    if let Err(e) = result {
        eprintln!("rdmabus: error: {e}");
        std::process::exit(2);
    }
}

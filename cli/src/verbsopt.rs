//! The RDMA knobs on the command line (perftest's names where it has them), shared by `pub`
//! and `sub`.

use rdmabus::{Error, VerbsOptions};

/// RDMA options of a verbs link.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "RDMA (verbs) options")]
pub struct VerbsArgs {
    /// Port of the RDMA device (default: the port whose GID is the address).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u8).range(1..))]
    pub ib_port: Option<u8>,
    /// Traffic class of RoCE v2 packets (IP DSCP << 2 | ECN), 0 to 255.
    #[arg(long, value_name = "TC", conflicts_with = "dscp")]
    pub tclass: Option<u8>,
    /// DSCP of RoCE v2 packets, 0 to 63 (sets the traffic class to DSCP << 2).
    #[arg(long, value_name = "DSCP", value_parser = clap::value_parser!(u8).range(0..=63))]
    pub dscp: Option<u8>,
    /// Service level (802.1p priority on RoCE), 0 to 15.
    #[arg(long, value_name = "SL", value_parser = clap::value_parser!(u8).range(0..=15))]
    pub sl: Option<u8>,
    /// Largest path MTU in bytes: 256, 512, 1024, 2048 or 4096 (default: the ports' active MTU).
    #[arg(long, value_name = "BYTES", value_parser = ["256", "512", "1024", "2048", "4096"])]
    pub mtu: Option<String>,
    /// QP local ACK timeout exponent (4.096 us x 2^N), 1 to 31 [default: 14, about 67 ms].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=31))]
    pub qp_timeout: Option<u8>,
    /// Transport retries before a write fails, 0 to 7 [default: 6].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=7))]
    pub retry_count: Option<u8>,
    /// Receiver-not-ready retries before a write fails, 0 to 6 [default: 6] (7, forever, is
    /// refused).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=6))]
    pub rnr_retry: Option<u8>,
}

impl VerbsArgs {
    /// The options these arguments give, checked.
    pub fn options(&self) -> Result<VerbsOptions, Error> {
        let d = VerbsOptions::default();
        let mut o = VerbsOptions {
            port: self.ib_port,
            traffic_class: self.tclass.unwrap_or(d.traffic_class),
            service_level: self.sl.unwrap_or(d.service_level),
            mtu: self
                .mtu
                .as_deref()
                .map(|m| m.parse().expect("one of the listed values")),
            timeout: self.qp_timeout.unwrap_or(d.timeout),
            retry_count: self.retry_count.unwrap_or(d.retry_count),
            rnr_retry: self.rnr_retry.unwrap_or(d.rnr_retry),
        };
        if let Some(dscp) = self.dscp {
            o = o.dscp(dscp)?;
        }
        o.check()?;
        Ok(o)
    }
}

//! The RDMA knobs of a verbs link (perftest's and UCX's names in brackets), checked before any
//! device is opened. They exist in every build; without the `verbs` feature nothing reads them.

use crate::Error;

/// How a verbs link sets up its queue pair. The defaults suit a lossless RoCE fabric whose
/// default priority is the lossless one; set `traffic_class`/`service_level` to put the
/// traffic in the PFC priority your switches use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerbsOptions {
    /// Port of the device (perftest `--ib-port`); `None`: the port whose GID is the address.
    pub port: Option<u8>,
    /// Traffic class of the GRH, the IPv6 TC / IPv4 DSCP<<2 | ECN byte on RoCE v2 (perftest
    /// `--tclass`, UCX `UCX_IB_TRAFFIC_CLASS`).
    pub traffic_class: u8,
    /// Service level, the 802.1p priority on RoCE (perftest `--sl`, UCX `UCX_IB_SL`), 0 to 15.
    pub service_level: u8,
    /// Largest path MTU in bytes (perftest `--mtu`): 256, 512, 1024, 2048 or 4096; `None`:
    /// the smaller of the two ports' active MTUs.
    pub mtu: Option<u32>,
    /// Local ACK timeout exponent, 4.096 µs × 2^n (UCX `UCX_RC_TIMEOUT`), 1 to 31 (0, which
    /// waits forever, is refused).
    pub timeout: u8,
    /// Transport retries before a write fails (UCX `UCX_RC_RETRY_COUNT`), 0 to 7.
    pub retry_count: u8,
    /// Receiver-not-ready retries before a write fails (UCX `UCX_RC_RNR_RETRY_COUNT`), 0 to 6
    /// (7, which retries forever, is refused: a subscriber could hold its publisher).
    pub rnr_retry: u8,
}

impl Default for VerbsOptions {
    fn default() -> Self {
        Self {
            port: None,
            traffic_class: 0,
            service_level: 0,
            mtu: None,
            timeout: 14,
            retry_count: 6,
            rnr_retry: 6,
        }
    }
}

impl VerbsOptions {
    /// Sets the traffic class from a DSCP (0 to 63), ECN bits clear.
    pub fn dscp(mut self, dscp: u8) -> Result<Self, Error> {
        if dscp > 63 {
            return Err(Error::Config(format!("DSCP {dscp} is not 0 to 63")));
        }
        self.traffic_class = dscp << 2;
        Ok(self)
    }

    /// Refuses values the verbs API would take but that break the bus's guarantees, or that
    /// the API does not take.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Config(what));
        if self.port == Some(0) {
            return bad("RDMA port 0 does not exist: ports count from 1".into());
        }
        if self.service_level > 15 {
            return bad(format!(
                "service level {} is not 0 to 15",
                self.service_level
            ));
        }
        if let Some(m) = self.mtu {
            if ![256, 512, 1024, 2048, 4096].contains(&m) {
                return bad(format!(
                    "MTU {m} is not one of 256, 512, 1024, 2048 or 4096 bytes"
                ));
            }
        }
        if self.timeout == 0 || self.timeout > 31 {
            return bad(format!(
                "QP timeout exponent {} is not 1 to 31 (0 would wait forever)",
                self.timeout
            ));
        }
        if self.retry_count > 7 {
            return bad(format!("retry count {} is not 0 to 7", self.retry_count));
        }
        if self.rnr_retry > 6 {
            return bad(format!(
                "RNR retry count {} is not 0 to 6 (7 retries forever: a subscriber that stops \
                 posting receives would hold its publisher)",
                self.rnr_retry
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_each_bad_value_is_refused_with_its_name() {
        VerbsOptions::default().check().unwrap();
        let d = VerbsOptions::default();
        for (o, word) in [
            (VerbsOptions { port: Some(0), ..d }, "port 0"),
            (
                VerbsOptions {
                    service_level: 16,
                    ..d
                },
                "service level",
            ),
            (
                VerbsOptions {
                    mtu: Some(1500),
                    ..d
                },
                "MTU 1500",
            ),
            (VerbsOptions { timeout: 0, ..d }, "wait forever"),
            (VerbsOptions { timeout: 32, ..d }, "timeout"),
            (
                VerbsOptions {
                    retry_count: 8,
                    ..d
                },
                "retry count",
            ),
            (VerbsOptions { rnr_retry: 7, ..d }, "retries forever"),
        ] {
            let e = o.check().unwrap_err().to_string();
            assert!(e.contains(word), "{o:?}: {e}");
        }
        assert_eq!(d.dscp(26).unwrap().traffic_class, 104);
        assert!(d.dscp(64).is_err());
    }
}

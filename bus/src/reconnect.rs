//! Riding through a lost or restarted publisher: the subscriber's reconnect policy, the
//! parameters it keeps to connect again, and the event that tells the application.

use crate::control::ConnectParams;
use crate::{Error, HistoryRequest, Psk, Transport};
use rdmabus_proto::handshake::RejectCode;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How a subscription rides through a lost or restarted publisher
/// ([`crate::SubscriberBuilder::reconnect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait before the second attempt (the first is immediate); doubles after each failed
    /// attempt (default 50 ms).
    pub initial_backoff: Duration,
    /// Longest wait between two attempts (default 2 s).
    pub max_backoff: Duration,
    /// Gives up, and reports the end, after this long without a publisher (default: never).
    pub give_up_after: Option<Duration>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            give_up_after: None,
        }
    }
}

/// A subscription reached a publisher again ([`crate::Event::Session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionChange {
    /// The new publisher session (its epoch).
    pub epoch: u64,
    /// The session before it.
    pub previous_epoch: u64,
    /// Whether the new session continues the old stream: the same publisher answered, or one
    /// that resumed a numbering (`PublisherBuilder::first_seq`, `pub --first-seq`). The
    /// subscriber then asked for exactly what it missed: from the history, what left it
    /// comes as an announced gap, and a replay of what it has is skipped. When false the
    /// publisher started a new numbering: its history is offered as to a late joiner, and gap
    /// tracking restarts (sequences of the two sessions are not comparable).
    pub continues: bool,
    /// The sequence the new publisher publishes next (its history, if asked for, comes first).
    pub next_seq: u64,
    /// Why the previous session ended.
    pub reason: String,
    /// Attempts it took (1 when the first one succeeded).
    pub attempts: u32,
    /// Time without a publisher: from the end of the old session (its ring drained) to the
    /// new one's handshake done.
    pub down_for: Duration,
}

/// What a subscriber keeps to connect again.
pub(crate) struct Rejoin {
    pub addr: SocketAddr,
    pub topic: String,
    pub psk: Psk,
    pub transport: Transport,
    pub slots: u32,
    pub slot_size: Option<u32>,
    pub name: String,
    pub timeout: Duration,
    pub bind: Option<IpAddr>,
    pub device: Option<String>,
    pub gid_index: Option<u8>,
    pub verbs: crate::verbs_options::VerbsOptions,
    pub history: HistoryRequest,
    pub policy: Reconnect,
    pub down: Option<Down>,
}

/// The link is down: when to try next, and since when.
pub(crate) struct Down {
    pub since: Instant,
    pub next_attempt: Instant,
    pub backoff: Duration,
    pub attempts: u32,
    pub reason: String,
    pub previous_epoch: u64,
}

impl Rejoin {
    /// The parameters of the next attempt.
    pub fn params(&self, schema: &'static str, resume: Option<(u64, u64)>) -> ConnectParams<'_> {
        ConnectParams {
            addr: self.addr,
            topic: &self.topic,
            schema,
            psk: &self.psk,
            transport: self.transport,
            slots: self.slots,
            slot_size: self.slot_size,
            name: &self.name,
            timeout: self.timeout,
            bind: self.bind,
            device: self.device.as_deref(),
            gid_index: self.gid_index,
            verbs: self.verbs,
            history: self.history,
            resume,
        }
    }

    /// Marks the link down at `now` for `reason`; the first attempt is due at once.
    pub fn go_down(&mut self, now: Instant, reason: String, previous_epoch: u64) {
        self.down = Some(Down {
            since: now,
            next_attempt: now,
            backoff: self.policy.initial_backoff,
            attempts: 0,
            reason,
            previous_epoch,
        });
    }

    /// After a failed attempt at `now`: when the next one is due.
    pub fn failed(&mut self, now: Instant) {
        let max = self.policy.max_backoff;
        if let Some(d) = &mut self.down {
            d.next_attempt = now + d.backoff;
            d.backoff = (d.backoff * 2).min(max);
        }
    }
}

/// Whether a failed attempt is worth repeating: not when the key, the schema or this
/// subscriber's own configuration is wrong (those do not heal by waiting).
pub(crate) fn worth_retrying(e: &Error) -> bool {
    match e {
        Error::Auth(_) | Error::Config(_) => false,
        Error::Rejected { code, .. } => !matches!(
            code,
            RejectCode::AuthFailed
                | RejectCode::SchemaMismatch
                | RejectCode::VersionMismatch
                | RejectCode::BadGeometry
                | RejectCode::TransportUnsupported
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let mut r = Rejoin {
            addr: "127.0.0.1:1".parse().unwrap(),
            topic: "t".into(),
            psk: Psk::random(),
            transport: Transport::Shm,
            slots: 8,
            slot_size: None,
            name: String::new(),
            timeout: Duration::from_secs(1),
            bind: None,
            device: None,
            gid_index: None,
            verbs: Default::default(),
            history: HistoryRequest::None,
            policy: Reconnect {
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(150),
                give_up_after: None,
            },
            down: None,
        };
        let t0 = Instant::now();
        r.go_down(t0, "lost".into(), 1);
        assert_eq!(r.down.as_ref().unwrap().next_attempt, t0);
        let mut waits = Vec::new();
        for _ in 0..4 {
            r.failed(t0);
            waits.push(r.down.as_ref().unwrap().next_attempt - t0);
        }
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits, vec![ms(50), ms(100), ms(150), ms(150)]);
    }

    #[test]
    fn only_what_can_heal_is_retried() {
        assert!(worth_retrying(&Error::PublisherLost("x".into())));
        assert!(worth_retrying(&Error::Rejected {
            code: RejectCode::UnknownTopic,
            message: String::new()
        }));
        assert!(!worth_retrying(&Error::Auth("x".into())));
        assert!(!worth_retrying(&Error::Rejected {
            code: RejectCode::SchemaMismatch,
            message: String::new()
        }));
    }
}

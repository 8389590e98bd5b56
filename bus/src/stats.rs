//! Counters. The hot path updates them with plain relaxed stores (one writer each); readers on
//! other threads take snapshots.

use rdmabus_proto::handshake::GoodbyeReason;

/// How a subscriber's link stands or ended, as the publisher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEnd {
    /// Connected.
    Active,
    /// The publisher closed it: shutting down, or cut as a slow consumer.
    Cut(GoodbyeReason, String),
    /// The subscriber vanished (killed, connection lost, heartbeats stopped).
    Lost(String),
    /// The subscriber said goodbye.
    Left(String),
}

/// One subscriber, as the publisher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Id given in `Welcome`.
    pub id: u32,
    /// The name the subscriber gave.
    pub name: String,
    /// Messages written into its ring.
    pub sent: u64,
    /// Messages skipped for it under policy `Drop`.
    pub dropped: u64,
    /// Times the publisher found its ring full.
    pub credit_stalls: u64,
    /// Transport or protocol errors on its link (completion errors, bad credit); one ends it.
    pub errors: u64,
    /// Whether it is still connected.
    pub end: LinkEnd,
}

/// A publisher's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages published (sequenced), with or without subscribers.
    pub published: u64,
    /// Every subscriber that ever joined, connected ones first.
    pub subscribers: Vec<SubscriberInfo>,
}

/// A subscriber's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages handed to the application.
    pub received: u64,
    /// Gap events.
    pub gaps: u64,
    /// Sequences lost in gaps.
    pub lost: u64,
    /// Of those, sequences the publisher announced it dropped (policy `Drop`).
    pub dropped_announced: u64,
    /// Messages refused as corrupt.
    pub corrupt: u64,
    /// Of the messages received, those from the publisher's history (a late join or a
    /// catch-up after falling behind).
    pub repaired: u64,
    /// Times the subscription reconnected to a publisher (with reconnect on).
    pub reconnects: u64,
}

//! The subscriber: busy-polls its completion queue and reads each message in place.

use crate::control::session::{Ended, LinkState};
use crate::control::{connect, ConnectParams};
use crate::stats::SubscriberStats;
use crate::stats_file::{sub as S, Counters, Kind};
use crate::transport::LocalRing;
use crate::{Error, IdleStrategy, Message, Psk, Transport};
use rdmabus_proto::codec;
use rdmabus_proto::credit::CreditReturner;
use rdmabus_proto::gap::{GapTracker, SeqEvent};
use rdmabus_proto::handshake::GoodbyeReason;
use rdmabus_proto::slot::HEADER_LEN;
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Default ring size of a subscriber.
pub const DEFAULT_SLOTS: u32 = 1024;

/// Builds a [`Subscriber`].
pub struct SubscriberBuilder<T> {
    addr: Result<SocketAddr, Error>,
    topic: String,
    psk: Option<Psk>,
    transport: Transport,
    slots: u32,
    slot_size: Option<u32>,
    name: String,
    checked: bool,
    idle: IdleStrategy,
    timeout: Duration,
    bind: Option<std::net::IpAddr>,
    device: Option<String>,
    gid_index: Option<u8>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> SubscriberBuilder<T> {
    /// Local address for the control connection (and so, over verbs, the RDMA interface
    /// whose GID is picked). Default: whatever the route to the publisher chooses.
    pub fn bind(mut self, ip: std::net::IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// RDMA device to use over verbs (default: the one whose GID is the local address).
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = Some(name.into());
        self
    }

    /// GID index to use over verbs (default: the RoCE v2 GID of the local address).
    pub fn gid_index(mut self, index: u8) -> Self {
        self.gid_index = Some(index);
        self
    }

    /// Ring slots (power of two, default 1024).
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = n;
        self
    }

    /// Slot size, at least the publisher's (default: the publisher's).
    pub fn slot_size(mut self, bytes: u32) -> Self {
        self.slot_size = Some(bytes);
        self
    }

    /// The pre-shared key (default: from `RDMABUS_PSK`).
    pub fn psk(mut self, psk: Psk) -> Self {
        self.psk = Some(psk);
        self
    }

    /// Transport (default shared memory).
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Name shown in the publisher's logs and stats.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How `recv()` waits (default busy spin).
    pub fn idle(mut self, idle: IdleStrategy) -> Self {
        self.idle = idle;
        self
    }

    /// Handshake timeout per step (default 5 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Skips validation of archived messages. Only for publishers you trust: a corrupt or
    /// malicious message then reads as garbage or out-of-bounds memory.
    pub fn unchecked(mut self) -> Self {
        self.checked = false;
        self
    }

    /// Connects, authenticates and sets up the ring.
    pub fn connect(self) -> Result<Subscriber<T>, Error> {
        let psk = match self.psk {
            Some(p) => p,
            None => Psk::from_env_default()?,
        };
        let c = connect(ConnectParams {
            addr: self.addr?,
            topic: &self.topic,
            schema: std::any::type_name::<T>(),
            psk: &psk,
            transport: self.transport,
            slots: self.slots,
            slot_size: self.slot_size,
            name: &self.name,
            timeout: self.timeout,
            bind: self.bind,
            device: self.device.as_deref(),
            gid_index: self.gid_index,
        })?;
        Ok(Subscriber {
            local: c.local,
            geometry: c.geometry,
            credit: CreditReturner::new(c.geometry.slots(), 0),
            gaps: GapTracker::new(),
            state: c.state,
            session: Some(c.session),
            id: c.welcome.subscriber_id,
            release_pending: false,
            held: None,
            checked: self.checked,
            idle: self.idle,
            counters: Counters::new(
                Kind::Subscription,
                c.welcome.subscriber_id,
                &format!("{}/{}", self.topic, self.name),
            ),
            sampled: 0,
            _t: PhantomData,
        })
    }
}

/// A message read in place from the ring; derefs to the archived value.
pub struct Received<'a, T: Message> {
    header: SlotHeader,
    value: &'a T::Archived,
    bytes: &'a [u8],
}

impl<T: Message> Received<'_, T> {
    /// Publisher sequence number.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// Publish time, ns since the Unix epoch.
    pub fn publish_ns(&self) -> u64 {
        self.header.publish_ns
    }

    /// Serialized length in bytes.
    pub fn len(&self) -> usize {
        self.header.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.header.len == 0
    }

    /// The archived value.
    pub fn archived(&self) -> &T::Archived {
        self.value
    }

    /// The archive's bytes as they sit in the ring (to forward them unchanged with
    /// [`crate::Loan::write_bytes`], for example).
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl<T: Message> std::ops::Deref for Received<'_, T> {
    type Target = T::Archived;
    fn deref(&self) -> &T::Archived {
        self.value
    }
}

/// An event found by `advance`, before it borrows the ring.
enum Step {
    Gap {
        first: u64,
        count: u64,
        announced: bool,
    },
    Message(SlotHeader),
}

/// What a poll yields.
pub enum Event<'a, T: Message> {
    /// The next message.
    Message(Received<'a, T>),
    /// Sequences `first .. first + count` will never arrive; `announced` when the publisher
    /// said it dropped exactly these (policy `Drop`).
    Gap {
        /// First lost sequence.
        first: u64,
        /// Number lost.
        count: u64,
        /// Whether the publisher announced the drop.
        announced: bool,
    },
}

/// Receives messages of type `T` from one topic.
pub struct Subscriber<T> {
    local: Box<dyn LocalRing>,
    geometry: RingGeometry,
    credit: CreditReturner,
    gaps: GapTracker,
    state: Arc<LinkState>,
    session: Option<JoinHandle<()>>,
    id: u32,
    release_pending: bool,
    held: Option<SlotHeader>,
    checked: bool,
    idle: IdleStrategy,
    counters: Counters,
    sampled: u32,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> Subscriber<T> {
    /// Starts building a subscriber of `topic` at the publisher node `addr`.
    pub fn builder(addr: impl ToSocketAddrs, topic: &str) -> SubscriberBuilder<T> {
        let addr = addr
            .to_socket_addrs()
            .map_err(|e| Error::io("resolving the publisher address", e))
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| Error::Config("publisher address resolved to nothing".into()))
            });
        SubscriberBuilder {
            addr,
            topic: topic.to_string(),
            psk: None,
            transport: Transport::Shm,
            slots: DEFAULT_SLOTS,
            slot_size: None,
            name: String::new(),
            checked: true,
            idle: IdleStrategy::BusySpin,
            timeout: Duration::from_secs(5),
            bind: None,
            device: None,
            gid_index: None,
            _t: PhantomData,
        }
    }

    /// The id the publisher gave this subscriber.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    /// Counters so far.
    pub fn stats(&self) -> SubscriberStats {
        let e = self.counters.entry();
        SubscriberStats {
            received: e.get(S::RECEIVED),
            gaps: e.get(S::GAPS),
            lost: e.get(S::LOST),
            dropped_announced: e.get(S::ANNOUNCED),
            corrupt: e.get(S::CORRUPT),
        }
    }

    /// One busy-poll step: the next event, or `None` if nothing arrived. Releases the slot of
    /// the previous message. After the publisher goes away, the messages already in the ring
    /// are still delivered, then the error says how it ended.
    #[inline]
    pub fn poll(&mut self) -> Result<Option<Event<'_, T>>, Error> {
        match self.advance()? {
            None => Ok(None),
            Some(step) => self.view(step).map(Some),
        }
    }

    /// Busy-polls (with the configured idle strategy) until an event or an error.
    #[inline]
    pub fn recv(&mut self) -> Result<Event<'_, T>, Error> {
        let mut rounds = 0u32;
        loop {
            if let Some(step) = self.advance()? {
                return self.view(step);
            }
            self.idle.idle(rounds);
            rounds = rounds.saturating_add(1);
        }
    }

    /// Like [`recv`](Self::recv) with a time limit; `Ok(None)` when it runs out.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event<'_, T>>, Error> {
        let deadline = std::time::Instant::now() + timeout;
        let mut rounds = 0u32;
        loop {
            if let Some(step) = self.advance()? {
                return self.view(step).map(Some);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            self.idle.idle(rounds);
            rounds = rounds.saturating_add(1);
        }
    }

    /// Releases the previous slot and finds the next event, without borrowing the ring.
    #[inline]
    fn advance(&mut self) -> Result<Option<Step>, Error> {
        if self.release_pending {
            self.release_pending = false;
            if let Some(pos) = self.credit.release() {
                self.local.return_credit(pos)?;
            }
        }
        if let Some(h) = self.held.take() {
            return Ok(Some(Step::Message(h)));
        }
        let Some(imm) = self.local.poll()? else {
            // No credit is written back on idle: it goes back every quarter ring, and a
            // publisher can only be out of credit while three quarters of the ring are still
            // on their way here, so an idle subscriber never leaves it stuck. (Over verbs an
            // idle return would cost one extra RDMA write per message in a ping-pong.)
            if !self.state.is_active() {
                return Err(self.ended_error());
            }
            return Ok(None);
        };
        let slot = self.local.slot(self.geometry.index(self.credit.consumed()));
        let header = SlotHeader::from_bytes(slot).expect("slots are larger than a header");
        if let Err(e) = header.validate(self.geometry.payload_capacity(), imm) {
            return Err(self.corrupt(None, e.to_string()));
        }
        let (first, count, announced) = match self.gaps.observe(header.seq) {
            SeqEvent::InOrder => return Ok(Some(Step::Message(header))),
            SeqEvent::First if header.dropped_before == 0 => {
                return Ok(Some(Step::Message(header)))
            }
            SeqEvent::First => (
                header.seq.wrapping_sub(header.dropped_before),
                header.dropped_before,
                true,
            ),
            SeqEvent::Gap { first, count } => (first, count, header.dropped_before == count),
            SeqEvent::Stale { expected } => {
                return Err(self.corrupt(
                    Some(header.seq),
                    format!("sequence went backwards (expected {expected})"),
                ))
            }
        };
        // Report the gap now; the message that revealed it comes on the next poll.
        self.held = Some(header);
        let e = self.counters.entry();
        e.add(S::GAPS, 1);
        e.add(S::LOST, count);
        if announced {
            e.add(S::ANNOUNCED, count);
        }
        Ok(Some(Step::Gap {
            first,
            count,
            announced,
        }))
    }

    /// Turns a step into an event, validating the message in place.
    #[inline]
    fn view(&mut self, step: Step) -> Result<Event<'_, T>, Error> {
        let header = match step {
            Step::Gap {
                first,
                count,
                announced,
            } => {
                return Ok(Event::Gap {
                    first,
                    count,
                    announced,
                })
            }
            Step::Message(h) => h,
        };
        self.release_pending = true;
        let index = self.geometry.index(self.credit.consumed());
        // Borrow only the ring field, so the counters (other fields) stay writable.
        let bytes = &self.local.slot(index)[HEADER_LEN..HEADER_LEN + header.len as usize];
        let value = if self.checked {
            match codec::access::<T>(bytes) {
                Ok(v) => v,
                Err(e) => {
                    self.counters.entry().add(S::CORRUPT, 1);
                    return Err(Error::Corrupt {
                        seq: Some(header.seq),
                        reason: e.to_string(),
                    });
                }
            }
        } else {
            // SAFETY: the caller opted out of validation with `unchecked()`, asserting the
            // publisher is trusted to write valid archives; the payload is aligned (64-byte
            // slot plus the 32-byte header), enough for rkyv's archived types.
            unsafe { codec::access_unchecked::<T>(bytes) }
        };
        let e = self.counters.entry();
        e.add(S::RECEIVED, 1);
        // One message in eight feeds the live latency histogram: the clock read stays off
        // the other seven.
        self.sampled = self.sampled.wrapping_add(1);
        if self.sampled & 7 == 0 {
            e.record_latency(crate::clock::now_ns().saturating_sub(header.publish_ns));
        }
        Ok(Event::Message(Received {
            header,
            value,
            bytes,
        }))
    }

    fn corrupt(&mut self, seq: Option<u64>, reason: String) -> Error {
        self.release_pending = true;
        self.counters.entry().add(S::CORRUPT, 1);
        Error::Corrupt { seq, reason }
    }

    fn ended_error(&self) -> Error {
        match self.state.ended() {
            Ended::Closed(reason, message) => Error::Closed { reason, message },
            Ended::Lost(why) => Error::PublisherLost(why),
            Ended::Local(_, m) => Error::Closed {
                reason: GoodbyeReason::Shutdown,
                message: m,
            },
            Ended::Active => Error::PublisherLost("link inactive".into()),
        }
    }
}

impl<T> Drop for Subscriber<T> {
    fn drop(&mut self) {
        self.state
            .close_locally(GoodbyeReason::Shutdown, "subscriber closed");
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
    }
}

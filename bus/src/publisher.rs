//! The publisher: loan a staging slot, serialize in place, send to every subscriber.

use crate::clock::Stamper;
use crate::control::node::{NodeShared, TopicShared};
use crate::control::session::{Ended, LinkState};
use crate::stages::{stage, Stage};
use crate::stats::{LinkEnd, PublisherStats, SubscriberInfo};
use crate::stats_file::{link as L, topic as TP, Counters, Kind};
use crate::transport::RemoteRing;
use crate::{Error, IdleStrategy, Message, Policy};
use memmap2::MmapMut;
use rdmabus_proto::codec;
use rdmabus_proto::credit::CreditTracker;
use rdmabus_proto::handshake::{check_topic, GoodbyeReason, StreamEnd};
use rdmabus_proto::history::{staging_slots_for, Window};
use rdmabus_proto::slot::{imm_of, HEADER_LEN};
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default slot size (header included) when the builder is not told the largest payload.
pub const DEFAULT_SLOT_SIZE: u32 = 1024;
/// Default number of staging slots.
pub const DEFAULT_STAGING_SLOTS: u32 = 64;
/// Longest the publisher's close waits for writes in flight, over all its subscribers.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Default stall budget of a Block subscriber ([`PublisherBuilder::block_timeout`]).
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Departed subscribers whose last counters `stats()` keeps (the oldest go first).
pub const MAX_DEPARTED: usize = 256;

/// Builds a [`Publisher`]; from [`crate::Node::publisher`].
pub struct PublisherBuilder<T> {
    node: Arc<NodeShared>,
    topic: String,
    policy: Policy,
    slot_size: Option<u32>,
    max_payload: Option<usize>,
    staging_slots: u32,
    idle: IdleStrategy,
    max_subscribers: u32,
    max_ring_bytes: u64,
    block_timeout: Option<Duration>,
    history: u64,
    first_seq: Option<u64>,
    _t: PhantomData<fn(&T)>,
}

impl<T: Message> PublisherBuilder<T> {
    pub(crate) fn new(node: Arc<NodeShared>, topic: &str) -> Self {
        Self {
            node,
            topic: topic.to_string(),
            policy: Policy::Block,
            slot_size: None,
            max_payload: None,
            staging_slots: DEFAULT_STAGING_SLOTS,
            idle: IdleStrategy::BusySpin,
            max_subscribers: crate::control::limits::DEFAULT_MAX_SUBSCRIBERS,
            max_ring_bytes: crate::control::limits::DEFAULT_MAX_RING_BYTES,
            block_timeout: Some(DEFAULT_BLOCK_TIMEOUT),
            history: 0,
            first_seq: None,
            _t: PhantomData,
        }
    }

    /// Resumes a numbering at `seq` (default: a new numbering from 0): after a restart,
    /// start where the old publisher stopped, and reconnecting subscribers continue their
    /// stream (their gap tracking carries on; each asks for exactly what it missed, and a
    /// replay of what it already has is skipped for it). Unlike
    /// [`Publisher::set_next_seq`], in force before any subscriber can join.
    pub fn first_seq(mut self, seq: u64) -> Self {
        self.first_seq = Some(seq);
        self
    }

    /// Keeps the last `n` messages of the topic (default 0: none), serialized, in the
    /// staging ring (sized up to hold them; over verbs it is already registered, so a replay
    /// is one more RDMA write). A subscriber that asks for history
    /// ([`crate::SubscriberBuilder::history`]) gets them first, then the live stream, with no
    /// gap and no duplicate at the seam. Under [`Policy::Drop`] a subscriber that falls behind
    /// by less than `n` is fed from the history once its credit returns instead of losing
    /// messages; only what left the history first is reported as a gap. Under
    /// [`Policy::Block`] and [`Policy::Disconnect`] a subscriber behind within the history
    /// (a late joiner catching up) does not hold or get cut; the policy applies when its lag
    /// reaches `n`.
    pub fn history(mut self, n: u64) -> Self {
        self.history = n;
        self
    }

    /// Under [`Policy::Block`], the longest one `send()` waits for one subscriber's credit
    /// (default 2 s): a subscriber that holds the publisher longer is cut as a slow consumer
    /// and counted, so a stuck subscriber costs the others this much at most, once. `None`
    /// waits for as long as the subscriber stays connected.
    pub fn block_timeout(mut self, budget: Option<Duration>) -> Self {
        self.block_timeout = budget;
        self
    }

    /// Most subscribers of this topic at once (default 64); one more is refused with
    /// `Unavailable`.
    pub fn max_subscribers(mut self, n: u32) -> Self {
        self.max_subscribers = n;
        self
    }

    /// Most ring bytes all subscribers of this topic may ask the publisher to map or connect
    /// (default 1 GiB); a ring beyond it is refused with `Unavailable`.
    pub fn max_ring_bytes(mut self, bytes: u64) -> Self {
        self.max_ring_bytes = bytes;
        self
    }

    /// What to do when a subscriber's ring is full (default [`Policy::Block`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Largest serialized message, in bytes; sets the slot size (default slot: 1024 bytes).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Slot size in bytes, header included (a multiple of 64).
    pub fn slot_size(mut self, bytes: u32) -> Self {
        self.slot_size = Some(bytes);
        self
    }

    /// Number of staging slots (power of two, default 64).
    pub fn staging_slots(mut self, n: u32) -> Self {
        self.staging_slots = n;
        self
    }

    /// How a blocked `send()` waits for credit (default busy spin).
    pub fn idle(mut self, idle: IdleStrategy) -> Self {
        self.idle = idle;
        self
    }

    /// Registers the topic on the node and allocates the staging ring.
    pub fn build(self) -> Result<Publisher<T>, Error> {
        check_topic(&self.topic).map_err(Error::Config)?;
        let slot_size = match (self.slot_size, self.max_payload) {
            (Some(s), _) => s,
            (None, Some(p)) => {
                RingGeometry::slot_size_for_payload(p).map_err(|e| Error::Config(e.to_string()))?
            }
            (None, None) => DEFAULT_SLOT_SIZE,
        };
        let staging_slots =
            staging_slots_for(self.history, self.staging_slots).ok_or_else(|| {
                Error::Config(format!("history of {} messages: too large", self.history))
            })?;
        let staging = RingGeometry::new(staging_slots, slot_size)
            .map_err(|e| Error::Config(format!("staging ring (history {}): {e}", self.history)))?;
        let node = crate::numa::choose(None)?;
        let (memory, pages) = crate::pages::alloc(staging.ring_bytes(), "the staging ring", node)?;
        let staging_info = crate::transport::Staging {
            addr: memory.as_ptr() as usize,
            len: memory.len(),
            slot_size: slot_size as usize,
        };
        let mut epoch = [0u8; 8];
        getrandom::getrandom(&mut epoch)
            .map_err(|e| Error::Config(format!("random source: {e}")))?;
        let epoch = u64::from_le_bytes(epoch);
        let topic = Arc::new(TopicShared {
            name: self.topic.clone(),
            schema: std::any::type_name::<T>(),
            slot_size,
            next_seq: crossbeam_utils::CachePadded::new(AtomicU64::new(
                self.first_seq.unwrap_or(0),
            )),
            epoch,
            resumed_at: Mutex::new(self.first_seq),
            history: self.history,
            next_id: AtomicU32::new(1),
            has_pending: Default::default(),
            pending: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            staging: staging_info,
            budget: crate::control::limits::TopicBudget::new(
                self.max_subscribers,
                self.max_ring_bytes,
            ),
        });
        {
            let mut topics = self.node.topics.lock().unwrap_or_else(|p| p.into_inner());
            if topics.contains_key(&self.topic) {
                return Err(Error::Config(format!(
                    "topic {:?} already has a publisher on this node",
                    self.topic
                )));
            }
            topics.insert(self.topic.clone(), topic.clone());
        }
        Ok(Publisher {
            links: Vec::new(),
            departed: std::collections::VecDeque::new(),
            departed_dropped: 0,
            block_timeout: self.block_timeout,
            node: self.node,
            topic,
            store: Store {
                geometry: staging,
                memory,
                meta: vec![Meta::default(); staging_slots as usize],
                window: Window::new(self.history, self.first_seq.unwrap_or(0)),
                sends: 0,
            },
            next_seq: self.first_seq.unwrap_or(0),
            stamper: Stamper::new(),
            batch_lens: vec![0; staging_slots as usize],
            epoch,
            pages,
            policy: self.policy,
            idle: self.idle,
            counters: Counters::new(Kind::Topic, 0, &self.topic),
            _t: PhantomData,
        })
    }
}

/// What a staging slot holds, for replays.
#[derive(Clone, Copy, Default)]
struct Meta {
    seq: u64,
    publish_ns: u64,
    len: u32,
}

/// Writes from the history one subscriber may get per `send()` besides the live message:
/// catching up never costs a `send()` more than this.
pub const CATCH_UP_PER_SEND: u32 = 16;

/// One subscriber as the publisher drives it.
struct Link {
    id: u32,
    name: String,
    ring: Box<dyn RemoteRing>,
    geometry: RingGeometry,
    credit: CreditTracker,
    state: Arc<LinkState>,
    counters: Counters,
    /// Sequences skipped for it just before `next_unsent` (announced with the next write).
    dropped_pending: u64,
    /// Its cursor: the next sequence it is due (the live edge, or behind it in the history).
    next_unsent: u64,
    /// Whether its transport has a send queue that can fill (asked only then).
    bounded: bool,
    /// Its share of the topic's caps, given back when the link is removed.
    _reservation: crate::control::limits::Reservation,
}

impl Link {
    /// Tears this subscriber down after a transport or protocol error: counted, logged, and
    /// the subscriber told why. The other subscribers are not touched.
    #[cold]
    fn fail(&self, why: String) {
        self.counters.entry().add(L::ERRORS, 1);
        self.counters.error("cut loose", &why);
        tracing::warn!(id = self.id, name = ?self.name, "cutting subscriber loose: {why}");
        self.close(GoodbyeReason::Error, why);
    }

    /// Says goodbye, naming where this subscriber's stream ended.
    fn close(&self, reason: GoodbyeReason, why: String) {
        self.state.close_with_end(reason, why, self.end());
    }

    fn end(&self) -> StreamEnd {
        StreamEnd {
            // The drops pending are the sequences just before the cursor.
            first_unsent: self.next_unsent.wrapping_sub(self.dropped_pending),
            dropped_after: self.dropped_pending,
            sent: self.counters.entry().get(L::SENT),
        }
    }

    fn info(&self) -> SubscriberInfo {
        SubscriberInfo {
            id: self.id,
            name: self.name.clone(),
            sent: self.counters.entry().get(L::SENT),
            dropped: self.counters.entry().get(L::DROPPED),
            credit_stalls: self.counters.entry().get(L::CREDIT_STALLS),
            errors: self.counters.entry().get(L::ERRORS),
            end: match self.state.ended() {
                Ended::Active => LinkEnd::Active,
                Ended::Local(r, m) => LinkEnd::Cut(r, m),
                Ended::Lost(m) => LinkEnd::Lost(m),
                Ended::Closed(_, m) => LinkEnd::Left(m),
            },
        }
    }
}

/// Publishes messages of type `T` on one topic to every connected subscriber.
///
/// Hot path: [`loan`](Self::loan) → [`Loan::write`] (serialize in place) → [`Written::send`].
/// None of them allocates or takes a lock once subscribers are connected.
pub struct Publisher<T> {
    // Links go first: fields drop in order, and links may have the staging memory registered.
    links: Vec<Link>,
    departed: std::collections::VecDeque<SubscriberInfo>,
    /// Departed subscribers no longer kept in `departed`.
    departed_dropped: u64,
    block_timeout: Option<Duration>,
    node: Arc<NodeShared>,
    topic: Arc<TopicShared>,
    store: Store,
    next_seq: u64,
    /// Publish timestamps, from the TSC where the kernel trusts it.
    stamper: Stamper,
    /// Payload lengths of the batch being published (one per staging slot).
    batch_lens: Vec<u32>,
    epoch: u64,
    /// The pages the staging ring is on.
    pages: crate::pages::Pages,
    policy: Policy,
    idle: IdleStrategy,
    counters: Counters,
    _t: PhantomData<fn(&T)>,
}

/// A staging slot lent by [`Publisher::loan`], waiting for its payload.
pub struct Loan<'p, T> {
    publisher: &'p mut Publisher<T>,
    offset: usize,
}

/// A staging slot with its payload written, ready to [`send`](Written::send).
pub struct Written<'p, T> {
    publisher: &'p mut Publisher<T>,
    offset: usize,
    len: usize,
}

impl<'p, T: Message> Loan<'p, T> {
    /// Bytes the payload may take.
    pub fn capacity(&self) -> usize {
        self.publisher.store.geometry.payload_capacity()
    }

    /// Serializes `value` in place into the slot.
    #[inline]
    pub fn write(self, value: &T) -> Result<Written<'p, T>, Error> {
        let len = stage!(
            Stage::Serialize,
            codec::encode_into(value, self.publisher.store.payload_mut(self.offset))
        )?;
        Ok(Written {
            publisher: self.publisher,
            offset: self.offset,
            len,
        })
    }

    /// Copies an already-serialized archive of `T` into the slot (for relays). The bytes are
    /// not checked here; subscribers validate them on access unless they opted out.
    pub fn write_bytes(self, archive: &[u8]) -> Result<Written<'p, T>, Error> {
        let cap = self.capacity();
        if archive.len() > cap {
            return Err(Error::Message(codec::MessageError::TooLarge {
                capacity: cap,
            }));
        }
        stage!(
            Stage::Serialize,
            self.publisher.store.payload_mut(self.offset)[..archive.len()].copy_from_slice(archive)
        );
        Ok(Written {
            publisher: self.publisher,
            offset: self.offset,
            len: archive.len(),
        })
    }
}

impl<T> Written<'_, T> {
    /// Bytes of the serialized payload.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stamps the header and writes the message into every subscriber's ring; returns its
    /// sequence number.
    #[inline]
    pub fn send(self) -> Result<u64, Error> {
        self.publisher.fan_out(self.offset, self.len)
    }
}

impl<T: Message> Publisher<T> {
    /// Lends the next staging slot.
    #[inline]
    pub fn loan(&mut self) -> Result<Loan<'_, T>, Error> {
        let offset = stage!(Stage::Loan, {
            let index = self.store.geometry.index(self.store.sends);
            self.reclaim(index);
            self.store.geometry.offset_of_index(index)
        });
        Ok(Loan {
            publisher: self,
            offset,
        })
    }

    /// Loan, serialize and send in one call.
    #[inline]
    pub fn publish(&mut self, value: &T) -> Result<u64, Error> {
        self.loan()?.write(value)?.send()
    }

    /// Publishes `values` in order, as `values.len()` sends would (the same sequences, the
    /// same policy and gap semantics, one publish timestamp for all), but each subscriber's
    /// transport is rung once for the batch (over verbs: one chained list of work requests,
    /// one doorbell, per subscriber). Every value is serialized before anything is sent: if
    /// one fails to, nothing is. Returns the first sequence; an empty batch sends nothing.
    /// At most [`max_batch`](Self::max_batch) values per call. Allocates nothing.
    pub fn publish_all(&mut self, values: &[T]) -> Result<u64, Error> {
        let first = self.next_seq;
        let max = self.max_batch();
        if values.len() > max {
            return Err(Error::Config(format!(
                "a batch of {} messages is more than this publisher's {max} \
                 (its staging slots, less its history, less one: raise staging_slots)",
                values.len()
            )));
        }
        for (i, value) in values.iter().enumerate() {
            let index = self
                .store
                .geometry
                .index(self.store.sends.wrapping_add(i as u64));
            self.reclaim(index);
            let offset = self.store.geometry.offset_of_index(index);
            let len = codec::encode_into(value, self.store.payload_mut(offset))?;
            self.batch_lens[i] = len as u32;
        }
        if values.is_empty() {
            return Ok(first);
        }
        for link in &mut self.links {
            link.ring.begin_batch();
        }
        let publish_ns = self.stamper.now_ns();
        for i in 0..values.len() {
            let offset = self
                .store
                .geometry
                .offset_of_index(self.store.geometry.index(self.store.sends));
            self.fan_out_at(offset, self.batch_lens[i] as usize, publish_ns);
        }
        let mut any_dead = false;
        for link in &mut self.links {
            if let Err(e) = link.ring.end_batch() {
                link.fail(format!("write failed: {e}"));
                any_dead = true;
            }
        }
        if any_dead {
            self.reap();
        }
        Ok(first)
    }
}

impl<T> Publisher<T> {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// Payload bytes one message may take.
    pub fn payload_capacity(&self) -> usize {
        self.store.geometry.payload_capacity()
    }

    /// This publisher's session identity (random, sent to every subscriber in `Welcome`).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequence the next message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Starts sequences at `seq` (before the first send; for tests of wrap-around and for
    /// resuming a feed's numbering; [`PublisherBuilder::first_seq`] does it before anyone can
    /// join). What the history held is no longer offered.
    pub fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
        // Sequences before the new numbering are no longer offered from the history.
        self.store.window.reset(seq);
        for link in &mut self.links {
            link.next_unsent = seq;
        }
        *self
            .topic
            .resumed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(seq);
        self.topic.next_seq.store(seq, Ordering::Relaxed);
    }

    /// Connected subscribers (after adopting any that just finished their handshake).
    pub fn subscriber_count(&mut self) -> usize {
        self.pump();
        self.reap();
        self.links.len()
    }

    /// Waits until at least `n` subscribers are connected.
    pub fn wait_for_subscribers(&mut self, n: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while self.subscriber_count() < n {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "{} of {n} subscribers joined topic {:?} within {timeout:?}",
                    self.links.len(),
                    self.topic.name
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Counters for the topic and every subscriber that ever joined it.
    pub fn stats(&self) -> PublisherStats {
        let mut subscribers: Vec<_> = self.links.iter().map(Link::info).collect();
        subscribers.extend(self.departed.iter().cloned());
        PublisherStats {
            published: self.counters.entry().get(TP::PUBLISHED),
            subscribers,
        }
    }

    /// Closes the topic in order: subscribers behind are fed from the history first, then
    /// every subscriber is told goodbye (after the messages already in its ring); all of it
    /// within `timeout` (what a subscriber behind has not got by then is announced as
    /// dropped in its goodbye).
    pub fn close(mut self, timeout: Duration) -> PublisherStats {
        let deadline = Instant::now() + timeout;
        self.close_topic_by(deadline);
        while Instant::now() < deadline && !self.links.iter().all(|l| l.state.is_finished()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stats()
    }

    /// Says goodbye to every subscriber, and refuses any handshake still finishing; at most
    /// [`CLOSE_FLUSH`] for subscribers behind to catch up.
    fn close_topic(&mut self) {
        self.close_topic_by(Instant::now() + CLOSE_FLUSH);
    }

    /// Like [`close_topic`](Self::close_topic), feeding subscribers behind until `deadline`.
    fn close_topic_by(&mut self, deadline: Instant) {
        self.adopt_pending();
        {
            // Under the pending lock, so a handshake finishing now sees the topic closed.
            let _g = self.topic.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.topic.closed.store(true, Ordering::Release);
        }
        self.adopt_pending();
        self.drain_behind(deadline);
        // Writes still in flight land before the goodbye that names the stream's end
        // (bounded: a link that cannot flush in time is closed anyway).
        let deadline = Instant::now() + CLOSE_FLUSH;
        for link in &mut self.links {
            if link.state.is_active() {
                if let Err(e) = link.ring.flush(deadline) {
                    tracing::warn!(id = link.id, name = ?link.name, "writes in flight at close did not complete: {e}");
                }
            }
        }
        for link in &self.links {
            link.close(GoodbyeReason::Shutdown, "publisher closed the topic".into());
        }
    }

    fn adopt_pending(&mut self) {
        if !self.topic.has_pending.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.topic.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.topic.has_pending.store(false, Ordering::Release);
        for l in pending.drain(..) {
            self.counters.entry().add(TP::JOINS, 1);
            l.counters.entry().set(L::ACTIVE, 1);
            // Where its stream starts: the live edge, as far back in the history as it asked
            // (fed from there by the next sends, or `pump`), or, reconnecting, exactly where
            // it left off: what the history no longer holds is announced as dropped.
            // `live` is the sequence being sent now (inside `send()`, already in the history)
            // or the next one: a joiner never starts after it.
            let live = self.next_seq;
            let (next_unsent, dropped_pending) = match l.resume_from {
                Some(r) if self.store.window.holds(r) => (r, 0),
                Some(r) if self.store.window.oldest().wrapping_sub(r) < 1 << 63 => (
                    self.store.window.oldest(),
                    self.store.window.oldest().wrapping_sub(r),
                ),
                // Ahead of us (a resumed numbering replaying what it already has): nothing
                // is due to it until the numbering reaches it.
                Some(r) => (r, 0),
                None => {
                    let start = self.store.window.start_for(l.history);
                    (if is_before(live, start) { live } else { start }, 0)
                }
            };
            if dropped_pending > 0 {
                l.counters.entry().add(L::DROPPED, dropped_pending);
            }
            let bounded = l.ring.bounded_queue();
            self.links.push(Link {
                id: l.id,
                name: l.name,
                ring: l.ring,
                credit: CreditTracker::new(l.geometry.slots(), 0),
                geometry: l.geometry,
                state: l.state,
                counters: l.counters,
                dropped_pending,
                next_unsent,
                bounded,
                _reservation: l.reservation,
            });
        }
    }

    /// Removes links that ended; their last counters are kept for `stats()`.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.links.len() {
            if self.links[i].state.is_active() {
                i += 1;
            } else {
                let link = self.links.swap_remove(i);
                let info = link.info();
                self.counters.entry().add(TP::LEAVES, 1);
                tracing::info!(topic = %self.topic.name, id = info.id, name = ?info.name, end = ?info.end, "subscriber removed");
                if self.departed.len() == MAX_DEPARTED {
                    self.departed.pop_front();
                    self.departed_dropped += 1;
                }
                self.departed.push_back(info);
            }
        }
    }

    /// Waits until no transport still reads staging slot `index` (a transport that reads it
    /// asynchronously must be done with it before it is reused).
    #[inline]
    fn reclaim(&mut self, index: u32) {
        for link in &mut self.links {
            if let Err(e) = link.ring.reclaim(index) {
                link.fail(format!("transport error: {e}"));
            }
        }
    }

    /// The pages the staging ring is on: 2 MiB ones when the hugetlb pool had them (see
    /// `RDMABUS_HUGEPAGES`), else 4 KiB ones.
    pub fn staging_pages(&self) -> crate::pages::Pages {
        self.pages
    }

    /// Messages [`publish_all`](Self::publish_all) takes at most in one call: the staging
    /// slots that the history does not hold, less one.
    pub fn max_batch(&self) -> usize {
        let slots = self.store.geometry.slots() as u64;
        slots.saturating_sub(self.store.window.depth() + 1) as usize
    }

    #[inline]
    fn fan_out(&mut self, offset: usize, len: usize) -> Result<u64, Error> {
        let publish_ns = stage!(Stage::Stamp, self.stamper.now_ns());
        Ok(self.fan_out_at(offset, len, publish_ns))
    }

    /// Sends the loaned slot at `offset` (`len` payload bytes), stamped `publish_ns`, to
    /// every subscriber; returns its sequence.
    #[inline]
    fn fan_out_at(&mut self, offset: usize, len: usize, publish_ns: u64) -> u64 {
        let seq = self.next_seq;
        stage!(Stage::Record, {
            self.store.record(seq, publish_ns, offset, len);
            // Joiners are adopted against the history as it is with this message in it
            // (adopted before, a full history would drop its oldest message from under them).
            self.adopt_pending();
        });
        let live = offset + HEADER_LEN..offset + HEADER_LEN + len;
        let feed = self
            .store
            .feed(self.policy, self.idle, self.block_timeout, live, publish_ns);
        let mut any_dead = false;
        for link in &mut self.links {
            if !deliver(link, &feed, seq) {
                any_dead = true;
            }
        }
        if any_dead {
            self.reap();
        }
        stage!(Stage::Account, {
            self.next_seq = seq.wrapping_add(1);
            self.topic.next_seq.store(self.next_seq, Ordering::Relaxed);
            self.counters.entry().add(TP::PUBLISHED, 1);
        });
        seq
    }

    /// Feeds subscribers that are behind (late joiners, or catching up under
    /// [`Policy::Drop`]) from the history without publishing anything: at most
    /// [`CATCH_UP_PER_SEND`] messages each, as far as their credit allows. `send()` does this
    /// on its own; call it when the publisher is idle so that they catch up anyway. Returns
    /// how many subscribers are still behind.
    pub fn pump(&mut self) -> usize {
        self.adopt_pending();
        let feed = self
            .store
            .feed(self.policy, self.idle, self.block_timeout, 0..0, 0);
        let end = self.next_seq;
        let mut behind = 0;
        let mut any_dead = false;
        for link in &mut self.links {
            match catch_up(link, &feed, end, CATCH_UP_PER_SEND, None) {
                Err(why) => {
                    link.fail(why);
                    any_dead = true;
                }
                Ok(()) if is_before(link.next_unsent, end) => behind += 1,
                Ok(()) => {}
            }
        }
        if any_dead {
            self.reap();
        }
        behind
    }

    /// At close: gives subscribers that are behind what the history still holds, waiting
    /// for their credit until `deadline`; what they could not get is announced in their
    /// goodbye as dropped.
    fn drain_behind(&mut self, deadline: Instant) {
        let end = self.next_seq;
        loop {
            let feed = self
                .store
                .feed(self.policy, self.idle, self.block_timeout, 0..0, 0);
            let mut behind = false;
            for link in &mut self.links {
                if !link.state.is_active() || !is_before(link.next_unsent, end) {
                    continue;
                }
                if let Err(why) = catch_up(link, &feed, end, u32::MAX, None) {
                    link.fail(why);
                } else if is_before(link.next_unsent, end) {
                    behind = true;
                }
            }
            if !behind || Instant::now() >= deadline {
                break;
            }
            std::thread::yield_now();
        }
        for link in &mut self.links {
            let unsent = end.wrapping_sub(link.next_unsent);
            if is_before(link.next_unsent, end) && link.state.is_active() {
                link.dropped_pending += unsent;
                link.counters.entry().add(L::DROPPED, unsent);
                link.next_unsent = end;
            }
        }
    }
}

/// The staging ring: the loaned slots, and what the history holds of them for replays.
struct Store {
    geometry: RingGeometry,
    memory: MmapMut,
    /// Per staging slot: the message it holds (for replays from the history).
    meta: Vec<Meta>,
    /// Which sequences the history holds.
    window: Window,
    /// Sends so far: the next send uses staging slot `sends mod slots`.
    sends: u64,
}

impl Store {
    /// The payload area of the staging slot at `offset` (its capacity, after the header).
    #[inline]
    fn payload_mut(&mut self, offset: usize) -> &mut [u8] {
        let start = offset + HEADER_LEN;
        &mut self.memory[start..start + self.geometry.payload_capacity()]
    }

    /// Records that the loaned slot at `offset`, `len` payload bytes, goes out as `seq`.
    #[inline]
    fn record(&mut self, seq: u64, publish_ns: u64, offset: usize, len: usize) {
        if self.window.depth() > 0 {
            // Kept for replays (without a history nothing is ever replayed).
            let slot = self.geometry.index(self.sends) as usize;
            debug_assert_eq!(self.geometry.offset_of_index(slot as u32), offset);
            self.meta[slot] = Meta {
                seq,
                publish_ns,
                len: len as u32,
            };
        }
        self.sends = self.sends.wrapping_add(1);
        self.window.record(seq);
    }

    /// What delivering needs from here, with the message being sent now (`live`: its
    /// payload's byte range in the staging memory, empty when nothing is being sent).
    #[inline]
    fn feed(
        &self,
        policy: Policy,
        idle: IdleStrategy,
        budget: Option<Duration>,
        live: std::ops::Range<usize>,
        live_ns: u64,
    ) -> Feed<'_> {
        Feed {
            policy,
            idle,
            budget,
            window: &self.window,
            meta: &self.meta,
            memory: &self.memory,
            staging: self.geometry,
            sends: self.sends,
            live: &self.memory[live],
            live_ns,
        }
    }
}

/// What delivering one message needs besides the link.
struct Feed<'a> {
    policy: Policy,
    idle: IdleStrategy,
    budget: Option<Duration>,
    window: &'a Window,
    meta: &'a [Meta],
    memory: &'a [u8],
    staging: RingGeometry,
    /// Sends so far, the current one included.
    sends: u64,
    /// The message being sent now (empty for `pump`): its payload and publish time.
    live: &'a [u8],
    live_ns: u64,
}

/// Writes the message being sent now, `seq`, into `link`'s ring (credit and room checked by
/// the caller): the common case, straight from the loaned slot.
#[inline]
fn write_live(link: &mut Link, feed: &Feed<'_>, seq: u64) -> Result<(), String> {
    let header = SlotHeader::new(
        seq,
        feed.live_ns,
        feed.live.len() as u32,
        link.dropped_pending,
    );
    put(link, &header, feed.live)
}

/// Writes message `seq`, held in the history, into `link`'s ring, marked as coming from it
/// (credit and room checked by the caller).
#[inline]
fn write_from_history(link: &mut Link, feed: &Feed<'_>, seq: u64) -> Result<(), String> {
    let slot = feed.window.slot_of(seq, feed.sends, feed.meta.len() as u64) as usize;
    let meta = feed.meta[slot];
    if meta.seq != seq {
        return Err(format!(
            "history slot {slot} holds sequence {}, not {seq}",
            meta.seq
        ));
    }
    let at = feed.staging.offset_of_index(slot as u32) + HEADER_LEN;
    let payload = &feed.memory[at..at + meta.len as usize];
    let header =
        SlotHeader::new(seq, meta.publish_ns, meta.len, link.dropped_pending).from_history();
    link.counters.entry().add(L::REPAIRED, 1);
    put(link, &header, payload)
}

/// Writes `header` and `payload` into `link`'s next ring position; the link's cursor moves
/// past the header's sequence and the drops it announced are no longer pending.
#[inline]
fn put(link: &mut Link, header: &SlotHeader, payload: &[u8]) -> Result<(), String> {
    let pos = link.credit.acquire().expect("credit checked by the caller");
    link.ring
        .write(pos, header, payload, imm_of(header.seq))
        .map_err(|e| format!("write failed: {e}"))?;
    link.dropped_pending = 0;
    link.next_unsent = header.seq.wrapping_add(1);
    link.counters.entry().add(L::SENT, 1);
    Ok(())
}

/// Writes up to `quota` messages from `link`'s cursor towards `end` (exclusive), as long as it
/// has room. `live` is the sequence being sent now, if any: it is written from the loaned
/// slot; every other one comes from the history.
fn catch_up(
    link: &mut Link,
    feed: &Feed<'_>,
    end: u64,
    quota: u32,
    live: Option<u64>,
) -> Result<(), String> {
    let mut left = quota;
    while is_before(link.next_unsent, end) && left > 0 && ready(link)? {
        let seq = link.next_unsent;
        if Some(seq) == live {
            write_live(link, feed, seq)?;
        } else {
            write_from_history(link, feed, seq)?;
        }
        left -= 1;
    }
    Ok(())
}

/// Delivers message `seq` (just sent) to one link under the feed's policy, after anything
/// it is behind on; false when the link is (now) dead.
#[inline]
fn deliver(link: &mut Link, feed: &Feed<'_>, seq: u64) -> bool {
    if !link.state.is_active() {
        return false;
    }
    if link.next_unsent == seq {
        // At the live edge with room: the common case.
        match stage!(Stage::Credit, ready(link)) {
            Ok(true) => {
                if let Err(why) = stage!(Stage::Write, write_live(link, feed, seq)) {
                    link.fail(why);
                    return false;
                }
                return true;
            }
            Err(why) => {
                link.fail(why);
                return false;
            }
            Ok(false) => {}
        }
    }
    deliver_slow(link, feed, seq)
}

/// [`deliver`] when the link is not at the live edge with room: behind (catching up from the
/// history), ahead, or out of room (the policy decides).
#[cold]
#[inline(never)]
fn deliver_slow(link: &mut Link, feed: &Feed<'_>, seq: u64) -> bool {
    let end = seq.wrapping_add(1);
    if link.next_unsent == seq {
        // At the live edge, without room: the policy below.
    } else if !is_before(link.next_unsent, end) {
        // Ahead (it resumed at a sequence this numbering has not reached): nothing due.
        return true;
    } else {
        // Behind: first, what left the history before it got there.
        let missed = feed.window.oldest().wrapping_sub(link.next_unsent);
        if missed != 0 && missed < 1 << 63 {
            if feed.policy == Policy::Disconnect {
                let why = format!(
                    "fell behind the history of {} messages: slow consumer",
                    feed.window.depth()
                );
                link.close(GoodbyeReason::SlowConsumer, why);
                return false;
            }
            link.dropped_pending += missed;
            link.counters.entry().add(L::DROPPED, missed);
            link.next_unsent = feed.window.oldest();
        }
        match catch_up(link, feed, end, 1 + CATCH_UP_PER_SEND, Some(seq)) {
            Ok(()) if link.next_unsent == end => return true,
            Ok(()) => {}
            Err(why) => {
                link.fail(why);
                return false;
            }
        }
    }
    // Not everything is written: the subscriber has no room.
    link.counters.entry().add(L::CREDIT_STALLS, 1);
    let depth = feed.window.depth();
    match feed.policy {
        Policy::Block => {
            // Nothing is lost: wait while the next send would take from the history what
            // this subscriber still needs (without a history: the message itself).
            while end.wrapping_sub(link.next_unsent) >= depth.max(1) {
                if !wait_ready(link, feed.idle, feed.budget, seq) {
                    return false;
                }
                let next = link.next_unsent;
                let written = if next == seq {
                    write_live(link, feed, seq)
                } else {
                    write_from_history(link, feed, next)
                };
                if let Err(why) = written {
                    link.fail(why);
                    return false;
                }
            }
        }
        Policy::Drop => {
            if depth == 0 {
                link.dropped_pending += 1;
                link.counters.entry().add(L::DROPPED, 1);
                link.next_unsent = end;
            }
            // With a history: fed from it once its credit returns (or the loss announced).
        }
        Policy::Disconnect => {
            if end.wrapping_sub(link.next_unsent) >= depth.max(1) {
                let why = format!(
                    "no room for sequence {seq} (ring of {} slots full): slow consumer",
                    link.geometry.slots()
                );
                link.close(GoodbyeReason::SlowConsumer, why);
                return false;
            }
        }
    }
    true
}

/// Whether sequence `a` comes before `b` (serial-number order, wrap-around safe).
#[inline]
fn is_before(a: u64, b: u64) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 1 << 63
}

/// Whether `link` can take a message now: credit in its ring (re-read from its credit word
/// only when the cached view says none) and room in its transport. `Err` ends the link.
#[inline]
fn ready(link: &mut Link) -> Result<bool, String> {
    if link.credit.available() == 0 {
        // In a batch, the writes held for it first: its credit comes back only for writes
        // it got.
        link.ring
            .post_held()
            .map_err(|e| format!("write failed: {e}"))?;
        link.credit
            .update(link.ring.consumed())
            .map_err(|e| format!("bad credit: {e}"))?;
        if link.credit.available() == 0 {
            return Ok(false);
        }
    }
    if !link.bounded {
        return Ok(true);
    }
    link.ring
        .has_room()
        .map_err(|e| format!("transport error: {e}"))
}

/// Block: waits until `link` is ready, it ends, or it held the publisher past the stall
/// budget (then it is cut as a slow consumer and counted). True when it is ready.
#[cold]
fn wait_ready(link: &mut Link, idle: IdleStrategy, budget: Option<Duration>, seq: u64) -> bool {
    let mut rounds = 0u32;
    // The clock is read only while stalled, and then only every 1024 rounds.
    let started = Instant::now();
    loop {
        if !link.state.is_active() {
            return false;
        }
        if rounds & 1023 == 1023 {
            if let Some(budget) = budget {
                if started.elapsed() > budget {
                    link.counters.entry().add(L::STALL_CUTS, 1);
                    let why = format!(
                        "held the publisher for more than {budget:?} without room for sequence \
                         {seq} (ring of {} slots): slow consumer",
                        link.geometry.slots()
                    );
                    tracing::warn!(id = link.id, name = ?link.name, "cutting subscriber loose: {why}");
                    link.close(GoodbyeReason::SlowConsumer, why);
                    return false;
                }
            }
        }
        idle.idle(rounds);
        rounds = rounds.saturating_add(1);
        match ready(link) {
            Ok(true) => return true,
            Ok(false) => {}
            Err(why) => {
                link.fail(why);
                return false;
            }
        }
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        self.close_topic();
        self.node
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.topic.name);
    }
}

//! The subscriber: busy-polls its completion queue and reads each message out of its ring,
//! by default as a validated copy (see [`Access`]).

use crate::control::session::{Ended, LinkState};
use crate::control::{connect, Connected};
use crate::reconnect::{worth_retrying, Reconnect, Rejoin, SessionChange};
use crate::stages::{stage, Stage};
use crate::stats::SubscriberStats;
use crate::stats_file::{sub as S, Counters, Kind};
use crate::transport::LocalRing;
use crate::{Error, IdleStrategy, Message, Psk, Transport};
use rdmabus_proto::codec;
use rdmabus_proto::credit::CreditReturner;
use rdmabus_proto::gap::{GapTracker, SeqEvent};
use rdmabus_proto::handshake::GoodbyeReason;
pub use rdmabus_proto::history::HistoryRequest;
use rdmabus_proto::slot::{FLAG_FROM_HISTORY, HEADER_LEN};
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::marker::PhantomData;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Default ring size of a subscriber.
pub const DEFAULT_SLOTS: u32 = 1024;

/// How a subscriber reads each message out of its ring.
///
/// The ring is memory the publisher can write at any time: another process over shared
/// memory, over verbs the NIC on behalf of anyone holding the ring's rkey. The protocol says
/// a slot is written only before its completion and not again until the subscriber releases
/// it, but only [`Access::Copy`] stays sound when a publisher breaks that rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// The default. Copies the payload (`len` bytes, at most the slot's payload capacity) out
    /// of the ring into a buffer the subscriber owns (allocated once at connect, 64-byte
    /// aligned), releases the slot at once (its credit goes back to the publisher when due,
    /// at the next poll on rings of 8 slots or more, at once on smaller ones), validates the
    /// copy with bytecheck and hands out references into the
    /// copy. A message that is invalid, or was rewritten while it was copied, is refused as
    /// [`Error::Corrupt`](crate::Error::Corrupt); one that passes cannot change afterwards,
    /// whatever the publisher writes. The price is one copy of the payload per message.
    #[default]
    Copy,
    /// Validates the archive in place in the ring and hands out references into the ring; the
    /// slot is released at the next poll. Catches anything written before the completion
    /// (corruption, a relay forwarding bytes it did not check), but only for publishers
    /// trusted not to rewrite a slot the subscriber holds: a rewrite after validation is read
    /// as it comes (a vector length can then point anywhere), which is undefined behaviour.
    InPlace,
    /// No validation at all: references into the ring, for fully trusted publishers. A corrupt
    /// or malicious message reads as garbage or out-of-bounds memory.
    Unchecked,
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(Self::Copy),
            "in-place" | "in_place" | "inplace" => Ok(Self::InPlace),
            "unchecked" => Ok(Self::Unchecked),
            _ => Err(format!(
                "unknown access mode {s:?}: use copy, in-place or unchecked"
            )),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Copy => "copy",
            Self::InPlace => "in-place",
            Self::Unchecked => "unchecked",
        })
    }
}

/// 64-byte aligned storage for one payload copy.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The subscriber-owned buffer [`Access::Copy`] copies each payload into.
struct CopyBuf {
    lines: Box<[Line]>,
}

impl CopyBuf {
    /// Room for `capacity` bytes (none, without allocating, for 0).
    fn new(capacity: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); capacity.div_ceil(64)].into_boxed_slice(),
        }
    }

    fn capacity(&self) -> usize {
        self.lines.len() * 64
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.lines.as_mut_ptr().cast()
    }

    /// The first `len` bytes.
    fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.capacity());
        // SAFETY: `len` bytes of our own initialised (zeroed at creation) allocation.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), len) }
    }
}

/// The unit [`copy_from_ring`] loads: a 16-byte SSE register on x86_64 (SSE2 is part of its
/// baseline; one `movdqa` per word, nearly as fast as `memcpy`), a `u64` elsewhere.
#[cfg(target_arch = "x86_64")]
type Word = core::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Word = u64;

/// Bytes per [`Word`]; slots, payloads (a 64-byte aligned slot plus the 32-byte header) and
/// payload capacities (multiples of 32) are all multiples of it.
const WORD: usize = std::mem::size_of::<Word>();
const _: () = assert!(
    HEADER_LEN.is_multiple_of(WORD)
        && (rdmabus_proto::geometry::SLOT_ALIGN as usize).is_multiple_of(WORD)
);

/// Copies `len` bytes, rounded up to whole [`Word`]s, from the ring at `src` to `dst`: one
/// volatile load per word, so each word of the ring is read exactly once, as the CPU loads
/// it, and nothing about its value reaches the optimiser (the publisher may be writing it).
///
/// Volatile rather than `ptr::copy_nonoverlapping`: a plain copy is a non-atomic read that
/// races with the writer, which the language only excuses for memory outside its model; the
/// volatile load is the access Rust defines for memory something outside the program writes
/// (device registers, DMA and shared buffers). Measured with a hot cache on 1 to 4 KiB,
/// 16-byte volatile loads take 1.0 to 1.7 times as long as `memcpy`, 8-byte ones 2 to 2.7.
///
/// # Safety
/// `src` and `dst` must be `WORD`-aligned, `src` readable and `dst` writable for `len`
/// rounded up to `WORD` bytes, and the two must not overlap.
#[inline(always)]
unsafe fn copy_from_ring(src: *const u8, dst: *mut u8, len: usize) {
    let (src, dst) = (src.cast::<Word>(), dst.cast::<Word>());
    for i in 0..len.div_ceil(WORD) {
        // SAFETY: word `i` lies in both ranges (the caller's contract), both aligned. The
        // source is memory outside our control that another process or the NIC may write at
        // any moment: a volatile load is the access for that, it reads the word once and lets
        // no assumption about its value escape into the optimiser. A word being written may
        // read torn; what was copied is validated afterwards, never trusted as read.
        unsafe { dst.add(i).write(src.add(i).read_volatile()) };
    }
}

/// Reads the header of the slot at `slot` by a copy (see [`copy_from_ring`]).
#[inline(always)]
fn read_header(slot: *const u8) -> SlotHeader {
    let mut copy = Line([0; 64]);
    // SAFETY: a slot is at least MIN_SLOT_SIZE (64) bytes, 64-aligned, and stays mapped as
    // long as the ring (`LocalRing::slot_ptr`); `copy` is our own 64-aligned 64 bytes.
    unsafe { copy_from_ring(slot, copy.0.as_mut_ptr(), HEADER_LEN) };
    SlotHeader::from_bytes(&copy.0).expect("a Line holds a header")
}

/// Builds a [`Subscriber`].
pub struct SubscriberBuilder<T> {
    addr: Result<SocketAddr, Error>,
    topic: String,
    psk: Option<Psk>,
    transport: Transport,
    slots: u32,
    slot_size: Option<u32>,
    name: String,
    access: Access,
    idle: IdleStrategy,
    timeout: Duration,
    bind: Option<std::net::IpAddr>,
    device: Option<String>,
    gid_index: Option<u8>,
    verbs: crate::verbs_options::VerbsOptions,
    history: HistoryRequest,
    reconnect: Option<Reconnect>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> SubscriberBuilder<T> {
    /// Keeps the subscription alive across a lost, stopped or restarted publisher: instead
    /// of ending, the subscriber connects again (same address, topic, key, ring and history
    /// request) with backoff, and reports [`Event::Session`] when it is back: the new session,
    /// and whether its numbering continues the old one. Messages of the old session still in
    /// the ring, and gaps at its end, come first. Default: off (the end is reported as an
    /// error). A wrong key or schema is not retried.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

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

    /// RDMA knobs for verbs links: port, traffic class (DSCP), service level, MTU cap, QP
    /// timeout and retries (default [`VerbsOptions::default`](crate::VerbsOptions)); checked
    /// when a link is set up.
    pub fn verbs_options(mut self, options: crate::verbs_options::VerbsOptions) -> Self {
        self.verbs = options;
        self
    }

    /// How much of the publisher's retained history to receive before the live stream
    /// (default [`HistoryRequest::None`]: start at the live edge). Messages from history
    /// arrive first, in order, then the live ones with no gap and no duplicate at the seam;
    /// [`Received::from_history`] tells them apart.
    pub fn history(mut self, req: HistoryRequest) -> Self {
        self.history = req;
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

    /// How messages are read out of the ring (default [`Access::Copy`]: a validated copy,
    /// sound whatever the publisher writes). [`Access::InPlace`] validates in place and is
    /// only for publishers trusted not to rewrite a slot the subscriber holds;
    /// [`Access::Unchecked`] skips validation, for fully trusted publishers. See [`Access`].
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Shorthand for `.access(Access::Unchecked)`: skips validation of archived messages.
    /// Only for publishers you trust: a corrupt or malicious message then reads as garbage
    /// or out-of-bounds memory.
    pub fn unchecked(self) -> Self {
        self.access(Access::Unchecked)
    }

    /// Connects, authenticates and sets up the ring.
    pub fn connect(self) -> Result<Subscriber<T>, Error> {
        self.verbs.check()?;
        let psk = match self.psk {
            Some(p) => p,
            None => Psk::from_env_default()?,
        };
        let rejoin = Rejoin {
            addr: self.addr?,
            topic: self.topic,
            psk,
            transport: self.transport,
            slots: self.slots,
            slot_size: self.slot_size,
            name: self.name,
            timeout: self.timeout,
            bind: self.bind,
            device: self.device,
            gid_index: self.gid_index,
            verbs: self.verbs,
            history: self.history,
            policy: self.reconnect.unwrap_or_default(),
            down: None,
        };
        let c = connect(rejoin.params(std::any::type_name::<T>(), None))?;
        let copy = match self.access {
            Access::Copy => CopyBuf::new(c.geometry.payload_capacity()),
            Access::InPlace | Access::Unchecked => CopyBuf::new(0),
        };
        let sub = Subscriber {
            local: c.local,
            geometry: c.geometry,
            credit: CreditReturner::new(c.geometry.slots(), 0),
            gaps: GapTracker::new(),
            state: c.state,
            session: Some(c.session),
            id: c.welcome.subscriber_id,
            epoch: c.welcome.epoch,
            release_pending: false,
            held: None,
            access: self.access,
            copy,
            idle: self.idle,
            counters: Counters::new(
                Kind::Subscription,
                c.welcome.subscriber_id,
                &format!("{}/{}", rejoin.topic, rejoin.name),
            ),
            sampled: 0,
            stamper: crate::clock::Stamper::new(),
            taken: 0,
            idle_polls: 0,
            drain_deadline: None,
            end_reported: (false, false),
            down: false,
            rejoin: self.reconnect.map(|_| Box::new(rejoin)),
            _t: PhantomData,
        };
        sub.counters.entry().set(S::ACTIVE, 1);
        Ok(sub)
    }
}

/// A message read from the ring (in [`Access::Copy`], from the subscriber's copy of it);
/// derefs to the archived value.
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

    /// Whether it came from the publisher's history (a late join or a catch-up after
    /// falling behind) rather than at the live edge.
    pub fn from_history(&self) -> bool {
        self.header.flags & FLAG_FROM_HISTORY != 0
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

    /// The archive's bytes (to forward them unchanged with [`crate::Loan::write_bytes`], for
    /// example): in [`Access::Copy`] the subscriber's validated copy, otherwise the bytes as
    /// they sit in the ring.
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
    Session(Box<SessionChange>),
}

/// What a poll yields.
#[non_exhaustive]
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
    /// With reconnect on: the subscription reached a publisher again after losing its own.
    Session(Box<SessionChange>),
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
    epoch: u64,
    release_pending: bool,
    held: Option<SlotHeader>,
    access: Access,
    copy: CopyBuf,
    idle: IdleStrategy,
    counters: Counters,
    sampled: u32,
    /// The clock for the sampled one-way latency (the publisher's stamps come from one too).
    stamper: crate::clock::Stamper,
    /// Completions taken from the queue (the publisher's goodbye says how many it sent).
    taken: u64,
    /// Consecutive polls that found nothing (idle credit is considered every 64th).
    idle_polls: u32,
    /// After the publisher's goodbye: until when to wait for messages still on their way.
    drain_deadline: Option<std::time::Instant>,
    /// What of the stream's end has been reported (missing, then trailing drops).
    end_reported: (bool, bool),
    /// The link is down and a reconnect is pending.
    down: bool,
    /// With reconnect on: what it takes to connect again.
    rejoin: Option<Box<Rejoin>>,
    _t: PhantomData<fn() -> T>,
}

/// How long a subscriber waits, after the publisher's goodbye, for messages it was told are
/// on their way.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1);

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
            access: Access::Copy,
            idle: IdleStrategy::BusySpin,
            timeout: Duration::from_secs(5),
            bind: None,
            device: None,
            gid_index: None,
            verbs: Default::default(),
            history: HistoryRequest::None,
            reconnect: None,
            _t: PhantomData,
        }
    }

    /// The id the publisher gave this subscriber.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The publisher session this subscription is attached to (its `epoch`, random per
    /// publisher): equal across a reconnect only if the same publisher answered.
    pub fn epoch(&self) -> u64 {
        self.epoch
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
            repaired: e.get(S::REPAIRED),
            reconnects: e.get(S::RECONNECTS),
        }
    }

    /// One busy-poll step: the next event, or `None` if nothing arrived. Releases the slot of
    /// the previous message ([`Access::Copy`] released it before handing the message out)
    /// and writes back the credit due. After the publisher goes away, the messages already
    /// in the ring are still delivered, then the error says how it ended.
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
        if self.down {
            return self.rejoin_step();
        }
        if self.release_pending {
            self.release_pending = false;
            if let Some(pos) = self.credit.release() {
                stage!(Stage::CreditReturn, self.local.return_credit(pos))?;
            }
        }
        if let Some(h) = self.held.take() {
            return Ok(Some(Step::Message(h)));
        }
        #[cfg(feature = "stage-clock")]
        let t0 = crate::stages::start_probe();
        let imm = match self.local.poll()? {
            Some(imm) => {
                #[cfg(feature = "stage-clock")]
                crate::stages::end_probe(Stage::Poll, t0);
                imm
            }
            None if self.state.is_active() => {
                // Credit goes back every quarter ring, and, rate-limited, when idle: so that
                // a publisher under Drop or Disconnect sees a paused subscriber's free ring.
                self.idle_polls = self.idle_polls.wrapping_add(1);
                if self.idle_polls & 63 == 0 {
                    let interval = self.local.idle_credit_interval_ns();
                    if let Some(pos) = self.credit.idle_at(crate::clock::now_ns(), interval) {
                        stage!(Stage::IdleCredit, self.local.return_credit(pos))?;
                    }
                }
                return Ok(None);
            }
            // The link ended: one more look, since a completion may have landed between the
            // poll and the check, then drain exactly to where the publisher said it ended.
            None => match self.local.poll()? {
                Some(imm) => imm,
                None => return self.end_step(),
            },
        };
        self.idle_polls = 0;
        self.taken = self.taken.wrapping_add(1);
        #[cfg(feature = "stage-clock")]
        let t0 = crate::stages::start_probe();
        let header = read_header(
            self.local
                .slot_ptr(self.geometry.index(self.credit.consumed())),
        );
        if let Err(e) = header.validate(self.geometry.payload_capacity(), imm) {
            return Err(self.corrupt(None, e.to_string()));
        }
        let observed = self.gaps.observe(header.seq);
        #[cfg(feature = "stage-clock")]
        crate::stages::end_probe(Stage::Validate, t0);
        let (first, count, announced) = match observed {
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

    /// Turns a step into an event: copies, validates and releases the message (`Copy`), or
    /// validates it in place (`InPlace`), or neither (`Unchecked`).
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
            Step::Session(change) => return Ok(Event::Session(change)),
        };
        // `advance` checked the header: len <= payload capacity, so the payload (and its
        // rounding up to WORD bytes, the capacity being a multiple of 32) lies in the slot.
        let len = header.len as usize;
        let slot = self
            .local
            .slot_ptr(self.geometry.index(self.credit.consumed()));
        // SAFETY: HEADER_LEN is less than the slot size, so this stays inside the slot.
        let payload = unsafe { slot.add(HEADER_LEN) };
        let (bytes, checked) = match self.access {
            Access::Copy => {
                stage!(
                    Stage::Copy,
                    // SAFETY: the payload is 32-aligned (64-aligned slot plus the 32-byte
                    // header) and readable for `len` rounded up to WORD (above); the buffer is
                    // 64-aligned, holds the payload capacity (a multiple of 64), and is our own
                    // memory, apart from the ring.
                    unsafe { copy_from_ring(payload, self.copy.as_mut_ptr(), len) }
                );
                // Every load of the copy happens before the credit write that lets the
                // publisher reuse the slot (the shm credit store is Release anyway; over verbs
                // the post is an FFI call the loads cannot move past, and this fence keeps
                // weakly ordered CPUs from doing it).
                fence(Ordering::Release);
                // Where credit goes back in batches (rings of 8 slots or more), the release is
                // counted at the next poll, as in place, and any credit it makes due written
                // then, after the caller had the message, off its path: the publisher's view
                // already trails by up to a batch. A ring that returns every slot gets it now.
                if self.credit.threshold() > 1 {
                    self.release_pending = true;
                } else if let Some(pos) = self.credit.release() {
                    stage!(Stage::CreditReturn, self.local.return_credit(pos))?;
                }
                (self.copy.bytes(len), true)
            }
            Access::InPlace | Access::Unchecked => {
                self.release_pending = true;
                // SAFETY: payload..payload + len lies in the ring mapping (above), which lives
                // as long as `self`, and the slice borrows `self`. A reference also claims the
                // bytes do not change while it lives, and nothing here can enforce that: it
                // holds only because the subscriber chose `Access::InPlace` or
                // `Access::Unchecked`, stating that it trusts the publisher to keep the
                // protocol's rule of never writing a slot between its completion and its
                // release (at the next poll, after this borrow has ended). A publisher that
                // breaks the rule makes this undefined behaviour; `Access::Copy` does not
                // depend on it.
                let bytes = unsafe { std::slice::from_raw_parts(payload, len) };
                (bytes, self.access == Access::InPlace)
            }
        };
        let value = if checked {
            match stage!(Stage::Access, codec::access::<T>(bytes)) {
                Ok(v) => v,
                Err(e) => {
                    self.counters.entry().add(S::CORRUPT, 1);
                    self.counters.error("refused a corrupt message", &e);
                    return Err(Error::Corrupt {
                        seq: Some(header.seq),
                        reason: e.to_string(),
                    });
                }
            }
        } else {
            // SAFETY: the caller opted out of validation with `Access::Unchecked`, asserting
            // the publisher is trusted to write valid archives; the payload is aligned (64-byte
            // slot plus the 32-byte header), enough for rkyv's archived types.
            unsafe { codec::access_unchecked::<T>(bytes) }
        };
        stage!(Stage::Stats, {
            let e = self.counters.entry();
            e.add(S::RECEIVED, 1);
            if header.flags & FLAG_FROM_HISTORY != 0 {
                e.add(S::REPAIRED, 1);
            }
            // One message in eight feeds the live latency histogram: the clock read stays
            // off the other seven.
            self.sampled = self.sampled.wrapping_add(1);
            if self.sampled & 7 == 0 {
                e.record_latency(self.stamper.now_ns().saturating_sub(header.publish_ns));
            }
        });
        Ok(Event::Message(Received {
            header,
            value,
            bytes,
        }))
    }

    /// After the link ended and the ring is empty: wait (bounded) for messages the
    /// publisher's goodbye says are on their way, report those that never came and the
    /// trailing drops as gaps, then the end.
    #[cold]
    fn end_step(&mut self) -> Result<Option<Step>, Error> {
        if let (Ended::Closed(..), Some(end)) = (self.state.ended(), self.state.stream_end()) {
            if self.taken < end.sent && !self.end_reported.0 {
                let now = std::time::Instant::now();
                let deadline = *self.drain_deadline.get_or_insert(now + DRAIN_WAIT);
                if now < deadline {
                    return Ok(None);
                }
                self.end_reported.0 = true;
                let count = end.sent - self.taken;
                let first = self
                    .gaps
                    .expected()
                    .unwrap_or(end.first_unsent.wrapping_sub(count));
                return Ok(Some(self.end_gap(first, count, false)));
            }
            if end.dropped_after > 0 && !self.end_reported.1 {
                self.end_reported.1 = true;
                return Ok(Some(self.end_gap(
                    end.first_unsent,
                    end.dropped_after,
                    true,
                )));
            }
        }
        let e = self.ended_error();
        let local = matches!(self.state.ended(), Ended::Local(..));
        if let (Some(r), false) = (self.rejoin.as_mut(), local) {
            tracing::info!(topic = %r.topic, "publisher session ended ({e}); reconnecting");
            r.go_down(std::time::Instant::now(), e.to_string(), self.epoch);
            self.down = true;
            self.release_pending = false;
            self.held = None;
            return Ok(None);
        }
        Err(e)
    }

    /// With the link down: one reconnect attempt when it is due.
    #[cold]
    fn rejoin_step(&mut self) -> Result<Option<Step>, Error> {
        let now = std::time::Instant::now();
        let r = self.rejoin.as_mut().expect("down only with reconnect on");
        let d = r.down.as_mut().expect("down");
        if now < d.next_attempt {
            return Ok(None);
        }
        if let Some(limit) = r.policy.give_up_after {
            if now.duration_since(d.since) > limit {
                return Err(Error::PublisherLost(format!(
                    "no publisher for {limit:?} (reconnecting since: {})",
                    d.reason
                )));
            }
        }
        d.attempts += 1;
        let attempt = d.attempts;
        let resume = self.gaps.expected().map(|e| (d.previous_epoch, e));
        match connect(r.params(std::any::type_name::<T>(), resume)) {
            Ok(c) => {
                let now = std::time::Instant::now();
                let d = r.down.take().expect("down");
                let continues = c.continues;
                let change = SessionChange {
                    epoch: c.welcome.epoch,
                    previous_epoch: d.previous_epoch,
                    continues,
                    next_seq: c.welcome.next_seq,
                    reason: d.reason,
                    attempts: d.attempts,
                    down_for: now.duration_since(d.since),
                };
                tracing::info!(
                    topic = %r.topic,
                    epoch = change.epoch,
                    continues,
                    attempts = change.attempts,
                    "reconnected to a publisher"
                );
                if !continues {
                    self.gaps = GapTracker::new();
                }
                self.attach(c);
                self.counters.entry().add(S::RECONNECTS, 1);
                self.down = false;
                Ok(Some(Step::Session(Box::new(change))))
            }
            Err(e) if !worth_retrying(&e) => {
                self.counters.error("reconnect refused", &e);
                // Waiting cannot heal it: reconnecting stops here, and later polls report
                // the end instead of trying again at every call.
                self.rejoin = None;
                self.down = false;
                Err(e)
            }
            Err(e) => {
                tracing::debug!(topic = %r.topic, "reconnect attempt {attempt} failed: {e}");
                self.counters.error("reconnect failed", &e);
                r.failed(now);
                Ok(None)
            }
        }
    }

    /// Takes over a new connection's ring and link (the old link's thread is joined).
    fn attach(&mut self, c: Connected) {
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
        self.copy = match self.access {
            Access::Copy => CopyBuf::new(c.geometry.payload_capacity()),
            Access::InPlace | Access::Unchecked => CopyBuf::new(0),
        };
        self.local = c.local;
        self.geometry = c.geometry;
        self.credit = CreditReturner::new(c.geometry.slots(), 0);
        self.state = c.state;
        self.session = Some(c.session);
        self.id = c.welcome.subscriber_id;
        self.epoch = c.welcome.epoch;
        self.release_pending = false;
        self.held = None;
        self.taken = 0;
        self.idle_polls = 0;
        self.drain_deadline = None;
        self.end_reported = (false, false);
        self.counters.entry().set(S::ACTIVE, 1);
    }

    fn end_gap(&mut self, first: u64, count: u64, announced: bool) -> Step {
        // Reported now, so never again: a resumed session starts after these.
        self.gaps.skip(first, count);
        let e = self.counters.entry();
        e.add(S::GAPS, 1);
        e.add(S::LOST, count);
        if announced {
            e.add(S::ANNOUNCED, count);
        }
        Step::Gap {
            first,
            count,
            announced,
        }
    }

    fn corrupt(&mut self, seq: Option<u64>, reason: String) -> Error {
        self.release_pending = true;
        self.counters.entry().add(S::CORRUPT, 1);
        self.counters.error("refused a corrupt message", &reason);
        Error::Corrupt { seq, reason }
    }

    fn ended_error(&self) -> Error {
        self.counters.entry().set(S::ACTIVE, 0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Node, Policy};
    use rdmabus_proto::market::BookUpdate;

    fn psk() -> Psk {
        Psk::parse(
            "rdmabus-psk-v1:44444444444444444444444444444444444444444444444444444444444444ab",
        )
        .unwrap()
    }

    /// What a test saw while it held the first message of a full ring.
    struct Held {
        /// The archived value lies in the subscriber's copy buffer.
        in_copy: bool,
        /// The archived value (and its bytes) lie in the ring.
        in_ring: bool,
        /// Messages the publisher dropped when it sent one more, the first still held.
        dropped: u64,
        /// Sequences received after the first, with gaps counted as their lost sequences.
        rest: Vec<u64>,
    }

    /// A `Drop` publisher and a 4-slot subscriber in `access` mode (credit goes back at every
    /// release, a quarter of the ring): fills the ring, takes the first message, and while the
    /// event is held looks where it lies and publishes one more message.
    fn hold_first(access: Access) -> Held {
        let node = Node::builder().psk(psk()).start().unwrap();
        let mut publisher = node
            .publisher::<BookUpdate>("b")
            .policy(Policy::Drop)
            .build()
            .unwrap();
        let mut sub = Subscriber::<BookUpdate>::builder(node.local_addr(), "b")
            .psk(psk())
            .slots(4)
            .access(access)
            .connect()
            .unwrap();
        publisher
            .wait_for_subscribers(1, Duration::from_secs(5))
            .unwrap();
        for i in 0..4 {
            publisher.publish(&BookUpdate::synthetic(i)).unwrap();
        }
        let ring_start = sub.local.slot_ptr(0) as usize;
        let ring = ring_start..ring_start + sub.geometry.ring_bytes();
        let copy_start = sub.copy.lines.as_ptr() as usize;
        let copy = copy_start..copy_start + sub.copy.capacity();
        let Event::Message(m) = sub.recv().unwrap() else {
            panic!("a gap in a fresh ring")
        };
        assert_eq!(m.seq(), 0);
        let at = m.archived() as *const _ as usize;
        let bytes = m.bytes().as_ptr() as usize;
        let in_copy = copy.contains(&at) && copy.contains(&bytes);
        let in_ring = ring.contains(&at) && ring.contains(&bytes);
        // The ring is full: this one goes out only if the first slot is already released.
        publisher.publish(&BookUpdate::synthetic(4)).unwrap();
        let dropped = publisher.stats().subscribers[0].dropped;
        // Whatever was written into the ring since, the message held is intact.
        assert!(BookUpdate::synthetic_matches(&m, 0));
        let mut rest = Vec::new();
        while let Some(e) = sub.recv_timeout(Duration::from_millis(200)).unwrap() {
            match e {
                Event::Message(m) => {
                    assert!(BookUpdate::synthetic_matches(&m, m.seq()));
                    rest.push(m.seq());
                }
                Event::Gap { first, count, .. } => rest.extend(first..first + count),
                Event::Session(_) => panic!("no reconnect asked for"),
            }
        }
        Held {
            in_copy,
            in_ring,
            dropped,
            rest,
        }
    }

    /// Copy mode, an 8-slot ring (credit every 2 releases): the credit a message released is
    /// written at the next poll, after the caller had the message, not before it is handed
    /// out; the publisher sees it then.
    #[test]
    fn batched_credit_goes_back_at_the_next_poll() {
        let node = Node::builder().psk(psk()).start().unwrap();
        let mut publisher = node
            .publisher::<BookUpdate>("c")
            .policy(Policy::Drop)
            .build()
            .unwrap();
        let mut sub = Subscriber::<BookUpdate>::builder(node.local_addr(), "c")
            .psk(psk())
            .slots(8)
            .connect()
            .unwrap();
        publisher
            .wait_for_subscribers(1, Duration::from_secs(5))
            .unwrap();
        for i in 0..8 {
            publisher.publish(&BookUpdate::synthetic(i)).unwrap();
        }
        for seq in 0..2 {
            match sub.recv().unwrap() {
                Event::Message(m) => assert_eq!(m.seq(), seq),
                _ => panic!("a gap in a fresh ring"),
            }
        }
        // Two released, their credit not yet written: the ring still looks full.
        publisher.publish(&BookUpdate::synthetic(8)).unwrap();
        assert_eq!(publisher.stats().subscribers[0].dropped, 1);
        // The next poll writes it first; then there is room for two.
        match sub.recv().unwrap() {
            Event::Message(m) => assert_eq!(m.seq(), 2),
            _ => panic!("a gap before the drop"),
        }
        publisher.publish(&BookUpdate::synthetic(9)).unwrap();
        assert_eq!(publisher.stats().subscribers[0].dropped, 1);
    }

    #[test]
    fn copy_mode_hands_out_its_own_memory_and_releases_the_slot_first() {
        let h = hold_first(Access::Copy);
        assert!(
            h.in_copy && !h.in_ring,
            "the archive handed out must lie in the copy buffer, not the ring"
        );
        assert_eq!(
            h.dropped, 0,
            "the slot must be released before the message is handed out"
        );
        assert_eq!(h.rest, [1, 2, 3, 4]);
    }

    #[test]
    fn in_place_mode_reads_the_ring_and_holds_the_slot() {
        let h = hold_first(Access::InPlace);
        assert!(h.in_ring && !h.in_copy);
        // The held slot goes back at the next poll: the fifth message found the ring full
        // (and, the last one sent, no later message reports it as a gap).
        assert_eq!(h.dropped, 1);
        assert_eq!(h.rest, [1, 2, 3]);
    }

    #[test]
    fn copy_mode_refuses_a_corrupt_copy_and_goes_on() {
        let node = Node::builder().psk(psk()).start().unwrap();
        let mut publisher = node.publisher::<BookUpdate>("b").build().unwrap();
        let mut sub = Subscriber::<BookUpdate>::builder(node.local_addr(), "b")
            .psk(psk())
            .connect()
            .unwrap();
        publisher
            .wait_for_subscribers(1, Duration::from_secs(5))
            .unwrap();
        #[repr(align(64))]
        struct A([u8; 1024]);
        let mut buf = A([0; 1024]);
        let n = codec::encode_into(&BookUpdate::synthetic(1), &mut buf.0).unwrap();
        // `bids` (relative pointer + length) at 16..24 of the 32-byte root: out of bounds.
        buf.0[n - 16..n - 8].fill(0x7f);
        publisher
            .loan()
            .unwrap()
            .write_bytes(&buf.0[..n])
            .unwrap()
            .send()
            .unwrap();
        publisher.publish(&BookUpdate::synthetic(2)).unwrap();
        assert!(matches!(
            sub.recv(),
            Err(Error::Corrupt { seq: Some(0), .. })
        ));
        match sub.recv().unwrap() {
            Event::Message(m) => assert!(BookUpdate::synthetic_matches(&m, 2)),
            Event::Gap { .. } | Event::Session(_) => panic!("gap"),
        }
        assert_eq!(sub.stats().corrupt, 1);
    }
}

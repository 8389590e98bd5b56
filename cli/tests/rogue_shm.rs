//! Rogue shared-memory subscribers, end to end: each holds the key and speaks the real protocol
//! (the proto state machines over TCP, its memory over the publisher's real Unix socket),
//! against a real node and publisher while a well-behaved subscriber on the same topic must
//! receive every message published before, during and after the attack, in order. Over shm
//! whatever the suite's transport (`RDMABUS_TEST_TRANSPORT`): this is about shared memory.

mod common;

use common::psk;
use common::raw::RawSub;
use rdmabus::proto::handshake::*;
use rdmabus::proto::market::Quote;
use rdmabus::proto::slot::{lap_flag, FLAGS_OFFSET, FLAG_LAP};
use rdmabus::proto::RingGeometry;
use rdmabus::shm::{fdpass, ShmRegion, CREDIT_FILE_LEN};
use rdmabus::{Error, Event, Node, NodeEvent, Publisher, Subscriber, Transport};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TOPIC: &str = "quotes";
/// Ring slots every subscriber here asks for.
const SLOTS: u32 = 64;
/// Messages published before the attack starts, and after it ended.
const BEFORE: u64 = 1000;
const AFTER: u64 = 1000;

fn node() -> Node {
    Node::builder()
        .bind("127.0.0.1:0")
        .psk(psk())
        .heartbeat(Duration::from_millis(100))
        .start()
        .unwrap()
}

fn good_subscriber(addr: SocketAddr, name: &str) -> Result<Subscriber<Quote>, Error> {
    Subscriber::<Quote>::builder(addr, TOPIC)
        .psk(psk())
        .transport(Transport::Shm)
        .slots(SLOTS)
        .name(name)
        .timeout(Duration::from_secs(10))
        .connect()
}

/// Receives until `total` (unknown at first) messages arrived: every one `Quote::synthetic` of
/// its index, sequences consecutive, no gap. Returns the count.
fn receive_all(
    mut sub: Subscriber<Quote>,
    total: Arc<AtomicU64>,
) -> JoinHandle<(u64, Subscriber<Quote>)> {
    std::thread::spawn(move || {
        let mut next = 0u64;
        let mut first_seq = None;
        let mut last_progress = Instant::now();
        while next < total.load(Ordering::Acquire) {
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(Event::Message(m))) => {
                    let base = *first_seq.get_or_insert(m.seq());
                    assert_eq!(m.seq(), base + next, "out of order");
                    assert!(Quote::synthetic_matches(&m, next), "message {next} garbled");
                    next += 1;
                    last_progress = Instant::now();
                }
                Ok(Some(Event::Gap { first, count, .. })) => {
                    panic!("the good subscriber lost {count} messages from {first}")
                }
                Ok(Some(_)) => panic!("unexpected event"),
                Ok(None) => assert!(
                    last_progress.elapsed() < Duration::from_secs(20),
                    "the good subscriber received nothing for 20 s after {next} messages"
                ),
                Err(e) => panic!("the good subscriber failed after {next} messages: {e}"),
            }
        }
        (next, sub)
    })
}

/// Runs `attack` while `p` publishes to a good subscriber: [`BEFORE`] messages before it
/// starts, one every 100 µs while it runs, [`AFTER`] once it returned. Asserts the good
/// subscriber received every one, in order; returns the publisher and what `attack` returned.
fn under_traffic<R>(
    node: &Node,
    mut p: Publisher<Quote>,
    attack: impl FnOnce() -> R,
) -> (Publisher<Quote>, Subscriber<Quote>, R) {
    let good = good_subscriber(node.local_addr(), "good").unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let receiver = receive_all(good, total.clone());
    let started = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (started, done, total) = (started.clone(), done.clone(), total.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut publish = |p: &mut Publisher<Quote>| {
                p.publish(&Quote::synthetic(i))
                    .unwrap_or_else(|e| panic!("the publisher failed at message {i}: {e}"));
                i += 1;
            };
            for _ in 0..BEFORE {
                publish(&mut p);
            }
            started.store(true, Ordering::Release);
            let mut during = 0;
            loop {
                publish(&mut p);
                during += 1;
                std::thread::sleep(Duration::from_micros(100));
                if done.load(Ordering::Acquire) {
                    break;
                }
            }
            for _ in 0..AFTER {
                publish(&mut p);
            }
            total.store(BEFORE + during + AFTER, Ordering::Release);
            (p, during)
        })
    };
    while !started.load(Ordering::Acquire) {
        assert!(!publisher.is_finished(), "the publisher stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = attack();
    done.store(true, Ordering::Release);
    let (p, during) = publisher.join().expect("the publisher thread panicked");
    let (got, good) = receiver.join().expect("the good subscriber panicked");
    assert!(during > 0, "nothing was published during the attack");
    assert_eq!(got, BEFORE + during + AFTER);
    eprintln!("good subscriber: {got} messages, {during} of them during the attack");
    let stats = p.stats();
    let g = stats.subscribers.iter().find(|s| s.name == "good").unwrap();
    assert_eq!((g.sent, g.errors), (got, 0), "{g:?}");
    (p, good, r)
}

/// Waits for the node to record a refusal and returns its reason; panics if the rogue joined.
fn rejection(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for e in node.events() {
            match e {
                NodeEvent::Rejected { reason, .. } => return reason,
                NodeEvent::Joined { name, .. } if name == "raw" => {
                    panic!("the rogue joined")
                }
                NodeEvent::Joined { .. } => {}
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the node recorded no refusal")
}

/// A rogue subscriber that has been accepted and sent its `Auth` (a ring of [`SLOTS`]), and
/// now hands over whatever it likes.
struct Rogue {
    sub: RawSub,
    offer: ShmOffer,
    geometry: RingGeometry,
}

impl Rogue {
    fn authed(addr: SocketAddr) -> Self {
        let mut sub = RawSub::connect(
            addr,
            &psk(),
            TOPIC,
            std::any::type_name::<Quote>(),
            TransportKind::Shm,
        );
        let accept = sub.accepted();
        let offer = accept.shm.expect("the publisher offered no fd exchange");
        let geometry = RingGeometry::new(SLOTS, accept.slot_size).unwrap();
        sub.hs.auth(
            Auth {
                ring: RingDescriptor {
                    slots: SLOTS,
                    slot_size: accept.slot_size,
                },
                endpoint: SubEndpoint::Shm,
                history: 0,
                resume_from: None,
            },
            Instant::now(),
        );
        while let Some(f) = sub.hs.poll_transmit() {
            sub.fs.send_raw(&f).unwrap();
        }
        Self {
            sub,
            offer,
            geometry,
        }
    }

    fn ring_bytes(&self) -> usize {
        self.geometry.ring_bytes()
    }

    /// Passes `fds` with the offered ticket (or `ticket`); returns what the publisher passed
    /// back.
    fn hand_over_with(
        &self,
        ticket: [u8; 32],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<OwnedFd>, Error> {
        fdpass::exchange(
            &self.offer.socket,
            ticket,
            fds,
            Instant::now() + Duration::from_secs(10),
        )
    }

    fn hand_over(&self, fds: &[BorrowedFd<'_>]) -> Result<Vec<OwnedFd>, Error> {
        self.hand_over_with(self.offer.ticket, fds)
    }

    /// The publisher's answer must be an authenticated `BadEndpoint`; returns its message.
    fn bad_endpoint(mut self) -> String {
        match self.sub.refusal() {
            HandshakeError::Rejected {
                code: RejectCode::BadEndpoint,
                message,
                authenticated: true,
            } => message,
            e => panic!("expected an authenticated BadEndpoint, got {e:?}"),
        }
    }
}

/// A memfd of `len` bytes, all of it allocated, with `seals` (`None`: sealing not allowed).
fn memfd(len: usize, seals: Option<libc::c_int>) -> OwnedFd {
    let flags = libc::MFD_CLOEXEC | seals.map_or(0, |_| libc::MFD_ALLOW_SEALING);
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"rogue".as_ptr(), flags) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned it; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Written, not only reserved: every page is there and up to date.
    let zeros = vec![0u8; len];
    // SAFETY: pwrite from a buffer of `len` bytes into our descriptor.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), zeros.as_ptr().cast(), len, 0) };
    assert_eq!(n, len as isize, "{}", std::io::Error::last_os_error());
    if let Some(s) = seals.filter(|&s| s != 0) {
        // SAFETY: F_ADD_SEALS on our descriptor.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, s) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
    fd
}

fn publisher(node: &Node) -> Publisher<Quote> {
    node.publisher::<Quote>(TOPIC)
        .max_payload(96)
        .build()
        .unwrap()
}

/// Runs `attack` under traffic and returns the node's and the rogue's view of the refusal.
fn refused_under_traffic(attack: impl FnOnce(SocketAddr) -> String) -> (String, String) {
    let node = node();
    let p = publisher(&node);
    let addr = node.local_addr();
    let (mut p, _good, told) = under_traffic(&node, p, || attack(addr));
    let reason = rejection(&node);
    eprintln!("node: {reason}\nrogue was told: {told}");
    assert!(reason.starts_with("BadEndpoint: "), "{reason}");
    // The publisher goes on, with its good subscriber alone.
    p.publish(&Quote::synthetic(0)).unwrap();
    assert_eq!(p.subscriber_count(), 1);
    (reason, told)
}

#[test]
fn an_unsealed_ring_is_refused_naming_the_seal() {
    let (reason, told) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let ring = memfd(rogue.ring_bytes(), None);
        rogue.hand_over(&[ring.as_fd()]).unwrap();
        rogue.bad_endpoint()
    });
    for m in [&reason, &told] {
        assert!(
            m.contains("ring memfd is not sealed against shrinking"),
            "{m}"
        );
    }
    // Sealed against shrinking only.
    let (reason, _) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let ring = memfd(rogue.ring_bytes(), Some(libc::F_SEAL_SHRINK));
        rogue.hand_over(&[ring.as_fd()]).unwrap();
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("ring memfd is not sealed against growing"),
        "{reason}"
    );
}

#[test]
fn the_wrong_number_of_descriptors_is_refused() {
    // 2: a subscriber of protocol version 3 passed a completion queue too.
    for n in [0usize, 2, 3] {
        let (reason, told) = refused_under_traffic(|addr| {
            let rogue = Rogue::authed(addr);
            let regions: Vec<ShmRegion> = (0..n)
                .map(|_| ShmRegion::memfd("ring", rogue.ring_bytes()).unwrap())
                .collect();
            let fds: Vec<BorrowedFd<'_>> = regions.iter().map(|r| r.fd()).collect();
            rogue.hand_over(&fds).unwrap();
            rogue.bad_endpoint()
        });
        let want = format!("expected 1 descriptor (the ring), got {n}");
        assert!(reason.contains(&want) && told.contains(&want), "{reason}");
    }
}

#[test]
fn a_pipe_or_a_socket_instead_of_a_memfd_is_refused() {
    let (reason, _) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let mut p = [0; 2];
        // SAFETY: `p` has room for both descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned both; each is owned once.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        rogue.hand_over(&[r.as_fd()]).unwrap();
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("ring descriptor is not a regular file"),
        "{reason}"
    );
    let (reason, _) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        rogue.hand_over(&[a.as_fd()]).unwrap();
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("ring descriptor is not a regular file"),
        "{reason}"
    );
}

#[test]
fn a_memfd_of_the_wrong_size_is_refused() {
    // Smaller than the ring it announced (the publisher would write past its end), and larger.
    for ring_delta in [-4096isize, 4096] {
        let (reason, _) = refused_under_traffic(|addr| {
            let rogue = Rogue::authed(addr);
            let ring_len = (rogue.ring_bytes() as isize + ring_delta) as usize;
            let ring = ShmRegion::memfd("ring", ring_len).unwrap();
            rogue.hand_over(&[ring.fd()]).unwrap();
            rogue.bad_endpoint()
        });
        assert!(reason.contains("ring memfd is "), "{reason}");
        assert!(reason.contains("bytes, expected "), "{reason}");
    }
}

#[test]
fn a_wrong_ticket_gets_nothing_and_the_handshake_times_out() {
    let (reason, told) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let ring = ShmRegion::memfd("ring", rogue.ring_bytes()).unwrap();
        let mut wrong = rogue.offer.ticket;
        wrong[0] ^= 1;
        let e = rogue.hand_over_with(wrong, &[ring.fd()]).unwrap_err();
        assert!(e.to_string().contains("refused the ticket"), "{e}");
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("receiving the ring's memory") && reason.contains("no peer presented"),
        "{reason}"
    );
    assert!(told.contains("receiving the ring's memory"), "{told}");
}

/// `ftruncate` to `len`: must fail with EPERM.
#[track_caller]
fn assert_cannot_truncate(fd: BorrowedFd<'_>, len: usize, what: &str) {
    // SAFETY: plain syscall on a descriptor we hold.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    let e = std::io::Error::last_os_error();
    assert_eq!(
        (r, e.raw_os_error()),
        (-1, Some(libc::EPERM)),
        "ftruncate of the {what} to {len} bytes: {e}"
    );
}

/// `fallocate(PUNCH_HOLE)` over all of `len`, rounded up to whole pages (so even the page of
/// a 64-byte memfd is freed, not only zeroed): what it returned.
fn punch(fd: BorrowedFd<'_>, len: usize) -> Result<(), std::io::Error> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let len = len.div_ceil(4096) * 4096;
    // SAFETY: plain syscall on a descriptor we hold.
    match unsafe { libc::fallocate(fd.as_raw_fd(), mode, 0, len as libc::off_t) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Bytes of `fd` backed by memory.
fn allocated(fd: BorrowedFd<'_>) -> u64 {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_blocks as u64 * 512
}

/// `madvise(MADV_REMOVE)` over a mapping of `len` bytes at `p`: what it returned.
fn madv_remove(p: *mut u8, len: usize) -> Result<(), std::io::Error> {
    // SAFETY: `p` is the start of a live shared mapping of `len` bytes.
    match unsafe { libc::madvise(p.cast(), len, libc::MADV_REMOVE) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A rogue's credit word: the publisher's memfd mapped as is (a good subscriber's
/// `from_peer_fd` would seal it; a rogue does not).
struct RawCredit(memmap2::MmapRaw);

impl RawCredit {
    fn map(fd: &OwnedFd) -> Self {
        Self(
            memmap2::MmapOptions::new()
                .len(CREDIT_FILE_LEN)
                .map_raw(fd.as_raw_fd())
                .unwrap(),
        )
    }

    fn store(&self, offset: u64, v: u64) {
        assert!(offset.is_multiple_of(8) && offset as usize + 8 <= CREDIT_FILE_LEN);
        // SAFETY: in bounds and aligned (checked; the mapping is page-aligned), write
        // provenance (MmapRaw), and the publisher only reads this word atomically.
        let w = unsafe { &*(self.0.as_mut_ptr().add(offset as usize) as *const AtomicU64) };
        w.store(v, Ordering::Release);
    }
}

/// Sends a heartbeat every 20 ms for `ms` (and reads whatever comes).
fn heartbeat(rogue: &mut Rogue, session: &mut Session, ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        let hb = session.seal(&ControlMsg::Heartbeat(Heartbeat { sent_ns: 0 }));
        rogue.sub.fs.send_raw(&hb).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Some(n)) = rogue
            .sub
            .fs
            .read_until(Instant::now() + Duration::from_millis(20), &mut buf)
        {
            session.handle_input(&buf[..n]).unwrap();
            while let Ok(Some(_)) = session.poll_message() {}
        }
    }
}

/// Completes the handshake after handing over `fds`, mapping the credit word before its first
/// heartbeat (as a good subscriber does: the publisher seals it against new writable mappings
/// then): the credit word's descriptor and mapping, its offset and the session.
fn join(rogue: &mut Rogue, fds: &[BorrowedFd<'_>]) -> (OwnedFd, RawCredit, u64, Session) {
    let mut credit = rogue.hand_over(fds).unwrap();
    assert_eq!(credit.len(), 1);
    let credit = credit.pop().unwrap();
    let w = match rogue.sub.next_event() {
        ClientEvent::Welcomed(w) => w,
        ClientEvent::Failed(e) => panic!("refused: {e}"),
        _ => panic!("no Welcome"),
    };
    let PubEndpoint::Shm(ShmCredit { offset }) = w.endpoint else {
        panic!("not an shm Welcome")
    };
    let map = RawCredit::map(&credit);
    rogue.sub.hs.ready(0);
    let ClientEvent::Established(session) = rogue.sub.next_event() else {
        panic!("not established")
    };
    (credit, map, offset, session)
}

#[test]
fn a_joined_rogue_can_neither_truncate_nor_punch_its_memory() {
    let node = node();
    let p = publisher(&node);
    let addr = node.local_addr();
    let (mut p, _good, attempts) = under_traffic(&node, p, || {
        let mut rogue = Rogue::authed(addr);
        // Exactly what a good subscriber makes.
        let ring = ShmRegion::memfd("ring", rogue.ring_bytes()).unwrap();
        let (credit, credit_map, offset, mut session) = join(&mut rogue, &[ring.fd()]);
        let fds = [
            ("ring", ring.fd().try_clone_to_owned().unwrap(), ring.len()),
            ("credit word", credit, CREDIT_FILE_LEN),
        ];
        let ring_at = (ring.as_mut_ptr() as usize, ring.len());
        let geometry = rogue.geometry;
        // Joined: it returns credit (what it sees completed: each slot's flags word carries
        // its lap bit) and heartbeats, so only its attack could end the link.
        let stop = Arc::new(AtomicBool::new(false));
        let returner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut consumed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    loop {
                        let at = geometry.offset(consumed) + FLAGS_OFFSET;
                        // SAFETY: the flags word of a slot inside the ring's mapping (the
                        // region outlives the loop), 4-aligned, loaded atomically as the
                        // publisher stores it.
                        let flags = unsafe {
                            (*(ring.as_mut_ptr().add(at) as *const AtomicU32))
                                .load(Ordering::Acquire)
                        };
                        if flags & FLAG_LAP != lap_flag(consumed, SLOTS as u64) {
                            break;
                        }
                        consumed += 1;
                    }
                    credit_map.store(offset, consumed);
                    std::thread::yield_now();
                }
                (ring, consumed)
            })
        };
        heartbeat(&mut rogue, &mut session, 200);
        let mut attempts = Vec::new();
        for (what, fd, len) in &fds {
            // Shrinking (the publisher's writes would fault: SIGBUS) and growing: refused.
            for to in [0, len / 2, len + 4096] {
                assert_cannot_truncate(fd.as_fd(), to, what);
            }
            let before = allocated(fd.as_fd());
            let r = punch(fd.as_fd(), *len);
            eprintln!(
                "punching the {what}: {r:?}; {before} bytes allocated before, {} after",
                allocated(fd.as_fd())
            );
            attempts.push((format!("fallocate(PUNCH_HOLE) on the {what}"), r));
        }
        // The same through its own mapping of the ring.
        let r = madv_remove(ring_at.0 as *mut u8, ring_at.1);
        attempts.push(("madvise(MADV_REMOVE) on the ring".to_string(), r));
        // Traffic goes on into its memory.
        heartbeat(&mut rogue, &mut session, 300);
        stop.store(true, Ordering::Relaxed);
        let (_ring, consumed) = returner.join().unwrap();
        eprintln!("the rogue consumed {consumed} messages");
        assert!(consumed > 0, "the rogue received nothing");
        attempts
    });
    // The publisher is alive (a SIGBUS would have killed this process) and goes on.
    p.publish(&Quote::synthetic(0)).unwrap();
    let allowed: Vec<String> = attempts
        .iter()
        .filter(|(_, r)| r.as_ref().err().and_then(|e| e.raw_os_error()) != Some(libc::EPERM))
        .map(|(what, r)| format!("{what}: {r:?}"))
        .collect();
    assert!(
        allowed.is_empty(),
        "allowed, or failed otherwise than with EPERM: {allowed:#?}"
    );
}

#[test]
fn memory_punched_out_before_it_is_sealed_is_refused() {
    // Its ring, before handing it over.
    let (reason, _) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let ring = ShmRegion::memfd("ring", rogue.ring_bytes()).unwrap();
        punch(ring.fd(), 4096).unwrap();
        rogue.hand_over(&[ring.fd()]).unwrap();
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("ring memfd has a hole at byte 0"),
        "{reason}"
    );
    // Its seals sealed, so the publisher cannot forbid punching.
    let (reason, _) = refused_under_traffic(|addr| {
        let rogue = Rogue::authed(addr);
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let ring = memfd(rogue.ring_bytes(), Some(seals));
        rogue.hand_over(&[ring.as_fd()]).unwrap();
        rogue.bad_endpoint()
    });
    assert!(
        reason.contains("ring memfd cannot be sealed against hole punching"),
        "{reason}"
    );
    // The publisher's credit word, between the hand-over and its first heartbeat: cut at once.
    let (reason, told) = refused_under_traffic(|addr| {
        let mut rogue = Rogue::authed(addr);
        let ring = ShmRegion::memfd("ring", rogue.ring_bytes()).unwrap();
        let mut credit = rogue.hand_over(&[ring.fd()]).unwrap();
        punch(credit[0].as_fd(), CREDIT_FILE_LEN).unwrap();
        let _credit = credit.pop();
        let ClientEvent::Welcomed(_) = rogue.sub.next_event() else {
            panic!("no Welcome")
        };
        rogue.sub.hs.ready(0);
        let ClientEvent::Established(mut session) = rogue.sub.next_event() else {
            panic!("not established")
        };
        goodbye(&mut rogue, &mut session)
    });
    assert!(
        reason.contains("credit word memfd has a hole at byte 0"),
        "{reason}"
    );
    assert!(told.contains("credit word memfd has a hole"), "{told}");
}

/// Reads until the publisher's `Goodbye`; returns its message.
fn goodbye(rogue: &mut Rogue, session: &mut Session) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        while let Some(m) = session.poll_message().unwrap() {
            if let ControlMsg::Goodbye(g) = m {
                return g.message;
            }
        }
        match rogue.sub.fs.read_until(deadline, &mut buf) {
            Ok(Some(n)) => session.handle_input(&buf[..n]).unwrap(),
            r => panic!("no Goodbye: {r:?}"),
        }
    }
}

/// A tmpfs of 64 KiB mounted on a fresh directory and filled up; unmounted and removed when
/// dropped. `None` where mounting is not allowed.
struct FullTmpfs(std::path::PathBuf);

impl FullTmpfs {
    fn mount() -> Option<Self> {
        let path = std::env::temp_dir().join(format!("rdmabus-rogue-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir_all(&path);
            return None;
        }
        let dir = Self(path);
        let mut f = std::fs::File::create(dir.0.join("filler")).unwrap();
        let chunk = vec![0xffu8; 4096];
        let err = loop {
            if let Err(e) = std::io::Write::write_all(&mut f, &chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        Some(dir)
    }
}

impl Drop for FullTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` (at most 60 s) and returns its output; panics on a signal.
fn finished(child: std::process::Child, what: &str) -> std::process::Output {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{what} did not finish within 60 s")
        });
    assert_eq!(
        out.status.signal(),
        None,
        "{what} died of a signal (SIGBUS is {}); stderr: {}",
        libc::SIGBUS,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn messages_flow_over_shm_with_the_shm_dir_on_a_full_tmpfs() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let Some(dir) = FullTmpfs::mount() else {
        eprintln!("rogue_shm: cannot mount a tmpfs here: the full-tmpfs test did not run");
        return;
    };
    const N: u64 = 3000;
    let env = |c: &mut Command| {
        c.env("RDMABUS_PSK", common::KEY)
            .env("RDMABUS_SHM_DIR", &dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };
    let mut publisher = Command::new(env!("CARGO_BIN_EXE_rdmabus"));
    publisher.args(["pub", "--listen", "127.0.0.1:0", "-t", TOPIC, "--rate", "0"]);
    publisher.args(["--count", &N.to_string(), "--wait-subscribers", "2"]);
    env(&mut publisher);
    let mut publisher = publisher.spawn().unwrap();
    let mut lines = std::io::BufReader::new(publisher.stderr.take().unwrap()).lines();
    let (addr, early): (SocketAddr, Vec<String>) = common::pub_address(&mut lines);
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let subs: Vec<_> = (0..2)
        .map(|i| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rdmabus"));
            c.args(["sub", "--connect", &addr.to_string(), "-t", TOPIC, "--json"]);
            c.args(["--count", &N.to_string(), "--verify", "--transport", "shm"]);
            c.args([
                "--idle",
                "yield",
                "--slots",
                "64",
                "--name",
                &format!("s{i}"),
            ]);
            env(&mut c);
            c.spawn().unwrap()
        })
        .collect();
    for (i, s) in subs.into_iter().enumerate() {
        let out = finished(s, "rdmabus sub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sub {i}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("bad report {stdout:?}: {e}"));
        assert_eq!(report["transport"], "shm");
        common::assert_complete(common::topic(&report, TOPIC), N);
        assert!(stderr.contains("no stats file"), "sub {i}: {stderr}");
    }
    let out = finished(publisher, "rdmabus pub");
    assert!(out.status.success());
    let log = [early, rest.join().unwrap()].concat().join("\n");
    assert!(log.contains("no stats file"), "{log}");
    assert!(log.contains(&format!("published {N}")), "{log}");
    // Nothing was made there: rings, queues and credit words are memfds.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["filler"]);
}

/// Publishes `Quote::synthetic(from..from + n)`, each received by every one of `subs` before
/// the next goes out (their rings are small, and the policy blocks).
#[track_caller]
fn deliver(p: &mut Publisher<Quote>, subs: &mut [&mut Subscriber<Quote>], from: u64, n: u64) {
    for i in from..from + n {
        p.publish(&Quote::synthetic(i)).unwrap();
        for sub in subs.iter_mut() {
            match sub.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(Event::Message(m))) => {
                    assert!(Quote::synthetic_matches(&m, i), "message {i}")
                }
                Ok(Some(Event::Gap { first, count, .. })) => panic!("gap of {count} at {first}"),
                Ok(Some(_)) => panic!("unexpected event"),
                Ok(None) => panic!("message {i} did not arrive"),
                Err(e) => panic!("message {i}: {e}"),
            }
        }
    }
}

/// Waits until `p` counts `n` subscribers (a departed one is removed on the way).
fn wait_for_count(p: &mut Publisher<Quote>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.subscriber_count() != n {
        assert!(
            Instant::now() < deadline,
            "{} subscribers",
            p.subscriber_count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A raw subscriber's refusal: it must be an authenticated `Unavailable`.
fn unavailable(mut sub: RawSub) -> String {
    match sub.refusal() {
        HandshakeError::Rejected {
            code: RejectCode::Unavailable,
            message,
            authenticated: true,
        } => message,
        e => panic!("expected an authenticated Unavailable, got {e:?}"),
    }
}

#[track_caller]
fn assert_unavailable(r: Result<Subscriber<Quote>, Error>, needle: &str) {
    match r {
        Err(Error::Rejected {
            code: RejectCode::Unavailable,
            message,
        }) => assert!(message.contains(needle), "{message}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, the subscriber got in"),
    }
}

#[test]
fn a_subscriber_beyond_max_subscribers_is_refused_until_one_leaves() {
    let node = node();
    let addr = node.local_addr();
    let mut p = node
        .publisher::<Quote>(TOPIC)
        .max_payload(96)
        .max_subscribers(2)
        .build()
        .unwrap();
    let mut a = good_subscriber(addr, "a").unwrap();
    let mut b = good_subscriber(addr, "b").unwrap();
    p.wait_for_subscribers(2, Duration::from_secs(10)).unwrap();
    // A third, by hand (the refusal is sealed: the publisher proved the key) and the real one.
    let raw = RawSub::connect(
        addr,
        &psk(),
        TOPIC,
        std::any::type_name::<Quote>(),
        TransportKind::Shm,
    );
    let m = unavailable(raw);
    assert!(
        m.contains("the topic has 2 subscribers, its limit is 2"),
        "{m}"
    );
    assert_unavailable(good_subscriber(addr, "c"), "its limit is 2");
    // The first two are unaffected.
    deliver(&mut p, &mut [&mut a, &mut b], 0, 500);
    assert_eq!(p.subscriber_count(), 2);
    // One leaves: its place is given back.
    drop(a);
    wait_for_count(&mut p, 1);
    let mut c = good_subscriber(addr, "c").unwrap();
    p.wait_for_subscribers(2, Duration::from_secs(10)).unwrap();
    assert_unavailable(good_subscriber(addr, "d"), "its limit is 2");
    deliver(&mut p, &mut [&mut b, &mut c], 500, 500);
    // (The node records a refusal just after sending it.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    while refused < 3 && Instant::now() < deadline {
        refused += node
            .events()
            .into_iter()
            .filter(|e| matches!(e, NodeEvent::Rejected { reason, .. } if reason.starts_with("Unavailable: ")))
            .count();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(refused, 3);
}

#[test]
fn a_ring_beyond_max_ring_bytes_is_refused_until_one_leaves() {
    let node = node();
    let addr = node.local_addr();
    // Slots of 128 bytes: a ring of 64 slots is 8 KiB; room for one and a half.
    let mut p = node
        .publisher::<Quote>(TOPIC)
        .max_payload(96)
        .max_ring_bytes(12 << 10)
        .build()
        .unwrap();
    let big = Subscriber::<Quote>::builder(addr, TOPIC)
        .psk(psk())
        .transport(Transport::Shm)
        .slots(128)
        .connect();
    assert_unavailable(big, "a ring of 16384 bytes");
    let mut a = good_subscriber(addr, "a").unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    assert_unavailable(good_subscriber(addr, "b"), "(8192 in use)");
    deliver(&mut p, &mut [&mut a], 0, 500);
    drop(a);
    wait_for_count(&mut p, 0);
    let mut b = good_subscriber(addr, "b").unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(10)).unwrap();
    deliver(&mut p, &mut [&mut b], 500, 500);
}

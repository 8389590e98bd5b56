//! Peers that speak the real protocol by hand (the proto state machines over a real TCP
//! connection), to play a rogue subscriber or publisher in tests.
#![allow(dead_code)]
// Without the `verbs` feature the verbs peers are compiled out, and some imports with them.
#![cfg_attr(not(feature = "verbs"), allow(unused_imports))]

use rdmabus::control::framed::FramedStream;
use rdmabus::proto::handshake::*;
use rdmabus::proto::slot::HEADER_LEN;
use rdmabus::proto::{RingGeometry, SlotHeader};
use rdmabus::transport::LocalRing;
#[cfg(feature = "verbs")]
use rdmabus::verbs::{self, VerbsLocalRing};
use rdmabus::Psk;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A subscriber driven step by step.
pub struct RawSub {
    pub fs: FramedStream,
    pub hs: ClientHandshake,
}

impl RawSub {
    /// Connects and queues `Hello`.
    pub fn connect(
        addr: SocketAddr,
        key: &Psk,
        topic: &str,
        schema: &str,
        transport: TransportKind,
    ) -> Self {
        let fs = FramedStream::new(TcpStream::connect(addr).unwrap()).unwrap();
        let hs = ClientHandshake::new(
            ClientConfig {
                key: *key.bytes(),
                topic: topic.into(),
                schema: schema.into(),
                transport,
                name: "raw".into(),
                step: Duration::from_secs(10),
            },
            [5; 32],
            Instant::now(),
        );
        Self { fs, hs }
    }

    /// Sends what is queued and reads until the handshake has an event.
    pub fn next_event(&mut self) -> ClientEvent {
        let mut chunk = [0u8; 4096];
        loop {
            while let Some(f) = self.hs.poll_transmit() {
                self.fs.send_raw(&f).unwrap();
            }
            if let Some(e) = self.hs.poll_event() {
                while let Some(f) = self.hs.poll_transmit() {
                    let _ = self.fs.send_raw(&f);
                }
                return e;
            }
            let deadline = self
                .hs
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
            match self.fs.read_until(deadline, &mut chunk) {
                Ok(Some(n)) => self.hs.handle_input(&chunk[..n], Instant::now()),
                Ok(None) => self.hs.handle_timeout(Instant::now()),
                Err(_) => self.hs.handle_close(),
            }
        }
    }

    /// Runs to `Accepted` (panics otherwise).
    pub fn accepted(&mut self) -> Accept {
        match self.next_event() {
            ClientEvent::Accepted(a) => a,
            ClientEvent::Failed(e) => panic!("handshake failed: {e}"),
            _ => panic!("expected Accepted"),
        }
    }

    /// The refusal the publisher answers with.
    pub fn refusal(&mut self) -> HandshakeError {
        match self.next_event() {
            ClientEvent::Failed(e) => e,
            _ => panic!("expected a refusal"),
        }
    }
}

/// A publisher of one topic driven by hand over shm: it completes the real handshake with
/// one subscriber (sealed frames, the real fd exchange), then holds the subscriber's ring and
/// writes whatever it likes into it, whenever it likes.
pub struct RawPub {
    pub ring: rdmabus::shm::ShmRegion,
    pub geometry: rdmabus::proto::RingGeometry,
    pub credit: rdmabus::shm::ShmRegion,
    /// Keeps the link's heartbeats going until dropped.
    _beat: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _exchange: rdmabus::shm::FdExchange,
}

impl RawPub {
    /// Listens on 127.0.0.1 and serves one subscriber of `topic`/`schema` with `key`:
    /// returns the address at once and the rogue once the subscriber is attached.
    pub fn serve(
        key: &Psk,
        topic: &'static str,
        schema: &'static str,
        slot_size: u32,
    ) -> (SocketAddr, std::thread::JoinHandle<RawPub>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let key = *key.bytes();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut fs = FramedStream::new(s).unwrap();
            let mut hs =
                ServerHandshake::new(key, [3; 32], Duration::from_secs(10), Instant::now());
            let exchange = rdmabus::shm::FdExchange::bind().unwrap();
            let credit =
                rdmabus::shm::ShmRegion::memfd("credit", rdmabus::shm::CREDIT_FILE_LEN).unwrap();
            let mut registration = None;
            let mut mapped = None;
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(f) = hs.poll_transmit() {
                    fs.send_raw(&f).unwrap();
                }
                match hs.poll_event() {
                    Some(ServerEvent::Authenticated(h)) => {
                        assert_eq!((h.topic.as_str(), h.schema.as_str()), (topic, schema));
                        let ticket = [7u8; 32];
                        registration = Some(
                            exchange
                                .register(ticket, vec![credit.fd().try_clone_to_owned().unwrap()]),
                        );
                        hs.accept(
                            Accept {
                                slot_size,
                                shm: Some(ShmOffer {
                                    socket: exchange.name().to_string(),
                                    ticket,
                                }),
                                epoch: 9,
                                resumed_at: None,
                            },
                            Instant::now(),
                        );
                    }
                    Some(ServerEvent::Ring(a)) => {
                        let geometry =
                            rdmabus::proto::RingGeometry::new(a.ring.slots, a.ring.slot_size)
                                .unwrap();
                        let mut fds = registration
                            .take()
                            .unwrap()
                            .wait(Instant::now() + Duration::from_secs(10))
                            .unwrap();
                        assert_eq!(fds.len(), 1, "the subscriber passes its ring only");
                        let ring = fds.pop().unwrap();
                        let ring = rdmabus::shm::ShmRegion::from_peer_fd(
                            ring,
                            geometry.ring_bytes(),
                            "ring",
                        )
                        .unwrap();
                        mapped = Some((ring, geometry));
                        hs.welcome(
                            Welcome {
                                subscriber_id: 1,
                                heartbeat_ms: 100,
                                next_seq: 0,
                                epoch: 9,
                                history: 0,
                                endpoint: PubEndpoint::Shm(ShmCredit { offset: 0 }),
                            },
                            Instant::now(),
                        );
                    }
                    Some(ServerEvent::Established(mut session)) => {
                        let beat = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
                        let b = beat.clone();
                        std::thread::spawn(move || {
                            while b.load(std::sync::atomic::Ordering::Relaxed) {
                                let f =
                                    session.seal(&ControlMsg::Heartbeat(Heartbeat { sent_ns: 0 }));
                                if fs.send_raw(&f).is_err() {
                                    break;
                                }
                                let mut buf = [0u8; 4096];
                                let _ = fs.read_until(
                                    Instant::now() + Duration::from_millis(50),
                                    &mut buf,
                                );
                            }
                        });
                        let (ring, geometry) = mapped.take().unwrap();
                        return RawPub {
                            ring,
                            geometry,
                            credit,
                            _beat: beat,
                            _exchange: exchange,
                        };
                    }
                    Some(ServerEvent::Failed(r)) => {
                        panic!("rogue publisher: handshake failed: {r:?}")
                    }
                    None => {
                        let deadline = hs
                            .poll_timeout()
                            .unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
                        match fs.read_until(deadline, &mut chunk) {
                            Ok(Some(n)) => hs.handle_input(&chunk[..n], Instant::now()),
                            Ok(None) => hs.handle_timeout(Instant::now()),
                            Err(_) => hs.handle_close(),
                        }
                    }
                }
            }
        });
        (addr, t)
    }

    /// Writes `payload` as message `seq` into ring position `pos` and completes it, as the
    /// real publisher does: payload and header, then the flags word with the lap bit, last.
    pub fn write(&mut self, pos: u64, seq: u64, payload: &[u8]) {
        use rdmabus::proto::slot::{lap_flag, FLAGS_OFFSET};
        let header = rdmabus::proto::SlotHeader::new(seq, 0, payload.len() as u32, 0);
        let flags = header.flags | lap_flag(pos, self.geometry.slots() as u64);
        let header = header.to_bytes();
        let at = self.geometry.offset(pos);
        // SAFETY: `at + header + payload` lies in the ring's mapping (payload within the slot's
        // capacity); raw-pointer writes into memory shared with the subscriber; the flags word
        // is 4-aligned (64-aligned slot plus 20) and stored atomically, as the subscriber loads
        // it.
        unsafe {
            let dst = self.ring.as_mut_ptr().add(at);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), dst.add(header.len()), payload.len());
            std::ptr::copy_nonoverlapping(header.as_ptr(), dst, FLAGS_OFFSET);
            std::ptr::copy_nonoverlapping(
                header.as_ptr().add(FLAGS_OFFSET + 4),
                dst.add(FLAGS_OFFSET + 4),
                header.len() - FLAGS_OFFSET - 4,
            );
            (*(dst.add(FLAGS_OFFSET) as *const std::sync::atomic::AtomicU32))
                .store(flags, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for RawPub {
    fn drop(&mut self) {
        self._beat
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RawSub {
    /// Over shm: builds a real sealed ring of `slots`, sends `Auth`, hands the ring over on
    /// the publisher's socket, and runs to `Welcome`. Returns the ring and the publisher's
    /// credit memory (not attached yet); `None` if the publisher refused.
    pub fn shm_to_welcome(
        &mut self,
        slots: u32,
    ) -> Option<(rdmabus::shm::ShmLocalRing, std::os::fd::OwnedFd)> {
        let accept = self.accepted();
        let geometry = rdmabus::proto::RingGeometry::new(slots, accept.slot_size).unwrap();
        let local = rdmabus::shm::ShmLocalRing::create_sealed(geometry).unwrap();
        self.hs.auth(
            Auth {
                ring: RingDescriptor {
                    slots,
                    slot_size: accept.slot_size,
                },
                endpoint: SubEndpoint::Shm,
                history: 0,
                resume_from: None,
            },
            Instant::now(),
        );
        while let Some(f) = self.hs.poll_transmit() {
            self.fs.send_raw(&f).unwrap();
        }
        let offer = accept.shm.expect("an shm offer");
        let mut credit = rdmabus::shm::fdpass::exchange(
            &offer.socket,
            offer.ticket,
            &local.fds(),
            Instant::now() + Duration::from_secs(10),
        )
        .ok()?;
        match self.next_event() {
            ClientEvent::Welcomed(_) => Some((local, credit.pop().unwrap())),
            _ => None,
        }
    }
}

#[cfg(feature = "verbs")]
impl RawSub {
    /// Over verbs: a real registered ring of `slots`, `Auth` with its endpoint (after `lie`
    /// has had its way with it), `Welcome`, the QP connected and the ready heartbeat: returns
    /// the ring, its geometry, the `Welcome` and the established session.
    pub fn verbs_to_session(
        &mut self,
        slots: u32,
        lie: impl FnOnce(&mut VerbsEndpoint),
    ) -> (VerbsLocalRing, RingGeometry, Welcome, Session) {
        let accept = self.accepted();
        let choice = verbs::choose(
            None,
            None,
            self.fs.local_addr().unwrap().ip(),
            &Default::default(),
        )
        .unwrap();
        let geometry = RingGeometry::new(slots, accept.slot_size).unwrap();
        let mut ring = VerbsLocalRing::create(&choice, geometry).unwrap();
        let mut ep = ring.endpoint();
        lie(&mut ep);
        self.hs.auth(
            Auth {
                ring: RingDescriptor {
                    slots,
                    slot_size: accept.slot_size,
                },
                endpoint: SubEndpoint::Verbs(ep),
                history: 0,
                resume_from: None,
            },
            Instant::now(),
        );
        let ClientEvent::Welcomed(w) = self.next_event() else {
            panic!("no Welcome")
        };
        let PubEndpoint::Verbs(pub_ep) = w.endpoint else {
            panic!("not a verbs Welcome")
        };
        ring.connect(&pub_ep).unwrap();
        self.hs.ready(0);
        let ClientEvent::Established(session) = self.next_event() else {
            panic!("not established")
        };
        (ring, geometry, w, session)
    }
}

/// The verbs rogue's ring: this many receives are posted once and never again.
#[cfg(feature = "verbs")]
pub const ROGUE_SLOTS: u32 = 256;

/// Handshakes as a subscriber with a ring of [`ROGUE_SLOTS`] slots, then never polls its
/// completion queue (so no receive is ever reposted) while it returns credit for every slot
/// it sees written (reading the slot headers themselves), and keeps heartbeating until `stop`.
#[cfg(feature = "verbs")]
pub fn rnr_rogue(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sub = RawSub::connect(
            addr,
            &super::psk(),
            "quotes",
            std::any::type_name::<rdmabus::proto::market::Quote>(),
            TransportKind::Verbs,
        );
        let (mut ring, geometry, w, mut session) = sub.verbs_to_session(ROGUE_SLOTS, |_| {});
        let start = w.next_seq;
        let mut credited = 0u64;
        let mut beat = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let before = credited;
            loop {
                let mut b = [0u8; HEADER_LEN];
                let at = ring.slot_ptr(geometry.index(credited));
                for (i, byte) in b.iter_mut().enumerate() {
                    // SAFETY: the slot holds slot_size >= HEADER_LEN bytes of the live ring;
                    // volatile byte loads of memory the NIC may be writing.
                    *byte = unsafe { std::ptr::read_volatile(at.add(i)) };
                }
                match SlotHeader::from_bytes(&b) {
                    Some(h) if h.seq == start + credited => credited += 1,
                    _ => break,
                }
            }
            if credited != before && ring.return_credit(credited).is_err() {
                break;
            }
            if beat.elapsed() > Duration::from_millis(50) {
                beat = Instant::now();
                let hb = session.seal(&ControlMsg::Heartbeat(Heartbeat { sent_ns: 0 }));
                if sub.fs.send_raw(&hb).is_err() {
                    break;
                }
            }
            let mut buf = [0u8; 4096];
            let _ = sub
                .fs
                .read_until(Instant::now() + Duration::from_millis(1), &mut buf);
        }
        drop(ring);
    })
}

/// Without the `verbs` feature there is no verbs rogue (and no verbs test that needs one).
#[cfg(not(feature = "verbs"))]
pub fn rnr_rogue(
    _addr: std::net::SocketAddr,
    _stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    panic!("the verbs rogue needs the `verbs` feature")
}

//! The subscriber's side of the handshake: drives [`ClientHandshake`] over the connection and
//! sets the ring up when the publisher has proven the key.

use super::framed::FramedStream;
use super::session::{self, Channel, LinkState};
use crate::shm::ShmLocalRing;
use crate::transport::LocalRing;
#[cfg(feature = "verbs")]
use crate::verbs::{self, VerbsLocalRing};
use crate::{Error, Psk, Transport};
use rdmabus_proto::handshake::*;
use rdmabus_proto::RingGeometry;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a subscriber asks for.
pub(crate) struct ConnectParams<'a> {
    pub addr: SocketAddr,
    pub topic: &'a str,
    pub schema: &'static str,
    pub psk: &'a Psk,
    pub transport: Transport,
    pub slots: u32,
    pub slot_size: Option<u32>,
    pub name: &'a str,
    pub timeout: Duration,
    pub bind: Option<IpAddr>,
    pub device: Option<&'a str>,
    pub gid_index: Option<u8>,
    pub verbs: crate::verbs_options::VerbsOptions,
    pub history: rdmabus_proto::history::HistoryRequest,
    /// Reconnecting: the previous session's epoch and the sequence expected next.
    pub resume: Option<(u64, u64)>,
}

/// A subscription after a successful handshake.
pub(crate) struct Connected {
    pub local: Box<dyn LocalRing>,
    pub geometry: RingGeometry,
    pub welcome: Welcome,
    pub state: Arc<LinkState>,
    pub session: JoinHandle<()>,
    /// Whether this session continues the stream of `ConnectParams::resume` (true for a
    /// first connection).
    pub continues: bool,
}

/// The subscriber's ring before `Welcome`, per transport.
enum Pending {
    /// The ring, and the publisher's credit memory once handed over.
    Shm(ShmLocalRing, Option<OwnedFd>),
    #[cfg(feature = "verbs")]
    Verbs(Box<VerbsLocalRing>),
}

fn tcp_connect(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, Error> {
    let what = || format!("connecting to publisher at {addr}");
    let Some(ip) = bind else {
        return TcpStream::connect_timeout(&addr, timeout).map_err(|e| Error::io(what(), e));
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| Error::io(what(), e))?;
    socket
        .bind(&SocketAddr::new(ip, 0).into())
        .map_err(|e| Error::io(format!("binding the control connection to {ip}"), e))?;
    socket
        .connect_timeout(&addr.into(), timeout)
        .map_err(|e| Error::io(what(), e))?;
    Ok(socket.into())
}

fn handshake_error(e: HandshakeError, addr: SocketAddr) -> Error {
    match e {
        HandshakeError::Rejected {
            code: RejectCode::AuthFailed,
            authenticated: false,
            message,
        } => Error::Auth(format!(
            "the publisher at {addr} refused this subscriber's proof of the key (the keys \
             differ): {message}"
        )),
        HandshakeError::Rejected { code, message, .. } => Error::Rejected { code, message },
        HandshakeError::AuthFailed(m) => Error::Auth(format!("publisher at {addr}: {m}")),
        HandshakeError::Protocol(m) => Error::Protocol(m),
        HandshakeError::Frame(f) => Error::Frame(f),
        HandshakeError::Timeout(m) => Error::Timeout(m),
    }
}

/// Connects, authenticates both ways, sets up the ring and starts heartbeats.
pub(crate) fn connect(p: ConnectParams<'_>) -> Result<Connected, Error> {
    check_topic(p.topic).map_err(Error::Config)?;
    // Refuse a bad ring locally, before bothering the publisher.
    RingGeometry::new(
        p.slots,
        p.slot_size
            .unwrap_or(rdmabus_proto::geometry::MIN_SLOT_SIZE),
    )
    .map_err(|e| Error::Config(format!("ring: {e}")))?;
    let mut fs = FramedStream::new(tcp_connect(p.addr, p.bind, p.timeout)?)?;
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).map_err(|e| Error::Config(format!("random source: {e}")))?;
    let mut hs = ClientHandshake::new(
        ClientConfig {
            key: *p.psk.bytes(),
            topic: p.topic.to_string(),
            schema: p.schema.to_string(),
            transport: match p.transport {
                Transport::Shm => TransportKind::Shm,
                Transport::Verbs => TransportKind::Verbs,
            },
            name: p.name.to_string(),
            step: p.timeout,
        },
        nonce,
        Instant::now(),
    );
    let mut pending: Option<(Pending, RingGeometry)> = None;
    let mut continues = true;
    let mut ready: Option<(Box<dyn LocalRing>, RingGeometry, Welcome)> = None;
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(frame) = hs.poll_transmit() {
            fs.send_raw(&frame)?;
        }
        let mut progressed = false;
        while let Some(event) = hs.poll_event() {
            progressed = true;
            let step = match event {
                ClientEvent::Accepted(accept) => {
                    let offer = accept.shm.clone();
                    // Reconnecting: the same publisher, or one that resumed a numbering,
                    // continues the stream, and we ask for exactly what we miss. A new
                    // numbering starts again.
                    let resume_from = p.resume.and_then(|(epoch, expected)| {
                        (accept.epoch == epoch || accept.resumed_at.is_some()).then_some(expected)
                    });
                    continues = p.resume.is_none() || resume_from.is_some();
                    build_ring(&p, &fs, &mut hs, accept).and_then(
                        |(mut pend, geometry, mut auth)| {
                            auth.resume_from = resume_from;
                            hs.auth(auth, Instant::now());
                            while let Some(frame) = hs.poll_transmit() {
                                fs.send_raw(&frame)?;
                            }
                            // The publisher registered the ticket before it sent Accept, and
                            // waits for the memory once it has Auth.
                            if let (Pending::Shm(local, credit), Some(offer)) = (&mut pend, offer) {
                                match hand_over(local, &offer, p.timeout) {
                                    Ok(fd) => *credit = Some(fd),
                                    // The publisher may have said why on the connection.
                                    Err(e) => return Err(refusal_or(&mut fs, &mut hs, e, p.addr)),
                                }
                            }
                            pending = Some((pend, geometry));
                            Ok(())
                        },
                    )
                }
                ClientEvent::Welcomed(welcome) => match pending.take() {
                    Some((pend, geometry)) => attach(pend, &welcome).map(|local| {
                        ready = Some((local, geometry, welcome));
                        hs.ready(crate::clock::now_ns());
                    }),
                    None => Err(Error::Protocol("Welcome before Accept".into())),
                },
                ClientEvent::Established(session) => {
                    while let Some(frame) = hs.poll_transmit() {
                        fs.send_raw(&frame)?;
                    }
                    let (local, geometry, welcome) =
                        ready.take().expect("Established follows Welcomed");
                    let state = LinkState::new();
                    let heartbeat = Duration::from_millis(welcome.heartbeat_ms as u64);
                    let session = session::spawn(
                        Channel {
                            stream: fs,
                            session,
                        },
                        state.clone(),
                        heartbeat,
                        format!("{}/{}", p.topic, p.name),
                    )?;
                    return Ok(Connected {
                        local,
                        geometry,
                        welcome,
                        state,
                        session,
                        continues,
                    });
                }
                ClientEvent::Failed(e) => {
                    while let Some(frame) = hs.poll_transmit() {
                        let _ = fs.send_raw(&frame);
                    }
                    return Err(handshake_error(e, p.addr));
                }
            };
            if let Err(e) = step {
                hs.abort(RejectCode::BadEndpoint, e.to_string());
                while let Some(frame) = hs.poll_transmit() {
                    let _ = fs.send_raw(&frame);
                }
                return Err(e);
            }
        }
        if progressed {
            continue;
        }
        let deadline = hs
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + p.timeout);
        match fs.read_until(deadline, &mut chunk) {
            Ok(Some(n)) => hs.handle_input(&chunk[..n], Instant::now()),
            Ok(None) => hs.handle_timeout(Instant::now()),
            Err(_) => hs.handle_close(),
        }
    }
}

/// The publisher proved the key and took the subscription: build the ring.
fn build_ring(
    p: &ConnectParams<'_>,
    fs: &FramedStream,
    hs: &mut ClientHandshake,
    accept: Accept,
) -> Result<(Pending, RingGeometry, Auth), Error> {
    let slot_size = p
        .slot_size
        .unwrap_or(accept.slot_size)
        .max(accept.slot_size);
    let geometry = match RingGeometry::new(p.slots, slot_size) {
        Ok(g) => g,
        Err(e) => {
            hs.abort(RejectCode::BadGeometry, e.to_string());
            return Err(Error::Config(format!("ring: {e}")));
        }
    };
    let ring = RingDescriptor {
        slots: geometry.slots(),
        slot_size: geometry.slot_size(),
    };
    match p.transport {
        Transport::Shm => {
            if accept.shm.is_none() {
                return Err(Error::Protocol(
                    "the publisher offered no way to hand over shared memory".into(),
                ));
            }
            let local = ShmLocalRing::create_sealed(geometry)?;
            Ok((
                Pending::Shm(local, None),
                geometry,
                Auth {
                    ring,
                    endpoint: SubEndpoint::Shm,
                    history: p.history.to_wire(),
                    resume_from: None,
                },
            ))
        }
        #[cfg(not(feature = "verbs"))]
        Transport::Verbs => {
            // What a verbs build would use to pick its device.
            let _ = (fs, p.device, p.gid_index, p.verbs);
            Err(crate::transport::no_verbs())
        }
        #[cfg(feature = "verbs")]
        Transport::Verbs => {
            // The device is the one whose GID is this connection's local address. No device
            // is opened before the publisher has proven the key.
            let choice = verbs::choose(p.device, p.gid_index, fs.local_addr()?.ip(), &p.verbs)?;
            let local = VerbsLocalRing::create(&choice, geometry)?;
            let ep = local.endpoint();
            Ok((
                Pending::Verbs(Box::new(local)),
                geometry,
                Auth {
                    ring,
                    endpoint: SubEndpoint::Verbs(ep),
                    history: p.history.to_wire(),
                    resume_from: None,
                },
            ))
        }
    }
}

/// The publisher's refusal if one arrives within a second, else `e`.
fn refusal_or(
    fs: &mut FramedStream,
    hs: &mut ClientHandshake,
    e: Error,
    addr: SocketAddr,
) -> Error {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match fs.read_until(deadline, &mut chunk) {
            Ok(Some(n)) => hs.handle_input(&chunk[..n], Instant::now()),
            Ok(None) => break,
            Err(_) => hs.handle_close(),
        }
        if let Some(ClientEvent::Failed(f)) = hs.poll_event() {
            if !matches!(f, HandshakeError::Protocol(_)) {
                return handshake_error(f, addr);
            }
            break;
        }
    }
    e
}

/// Hands the ring's memory to the publisher over its Unix socket; returns its credit memory.
fn hand_over(local: &ShmLocalRing, offer: &ShmOffer, timeout: Duration) -> Result<OwnedFd, Error> {
    let mut credit = crate::shm::fdpass::exchange(
        &offer.socket,
        offer.ticket,
        &local.fds(),
        Instant::now() + timeout,
    )?;
    if credit.len() != 1 {
        return Err(Error::Protocol(format!(
            "the publisher passed {} descriptors for its credit word, expected 1",
            credit.len()
        )));
    }
    Ok(credit.pop().expect("one"))
}

/// The publisher set the link up: attach to its credit endpoint.
fn attach(pending: Pending, welcome: &Welcome) -> Result<Box<dyn LocalRing>, Error> {
    match (pending, &welcome.endpoint) {
        (Pending::Shm(mut local, Some(credit)), PubEndpoint::Shm(c)) => {
            local.attach_credit_fd(credit, c.offset, 0)?;
            Ok(Box::new(local))
        }
        #[cfg(feature = "verbs")]
        (Pending::Verbs(mut local), PubEndpoint::Verbs(ep)) => {
            local.connect(ep)?;
            Ok(local)
        }
        _ => Err(Error::Protocol(
            "the publisher answered with another transport's endpoint".into(),
        )),
    }
}

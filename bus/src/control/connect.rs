//! The subscriber's side of the handshake.

use super::framed::FramedStream;
use super::session::{self, LinkState};
use crate::shm::ShmLocalRing;
use crate::transport::LocalRing;
use crate::verbs::{self, VerbsLocalRing};
use crate::{Error, Psk, Transport};
use rdmabus_proto::auth::{self, Role};
use rdmabus_proto::handshake::*;
use rdmabus_proto::RingGeometry;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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
}

/// A subscription after a successful handshake.
pub(crate) struct Connected {
    pub local: Box<dyn LocalRing>,
    pub geometry: RingGeometry,
    pub welcome: Welcome,
    pub state: Arc<LinkState>,
    pub session: JoinHandle<()>,
}

/// The subscriber's ring before `Welcome`, per transport.
enum Pending {
    Shm(ShmLocalRing),
    Verbs(Box<VerbsLocalRing>),
}

fn expect(fs: &mut FramedStream, timeout: Duration, what: &str) -> Result<ControlMsg, Error> {
    match fs.recv_within(timeout, what)? {
        ControlMsg::Reject(r) => Err(Error::Rejected {
            code: r.code,
            message: r.message,
        }),
        m => Ok(m),
    }
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
    let mut client_nonce = [0u8; auth::PROOF_LEN];
    getrandom::getrandom(&mut client_nonce)
        .map_err(|e| Error::Config(format!("random source: {e}")))?;
    fs.send(&ControlMsg::Hello(Hello {
        topic: p.topic.to_string(),
        schema: p.schema.to_string(),
        transport: match p.transport {
            Transport::Shm => TransportKind::Shm,
            Transport::Verbs => TransportKind::Verbs,
        },
        client_nonce,
        client_name: p.name.to_string(),
    }))?;
    let challenge = match expect(&mut fs, p.timeout, "Challenge")? {
        ControlMsg::Challenge(c) => c,
        other => {
            return Err(Error::Protocol(format!(
                "expected Challenge, got {}",
                other.kind()
            )))
        }
    };
    let key = p.psk.bytes();
    if !auth::verify(
        key,
        Role::Publisher,
        &client_nonce,
        &challenge.server_nonce,
        p.topic,
        &challenge.proof,
    ) {
        let _ = fs.send(&ControlMsg::Reject(Reject::new(
            RejectCode::AuthFailed,
            "publisher's key proof did not verify",
        )));
        return Err(Error::Auth(format!(
            "publisher at {} could not prove it holds the pre-shared key (the keys differ)",
            p.addr
        )));
    }
    // Verbs: the device is the one whose GID is this connection's local address. No device
    // is opened before the publisher has proven the key.
    let choice = match p.transport {
        Transport::Shm => None,
        Transport::Verbs => Some(verbs::choose(p.device, p.gid_index, fs.local_addr()?.ip())?),
    };
    let slot_size = p
        .slot_size
        .unwrap_or(challenge.slot_size)
        .max(challenge.slot_size);
    let geometry = match RingGeometry::new(p.slots, slot_size) {
        Ok(g) => g,
        Err(e) => {
            let _ = fs.send(&ControlMsg::Reject(Reject::new(
                RejectCode::BadGeometry,
                e.to_string(),
            )));
            return Err(Error::Config(format!("ring: {e}")));
        }
    };
    let (mut pending, endpoint) = match &choice {
        None => {
            let local = ShmLocalRing::create(geometry)?;
            let (ring_path, cq_path) = local.paths();
            (
                Pending::Shm(local),
                SubEndpoint::Shm(ShmRing { ring_path, cq_path }),
            )
        }
        Some(choice) => {
            let local = VerbsLocalRing::create(choice, geometry)?;
            let ep = local.endpoint();
            (Pending::Verbs(Box::new(local)), SubEndpoint::Verbs(ep))
        }
    };
    fs.send(&ControlMsg::Auth(Auth {
        proof: auth::proof(
            key,
            Role::Subscriber,
            &client_nonce,
            &challenge.server_nonce,
            p.topic,
        ),
        ring: RingDescriptor {
            slots: geometry.slots(),
            slot_size: geometry.slot_size(),
        },
        endpoint,
    }))?;
    let welcome = match expect(&mut fs, p.timeout, "Welcome")? {
        ControlMsg::Welcome(w) => w,
        other => {
            return Err(Error::Protocol(format!(
                "expected Welcome, got {}",
                other.kind()
            )))
        }
    };
    if welcome.heartbeat_ms == 0 || welcome.heartbeat_ms > 60_000 {
        return Err(Error::Protocol(format!(
            "heartbeat of {} ms out of bounds",
            welcome.heartbeat_ms
        )));
    }
    let local: Box<dyn LocalRing> = match (&mut pending, &welcome.endpoint) {
        (Pending::Shm(local), PubEndpoint::Shm(c)) => {
            check_shm_path(&c.path, &crate::shm::shm_dir()).map_err(Error::Protocol)?;
            local.attach_credit(Path::new(&c.path), c.offset, 0)?;
            match pending {
                Pending::Shm(l) => Box::new(l),
                Pending::Verbs(_) => unreachable!(),
            }
        }
        (Pending::Verbs(local), PubEndpoint::Verbs(ep)) => {
            local.connect(ep)?;
            match pending {
                Pending::Verbs(l) => l,
                Pending::Shm(_) => unreachable!(),
            }
        }
        _ => {
            return Err(Error::Protocol(
                "the publisher answered with another transport's endpoint".into(),
            ))
        }
    };
    // Ready: the publisher adopts the link when it sees this.
    fs.send(&ControlMsg::Heartbeat(Heartbeat {
        sent_ns: crate::clock::now_ns(),
    }))?;
    let state = LinkState::new();
    let heartbeat = Duration::from_millis(welcome.heartbeat_ms as u64);
    let session = session::spawn(
        fs,
        state.clone(),
        heartbeat,
        format!("{}/{}", p.topic, p.name),
    );
    Ok(Connected {
        local,
        geometry,
        welcome,
        state,
        session,
    })
}

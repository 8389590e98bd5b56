//! The subscriber's side of the handshake.

use super::framed::FramedStream;
use super::session::{self, LinkState};
use crate::shm::ShmLocalRing;
use crate::transport::LocalRing;
use crate::{Error, Psk, Transport};
use rdmabus_proto::auth::{self, Role};
use rdmabus_proto::handshake::*;
use rdmabus_proto::RingGeometry;
use std::net::{SocketAddr, TcpStream};
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
}

/// A subscription after a successful handshake.
pub(crate) struct Connected {
    pub local: Box<dyn LocalRing>,
    pub geometry: RingGeometry,
    pub welcome: Welcome,
    pub state: Arc<LinkState>,
    pub session: JoinHandle<()>,
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

/// Connects, authenticates both ways, sets up the ring and starts heartbeats.
pub(crate) fn connect(p: ConnectParams<'_>) -> Result<Connected, Error> {
    check_topic(p.topic).map_err(Error::Config)?;
    if p.transport != Transport::Shm {
        return Err(Error::Config(
            "the verbs transport is not built into this version yet; use shm".into(),
        ));
    }
    // Refuse a bad ring locally, before bothering the publisher.
    RingGeometry::new(
        p.slots,
        p.slot_size
            .unwrap_or(rdmabus_proto::geometry::MIN_SLOT_SIZE),
    )
    .map_err(|e| Error::Config(format!("ring: {e}")))?;
    let stream = TcpStream::connect_timeout(&p.addr, p.timeout)
        .map_err(|e| Error::io(format!("connecting to publisher at {}", p.addr), e))?;
    let mut fs = FramedStream::new(stream)?;
    let mut client_nonce = [0u8; auth::PROOF_LEN];
    getrandom::getrandom(&mut client_nonce)
        .map_err(|e| Error::Config(format!("random source: {e}")))?;
    fs.send(&ControlMsg::Hello(Hello {
        topic: p.topic.to_string(),
        schema: p.schema.to_string(),
        transport: TransportKind::Shm,
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
    let slot_size = p
        .slot_size
        .unwrap_or(challenge.slot_size)
        .max(challenge.slot_size);
    let geometry =
        RingGeometry::new(p.slots, slot_size).map_err(|e| Error::Config(format!("ring: {e}")))?;
    let mut local = ShmLocalRing::create(geometry)?;
    let (ring_path, cq_path) = local.paths();
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
        endpoint: SubEndpoint::Shm(ShmRing { ring_path, cq_path }),
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
    match &welcome.endpoint {
        PubEndpoint::Shm(c) => {
            check_shm_path(&c.path, &crate::shm::shm_dir()).map_err(Error::Protocol)?;
            local.attach_credit(Path::new(&c.path), c.offset, 0)?;
        }
        PubEndpoint::Verbs(_) => {
            return Err(Error::Protocol(
                "verbs credit endpoint on a shm subscription".into(),
            ))
        }
    }
    if welcome.heartbeat_ms == 0 || welcome.heartbeat_ms > 60_000 {
        return Err(Error::Protocol(format!(
            "heartbeat of {} ms out of bounds",
            welcome.heartbeat_ms
        )));
    }
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
        local: Box::new(local),
        geometry,
        welcome,
        state,
        session,
    })
}

//! The publisher's side of the handshake: drives [`ServerHandshake`] over the connection on
//! the connection's own thread (one per handshake in progress, capped by the node), takes its
//! decisions (topic, caps, ring set-up), then keeps the link's heartbeats.

use super::framed::FramedStream;
use super::limits::{HandshakePermit, Reservation};
use super::node::{NewLink, NodeEvent, NodeShared, TopicShared};
use super::session::{self, Channel, LinkState};
use crate::shm::{seal_mapped, Registration, ShmRegion, ShmRemoteRing, CREDIT_FILE_LEN};
use crate::transport::RemoteRing;
#[cfg(feature = "verbs")]
use crate::verbs::{self, VerbsRemoteRing};
use rdmabus_proto::handshake::*;
use rdmabus_proto::RingGeometry;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the subscriber may take for each of its steps.
const HANDSHAKE_STEP: Duration = Duration::from_secs(5);

/// What the decisions so far have set up.
#[derive(Default)]
struct Progress {
    hello: Option<Hello>,
    topic: Option<Arc<TopicShared>>,
    reservation: Option<Reservation>,
    /// The ticket registered on the fd-exchange socket (unregistered when dropped).
    shm_registration: Option<Registration>,
    shm_credit: Option<ShmRegion>,
    /// The credit word's descriptor, to seal once the subscriber has mapped it.
    shm_credit_fd: Option<OwnedFd>,
    link: Option<(u32, Box<dyn RemoteRing>, RingGeometry)>,
    history: rdmabus_proto::history::HistoryRequest,
    resume_from: Option<u64>,
}

/// Serves one connection: handshake, then hands the link to the publisher and keeps heartbeats.
pub(crate) fn serve(node: Arc<NodeShared>, stream: TcpStream, permit: HandshakePermit) {
    if node.shutdown.load(Ordering::Acquire) {
        return;
    }
    let mut fs = match FramedStream::new(stream) {
        Ok(fs) => fs,
        Err(e) => return tracing::debug!("new connection: {e}"),
    };
    let peer = fs.peer();
    let mut nonce = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut nonce) {
        return tracing::error!("random source: {e}");
    }
    let mut hs = ServerHandshake::new(*node.psk.bytes(), nonce, HANDSHAKE_STEP, Instant::now());
    let mut p = Progress::default();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(frame) = hs.poll_transmit() {
            if fs.send_raw(&frame).is_err() {
                hs.handle_close();
            }
        }
        let mut progressed = false;
        while let Some(event) = hs.poll_event() {
            progressed = true;
            match event {
                ServerEvent::Authenticated(hello) => decide_topic(&node, &mut hs, &mut p, hello),
                ServerEvent::Ring(auth) => set_up_ring(&node, &fs, &mut hs, &mut p, auth),
                ServerEvent::Established(s) => {
                    drop(permit);
                    return established(&node, fs, s, p);
                }
                ServerEvent::Failed(refusal) => {
                    while let Some(frame) = hs.poll_transmit() {
                        let _ = fs.send_raw(&frame);
                    }
                    fs.shutdown();
                    // A refusal's reason already starts with its code ("Unavailable: ...").
                    let what = match refusal.code {
                        Some(_) => "refused subscriber",
                        None => "handshake failed",
                    };
                    node.log_refusal(peer, &format!("{what}: {}", refusal.reason.escape_debug()));
                    node.event(NodeEvent::Rejected {
                        peer,
                        reason: refusal.reason,
                    });
                    return;
                }
            }
        }
        if progressed {
            continue;
        }
        let deadline = hs
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + HANDSHAKE_STEP);
        match fs.read_until(deadline, &mut chunk) {
            Ok(Some(n)) => hs.handle_input(&chunk[..n], Instant::now()),
            Ok(None) => hs.handle_timeout(Instant::now()),
            Err(_) => hs.handle_close(),
        }
    }
}

/// The subscriber proved the key: is there such a topic, of its type, with room?
fn decide_topic(node: &NodeShared, hs: &mut ServerHandshake, p: &mut Progress, hello: Hello) {
    let Some(topic) = node.topic(&hello.topic) else {
        return hs.reject(
            RejectCode::UnknownTopic,
            format!("no topic {:?} on this publisher", hello.topic),
        );
    };
    if hello.schema != topic.schema {
        return hs.reject(
            RejectCode::SchemaMismatch,
            format!(
                "topic {:?} carries {}, the subscriber reads {}",
                topic.name, topic.schema, hello.schema
            ),
        );
    }
    let reservation = match topic.budget.reserve_subscriber() {
        Ok(r) => r,
        Err(why) => return hs.reject(RejectCode::Unavailable, why),
    };
    let shm = match hello.transport {
        TransportKind::Verbs => None,
        TransportKind::Shm => match offer_shm(node, p) {
            Ok(offer) => Some(offer),
            Err(why) => return hs.reject(RejectCode::Unavailable, why),
        },
    };
    p.hello = Some(hello);
    p.topic = Some(topic.clone());
    p.reservation = Some(reservation);
    hs.accept(
        Accept {
            slot_size: topic.slot_size,
            shm,
            epoch: topic.epoch,
            resumed_at: *topic.resumed_at.lock().unwrap_or_else(|p| p.into_inner()),
        },
        Instant::now(),
    );
}

/// Creates this link's credit word and registers the ticket the subscriber hands its memory
/// over with.
fn offer_shm(node: &NodeShared, p: &mut Progress) -> Result<ShmOffer, String> {
    let exchange = node.fd_exchange()?;
    let credit = ShmRegion::memfd("credit", CREDIT_FILE_LEN).map_err(|e| e.to_string())?;
    let mut ticket = [0u8; 32];
    getrandom::getrandom(&mut ticket).map_err(|e| format!("random source: {e}"))?;
    let reply = credit
        .fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the credit descriptor: {e}"))?;
    p.shm_registration = Some(exchange.register(ticket, vec![reply]));
    p.shm_credit = Some(credit);
    Ok(ShmOffer {
        socket: exchange.name().to_string(),
        ticket,
    })
}

/// The subscriber announced its ring: check it against the caps and map or connect it.
fn set_up_ring(
    node: &NodeShared,
    fs: &FramedStream,
    hs: &mut ServerHandshake,
    p: &mut Progress,
    auth: Auth,
) {
    let (topic, hello) = match (&p.topic, &p.hello) {
        (Some(t), Some(h)) => (t.clone(), h.clone()),
        _ => return hs.reject(RejectCode::BadMessage, "Auth before Accept"),
    };
    if topic.closed.load(Ordering::Acquire) {
        return hs.reject(RejectCode::Unavailable, "the publisher closed the topic");
    }
    let geometry = match check_ring(&auth.ring, topic.slot_size) {
        Ok(g) => g,
        Err(r) => return hs.reject(r.code, r.message),
    };
    let reservation = p.reservation.as_mut().expect("reserved at Accept");
    if let Err(why) = reservation.add_ring_bytes(geometry.ring_bytes() as u64) {
        return hs.reject(RejectCode::Unavailable, why);
    }
    let set_up: Result<(Box<dyn RemoteRing>, PubEndpoint), (RejectCode, String)> =
        match (&auth.endpoint, hello.transport) {
            (SubEndpoint::Shm, TransportKind::Shm) => shm_ring(p, geometry),
            (SubEndpoint::Verbs(ep), TransportKind::Verbs) => {
                verbs_ring(node, fs, &topic, geometry, *ep)
            }
            (_, kind) => Err((
                RejectCode::BadMessage,
                format!("endpoint does not match the {kind:?} transport"),
            )),
        };
    match set_up {
        Ok((ring, endpoint)) => {
            let id = topic.next_id.fetch_add(1, Ordering::Relaxed);
            p.link = Some((id, ring, geometry));
            p.history = rdmabus_proto::history::HistoryRequest::from_wire(auth.history);
            p.resume_from = auth.resume_from;
            hs.welcome(
                Welcome {
                    subscriber_id: id,
                    heartbeat_ms: node.heartbeat.as_millis() as u32,
                    next_seq: topic.next_seq.load(Ordering::Relaxed),
                    epoch: topic.epoch,
                    history: topic.history,
                    endpoint,
                },
                Instant::now(),
            );
        }
        Err((code, why)) => hs.reject(code, why),
    }
}

fn shm_ring(
    p: &mut Progress,
    geometry: RingGeometry,
) -> Result<(Box<dyn RemoteRing>, PubEndpoint), (RejectCode, String)> {
    let bad = |m: String| (RejectCode::BadEndpoint, m);
    let registration = p
        .shm_registration
        .take()
        .ok_or_else(|| bad("no shm offer".into()))?;
    let mut fds = registration
        .wait(Instant::now() + HANDSHAKE_STEP)
        .map_err(|e| bad(format!("receiving the ring's memory: {e}")))?;
    if fds.len() != 1 {
        return Err(bad(format!(
            "expected 1 descriptor (the ring), got {}",
            fds.len()
        )));
    }
    let ring = fds.pop().expect("one");
    let credit = p.shm_credit.take().ok_or_else(|| bad("no credit".into()))?;
    let credit_fd = credit
        .fd()
        .try_clone_to_owned()
        .map_err(|e| bad(format!("duplicating the credit descriptor: {e}")))?;
    let ring = ShmRemoteRing::from_fds_with_credit(ring, credit, geometry)
        .map_err(|e| bad(e.to_string()))?;
    p.shm_credit_fd = Some(credit_fd);
    Ok((Box::new(ring), PubEndpoint::Shm(ShmCredit { offset: 0 })))
}

#[cfg(feature = "verbs")]
fn verbs_ring(
    node: &NodeShared,
    fs: &FramedStream,
    topic: &TopicShared,
    geometry: RingGeometry,
    ep: VerbsEndpoint,
) -> Result<(Box<dyn RemoteRing>, PubEndpoint), (RejectCode, String)> {
    let local = fs
        .local_addr()
        .map_err(|e| (RejectCode::BadEndpoint, e.to_string()))?
        .ip();
    let choice = verbs::choose(node.device.as_deref(), node.gid_index, local, &node.verbs)
        .map_err(|e| {
            (
                RejectCode::TransportUnsupported,
                format!("publisher side: {e}"),
            )
        })?;
    let mut ring = VerbsRemoteRing::new(&choice, topic.staging, geometry, ep)
        .map_err(|e| (RejectCode::BadEndpoint, e.to_string()))?;
    ring.connect()
        .map_err(|e| (RejectCode::BadEndpoint, e.to_string()))?;
    let credit = PubEndpoint::Verbs(ring.endpoint());
    Ok((Box::new(ring), credit))
}

/// Built without verbs: a verbs subscriber is told so.
#[cfg(not(feature = "verbs"))]
fn verbs_ring(
    node: &NodeShared,
    _fs: &FramedStream,
    topic: &TopicShared,
    _geometry: RingGeometry,
    _ep: VerbsEndpoint,
) -> Result<(Box<dyn RemoteRing>, PubEndpoint), (RejectCode, String)> {
    // What a verbs build would use to pick its device and register the staging ring.
    let _ = (&node.device, node.gid_index, node.verbs, topic.staging);
    Err((
        RejectCode::TransportUnsupported,
        format!("publisher side: {}", crate::transport::no_verbs()),
    ))
}

/// The subscriber is attached: hand the link to the publisher, then keep its heartbeats on
/// this thread.
fn established(node: &NodeShared, mut fs: FramedStream, mut session: Session, p: Progress) {
    let peer = fs.peer();
    let (Some(topic), Some(hello), Some(reservation), Some((id, mut ring, geometry))) =
        (p.topic, p.hello, p.reservation, p.link)
    else {
        return;
    };
    // The subscriber has mapped the credit word (it does before its first heartbeat): from
    // now on it cannot punch it out, and it must not have already.
    if let Some(fd) = &p.shm_credit_fd {
        if let Err(e) = seal_mapped(fd.as_fd(), CREDIT_FILE_LEN, "credit word") {
            let why = e.to_string();
            let bye = session.seal(&ControlMsg::Goodbye(Goodbye {
                reason: GoodbyeReason::Error,
                message: why.clone(),
                end: None,
            }));
            let _ = fs.send_raw(&bye);
            fs.shutdown();
            node.log_refusal(peer, &format!("refused subscriber: {}", why.escape_debug()));
            node.event(NodeEvent::Rejected {
                peer,
                reason: format!("{:?}: {why}", RejectCode::BadEndpoint),
            });
            return;
        }
    }
    ring.established();
    let name = if hello.client_name.is_empty() {
        format!("sub-{id}")
    } else {
        hello.client_name.clone()
    };
    let link_name = format!("{}/{name}", hello.topic);
    let state = LinkState::new();
    let link = NewLink {
        id,
        name: name.clone(),
        ring,
        geometry,
        state: state.clone(),
        counters: crate::stats_file::Counters::new(crate::stats_file::Kind::Link, id, &link_name),
        reservation,
        history: p.history,
        resume_from: p.resume_from,
    };
    {
        let mut pending = topic.pending.lock().unwrap_or_else(|p| p.into_inner());
        if topic.closed.load(Ordering::Acquire) {
            // The publisher went away during the handshake: say so at once, rather than
            // heartbeat a link nobody will ever feed.
            state.close_locally(
                rdmabus_proto::handshake::GoodbyeReason::Shutdown,
                "publisher closed the topic",
            );
            drop(pending);
            drop(link);
        } else {
            tracing::info!(topic = %topic.name, id, name = ?name, %peer, "subscriber joined");
            node.event(NodeEvent::Joined {
                topic: topic.name.clone(),
                id,
                name: name.clone(),
                peer,
            });
            pending.push(link);
            topic.has_pending.store(true, Ordering::Release);
        }
    }
    // This thread now keeps the link's heartbeats.
    let mut chan = Channel {
        stream: fs,
        session,
    };
    session::run(&mut chan, &state, node.heartbeat, &link_name);
}

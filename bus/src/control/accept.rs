//! The publisher's side of the handshake, on the connection's own thread.

use super::framed::FramedStream;
use super::node::{NewLink, NodeEvent, NodeShared, TopicShared};
use super::session::{self, LinkState};
use crate::shm::{shm_dir, ShmRemoteRing};
use crate::transport::RemoteRing;
use crate::verbs::{self, VerbsRemoteRing};
use crate::Error;
use rdmabus_proto::auth::{self, Role};
use rdmabus_proto::frame::{FrameError, PROTOCOL_VERSION};
use rdmabus_proto::handshake::*;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const HANDSHAKE_STEP: Duration = Duration::from_secs(5);

/// Why a handshake failed: what to tell the peer (if anything) and what to log.
struct Refusal {
    reply: Option<Reject>,
    reason: String,
}

impl Refusal {
    fn reject(code: RejectCode, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            reason: format!("{code:?}: {message}"),
            reply: Some(Reject::new(code, message)),
        }
    }

    fn silent(reason: impl Into<String>) -> Self {
        Self {
            reply: None,
            reason: reason.into(),
        }
    }
}

/// Serves one connection: handshake, then hands the link to the publisher and keeps heartbeats.
pub(crate) fn serve(node: Arc<NodeShared>, stream: TcpStream) {
    if node.shutdown.load(Ordering::Acquire) {
        return;
    }
    let mut fs = match FramedStream::new(stream) {
        Ok(fs) => fs,
        Err(e) => return tracing::warn!("new connection: {e}"),
    };
    let peer = fs.peer();
    match handshake(&node, &mut fs) {
        Ok((topic, link, stream_name)) => {
            let state = link.state.clone();
            node.event(NodeEvent::Joined {
                topic: topic.name.clone(),
                id: link.id,
                name: link.name.clone(),
                peer,
            });
            tracing::info!(topic = %topic.name, id = link.id, name = %link.name, %peer, "subscriber joined");
            topic
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(link);
            topic.has_pending.store(true, Ordering::Release);
            // This thread now keeps the link's heartbeats.
            session::run(&mut fs, &state, node.heartbeat, &stream_name);
        }
        Err(refusal) => {
            tracing::warn!(%peer, "refused subscriber: {}", refusal.reason);
            if let Some(reply) = refusal.reply {
                let _ = fs.send(&ControlMsg::Reject(reply));
            }
            fs.shutdown();
            node.event(NodeEvent::Rejected {
                peer,
                reason: refusal.reason,
            });
        }
    }
}

fn expect(fs: &mut FramedStream, what: &str) -> Result<ControlMsg, Refusal> {
    match fs.recv_within(HANDSHAKE_STEP, what) {
        Ok(ControlMsg::Reject(r)) => {
            Err(Refusal::silent(format!("subscriber refused the publisher ({:?}): {}", r.code, r.message)))
        }
        Ok(m) => Ok(m),
        Err(Error::Frame(FrameError::VersionMismatch { theirs, .. })) => Err(Refusal::reject(
            RejectCode::VersionMismatch,
            format!("subscriber speaks protocol version {theirs}, this publisher speaks version {PROTOCOL_VERSION}"),
        )),
        Err(Error::Frame(e)) => Err(Refusal::reject(RejectCode::BadMessage, format!("bad {what}: {e}"))),
        Err(e) => Err(Refusal::silent(format!("waiting for {what}: {e}"))),
    }
}

fn handshake(
    node: &NodeShared,
    fs: &mut FramedStream,
) -> Result<(Arc<TopicShared>, NewLink, String), Refusal> {
    let hello = match expect(fs, "Hello")? {
        ControlMsg::Hello(h) => h,
        other => {
            return Err(Refusal::reject(
                RejectCode::BadMessage,
                format!("expected Hello, got {}", other.kind()),
            ))
        }
    };
    let topic = node.topic(&hello.topic).ok_or_else(|| {
        Refusal::reject(
            RejectCode::UnknownTopic,
            format!(
                "no topic {:?} on this publisher (topics: {})",
                hello.topic,
                node.topic_names().join(", ")
            ),
        )
    })?;
    if hello.schema != topic.schema {
        return Err(Refusal::reject(
            RejectCode::SchemaMismatch,
            format!(
                "topic {:?} carries {}, the subscriber reads {}",
                topic.name, topic.schema, hello.schema
            ),
        ));
    }
    let mut server_nonce = [0u8; auth::PROOF_LEN];
    getrandom::getrandom(&mut server_nonce)
        .map_err(|e| Refusal::silent(format!("random source: {e}")))?;
    let key = node.psk.bytes();
    let proof = auth::proof(
        key,
        Role::Publisher,
        &hello.client_nonce,
        &server_nonce,
        &hello.topic,
    );
    fs.send(&ControlMsg::Challenge(Challenge {
        server_nonce,
        proof,
        slot_size: topic.slot_size,
    }))
    .map_err(|e| Refusal::silent(format!("sending Challenge: {e}")))?;

    let auth_msg = match expect(fs, "Auth")? {
        ControlMsg::Auth(a) => a,
        other => {
            return Err(Refusal::reject(
                RejectCode::BadMessage,
                format!("expected Auth, got {}", other.kind()),
            ))
        }
    };
    if !auth::verify(
        key,
        Role::Subscriber,
        &hello.client_nonce,
        &server_nonce,
        &hello.topic,
        &auth_msg.proof,
    ) {
        return Err(Refusal::reject(
            RejectCode::AuthFailed,
            "wrong pre-shared key",
        ));
    }
    let geometry = check_ring(&auth_msg.ring, topic.slot_size).map_err(|r| Refusal {
        reason: format!("{:?}: {}", r.code, r.message),
        reply: Some(r),
    })?;
    let id = topic.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut ring, endpoint): (Box<dyn RemoteRing>, PubEndpoint) =
        match (&auth_msg.endpoint, hello.transport) {
            (SubEndpoint::Shm(r), TransportKind::Shm) => {
                let dir = shm_dir();
                for p in [&r.ring_path, &r.cq_path] {
                    check_shm_path(p, &dir)
                        .map_err(|m| Refusal::reject(RejectCode::BadEndpoint, m))?;
                }
                let ring =
                    ShmRemoteRing::open(Path::new(&r.ring_path), Path::new(&r.cq_path), geometry)
                        .map_err(|e| Refusal::reject(RejectCode::BadEndpoint, e.to_string()))?;
                let credit = PubEndpoint::Shm(ShmCredit {
                    path: ring.credit_path(),
                    offset: 0,
                });
                (Box::new(ring), credit)
            }
            (SubEndpoint::Verbs(ep), TransportKind::Verbs) => {
                let local = fs
                    .local_addr()
                    .map_err(|e| Refusal::silent(e.to_string()))?
                    .ip();
                let choice =
                    verbs::choose(node.device.as_deref(), node.gid_index, local).map_err(|e| {
                        Refusal::reject(
                            RejectCode::TransportUnsupported,
                            format!("publisher side: {e}"),
                        )
                    })?;
                let mut ring = VerbsRemoteRing::new(&choice, topic.staging, geometry, *ep)
                    .map_err(|e| Refusal::reject(RejectCode::BadEndpoint, e.to_string()))?;
                ring.connect()
                    .map_err(|e| Refusal::reject(RejectCode::BadEndpoint, e.to_string()))?;
                let credit = PubEndpoint::Verbs(ring.endpoint());
                (Box::new(ring), credit)
            }
            (_, kind) => {
                return Err(Refusal::reject(
                    RejectCode::BadMessage,
                    format!("endpoint does not match the {kind:?} transport"),
                ))
            }
        };
    fs.send(&ControlMsg::Welcome(Welcome {
        subscriber_id: id,
        heartbeat_ms: node.heartbeat.as_millis() as u32,
        next_seq: topic.next_seq.load(Ordering::Relaxed),
        endpoint,
    }))
    .map_err(|e| Refusal::silent(format!("sending Welcome: {e}")))?;
    // The subscriber's first heartbeat says it mapped the credit file (shm) or connected its
    // queue pair (verbs); the shm credit file's name goes once both sides hold it.
    match expect(fs, "first Heartbeat")? {
        ControlMsg::Heartbeat(_) => {}
        other => {
            return Err(Refusal::reject(
                RejectCode::BadMessage,
                format!("expected Heartbeat, got {}", other.kind()),
            ))
        }
    }
    ring.established();
    let name = if hello.client_name.is_empty() {
        format!("sub-{id}")
    } else {
        hello.client_name.clone()
    };
    let link = NewLink {
        id,
        name: name.clone(),
        ring,
        geometry,
        state: LinkState::new(),
        counters: crate::stats_file::Counters::new(
            crate::stats_file::Kind::Link,
            id,
            &format!("{}/{name}", hello.topic),
        ),
    };
    Ok((topic, link, format!("{}/{name}", hello.topic)))
}

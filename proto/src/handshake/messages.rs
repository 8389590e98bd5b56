//! Control messages and their validation (the order they travel in: see [`super`]).

use crate::auth::{Nonce, Proof};
use crate::frame::{self, FrameError, FRAME_HEADER_LEN, MAX_FRAME_LEN};
use crate::geometry::{GeometryError, RingGeometry};
use rkyv::{rancor, util::AlignedVec, Archive, Deserialize, Serialize};

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 64;
/// Longest schema (type name) string.
pub const MAX_SCHEMA_LEN: usize = 256;
/// Longest free-text field (names, reasons).
pub const MAX_TEXT_LEN: usize = 512;
/// Longest socket name (the publisher's fd-exchange socket, in `ShmOffer`).
pub const MAX_PATH_LEN: usize = 255;

/// The transports a subscriber can ask for.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum TransportKind {
    /// Shared memory on one machine.
    Shm,
    /// RDMA verbs (RoCE, InfiniBand, Soft-RoCE).
    Verbs,
}

/// Queue-pair and memory attributes one side of a verbs connection announces.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct VerbsEndpoint {
    /// Queue pair number.
    pub qpn: u32,
    /// Initial packet sequence number.
    pub psn: u32,
    /// Port GID (RoCEv2: IPv4-mapped or IPv6 address).
    pub gid: [u8; 16],
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Path MTU in bytes.
    pub mtu: u32,
    /// Address of the remotely writable memory (ring or credit word): 0 when the region is
    /// registered zero-based, so that no virtual address travels.
    pub addr: u64,
    /// Remote key of that memory.
    pub rkey: u32,
    /// Length of that memory in bytes.
    pub len: u64,
}

/// Where the subscriber hands over its shared-memory ring (shm transport): a Unix socket of
/// the publisher, and a single-use ticket that names this handshake there.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShmOffer {
    /// Abstract Unix socket name.
    pub socket: String,
    /// Single-use ticket to present with the file descriptors.
    pub ticket: [u8; 32],
}

/// A publisher's credit word in shared memory.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShmCredit {
    /// Byte offset of the credit word in the credit memory passed over the socket.
    pub offset: u64,
}

/// Where the subscriber's ring lives.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum SubEndpoint {
    /// Sealed memory (ring and completion queue) passed over the publisher's Unix socket.
    Shm,
    /// A verbs queue pair and the registered ring.
    Verbs(VerbsEndpoint),
}

/// Where the publisher's credit word for this subscriber lives.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PubEndpoint {
    /// Sealed memory passed back over the Unix socket, and the credit word's offset in it.
    Shm(ShmCredit),
    /// A verbs queue pair and the registered credit word.
    Verbs(VerbsEndpoint),
}

/// Subscriber's opening message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// Topic asked for.
    pub topic: String,
    /// Message schema the subscriber reads (the Rust type name).
    pub schema: String,
    /// Transport asked for.
    pub transport: TransportKind,
    /// Fresh random nonce.
    pub client_nonce: Nonce,
    /// Free-form name for logs and stats.
    pub client_name: String,
}

/// Publisher's answer to `Hello`: only a nonce. Nothing that depends on the key, and nothing
/// about its topics, goes to a peer that has not proven the key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Challenge {
    /// Fresh random nonce.
    pub server_nonce: Nonce,
}

/// The subscriber's proof of the key over the transcript (Hello and Challenge, every byte).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ProofMsg {
    /// HMAC-SHA256 under the key (see [`crate::auth::subscriber_proof`]).
    pub proof: Proof,
}

/// The publisher accepted the subscription (sealed: its MAC under the session key is the
/// publisher's proof of the key).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Accept {
    /// Smallest slot size the subscriber's ring may have (the publisher's slot size).
    pub slot_size: u32,
    /// Where to hand over shared memory (shm transport only).
    pub shm: Option<ShmOffer>,
    /// The publisher's session (random per publisher; also in `Welcome`).
    pub epoch: u64,
    /// Where the session resumed a numbering (`None`: it started a new one). A reconnecting
    /// subscriber continues its stream on a resumed numbering (or the same epoch), and starts
    /// again on a new one.
    pub resumed_at: Option<u64>,
}

/// Ring geometry as it travels.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RingDescriptor {
    /// Number of slots (power of two).
    pub slots: u32,
    /// Bytes per slot, header included.
    pub slot_size: u32,
}

/// Subscriber's ring (sealed).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Auth {
    /// Geometry of the subscriber's ring.
    pub ring: RingDescriptor,
    /// Where the ring lives.
    pub endpoint: SubEndpoint,
    /// How many retained messages it wants before the live stream
    /// ([`crate::history::HistoryRequest::to_wire`]: 0 none, `u64::MAX` all).
    pub history: u64,
    /// A reconnecting subscriber continuing the stream: start at this sequence (from the
    /// history if held; what left it is announced as dropped). Overrides `history`.
    pub resume_from: Option<u64>,
}

/// The publisher accepted the subscriber.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Welcome {
    /// Identifier the publisher gave this subscriber.
    pub subscriber_id: u32,
    /// Heartbeat interval both sides keep.
    pub heartbeat_ms: u32,
    /// Sequence the publisher will publish next.
    pub next_seq: u64,
    /// The publisher's session: random, new for every publisher of the topic, so that a
    /// subscriber that reconnects knows whether it reached the same stream or a new one.
    pub epoch: u64,
    /// Messages the publisher retains for late joiners (its history depth).
    pub history: u64,
    /// Where to write credit.
    pub endpoint: PubEndpoint,
}

/// Why a handshake was refused.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum RejectCode {
    /// Peer speaks another protocol version.
    VersionMismatch,
    /// No such topic on this publisher.
    UnknownTopic,
    /// The topic carries another message type.
    SchemaMismatch,
    /// Ring geometry out of bounds.
    BadGeometry,
    /// Wrong pre-shared key.
    AuthFailed,
    /// A message that does not belong at this point, or does not decode.
    BadMessage,
    /// The transport asked for is not offered.
    TransportUnsupported,
    /// The endpoint named could not be used.
    BadEndpoint,
    /// The publisher cannot take more subscribers now.
    Unavailable,
}

/// A refusal, with a human-readable reason.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Reject {
    /// Machine-readable reason.
    pub code: RejectCode,
    /// Human-readable reason.
    pub message: String,
}

impl Reject {
    /// A refusal with `code` and `message`.
    pub fn new(code: RejectCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate(&mut message, MAX_TEXT_LEN);
        Self { code, message }
    }
}

/// Liveness signal.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// Sender's clock, ns since the Unix epoch.
    pub sent_ns: u64,
}

/// Why a side is leaving.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum GoodbyeReason {
    /// Orderly shutdown of the sender.
    Shutdown,
    /// The publisher cut a subscriber that did not keep up (policy `Disconnect`).
    SlowConsumer,
    /// The sender hit an error on this link.
    Error,
}

/// Where a publisher's stream to one subscriber ended, so the subscriber can drain exactly
/// up to it before it reports the end.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamEnd {
    /// The sequence after the last message written into this subscriber's ring (every
    /// earlier one is in the ring or on its way).
    pub first_unsent: u64,
    /// Messages skipped for this subscriber after that one (policy `Drop`): sequences
    /// `first_unsent .. first_unsent + dropped_after` are lost, and announced.
    pub dropped_after: u64,
    /// Messages written into this subscriber's ring in all: the subscriber has them all when
    /// it has taken this many.
    pub sent: u64,
}

/// Orderly close.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Goodbye {
    /// Why.
    pub reason: GoodbyeReason,
    /// Details.
    pub message: String,
    /// From a publisher: where the stream ended.
    pub end: Option<StreamEnd>,
}

/// Every control message.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ControlMsg {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Challenge`].
    Challenge(Challenge),
    /// See [`ProofMsg`].
    Proof(ProofMsg),
    /// See [`Accept`].
    Accept(Accept),
    /// See [`Auth`].
    Auth(Auth),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Reject`].
    Reject(Reject),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`Goodbye`].
    Goodbye(Goodbye),
}

impl ControlMsg {
    /// Short name of the message kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Challenge(_) => "Challenge",
            Self::Proof(_) => "Proof",
            Self::Accept(_) => "Accept",
            Self::Auth(_) => "Auth",
            Self::Welcome(_) => "Welcome",
            Self::Reject(_) => "Reject",
            Self::Heartbeat(_) => "Heartbeat",
            Self::Goodbye(_) => "Goodbye",
        }
    }

    /// Encodes a whole unsealed frame (header and payload) in this build's protocol version.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_version(frame::PROTOCOL_VERSION)
    }

    /// Encodes a whole unsealed frame claiming `version` (for answering, or testing, other
    /// versions).
    pub fn encode_with_version(&self, version: u16) -> Vec<u8> {
        let payload = self.payload();
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        out.extend_from_slice(&frame::encode_header_with_version(
            payload.len() as u32,
            version,
        ));
        out.extend_from_slice(&payload);
        out
    }

    /// The message's archive bytes (a frame's payload, without header or tag).
    pub fn payload(&self) -> Vec<u8> {
        let payload =
            rkyv::to_bytes::<rancor::Error>(self).expect("control messages always serialize");
        assert!(
            payload.len() + crate::auth::PROOF_LEN <= MAX_FRAME_LEN as usize,
            "control message larger than a frame"
        );
        payload.to_vec()
    }

    /// Validates and decodes a frame payload, then checks every field's bounds.
    pub fn decode(payload: &[u8]) -> Result<Self, FrameError> {
        let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let mut msg = rkyv::from_bytes::<Self, rancor::Error>(&aligned)
            .map_err(|e| FrameError::Invalid(e.to_string()))?;
        msg.check_bounds().map_err(FrameError::Invalid)?;
        msg.escape_text();
        Ok(msg)
    }

    /// Escapes control characters (ANSI escapes, newlines, ...) in the free text a peer sent,
    /// so that it cannot rewrite a terminal or forge log lines wherever it is shown.
    fn escape_text(&mut self) {
        match self {
            Self::Hello(h) => {
                escape_controls(&mut h.schema);
                escape_controls(&mut h.client_name);
            }
            Self::Reject(r) => escape_controls(&mut r.message),
            Self::Goodbye(g) => escape_controls(&mut g.message),
            _ => {}
        }
    }

    fn check_bounds(&self) -> Result<(), String> {
        let text = |name: &str, s: &str, max: usize| {
            if s.len() > max {
                Err(format!("{name} is {} bytes, the limit is {max}", s.len()))
            } else {
                Ok(())
            }
        };
        match self {
            Self::Hello(h) => {
                check_topic(&h.topic)?;
                text("schema", &h.schema, MAX_SCHEMA_LEN)?;
                text("client name", &h.client_name, MAX_TEXT_LEN)
            }
            Self::Accept(a) => match &a.shm {
                Some(o) => text("socket name", &o.socket, MAX_PATH_LEN),
                None => Ok(()),
            },
            Self::Reject(r) => text("reject message", &r.message, MAX_TEXT_LEN),
            Self::Goodbye(g) => text("goodbye message", &g.message, MAX_TEXT_LEN),
            Self::Auth(_)
            | Self::Welcome(_)
            | Self::Challenge(_)
            | Self::Proof(_)
            | Self::Heartbeat(_) => Ok(()),
        }
    }
}

/// Checks a topic name: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic name must be 1 to {MAX_TOPIC_LEN} bytes, got {}",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {topic:?} has character {c:?}; use A-Z a-z 0-9 . _ -"
        ));
    }
    Ok(())
}

/// Checks the geometry a subscriber announced against the publisher's slot size.
pub fn check_ring(ring: &RingDescriptor, min_slot_size: u32) -> Result<RingGeometry, Reject> {
    let g = RingGeometry::new(ring.slots, ring.slot_size)
        .map_err(|e: GeometryError| Reject::new(RejectCode::BadGeometry, e.to_string()))?;
    if g.slot_size() < min_slot_size {
        return Err(Reject::new(
            RejectCode::BadGeometry,
            format!(
                "slot size {} is smaller than the publisher's slot size {min_slot_size}",
                g.slot_size()
            ),
        ));
    }
    Ok(g)
}

/// Replaces every control character of `s` by its Rust escape (`\u{1b}`, `\n`, ...).
pub fn escape_controls(s: &mut String) {
    if s.chars().any(char::is_control) {
        let mut out = String::with_capacity(s.len() + 8);
        for c in s.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        *s = out;
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_header;
    use proptest::prelude::*;

    fn hello() -> ControlMsg {
        ControlMsg::Hello(Hello {
            topic: "md.quotes".into(),
            schema: "rdmabus_proto::market::Quote".into(),
            transport: TransportKind::Shm,
            client_nonce: [7; 32],
            client_name: "test".into(),
        })
    }

    fn roundtrip(msg: &ControlMsg) -> ControlMsg {
        let bytes = msg.encode();
        let h = decode_header(bytes[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.len as usize, bytes.len() - FRAME_HEADER_LEN);
        ControlMsg::decode(&bytes[FRAME_HEADER_LEN..]).unwrap()
    }

    #[test]
    fn every_message_roundtrips() {
        let verbs = VerbsEndpoint {
            qpn: 1,
            psn: 2,
            gid: [3; 16],
            lid: 0,
            mtu: 1024,
            addr: 5,
            rkey: 6,
            len: 7,
        };
        let msgs = [
            hello(),
            ControlMsg::Challenge(Challenge {
                server_nonce: [1; 32],
            }),
            ControlMsg::Proof(ProofMsg { proof: [2; 32] }),
            ControlMsg::Accept(Accept {
                slot_size: 128,
                shm: Some(ShmOffer {
                    socket: "rdmabus/1/abc".into(),
                    ticket: [4; 32],
                }),
                epoch: u64::MAX,
                resumed_at: Some(7),
            }),
            ControlMsg::Accept(Accept {
                slot_size: 128,
                shm: None,
                epoch: 9,
                resumed_at: None,
            }),
            ControlMsg::Auth(Auth {
                ring: RingDescriptor {
                    slots: 64,
                    slot_size: 128,
                },
                endpoint: SubEndpoint::Shm,
                history: 0,
                resume_from: None,
            }),
            ControlMsg::Auth(Auth {
                ring: RingDescriptor {
                    slots: 64,
                    slot_size: 128,
                },
                endpoint: SubEndpoint::Verbs(verbs),
                history: 0,
                resume_from: None,
            }),
            ControlMsg::Welcome(Welcome {
                subscriber_id: 9,
                heartbeat_ms: 100,
                next_seq: u64::MAX,
                epoch: 9,
                history: 0,
                endpoint: PubEndpoint::Shm(ShmCredit { offset: 64 }),
            }),
            ControlMsg::Reject(Reject::new(RejectCode::AuthFailed, "nope")),
            ControlMsg::Heartbeat(Heartbeat { sent_ns: 1 }),
            ControlMsg::Goodbye(Goodbye {
                reason: GoodbyeReason::SlowConsumer,
                message: "slow".into(),
                end: Some(StreamEnd {
                    first_unsent: 5,
                    dropped_after: 2,
                    sent: 5,
                }),
            }),
        ];
        for m in &msgs {
            assert_eq!(&roundtrip(m), m);
        }
    }

    #[test]
    fn control_characters_a_peer_sends_arrive_escaped() {
        let rogue = "\u{1b}[2J\u{1b}[31mforged\nINFO all good\r\u{7}";
        let msgs = [
            ControlMsg::Reject(Reject::new(RejectCode::BadMessage, rogue)),
            ControlMsg::Goodbye(Goodbye {
                reason: GoodbyeReason::Error,
                message: rogue.into(),
                end: None,
            }),
        ];
        for m in msgs {
            let bytes = m.encode();
            let got = ControlMsg::decode(&bytes[FRAME_HEADER_LEN..]).unwrap();
            let text = match &got {
                ControlMsg::Reject(r) => &r.message,
                ControlMsg::Goodbye(g) => &g.message,
                _ => unreachable!(),
            };
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert_eq!(text, "\\u{1b}[2J\\u{1b}[31mforged\\nINFO all good\\r\\u{7}");
        }
        let mut m = hello();
        if let ControlMsg::Hello(h) = &mut m {
            h.client_name = "sub\u{1b}]0;pwned\u{7}".into();
        }
        let bytes = m.encode();
        match ControlMsg::decode(&bytes[FRAME_HEADER_LEN..]).unwrap() {
            ControlMsg::Hello(h) => assert_eq!(h.client_name, "sub\\u{1b}]0;pwned\\u{7}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_of_bounds_fields_are_refused() {
        let mut m = hello();
        if let ControlMsg::Hello(h) = &mut m {
            h.topic = "bad topic!".into();
        }
        let bytes = m.encode();
        let err = ControlMsg::decode(&bytes[FRAME_HEADER_LEN..]).unwrap_err();
        assert!(err.to_string().contains("topic name"), "{err}");
        assert!(check_topic(&"x".repeat(65)).is_err());
        assert_eq!(
            check_ring(
                &RingDescriptor {
                    slots: 3,
                    slot_size: 128
                },
                64
            )
            .unwrap_err()
            .code,
            RejectCode::BadGeometry
        );
        assert_eq!(
            check_ring(
                &RingDescriptor {
                    slots: 4,
                    slot_size: 64
                },
                128
            )
            .unwrap_err()
            .code,
            RejectCode::BadGeometry
        );
        assert!(check_ring(
            &RingDescriptor {
                slots: 4,
                slot_size: 128
            },
            128
        )
        .is_ok());
    }

    proptest! {
        /// Arbitrary bytes, or a valid message with bytes flipped, never panic the decoder.
        #[test]
        fn garbage_payload_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ControlMsg::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(idx in any::<prop::sample::Index>(), val in any::<u8>()) {
            let frame = hello().encode();
            let mut payload = frame[FRAME_HEADER_LEN..].to_vec();
            let i = idx.index(payload.len());
            payload[i] = val;
            if let Ok(m) = ControlMsg::decode(&payload) {
                prop_assert!(m.check_bounds().is_ok());
            }
        }
    }
}

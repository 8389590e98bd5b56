//! Keys and the cryptography of the handshake: full-entropy pre-shared keys in a versioned
//! text form, the subscriber's proof over the transcript, and the per-direction session keys
//! that authenticate every later control frame.
//!
//! Only full-entropy keys are accepted (32 random bytes, made by `rdmabus keygen`): the side
//! that proves first necessarily hands its proof to a peer that may be an impostor, and with a
//! guessable key (a passphrase) that proof would allow an offline dictionary attack.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of nonces, proofs, keys and MAC tags.
pub const PROOF_LEN: usize = 32;
/// Length of a pre-shared key in bytes.
pub const KEY_LEN: usize = 32;
/// The prefix of a key's text form.
pub const KEY_TEXT_PREFIX: &str = "rdmabus-psk-v1:";

/// A random per-handshake value.
pub type Nonce = [u8; PROOF_LEN];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; PROOF_LEN];
/// A SHA-256 digest of the handshake transcript.
pub type TranscriptHash = [u8; 32];

/// Which side computes the proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that accepts connections and owns the topic.
    Publisher,
    /// The side that connects.
    Subscriber,
}

/// Why a key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not of the form `rdmabus-psk-v1:<64 hex digits>`.
    NotAKey(String),
    /// A key of another text-form version.
    Version(String),
    /// The bytes are obviously not random (all equal).
    Degenerate,
    /// Raw bytes of the wrong length.
    Length(usize),
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotAKey(what) => write!(
                f,
                "{what} is not an rdmabus key: expected {KEY_TEXT_PREFIX}<64 hex digits>, as \
                 `rdmabus keygen FILE` writes it. Passphrases are refused: a peer that sees one \
                 handshake could guess them offline"
            ),
            Self::Version(v) => write!(
                f,
                "key of text form {v:?}: this build reads {KEY_TEXT_PREFIX}<64 hex digits>"
            ),
            Self::Degenerate => write!(
                f,
                "the key's bytes are all equal: not a random key (make one with `rdmabus keygen`)"
            ),
            Self::Length(n) => write!(f, "a key is {KEY_LEN} random bytes, got {n}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Checks raw key bytes: exactly 32, not all equal.
pub fn check_key(key: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    let k: [u8; KEY_LEN] = key.try_into().map_err(|_| KeyError::Length(key.len()))?;
    if k.iter().all(|&b| b == k[0]) {
        return Err(KeyError::Degenerate);
    }
    Ok(k)
}

/// Parses a key's text form (surrounding whitespace, such as a trailing newline, is ignored).
pub fn parse_key_text(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let t = text.trim();
    let Some(hex) = t.strip_prefix(KEY_TEXT_PREFIX) else {
        if let Some((v, _)) = t.split_once(':') {
            if v.starts_with("rdmabus-psk-") && v.len() < 32 {
                return Err(KeyError::Version(v.to_string()));
            }
        }
        return Err(KeyError::NotAKey(format!("a text of {} bytes", t.len())));
    };
    if hex.len() != 2 * KEY_LEN || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(KeyError::NotAKey(format!(
            "{KEY_TEXT_PREFIX} followed by {} characters",
            hex.len()
        )));
    }
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    check_key(&k)
}

/// A key's text form: `rdmabus-psk-v1:` and 64 lowercase hex digits.
pub fn key_text(key: &[u8; KEY_LEN]) -> String {
    let mut s = String::with_capacity(KEY_TEXT_PREFIX.len() + 2 * KEY_LEN);
    s.push_str(KEY_TEXT_PREFIX);
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// A running SHA-256 over the handshake frames, as they were sent, in order.
#[derive(Clone)]
pub struct Transcript(Sha256);

impl Default for Transcript {
    fn default() -> Self {
        let mut h = Sha256::new();
        h.update(b"rdmabus/2 transcript");
        Self(h)
    }
}

impl Transcript {
    /// Adds one whole frame (header and payload).
    pub fn add(&mut self, frame: &[u8]) {
        self.0.update((frame.len() as u32).to_le_bytes());
        self.0.update(frame);
    }

    /// The hash so far.
    pub fn hash(&self) -> TranscriptHash {
        self.0.clone().finalize().into()
    }
}

/// The subscriber's proof of the key over the transcript `th` (Hello and Challenge).
pub fn subscriber_proof(key: &[u8; KEY_LEN], th: &TranscriptHash) -> Proof {
    let mut m = hmac(key);
    m.update(b"rdmabus/2 subscriber proof");
    m.update(th);
    m.finalize().into_bytes().into()
}

/// Whether `got` is the subscriber's proof over `th` (constant-time comparison).
pub fn verify_subscriber_proof(key: &[u8; KEY_LEN], th: &TranscriptHash, got: &Proof) -> bool {
    let mut m = hmac(key);
    m.update(b"rdmabus/2 subscriber proof");
    m.update(th);
    m.verify_slice(got).is_ok()
}

/// The two keys of a session: one per direction.
#[derive(Clone)]
pub struct SessionKeys {
    /// Authenticates frames from the subscriber to the publisher.
    pub to_publisher: [u8; 32],
    /// Authenticates frames from the publisher to the subscriber.
    pub to_subscriber: [u8; 32],
}

impl SessionKeys {
    /// Derives the session keys from the key and the transcript up to and including the
    /// subscriber's proof.
    pub fn derive(key: &[u8; KEY_LEN], th: &TranscriptHash) -> Self {
        let one = |label: &[u8]| -> [u8; 32] {
            let mut m = hmac(key);
            m.update(label);
            m.update(th);
            m.finalize().into_bytes().into()
        };
        Self {
            to_publisher: one(b"rdmabus/2 session key subscriber->publisher"),
            to_subscriber: one(b"rdmabus/2 session key publisher->subscriber"),
        }
    }

    /// (key for frames this role sends, key for frames it receives).
    pub fn for_role(&self, role: Role) -> ([u8; 32], [u8; 32]) {
        match role {
            Role::Subscriber => (self.to_publisher, self.to_subscriber),
            Role::Publisher => (self.to_subscriber, self.to_publisher),
        }
    }
}

/// The MAC tag of one sealed frame: the direction's key over its counter, header and body.
pub fn frame_tag(key: &[u8; 32], counter: u64, header: &[u8], body: &[u8]) -> Proof {
    let mut m = hmac(key);
    m.update(&counter.to_le_bytes());
    m.update(header);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Whether `tag` authenticates the frame (constant-time comparison).
pub fn verify_frame_tag(
    key: &[u8; 32],
    counter: u64,
    header: &[u8],
    body: &[u8],
    tag: &[u8],
) -> bool {
    let mut m = hmac(key);
    m.update(&counter.to_le_bytes());
    m.update(header);
    m.update(body);
    m.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
        26, 27, 28, 29, 30, 31, 32,
    ];

    #[test]
    fn key_text_roundtrips_and_passphrases_are_refused() {
        let t = key_text(&K);
        assert!(t.starts_with(KEY_TEXT_PREFIX) && t.len() == 15 + 64);
        assert_eq!(parse_key_text(&format!("{t}\n")).unwrap(), K);
        assert!(matches!(
            parse_key_text("correct horse battery staple"),
            Err(KeyError::NotAKey(_))
        ));
        assert!(matches!(
            parse_key_text(&format!("{KEY_TEXT_PREFIX}abcd")),
            Err(KeyError::NotAKey(_))
        ));
        assert!(matches!(
            parse_key_text(&format!("rdmabus-psk-v9:{}", "ab".repeat(32))),
            Err(KeyError::Version(_))
        ));
        assert_eq!(
            parse_key_text(&format!("{KEY_TEXT_PREFIX}{}", "00".repeat(32))),
            Err(KeyError::Degenerate)
        );
        assert_eq!(check_key(&[1; 16]), Err(KeyError::Length(16)));
        let msg = parse_key_text("hunter2hunter2hunter2")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("rdmabus keygen") && msg.contains("offline"),
            "{msg}"
        );
    }

    #[test]
    fn proofs_and_tags_bind_key_transcript_direction_counter() {
        let mut t = Transcript::default();
        t.add(b"hello");
        t.add(b"challenge");
        let th = t.hash();
        let p = subscriber_proof(&K, &th);
        assert!(verify_subscriber_proof(&K, &th, &p));
        let mut k2 = K;
        k2[0] ^= 1;
        assert!(!verify_subscriber_proof(&k2, &th, &p));
        let mut t2 = Transcript::default();
        t2.add(b"hello");
        t2.add(b"challengf");
        assert!(!verify_subscriber_proof(&K, &t2.hash(), &p));
        // Frame boundaries are part of the transcript.
        let mut t3 = Transcript::default();
        t3.add(b"hellochallenge");
        assert_ne!(t3.hash(), th);

        let keys = SessionKeys::derive(&K, &th);
        assert_ne!(keys.to_publisher, keys.to_subscriber);
        let (send, recv) = keys.for_role(Role::Subscriber);
        assert_eq!(keys.for_role(Role::Publisher), (recv, send));
        let tag = frame_tag(&send, 7, b"hdr", b"body");
        assert!(verify_frame_tag(&send, 7, b"hdr", b"body", &tag));
        assert!(!verify_frame_tag(&send, 8, b"hdr", b"body", &tag));
        assert!(!verify_frame_tag(&recv, 7, b"hdr", b"body", &tag));
        assert!(!verify_frame_tag(&send, 7, b"hdr", b"bodY", &tag));
        assert!(!verify_frame_tag(&send, 7, b"hdr", b"body", &tag[..31]));
    }
}

//! Pre-shared-key challenge/response: each side proves it holds the key with an HMAC-SHA256
//! over both nonces and the topic, under a label that differs per direction.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of nonces and proofs.
pub const PROOF_LEN: usize = 32;
/// Shortest pre-shared key accepted.
pub const MIN_KEY_LEN: usize = 16;
/// Longest pre-shared key accepted.
pub const MAX_KEY_LEN: usize = 1024;

/// A random per-handshake value.
pub type Nonce = [u8; PROOF_LEN];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; PROOF_LEN];

/// Which side computes the proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that accepts connections and owns the topic.
    Publisher,
    /// The side that connects.
    Subscriber,
}

/// Why a key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLengthError(pub usize);

impl core::fmt::Display for KeyLengthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "pre-shared key of {} bytes: it must be {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes",
            self.0
        )
    }
}

impl std::error::Error for KeyLengthError {}

/// Checks a key's length.
pub fn check_key(key: &[u8]) -> Result<(), KeyLengthError> {
    if (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
        Ok(())
    } else {
        Err(KeyLengthError(key.len()))
    }
}

fn mac(key: &[u8], role: Role, client: &Nonce, server: &Nonce, topic: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(match role {
        Role::Publisher => b"rdmabus/1 publisher proof\0",
        Role::Subscriber => b"rdmabus/1 subscriber proof",
    });
    m.update(client);
    m.update(server);
    m.update(&(topic.len() as u32).to_le_bytes());
    m.update(topic.as_bytes());
    m
}

/// The proof `role` sends for this handshake.
pub fn proof(key: &[u8], role: Role, client: &Nonce, server: &Nonce, topic: &str) -> Proof {
    mac(key, role, client, server, topic)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `got` is the proof `role` should have sent (constant-time comparison).
pub fn verify(
    key: &[u8],
    role: Role,
    client: &Nonce,
    server: &Nonce,
    topic: &str,
    got: &Proof,
) -> bool {
    mac(key, role, client, server, topic)
        .verify_slice(got)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_key_role_nonces_topic() {
        let key = b"0123456789abcdef";
        let (c, s) = ([1u8; 32], [2u8; 32]);
        let p = proof(key, Role::Subscriber, &c, &s, "q");
        assert!(verify(key, Role::Subscriber, &c, &s, "q", &p));
        assert!(!verify(key, Role::Publisher, &c, &s, "q", &p));
        assert!(!verify(
            b"0123456789abcdeF",
            Role::Subscriber,
            &c,
            &s,
            "q",
            &p
        ));
        assert!(!verify(key, Role::Subscriber, &s, &c, "q", &p));
        assert!(!verify(key, Role::Subscriber, &c, &s, "t", &p));
        assert!(check_key(b"short").is_err());
        assert!(check_key(key).is_ok());
    }
}

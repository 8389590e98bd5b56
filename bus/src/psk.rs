//! The pre-shared key that authenticates subscribers and publishers to each other: 32 random
//! bytes, written as `rdmabus-psk-v1:<64 hex digits>` (`rdmabus keygen` makes one).
//! Passphrases are refused: a peer that saw one handshake could guess them offline.

use crate::Error;
use rdmabus_proto::auth::{self, KEY_LEN};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Environment variable read by [`Psk::from_env_default`].
pub const PSK_ENV: &str = "RDMABUS_PSK";

/// A full-entropy pre-shared key. Cheap to clone; its bytes are never printed.
#[derive(Clone)]
pub struct Psk(Arc<[u8; KEY_LEN]>);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// A key from 32 raw random bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self, Error> {
        let k = auth::check_key(key).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self(Arc::new(k)))
    }

    /// A key from its text form `rdmabus-psk-v1:<64 hex digits>` (surrounding whitespace is
    /// ignored).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let k = auth::parse_key_text(text).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self(Arc::new(k)))
    }

    /// The key from environment variable `var`, in its text form.
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let v = std::env::var(var).map_err(|_| {
            Error::Config(format!(
                "no pre-shared key: environment variable {var} is not set (make a key with \
                 `rdmabus keygen FILE` and pass --key-file FILE, or put its contents in {var})"
            ))
        })?;
        Self::parse(&v).map_err(|e| in_context(e, var))
    }

    /// The key from `RDMABUS_PSK`.
    pub fn from_env_default() -> Result<Self, Error> {
        Self::from_env(PSK_ENV)
    }

    /// The key from a file written by `rdmabus keygen`. Warns if others can read it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
            }
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::Config(format!(
                "{}: {}",
                path.display(),
                auth::KeyError::NotAKey("binary data".into())
            ))
        })?;
        Self::parse(text).map_err(|e| in_context(e, &path.display().to_string()))
    }

    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = [0u8; KEY_LEN];
        getrandom::getrandom(&mut k).expect("OS random source");
        Self(Arc::new(k))
    }

    /// Writes a fresh random key to a new file `path` (mode 0600; an existing file or a
    /// symlink there is an error, never overwritten) and returns it.
    pub fn generate_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let key = Self::random();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| Error::io(format!("creating key file {}", path.display()), e))?;
        f.write_all(format!("{}\n", key.to_text()).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))?;
        Ok(key)
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's text form (to hand it to a child process's environment, or a file).
    pub fn to_text(&self) -> String {
        auth::key_text(&self.0)
    }
}

/// A configuration error that says where the key came from.
fn in_context(e: Error, source: &str) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{source}: {m}")),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_refusals() {
        let k = Psk::random();
        assert_eq!(Psk::parse(&k.to_text()).unwrap().bytes(), k.bytes());
        let e = Psk::parse("process-test-key-0123456789abcdef")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rdmabus keygen"), "{e}");
        assert!(Psk::from_bytes(&[7; 32]).is_err());
        assert!(Psk::from_bytes(b"short").is_err());
        assert_eq!(format!("{k:?}"), "Psk(..)");
    }

    #[test]
    fn generate_file_refuses_to_overwrite_and_follow() {
        let dir = std::env::temp_dir().join(format!("rdmabus-keygen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let k = Psk::generate_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        assert_eq!(Psk::from_file(&path).unwrap().bytes(), k.bytes());
        assert!(Psk::generate_file(&path).is_err(), "overwrote a key");
        assert_eq!(Psk::from_file(&path).unwrap().bytes(), k.bytes());
        let target = dir.join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Psk::generate_file(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

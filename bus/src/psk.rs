//! The pre-shared key that authenticates subscribers (and publishers, to them).

use crate::Error;
use rdmabus_proto::auth::check_key;
use std::sync::Arc;

/// Environment variable read by [`Psk::from_env_default`].
pub const PSK_ENV: &str = "RDMABUS_PSK";

/// A pre-shared key, 16 to 1024 bytes. Cheap to clone.
#[derive(Clone)]
pub struct Psk(Arc<[u8]>);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

impl Psk {
    /// A key from raw bytes.
    pub fn new(key: Vec<u8>) -> Result<Self, Error> {
        check_key(&key).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self(key.into()))
    }

    /// The key from environment variable `var` (its bytes, as given).
    pub fn from_env(var: &str) -> Result<Self, Error> {
        let v = std::env::var_os(var).ok_or_else(|| {
            Error::Config(format!(
                "no pre-shared key: environment variable {var} is not set"
            ))
        })?;
        Self::new(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
            .map_err(|e| Error::Config(format!("{var}: {e}")))
    }

    /// The key from `RDMABUS_PSK`.
    pub fn from_env_default() -> Result<Self, Error> {
        Self::from_env(PSK_ENV)
    }

    /// The key from a file (one trailing newline is ignored). Warns if others can read it.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let mut key = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?;
        if key.last() == Some(&b'\n') {
            key.pop();
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by group or others; chmod 600 it");
            }
        }
        Self::new(key).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// A fresh random key of 64 hex characters (printable, so it can go in an environment
    /// variable; for demos and tests).
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        getrandom::getrandom(&mut k).expect("OS random source");
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        Self(hex.into_bytes().into())
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as text, when it is UTF-8 (to hand it to a child process's environment).
    pub fn as_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

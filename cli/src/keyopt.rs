//! The `--key-file` option shared by the commands.

use rdmabus::{Error, Psk};
use std::path::PathBuf;

/// Where the pre-shared key comes from.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KeyArgs {
    /// File holding the pre-shared key (default: the RDMABUS_PSK environment variable).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the key. A key that cannot be read is bad configuration, like a bad one.
    pub fn load(&self) -> Result<Psk, Error> {
        match &self.key_file {
            Some(f) => Psk::from_file(f).map_err(|e| match e {
                Error::Io { .. } => Error::Config(e.to_string()),
                e => e,
            }),
            None => Psk::from_env_default().map_err(|e| {
                let e = match e {
                    Error::Config(m) => m,
                    e => e.to_string(),
                };
                Error::Config(format!("{e} (or pass --key-file FILE)"))
            }),
        }
    }
}

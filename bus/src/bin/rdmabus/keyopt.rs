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
    /// Loads the key.
    pub fn load(&self) -> Result<Psk, Error> {
        match &self.key_file {
            Some(f) => Psk::from_file(f),
            None => Psk::from_env_default()
                .map_err(|e| Error::Config(format!("{e} (or pass --key-file FILE)"))),
        }
    }
}

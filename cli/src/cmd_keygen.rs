//! `rdmabus keygen`: writes a fresh pre-shared key.

use rdmabus::{Error, Psk};
use std::path::PathBuf;

/// Arguments of `rdmabus keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The new key file: created with mode 0600; an existing file (or a symlink) there is
    /// never overwritten.
    pub path: PathBuf,
}

/// Writes 32 random bytes as `rdmabus-psk-v1:<64 hex digits>` to a new file.
pub fn run(a: KeygenArgs) -> Result<(), Error> {
    Psk::generate_file(&a.path)?;
    eprintln!(
        "rdmabus: wrote a new key to {} (mode 0600). Give the same file to the publisher and \
         its subscribers with --key-file, or its contents in RDMABUS_PSK.",
        a.path.display()
    );
    Ok(())
}

//! A shared-memory file mapped read-write.

use crate::Error;
use memmap2::MmapMut;
use rdmabus_proto::handshake::SHM_PREFIX;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Environment variable that overrides the shared-memory directory.
pub const SHM_DIR_ENV: &str = "RDMABUS_SHM_DIR";

/// The directory shared-memory files live in.
pub fn shm_dir() -> String {
    std::env::var(SHM_DIR_ENV).unwrap_or_else(|_| "/dev/shm".to_string())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A mapped shared-memory file. The mapping stays valid after the file is unlinked.
pub struct ShmRegion {
    map: MmapMut,
    path: PathBuf,
    linked: bool,
}

impl ShmRegion {
    /// Creates a new zeroed file `rdmabus-<pid>-<n>-<kind>` of `len` bytes (mode 0600) and maps it.
    pub fn create(kind: &str, len: usize) -> Result<Self, Error> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "{}/{SHM_PREFIX}{}-{n}-{kind}",
            shm_dir(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.set_len(len as u64)
            .map_err(|e| Error::io(format!("sizing {} to {len} bytes", path.display()), e))?;
        // SAFETY: the file was just created by us with O_EXCL and mode 0600; only the peer we
        // hand the path to maps it, and all access to the mapping goes through raw pointers
        // and atomics that tolerate concurrent writes by that peer.
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        Ok(Self {
            map,
            path,
            linked: true,
        })
    }

    /// Maps an existing file that must be exactly `len` bytes long.
    pub fn open(path: &Path, len: usize) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let actual = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        if actual != len as u64 {
            return Err(Error::Protocol(format!(
                "{} is {actual} bytes, expected {len}",
                path.display()
            )));
        }
        // SAFETY: the length was checked; the peer that created the file may write to it
        // concurrently, which all access through this mapping tolerates (raw pointers, atomics).
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        Ok(Self {
            map,
            path: path.to_path_buf(),
            linked: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string (paths we create are always UTF-8).
    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Removes the file name; the mapping lives on.
    pub fn unlink(&mut self) {
        if self.linked {
            let _ = std::fs::remove_file(&self.path);
            self.linked = false;
        }
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The `u64` word at `offset` as an atomic (offset must be 8-aligned and in bounds).
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= self.len(),
            "atomic word out of bounds"
        );
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); AtomicU64 has the
        // layout of u64 and every access to this word, from either process, is atomic.
        unsafe { &*(self.as_ptr().add(offset) as *const AtomicU64) }
    }
}

impl Drop for ShmRegion {
    fn drop(&mut self) {
        self.unlink();
    }
}

// SAFETY: the mapping is plain memory; concurrent access goes through atomics or is ordered
// by the protocol (credit), and the struct owns the mapping.
unsafe impl Send for ShmRegion {}

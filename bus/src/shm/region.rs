//! Shared memory mapped read-write: a sealed memfd, passed between processes as a file
//! descriptor. Nothing is ever created under a path: a memfd has no name in any directory, so
//! nothing is left behind when a process dies, and nobody can plant or swap one.
//!
//! The mapping is a [`MmapRaw`]: every access goes through a pointer with write provenance
//! (or an atomic); no `&[u8]` to memory a peer can write is ever formed here.

use crate::Error;
use memmap2::{MmapOptions, MmapRaw};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;

/// Environment variable that overrides the shared-memory directory.
pub const SHM_DIR_ENV: &str = "RDMABUS_SHM_DIR";

/// The directory the stats files live in (rings, queues and credit words are memfds, in no
/// directory).
pub fn shm_dir() -> String {
    std::env::var(SHM_DIR_ENV).unwrap_or_else(|_| "/dev/shm".to_string())
}

/// The seals every memfd we create carries: its size can never change. Its seals stay open so
/// that the peer, once it has mapped it, can add [`PEER_SEALS`].
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// The seals the side that maps a peer's memfd adds once mapped: no new writable mapping, no
/// `write(2)`, and above all no hole punching (`fallocate(PUNCH_HOLE)`, `MADV_REMOVE`), which
/// F_SEAL_SHRINK does not prevent; then no more seals. Mappings that already exist (ours, and
/// the creator's) stay writable.
///
/// A punched-out page is allocated anew when touched, by whoever touches it: the mapping side
/// would pay for the peer's memory (charged to its memory cgroup, without bound as the peer
/// keeps the memfd and punches again), and a failed allocation at that fault (strict
/// overcommit at its limit, a full memory cgroup) is a SIGBUS or an OOM kill of the side that
/// did nothing wrong.
const PEER_SEALS: libc::c_int = libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;

/// A mapped memfd, and the descriptor to pass to the peer.
pub struct ShmRegion {
    map: MmapRaw,
    fd: OwnedFd,
}

/// Reserves the whole of `len` bytes of `fd` (tmpfs pages are allocated now, so a lack of
/// memory is an error here and never a SIGBUS on first touch). Reserved pages still read as
/// holes to `SEEK_HOLE` until first written: see [`populate`].
pub(crate) fn reserve(fd: BorrowedFd<'_>, len: usize, what: &str) -> Result<(), Error> {
    let off_len = libc::off_t::try_from(len)
        .map_err(|_| Error::Config(format!("{what}: {len} bytes is too large")))?;
    loop {
        // SAFETY: fallocate on a descriptor we hold; no memory is passed.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, off_len) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(
                format!("reserving {len} bytes of shared memory for {what}"),
                e,
            ));
        }
    }
}

fn fstat(fd: BorrowedFd<'_>, what: &str) -> Result<libc::stat, Error> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat` the kernel fills in.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::io(
            format!("fstat of the {what} descriptor"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(st)
}

/// Writes every page of the mapping once (their contents stay zero), so that each is up to
/// date and reads as data to `SEEK_HOLE`: what [`seal_mapped`] checks on the other side.
fn populate(map: &MmapRaw, what: &str) -> Result<(), Error> {
    // SAFETY: madvise on our own live mapping of `map.len()` bytes; no memory is passed.
    let r = unsafe {
        libc::madvise(
            map.as_mut_ptr().cast(),
            map.len(),
            libc::MADV_POPULATE_WRITE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(Error::io(format!("populating {what}"), e));
    }
    // Before Linux 5.14: one write a page (pages are reserved, so no fault can fail).
    let page = page_size();
    for off in (0..map.len()).step_by(page) {
        // SAFETY: off < len, inside our writable mapping; the byte is 0 (reserved pages read
        // as zero) and nobody else writes this memory before we hand it over.
        unsafe { map.as_mut_ptr().add(off).write_volatile(0) };
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}

/// Seals a memfd that is now mapped on both sides against hole punching and new writable
/// mappings ([`PEER_SEALS`]), unless that is done already, then checks that every byte of its
/// `len` is backed by memory (no page left out or punched out before the seal). From then on
/// no access to the mapping can fault for want of memory its creator did not pay for.
///
/// The side that maps a peer's memfd calls this ([`ShmRegion::from_peer_fd`] does); the
/// publisher calls it for its own credit word once the subscriber has mapped it.
pub fn seal_mapped(fd: BorrowedFd<'_>, len: usize, what: &str) -> Result<(), Error> {
    // SAFETY: F_GET_SEALS on a descriptor we hold; no memory is passed.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(Error::Protocol(format!(
            "{what} descriptor is not a sealable memfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    if seals & libc::F_SEAL_FUTURE_WRITE == 0 {
        // SAFETY: F_ADD_SEALS on a descriptor we hold; no memory is passed.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, PEER_SEALS) } != 0 {
            return Err(Error::Protocol(format!(
                "{what} memfd cannot be sealed against hole punching (F_SEAL_FUTURE_WRITE; \
                 its seals were sealed before): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    // Sealed: no hole can appear from now on. Is there one already?
    // SAFETY: lseek on a descriptor we hold (its offset is used by nobody).
    let hole = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(Error::io(
            format!("looking for holes in the {what} memfd"),
            std::io::Error::last_os_error(),
        ));
    }
    if (hole as u64) < len as u64 {
        return Err(Error::Protocol(format!(
            "{what} memfd has a hole at byte {hole} of {len} (memory not populated, or \
             punched out)"
        )));
    }
    Ok(())
}

fn map(fd: BorrowedFd<'_>, len: usize, what: &str) -> Result<MmapRaw, Error> {
    MmapOptions::new()
        .len(len)
        .map_raw(fd.as_raw_fd())
        .map_err(|e| Error::io(format!("mapping {what} ({len} bytes)"), e))
}

impl ShmRegion {
    /// Creates an anonymous memfd `rdmabus-<kind>` of `len` bytes, sealed against shrinking
    /// and growing, all of it reserved and written once up front (a lack of memory is an error
    /// now, never a SIGBUS later), and maps it. The peer seals it further once it has mapped
    /// it ([`seal_mapped`]).
    pub fn memfd(kind: &str, len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(Error::Config(format!("{kind}: a region of 0 bytes")));
        }
        let name = CString::new(format!("rdmabus-{kind}"))
            .map_err(|_| Error::Config(format!("memfd name {kind:?} contains a NUL byte")))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(Error::io(
                format!("creating the {kind} memfd"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        reserve(fd.as_fd(), len, &format!("the {kind} (memfd)"))?;
        // SAFETY: F_ADD_SEALS on a descriptor we own; no memory is passed.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
            return Err(Error::io(
                format!("sealing the {kind} memfd"),
                std::io::Error::last_os_error(),
            ));
        }
        let map = map(fd.as_fd(), len, &format!("the {kind} memfd"))?;
        populate(&map, &format!("the {kind} memfd"))?;
        Ok(Self { map, fd })
    }

    /// Maps a memfd a peer passed us: it must be a regular tmpfs file of exactly `len` bytes,
    /// sealed against shrinking and growing (so the peer can never truncate it under our
    /// mapping); once mapped, it is sealed against hole punching and checked for holes
    /// ([`seal_mapped`]). `what` names it in errors ("ring", "credit
    /// word").
    pub fn from_peer_fd(fd: OwnedFd, len: usize, what: &str) -> Result<Self, Error> {
        let st = fstat(fd.as_fd(), what)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Protocol(format!(
                "{what} descriptor is not a regular file (mode {:o})",
                st.st_mode
            )));
        }
        // Pages of a hugetlbfs memfd come from a fixed pool: touching one that is not there
        // faults (SIGBUS) once the pool is used up. tmpfs only.
        // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `sfs` is a valid, writable `statfs` the kernel fills in.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
            return Err(Error::io(
                format!("fstatfs of the {what} descriptor"),
                std::io::Error::last_os_error(),
            ));
        }
        // f_type and TMPFS_MAGIC have different integer types on different targets.
        #[allow(clippy::unnecessary_cast)]
        let on_tmpfs = sfs.f_type as i64 == libc::TMPFS_MAGIC as i64;
        if !on_tmpfs {
            return Err(Error::Protocol(format!(
                "{what} descriptor is not a tmpfs memfd (filesystem type {:#x})",
                sfs.f_type
            )));
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; no memory is passed.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(Error::Protocol(format!(
                "{what} descriptor is not a sealable memfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        for (seal, name) in [
            (libc::F_SEAL_SHRINK, "shrinking"),
            (libc::F_SEAL_GROW, "growing"),
        ] {
            if seals & seal == 0 {
                return Err(Error::Protocol(format!(
                    "{what} memfd is not sealed against {name}"
                )));
            }
        }
        // Sealed now, so this size can no longer change.
        let size = fstat(fd.as_fd(), what)?.st_size;
        if u64::try_from(size).ok() != Some(len as u64) {
            return Err(Error::Protocol(format!(
                "{what} memfd is {size} bytes, expected {len}"
            )));
        }
        if len == 0 {
            return Err(Error::Protocol(format!("{what} memfd is empty")));
        }
        let map = map(fd.as_fd(), len, &format!("the peer's {what} memfd"))?;
        seal_mapped(fd.as_fd(), len, what)?;
        Ok(Self { map, fd })
    }

    /// The descriptor behind the mapping, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Start of the mapping, for reads.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Start of the mapping, with write provenance (the mapping is shared and writable).
    #[inline]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// The `u64` word at `offset` as an atomic (offset must be 8-aligned and in bounds).
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.len(),
            "atomic word out of bounds"
        );
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned); AtomicU64 has the
        // layout of u64, the pointer has write provenance (MmapRaw), the mapping lives as
        // long as `self` (a sealed memfd cannot shrink under it, nor have holes punched into
        // it once mapped on both sides), and every access to this word, from either process,
        // is atomic.
        unsafe { &*(self.as_mut_ptr().add(offset) as *const AtomicU64) }
    }
}

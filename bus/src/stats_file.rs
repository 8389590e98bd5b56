//! The process's stats file: counters in a memory-mapped file that `rdmabus stat` reads live
//! from another process, without touching the hot path (which only does plain relaxed stores
//! into it, one writer per counter).
//!
//! `<shm dir>/rdmabus-stats-<pid>-<random hex>` (created O_EXCL|O_NOFOLLOW, mode 0600, fully
//! allocated): a 64-byte header (magic, pid, version, start time, PID namespace, start ticks),
//! then `CAPACITY` fixed 640-byte entries.
//! An entry is one topic (publisher side), one subscriber link (publisher side) or one
//! subscription (subscriber side). The file is mapped once and never unmapped while the
//! process lives, so entries can be handed out as `&'static`; it is removed at exit when
//! possible, and `rdmabus stat` removes files whose process (in its own PID namespace) is gone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// File magic.
pub const MAGIC: &[u8; 8] = b"RDMBSTAT";
/// Layout version.
pub const VERSION: u32 = 2;
/// Entries per file.
pub const CAPACITY: usize = 256;
/// Bytes of the header.
pub const HEADER_LEN: usize = 64;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 640;
/// Latency histogram buckets: bucket `i` counts latencies in `[2^i, 2^(i+1))` ns.
pub const BUCKETS: usize = 64;
/// Counters per entry.
pub const COUNTERS: usize = 8;
/// Bytes of an entry's name.
pub const NAME_LEN: usize = 48;

/// What an entry describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Free.
    Free = 0,
    /// A topic a publisher publishes: counters `[published, joins, leaves]`.
    Topic = 1,
    /// A subscriber as its publisher sees it: `[sent, dropped, credit_stalls, errors, active]`.
    Link = 2,
    /// A subscription: `[received, gaps, lost, corrupt, active, announced]`, plus the latency
    /// histogram.
    Subscription = 3,
}

/// Counter indices of a topic entry.
pub mod topic {
    /// Messages published.
    pub const PUBLISHED: usize = 0;
    /// Subscribers that joined (a subscriber that reconnects counts again).
    pub const JOINS: usize = 1;
    /// Subscribers that left or were cut.
    pub const LEAVES: usize = 2;
}

/// Counter indices of a link entry.
pub mod link {
    /// Messages written into the subscriber's ring.
    pub const SENT: usize = 0;
    /// Messages skipped (policy Drop).
    pub const DROPPED: usize = 1;
    /// Times its ring was found full.
    pub const CREDIT_STALLS: usize = 2;
    /// Transport errors (completion errors, bad credit).
    pub const ERRORS: usize = 3;
    /// 1 while connected.
    pub const ACTIVE: usize = 4;
    /// Times it was cut for holding a Block publisher past its stall budget.
    pub const STALL_CUTS: usize = 5;
    /// Messages written to it from the history (a late join or a catch-up).
    pub const REPAIRED: usize = 6;
}

/// Counter indices of a subscription entry.
pub mod sub {
    /// Messages received.
    pub const RECEIVED: usize = 0;
    /// Gap events.
    pub const GAPS: usize = 1;
    /// Sequences lost.
    pub const LOST: usize = 2;
    /// Corrupt messages refused.
    pub const CORRUPT: usize = 3;
    /// 1 while connected.
    pub const ACTIVE: usize = 4;
    /// Of the lost sequences, those the publisher announced it dropped.
    pub const ANNOUNCED: usize = 5;
    /// Messages received from the publisher's history (a late join or a catch-up).
    pub const REPAIRED: usize = 6;
    /// Times the subscription reconnected to its publisher.
    pub const RECONNECTS: usize = 7;
}

/// One entry, as laid out in the file.
#[repr(C)]
pub struct Entry {
    kind: AtomicU32,
    id: AtomicU32,
    name: [AtomicU64; NAME_LEN / 8],
    _pad: u64,
    counters: [AtomicU64; COUNTERS],
    histogram: [AtomicU64; BUCKETS],
}

const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_LEN);

impl Entry {
    /// Adds `by` to counter `i` (single writer: a relaxed load and store, no locked op).
    #[inline]
    pub fn add(&self, i: usize, by: u64) {
        let c = &self.counters[i];
        c.store(
            c.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }

    /// Sets counter `i`.
    #[inline]
    pub fn set(&self, i: usize, v: u64) {
        self.counters[i].store(v, Ordering::Relaxed);
    }

    /// Reads counter `i`.
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        self.counters[i].load(Ordering::Relaxed)
    }

    /// Records a latency in nanoseconds into the log2 histogram.
    #[inline]
    pub fn record_latency(&self, ns: u64) {
        let b = (63 - ns.max(1).leading_zeros()) as usize;
        let c = &self.histogram[b];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// The histogram's buckets.
    pub fn histogram(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.histogram[i].load(Ordering::Relaxed))
    }

    /// The entry's kind.
    pub fn kind(&self) -> Kind {
        match self.kind.load(Ordering::Acquire) {
            1 => Kind::Topic,
            2 => Kind::Link,
            3 => Kind::Subscription,
            _ => Kind::Free,
        }
    }

    /// The entry's id (subscriber id for links and subscriptions).
    pub fn id(&self) -> u32 {
        self.id.load(Ordering::Relaxed)
    }

    /// The entry's name.
    pub fn name(&self) -> String {
        let mut b = [0u8; NAME_LEN];
        for (i, w) in self.name.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    fn claim(&self, kind: Kind, id: u32, name: &str) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
        for c in &self.histogram {
            c.store(0, Ordering::Relaxed);
        }
        let mut b = [0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN - 1);
        b[..n].copy_from_slice(&name.as_bytes()[..n]);
        for (i, w) in self.name.iter().enumerate() {
            w.store(
                u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()),
                Ordering::Relaxed,
            );
        }
        self.id.store(id, Ordering::Relaxed);
        self.kind.store(kind as u32, Ordering::Release);
    }
}

/// A stats file mapped in this process (writer) or another (reader).
pub struct StatsFile {
    map: memmap2::MmapRaw,
    path: std::path::PathBuf,
}

/// Header offsets.
mod header {
    /// `u32`, stored last (Release): the file is complete once it is non-zero.
    pub const PID: usize = 8;
    /// `u32`.
    pub const VERSION: usize = 12;
    /// `u64`, ns since the epoch.
    pub const STARTED_NS: usize = 16;
    /// `u64`, inode of `/proc/self/ns/pid`.
    pub const PID_NS: usize = 24;
    /// `u64`, field 22 of `/proc/self/stat` (clock ticks after boot).
    pub const START_TICKS: usize = 32;
}

/// The inode of this process's PID namespace (`/proc/self/ns/pid`), 0 when unknown.
pub fn own_pid_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// The start time (field 22 of `/proc/<pid>/stat`, clock ticks after boot) of `pid` in
/// text `stat` read from that file.
fn start_ticks_of(stat: &str) -> Option<u64> {
    // The command (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// What `/proc` says about a process of our PID namespace.
#[derive(Debug, PartialEq, Eq)]
enum Process {
    /// Running (or unknown: never treated as gone), started at these ticks (if readable).
    Alive(Option<u64>),
    /// No such process, or a zombie.
    Gone,
}

fn process(pid: u32) -> Process {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            if matches!(state, Some("Z" | "X")) {
                Process::Gone
            } else {
                Process::Alive(start_ticks_of(&stat))
            }
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            Process::Gone
        }
        Err(_) => Process::Alive(None),
    }
}

impl StatsFile {
    /// Bytes of a stats file.
    pub const LEN: usize = HEADER_LEN + CAPACITY * ENTRY_LEN;

    fn entry_ptr(&self, i: usize) -> *const Entry {
        assert!(i < CAPACITY);
        // SAFETY: i < CAPACITY, so the entry lies inside the mapping of LEN bytes; entries are
        // 8-aligned (the header is 64 bytes, entries 640) in a page-aligned mapping.
        unsafe { self.map.as_ptr().add(HEADER_LEN + i * ENTRY_LEN) as *const Entry }
    }

    /// Entry `i`.
    pub fn entry(&self, i: usize) -> &Entry {
        // SAFETY: in bounds and aligned (entry_ptr); every field is an atomic, so concurrent
        // writes by the owning process are fine; the file is ours (checked at open, or created
        // by us) and fully allocated, so only our own user could truncate it.
        unsafe { &*self.entry_ptr(i) }
    }

    fn header_u32(&self, offset: usize) -> u32 {
        // SAFETY: offset + 4 <= HEADER_LEN, 4-aligned, inside the mapping; only read
        // atomically here (loads of at most a word are fine on a read-only mapping).
        unsafe { (*(self.map.as_ptr().add(offset) as *const AtomicU32)).load(Ordering::Acquire) }
    }

    fn header_u64(&self, offset: usize) -> u64 {
        // SAFETY: offset + 8 <= HEADER_LEN, 8-aligned, inside the mapping; only read
        // atomically here (loads of at most a word are fine on a read-only mapping).
        unsafe { (*(self.map.as_ptr().add(offset) as *const AtomicU64)).load(Ordering::Acquire) }
    }

    /// Process id recorded in the header (in the PID namespace [`Self::pid_ns`]).
    pub fn pid(&self) -> u32 {
        self.header_u32(header::PID)
    }

    /// Start time (ns since the epoch) recorded in the header.
    pub fn started_ns(&self) -> u64 {
        self.header_u64(header::STARTED_NS)
    }

    /// The writer's PID namespace (inode of its `/proc/self/ns/pid`; 0 when it had none).
    pub fn pid_ns(&self) -> u64 {
        self.header_u64(header::PID_NS)
    }

    /// The writer's start time in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub fn start_ticks(&self) -> u64 {
        self.header_u64(header::START_TICKS)
    }

    /// Whether the writer lives in our PID namespace (so its pid means something here).
    pub fn in_our_pid_ns(&self) -> bool {
        let ours = own_pid_ns();
        ours != 0 && self.pid_ns() == ours
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Maps a stats file for reading. Refused without mapping it: a symlink, anything but a
    /// regular file, a file of another user (who could truncate it under our mapping), a file
    /// of another length, version or magic.
    pub fn open(path: &std::path::Path) -> Result<Self, crate::Error> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let not_ours =
            |why: String| crate::Error::Protocol(format!("{}: {why}, not read", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO planted here must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| crate::Error::io(format!("opening {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| crate::Error::io(format!("stat {}", path.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(not_ours("not a regular file".into()));
        }
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(not_ours(format!(
                "owned by uid {}, we are {euid}",
                meta.uid()
            )));
        }
        if meta.len() != Self::LEN as u64 {
            return Err(not_ours("not a stats file of this version (length)".into()));
        }
        let map = memmap2::MmapOptions::new()
            .len(Self::LEN)
            .map_raw_read_only(&file)
            .map_err(|e| crate::Error::io(format!("mapping {}", path.display()), e))?;
        let f = Self {
            map,
            path: path.to_path_buf(),
        };
        let mut magic = [0u8; 8];
        // SAFETY: the mapping is LEN bytes; the first 8 are the magic, copied out (the
        // writer stores them once, before the pid that readers wait for).
        unsafe { std::ptr::copy_nonoverlapping(f.map.as_ptr(), magic.as_mut_ptr(), 8) };
        if &magic != MAGIC || f.header_u32(header::VERSION) != VERSION {
            return Err(not_ours("not a stats file of this version".into()));
        }
        Ok(f)
    }

    /// Creates this process's stats file at `path` (which must not exist: never follows or
    /// reuses what is there), mode 0600, fully allocated. Used by the registry; public for tests.
    #[doc(hidden)]
    pub fn create_at(path: &std::path::Path) -> Result<Self, crate::Error> {
        use std::os::fd::AsFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| crate::Error::io(format!("creating {}", path.display()), e))?;
        let what = format!("the stats file {}", path.display());
        let mapped = crate::shm::reserve(file.as_fd(), Self::LEN, &what).and_then(|()| {
            memmap2::MmapOptions::new()
                .len(Self::LEN)
                .map_raw(&file)
                .map_err(|e| crate::Error::io(format!("mapping {what}"), e))
        });
        let map = match mapped {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| start_ticks_of(&s))
            .unwrap_or(0);
        // SAFETY: the mapping is LEN bytes, fully allocated, and ours alone until the pid is
        // stored; every offset is in the header and aligned for its type; the pointer has
        // write provenance (MmapRaw).
        unsafe {
            let p = map.as_mut_ptr();
            std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), p, 8);
            *(p.add(header::VERSION) as *mut u32) = VERSION;
            *(p.add(header::STARTED_NS) as *mut u64) = crate::clock::now_ns();
            *(p.add(header::PID_NS) as *mut u64) = own_pid_ns();
            *(p.add(header::START_TICKS) as *mut u64) = ticks;
            (*(p.add(header::PID) as *const AtomicU32))
                .store(std::process::id(), Ordering::Release);
        }
        Ok(Self {
            map,
            path: path.to_path_buf(),
        })
    }

    fn create() -> Result<Self, crate::Error> {
        let mut r = [0u8; 8];
        getrandom::getrandom(&mut r)
            .map_err(|e| crate::Error::Config(format!("random source: {e}")))?;
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::path::PathBuf::from(format!(
            "{}/rdmabus-stats-{}-{hex}",
            crate::shm::shm_dir(),
            std::process::id()
        ));
        Self::create_at(&path)
    }
}

struct Registry {
    file: StatsFile,
    free: Mutex<Vec<usize>>,
}

static REGISTRY: OnceLock<Option<Registry>> = OnceLock::new();

/// This process's stats file's path, for [`remove_own_file_on_signal`].
static OWN_PATH: OnceLock<std::ffi::CString> = OnceLock::new();

fn registry() -> Option<&'static Registry> {
    REGISTRY
        .get_or_init(|| {
            // What dead processes left behind goes first (cheap; once per process).
            sweep();
            let file = match StatsFile::create() {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!("no stats file, `rdmabus stat` will not see this process: {e}");
                    return None;
                }
            };
            use std::os::unix::ffi::OsStrExt;
            if let Ok(c) = std::ffi::CString::new(file.path().as_os_str().as_bytes()) {
                let _ = OWN_PATH.set(c);
            }
            extern "C" fn at_exit() {
                remove_own_file();
            }
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(at_exit) };
            Some(Registry {
                file,
                free: Mutex::new((0..CAPACITY).rev().collect()),
            })
        })
        .as_ref()
}

/// Counters for one topic, link or subscription. Falls back to a private entry when the
/// stats file is full or could not be created, so the hot path never branches on it.
pub struct Counters {
    entry: &'static Entry,
    slot: Option<usize>,
}

impl Counters {
    /// Claims an entry of `kind` named `name`.
    pub fn new(kind: Kind, id: u32, name: &str) -> Self {
        let claimed = registry().and_then(|r| {
            let slot = r.free.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            Some((r.file.entry(slot), slot))
        });
        let (entry, slot) = match claimed {
            Some((e, s)) => (e, Some(s)),
            // SAFETY: an all-zero Entry is valid (atomics and padding); it is leaked on
            // purpose so it can be 'static like the file's entries (rare: file full).
            None => (
                Box::leak(Box::new(unsafe { std::mem::zeroed::<Entry>() })) as &Entry,
                None,
            ),
        };
        entry.claim(kind, id, name);
        Self { entry, slot }
    }

    /// The entry.
    #[inline]
    pub fn entry(&self) -> &'static Entry {
        self.entry
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        if let (Some(slot), Some(r)) = (self.slot, registry()) {
            self.entry.kind.store(Kind::Free as u32, Ordering::Release);
            r.free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
        }
    }
}

/// Removes this process's stats file (call at orderly exit; the CLI does).
pub fn remove_own_file() {
    if let Some(Some(r)) = REGISTRY.get() {
        let _ = std::fs::remove_file(r.file.path());
    }
}

/// Removes this process's stats file from a signal handler: async-signal-safe (an atomic
/// load and unlink(2), nothing allocated or locked). For a process about to die of a signal.
pub fn remove_own_file_on_signal() {
    if let Some(p) = OWN_PATH.get() {
        // SAFETY: a NUL-terminated path that lives as long as the process.
        unsafe { libc::unlink(p.as_ptr()) };
    }
}

/// Removes the stats files that processes of our PID namespace left behind when they died
/// (SIGKILL, a crash), as [`list`] does; files of live processes, of other PID namespaces and
/// of other users are never touched. Once per process: every `rdmabus` command runs it at
/// start, and any process when it creates its own stats file.
pub fn sweep() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| drop(list()));
}

/// Stats files of running processes in the shared-memory directory (see [`list_in`]).
pub fn list() -> Vec<StatsFile> {
    list_in(std::path::Path::new(&crate::shm::shm_dir()))
}

/// Stats files in `dir` that are ours (regular, our euid, this version; others are skipped
/// and never mapped): those of live processes of our PID namespace, and those of other PID
/// namespaces (whose liveness cannot be told here). A file of our namespace whose process is
/// gone, or whose pid now names a process started at another time, is removed.
#[doc(hidden)]
pub fn list_in(dir: &std::path::Path) -> Vec<StatsFile> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let ours = own_pid_ns();
    let mut out: Vec<StatsFile> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rdmabus-stats-")
        })
        .filter_map(|e| StatsFile::open(&e.path()).ok())
        .filter(|f| {
            if ours == 0 || f.pid_ns() != ours {
                return true; // another PID namespace: its pid means nothing here
            }
            if f.pid() == 0 {
                return true; // still being written (the pid is stored last)
            }
            let live = match process(f.pid()) {
                Process::Gone => false,
                // Ticks unknown when the file was made: only a gone pid tells.
                Process::Alive(Some(t)) => f.start_ticks() == 0 || t == f.start_ticks(),
                Process::Alive(None) => true,
            };
            if !live {
                // A process killed outright cannot remove its file: remove it for it.
                let _ = std::fs::remove_file(f.path());
            }
            live
        })
        .collect();
    out.sort_by_key(|f| (!f.in_our_pid_ns(), f.pid()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_is_field_22_even_with_parentheses_in_the_command() {
        let stat = "20576 (c) a) (b) R 20563 20563 12721 0 -1 4194304 116 0 0 0 0 0 0 0 20 0 1 0 58804 3133440 381";
        assert_eq!(start_ticks_of(stat), Some(58804));
        assert_eq!(start_ticks_of("1 (x) R 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(
            matches!(process(std::process::id()), Process::Alive(Some(t)) if Some(t) == start_ticks_of(&own))
        );
        assert_ne!(own_pid_ns(), 0);
    }
}

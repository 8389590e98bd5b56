//! The process's stats file: counters in a memory-mapped file that `rdmabus stat` reads live
//! from another process, without touching the hot path (which only does plain relaxed stores
//! into it, one writer per counter).
//!
//! `<shm dir>/rdmabus-stats-<pid>-<random hex>` (created O_EXCL|O_NOFOLLOW, mode 0600, fully
//! allocated): a 64-byte header (magic, pid, version, start time, PID namespace, start ticks,
//! errors noted), then `CAPACITY` fixed [`ENTRY_LEN`]-byte entries, then the ring of recent
//! errors ([`errors`]). The header's first 40 bytes are laid out alike in every version, so
//! that a reader can tell a file of another version (and whether its process is gone).
//! An entry is one topic (publisher side), one subscriber link (publisher side) or one
//! subscription (subscriber side): a kind, an id, a name, [`COUNTERS`] counters (named in
//! [`names`]) and, for a subscription, a log-linear latency histogram ([`histogram`]). The
//! file is mapped once and never unmapped while the process lives, so entries can be handed
//! out as `&'static`; it is removed at exit when possible, and `rdmabus stat` removes files
//! whose process (in its own PID namespace) is gone.

pub mod errors;
pub mod histogram;
pub mod names;

pub use errors::ErrorRecord;
use errors::{ErrorSlot, ERROR_LEN, ERROR_SLOTS};
pub use histogram::BUCKETS;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// File magic.
pub const MAGIC: &[u8; 8] = b"RDMBSTAT";
/// Layout version (2: 64 log2 buckets, no error ring; 3: log-linear histogram, error ring).
pub const VERSION: u32 = 3;
/// Entries per file.
pub const CAPACITY: usize = 256;
/// Bytes of the header.
pub const HEADER_LEN: usize = 64;
/// Bytes of one entry (a multiple of 64: entries start on cache lines).
pub const ENTRY_LEN: usize = 192 + 8 * BUCKETS;
/// Where the error ring starts.
pub const ERRORS_OFFSET: usize = HEADER_LEN + CAPACITY * ENTRY_LEN;
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
    /// Sum of the latencies recorded, ns.
    latency_sum: AtomicU64,
    _pad2: [u64; 7],
    histogram: [AtomicU64; BUCKETS],
}

const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_LEN && ENTRY_LEN.is_multiple_of(64));
const _: () = assert!(std::mem::size_of::<ErrorSlot>() == ERROR_LEN);

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

    /// Records a latency in nanoseconds into the log-linear histogram (single writer: relaxed
    /// loads and stores, no locked op, nothing allocated).
    #[inline]
    pub fn record_latency(&self, ns: u64) {
        let c = &self.histogram[histogram::bucket_of(ns)];
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        let s = &self.latency_sum;
        s.store(
            s.load(Ordering::Relaxed).wrapping_add(ns),
            Ordering::Relaxed,
        );
    }

    /// The histogram's buckets (see [`histogram::bounds`]).
    pub fn histogram(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.histogram[i].load(Ordering::Relaxed))
    }

    /// The sum of the latencies recorded, ns (read apart from the buckets: it may be a few
    /// records ahead of or behind them).
    pub fn latency_sum_ns(&self) -> u64 {
        self.latency_sum.load(Ordering::Relaxed)
    }

    /// Notes an error about this entry in the process's error ring: the entry's name, ": ",
    /// then `args` (see [`note_error`]). For error paths; allocates nothing.
    #[cold]
    pub fn note_error(&self, args: std::fmt::Arguments<'_>) {
        let mut b = [0u8; NAME_LEN];
        for (i, w) in self.name.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        let name = match std::str::from_utf8(&b[..end]) {
            Ok(n) => n,
            // Cut inside a character when it was claimed: up to the cut.
            Err(e) => std::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or_default(),
        };
        note_error(format_args!("{name}: {args}"));
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
        self.latency_sum.store(0, Ordering::Relaxed);
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
    /// `u64` (version 3 on), errors noted since the process started (see [`super::note_error`]).
    pub const ERRORS_NOTED: usize = 40;
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

/// Why a file named like a stats file was not read.
enum Refused {
    /// Created, not stamped yet: skipped without a word.
    Incomplete,
    /// A stats file of another layout version (its header's first 40 bytes are laid out alike
    /// from version 2 on: these fields mean what they say).
    Version {
        version: u32,
        pid: u32,
        pid_ns: u64,
        start_ticks: u64,
    },
    /// Anything else.
    Other(crate::Error),
}

fn version_message(path: &std::path::Path, version: u32) -> String {
    format!(
        "{}: a stats file of layout version {version}, this rdmabus reads version {VERSION} \
         (its process runs another rdmabus version), not read",
        path.display()
    )
}

/// Whether the process that wrote a stats file (of our PID namespace, per its header) lives.
fn writer_lives(pid: u32, start_ticks: u64) -> bool {
    match process(pid) {
        Process::Gone => false,
        // Ticks unknown when the file was made: only a gone pid tells.
        Process::Alive(Some(t)) => start_ticks == 0 || t == start_ticks,
        Process::Alive(None) => true,
    }
}

impl StatsFile {
    /// Bytes of a stats file.
    pub const LEN: usize = ERRORS_OFFSET + ERROR_SLOTS * ERROR_LEN;

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

    fn error_slot(&self, i: usize) -> &ErrorSlot {
        assert!(i < ERROR_SLOTS);
        // SAFETY: i < ERROR_SLOTS, so the slot lies inside the mapping of LEN bytes, 64-aligned
        // (ERRORS_OFFSET is a multiple of 64) in a page-aligned mapping; every field is an
        // atomic, so the owning process's writes are fine; the file is ours and fully allocated
        // (as for `entry`).
        unsafe { &*(self.map.as_ptr().add(ERRORS_OFFSET + i * ERROR_LEN) as *const ErrorSlot) }
    }

    /// The errors in the file's ring, the most recently noted first.
    pub fn errors(&self) -> Vec<ErrorRecord> {
        let mut v: Vec<ErrorRecord> = (0..ERROR_SLOTS)
            .filter_map(|i| self.error_slot(i).read())
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.last_ns));
        v
    }

    /// Errors noted by the process since it started (the ring keeps the distinct recent ones).
    pub fn errors_noted(&self) -> u64 {
        self.header_u64(header::ERRORS_NOTED)
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

    /// A header word of this process's own (writable) stats file.
    fn header_atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= HEADER_LEN && offset.is_multiple_of(8));
        // SAFETY: in the header (asserted), 8-aligned in a page-aligned mapping of LEN bytes
        // that lives as long as `self`; only ever accessed atomically; called on the
        // registry's file, mapped writable by `create_at`.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
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
        Self::open_checked(path).map_err(|r| match r {
            Refused::Incomplete => crate::Error::Protocol(format!(
                "{}: not complete yet (being created), not read",
                path.display()
            )),
            Refused::Version { version, .. } => {
                crate::Error::Protocol(version_message(path, version))
            }
            Refused::Other(e) => e,
        })
    }

    fn open_checked(path: &std::path::Path) -> Result<Self, Refused> {
        use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
        let not_ours = |why: String| {
            Refused::Other(crate::Error::Protocol(format!(
                "{}: {why}, not read",
                path.display()
            )))
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            // O_NONBLOCK: a FIFO planted here must not block the open.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                Refused::Other(crate::Error::io(format!("opening {}", path.display()), e))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Refused::Other(crate::Error::io(format!("stat {}", path.display()), e)))?;
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
        // The header, read (not mapped) first, says what the file is before its length counts.
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match file.read_at(&mut h[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Refused::Other(crate::Error::io(
                        format!("reading {}", path.display()),
                        e,
                    )))
                }
            }
        }
        let word = |o: usize, n: usize| {
            h[o..o + n]
                .iter()
                .rev()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b))
        };
        if h[..8] == [0; 8] {
            // Created, not yet stamped (the magic is written first).
            return Err(Refused::Incomplete);
        }
        if &h[..8] != MAGIC {
            return Err(not_ours("not an rdmabus stats file (magic)".into()));
        }
        let version = word(header::VERSION, 4) as u32;
        if version != VERSION {
            return Err(Refused::Version {
                version,
                pid: word(header::PID, 4) as u32,
                pid_ns: word(header::PID_NS, 8),
                start_ticks: word(header::START_TICKS, 8),
            });
        }
        if meta.len() != Self::LEN as u64 {
            return Err(not_ours(format!(
                "a stats file of version {VERSION} {} bytes long instead of {}",
                meta.len(),
                Self::LEN
            )));
        }
        let map = memmap2::MmapOptions::new()
            .len(Self::LEN)
            .map_raw_read_only(&file)
            .map_err(|e| {
                Refused::Other(crate::Error::io(format!("mapping {}", path.display()), e))
            })?;
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
    /// Serializes the writers of the error ring (error paths of any thread).
    errors: Mutex<()>,
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
                errors: Mutex::new(()),
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

    /// Notes an error about this entry in the process's ring of recent errors: its name,
    /// then `what: detail` (see [`note_error`]). For error paths; allocates nothing.
    #[cold]
    pub fn error(&self, what: &str, detail: &dyn std::fmt::Display) {
        self.entry.note_error(format_args!("{what}: {detail}"));
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

/// Notes an error in this process's ring of recent errors (`rdmabus stat --errors`): a link
/// cut, a corrupt message refused, a handshake refused, a session lost. The same text again
/// bumps its count. For error paths: it takes a lock of this process, allocates nothing
/// (the text is formatted into a stack buffer, cut at [`errors::TEXT_LEN`] bytes).
#[cold]
pub fn note_error(args: std::fmt::Arguments<'_>) {
    let Some(r) = registry() else {
        return;
    };
    let text = errors::Text::new(args);
    let _writer = r.errors.lock().unwrap_or_else(|p| p.into_inner());
    let slots: [&ErrorSlot; ERROR_SLOTS] = std::array::from_fn(|i| r.file.error_slot(i));
    errors::note(&slots, text.bytes(), crate::clock::now_ns());
    let noted = r.file.header_atomic_u64(header::ERRORS_NOTED);
    noted.store(noted.load(Ordering::Relaxed) + 1, Ordering::Release);
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
    scan_in(dir).files
}

/// What [`scan_in`] found.
pub struct Scan {
    /// The stats files read (as [`list_in`] returns them).
    pub files: Vec<StatsFile>,
    /// Files named like stats files that were not read, and why (another layout version,
    /// another user's, not a stats file...). Files being created are left out.
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

/// Stats files of running processes in the shared-memory directory, and those skipped.
pub fn scan() -> Scan {
    scan_in(std::path::Path::new(&crate::shm::shm_dir()))
}

/// [`list_in`], also saying which files were skipped and why. A file of another layout
/// version whose process (of our PID namespace) is gone is removed, as one of this version.
#[doc(hidden)]
pub fn scan_in(dir: &std::path::Path) -> Scan {
    let mut scan = Scan {
        files: Vec::new(),
        skipped: Vec::new(),
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return scan;
    };
    let ours = own_pid_ns();
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .starts_with("rdmabus-stats-")
        {
            continue;
        }
        let path = e.path();
        let f = match StatsFile::open_checked(&path) {
            Ok(f) => f,
            Err(Refused::Incomplete) => continue,
            Err(Refused::Version {
                version,
                pid,
                pid_ns,
                start_ticks,
            }) => {
                let ours_and_gone = version >= 2
                    && ours != 0
                    && pid_ns == ours
                    && pid != 0
                    && !writer_lives(pid, start_ticks);
                if ours_and_gone {
                    let _ = std::fs::remove_file(&path);
                } else {
                    scan.skipped
                        .push((path.clone(), version_message(&path, version)));
                }
                continue;
            }
            Err(Refused::Other(e)) => {
                scan.skipped.push((path, e.to_string()));
                continue;
            }
        };
        // Another PID namespace (its pid means nothing here), or still being written (the
        // pid is stored last): kept.
        let keep = if ours == 0 || f.pid_ns() != ours || f.pid() == 0 {
            true
        } else {
            let live = writer_lives(f.pid(), f.start_ticks());
            if !live {
                // A process killed outright cannot remove its file: remove it for it.
                let _ = std::fs::remove_file(f.path());
            }
            live
        };
        if keep {
            scan.files.push(f);
        }
    }
    scan.files.sort_by_key(|f| (!f.in_our_pid_ns(), f.pid()));
    scan
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

//! The process's stats file: counters in a memory-mapped file that `rdmabus stat` reads live
//! from another process, without touching the hot path (which only does plain relaxed stores
//! into it, one writer per counter).
//!
//! `<shm dir>/rdmabus-stats-<pid>`: a 64-byte header, then `CAPACITY` fixed 640-byte entries.
//! An entry is one topic (publisher side), one subscriber link (publisher side) or one
//! subscription (subscriber side). The file is mapped once and never unmapped while the
//! process lives, so entries can be handed out as `&'static`; it is removed at exit when
//! possible, and `rdmabus stat` ignores files whose process is gone.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// File magic.
pub const MAGIC: &[u8; 8] = b"RDMBSTAT";
/// Layout version.
pub const VERSION: u32 = 1;
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
        // writes by the owning process are fine.
        unsafe { &*self.entry_ptr(i) }
    }

    /// Process id recorded in the header.
    pub fn pid(&self) -> u32 {
        // SAFETY: offset 8 of the header holds the pid, written once before any reader.
        unsafe { (*(self.map.as_ptr().add(8) as *const AtomicU32)).load(Ordering::Acquire) }
    }

    /// Start time (ns since the epoch) recorded in the header.
    pub fn started_ns(&self) -> u64 {
        // SAFETY: offset 16 of the header holds the start time, written once before readers.
        unsafe { (*(self.map.as_ptr().add(16) as *const AtomicU64)).load(Ordering::Acquire) }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Maps another process's stats file for reading.
    pub fn open(path: &std::path::Path) -> Result<Self, crate::Error> {
        let file = std::fs::File::open(path)
            .map_err(|e| crate::Error::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != Self::LEN as u64 {
            return Err(crate::Error::Protocol(format!(
                "{} is not a stats file of this version",
                path.display()
            )));
        }
        let map = memmap2::MmapOptions::new()
            .map_raw_read_only(&file)
            .map_err(|e| crate::Error::io(format!("mapping {}", path.display()), e))?;
        // SAFETY: the mapping is LEN bytes; the first 8 are the magic.
        let magic = unsafe { std::slice::from_raw_parts(map.as_ptr(), 8) };
        // SAFETY: offset 12 holds the layout version.
        let version = unsafe { *(map.as_ptr().add(12) as *const u32) };
        if magic != MAGIC || version != VERSION {
            return Err(crate::Error::Protocol(format!(
                "{} is not a stats file of this version",
                path.display()
            )));
        }
        Ok(Self {
            map,
            path: path.to_path_buf(),
        })
    }

    fn create() -> Result<Self, crate::Error> {
        let path = std::path::PathBuf::from(format!(
            "{}/rdmabus-stats-{}",
            crate::shm::shm_dir(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| crate::Error::io(format!("creating {}", path.display()), e))?;
        file.set_len(Self::LEN as u64)
            .map_err(|e| crate::Error::io("sizing the stats file", e))?;
        let map = memmap2::MmapOptions::new()
            .map_raw(&file)
            .map_err(|e| crate::Error::io("mapping the stats file", e))?;
        // SAFETY: the mapping is LEN bytes and ours alone until the header is written.
        unsafe {
            let p = map.as_mut_ptr();
            std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), p, 8);
            *(p.add(12) as *mut u32) = VERSION;
            *(p.add(16) as *mut u64) = crate::clock::now_ns();
            (*(p.add(8) as *const AtomicU32)).store(std::process::id(), Ordering::Release);
        }
        Ok(Self { map, path })
    }
}

struct Registry {
    file: StatsFile,
    free: Mutex<Vec<usize>>,
}

static REGISTRY: OnceLock<Option<Registry>> = OnceLock::new();

fn registry() -> Option<&'static Registry> {
    REGISTRY
        .get_or_init(|| match StatsFile::create() {
            Ok(file) => {
                extern "C" fn at_exit() {
                    remove_own_file();
                }
                // SAFETY: registering a plain extern "C" function with no captured state.
                unsafe { libc::atexit(at_exit) };
                Some(Registry {
                    file,
                    free: Mutex::new((0..CAPACITY).rev().collect()),
                })
            }
            Err(e) => {
                tracing::warn!("no stats file, `rdmabus stat` will not see this process: {e}");
                None
            }
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

/// Stats files of running processes in the shared-memory directory (files of processes that
/// are gone are removed on the way).
pub fn list() -> Vec<StatsFile> {
    let dir = crate::shm::shm_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<StatsFile> = rd
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("rdmabus-stats-")
        })
        .filter_map(|e| StatsFile::open(&e.path()).ok())
        .filter(|f| {
            // A process killed outright cannot remove its file: remove it for it.
            let alive = std::path::Path::new(&format!("/proc/{}", f.pid())).exists();
            if !alive {
                let _ = std::fs::remove_file(f.path());
            }
            alive
        })
        .collect();
    out.sort_by_key(|f| f.pid());
    out
}

//! The ring of distinct recent errors at the end of the stats file: what went wrong in this
//! process (a link cut, a corrupt message refused, a handshake refused, a session lost), for
//! `rdmabus stat --errors`.
//!
//! [`ERROR_SLOTS`] slots of [`ERROR_LEN`] bytes: a sequence word (odd while the slot is being
//! written: readers retry), how often the same text was noted, when first and last (ns since
//! the epoch), and up to [`TEXT_LEN`] bytes of text (longer texts are cut, ending in "...").
//! Noting a text already in the ring bumps its count; a new one takes an empty slot, or the
//! slot noted least recently. Writers are error paths of this process, serialized by a lock
//! of this process; nothing is allocated (the text is formatted into a stack buffer).

use std::fmt::Write as _;
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Slots in the ring.
pub const ERROR_SLOTS: usize = 16;
/// Bytes of one slot.
pub const ERROR_LEN: usize = 192;
/// Bytes of text a slot holds.
pub const TEXT_LEN: usize = 128;

/// One slot, as laid out in the file.
#[repr(C)]
pub struct ErrorSlot {
    seq: AtomicU64,
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    len: AtomicU64,
    _pad: [u64; 3],
    text: [AtomicU64; TEXT_LEN / 8],
}

const _: () = assert!(std::mem::size_of::<ErrorSlot>() == ERROR_LEN);

/// An error as read from the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorRecord {
    /// Times it was noted.
    pub count: u64,
    /// When it was first noted, ns since the epoch.
    pub first_ns: u64,
    /// When it was last noted, ns since the epoch.
    pub last_ns: u64,
    /// Its text, as written (escape it before printing: it may hold what a peer sent).
    pub text: String,
}

/// A text formatted into a fixed buffer, cut (on a character boundary, ending in "...") when
/// longer than [`TEXT_LEN`].
pub(super) struct Text {
    buf: [u8; TEXT_LEN],
    len: usize,
    cut: bool,
}

impl Text {
    /// Formats `args`.
    pub(super) fn new(args: std::fmt::Arguments<'_>) -> Self {
        let mut t = Self {
            buf: [0; TEXT_LEN],
            len: 0,
            cut: false,
        };
        let _ = t.write_fmt(args);
        if t.cut {
            let mut end = TEXT_LEN - 3;
            // Back to a character boundary: continuation bytes are 0b10xx_xxxx.
            while end > 0 && t.buf[end] & 0xc0 == 0x80 {
                end -= 1;
            }
            t.buf[end..end + 3].copy_from_slice(b"...");
            t.len = end + 3;
        }
        t
    }

    /// The text's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = TEXT_LEN - self.len;
        if s.len() > room {
            self.cut = true;
        }
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl ErrorSlot {
    fn text_words(&self) -> [u8; TEXT_LEN] {
        let mut b = [0u8; TEXT_LEN];
        for (i, w) in self.text.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        b
    }

    /// Whether the slot holds `text` (by its writer, which alone changes it: no retry needed).
    fn holds(&self, text: &[u8]) -> bool {
        self.count.load(Ordering::Relaxed) != 0
            && self.len.load(Ordering::Relaxed) == text.len() as u64
            && self.text_words()[..text.len()] == *text
    }

    /// Begins a write: readers that see an odd sequence, or another one after reading, retry.
    fn begin(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end(&self) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }

    /// Notes `text` again, at `now`.
    fn bump(&self, now: u64) {
        self.begin();
        let c = self.count.load(Ordering::Relaxed);
        self.count.store(c.saturating_add(1), Ordering::Relaxed);
        self.last_ns.store(now, Ordering::Relaxed);
        self.end();
    }

    /// Makes this slot hold `text`, noted once, at `now`.
    fn put(&self, text: &[u8], now: u64) {
        self.begin();
        let mut b = [0u8; TEXT_LEN];
        b[..text.len()].copy_from_slice(text);
        for (i, w) in self.text.iter().enumerate() {
            w.store(
                u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
        }
        self.len.store(text.len() as u64, Ordering::Relaxed);
        self.first_ns.store(now, Ordering::Relaxed);
        self.last_ns.store(now, Ordering::Relaxed);
        self.count.store(1, Ordering::Relaxed);
        self.end();
    }

    /// A consistent copy of the slot (`None` when empty, or being rewritten on every try).
    pub(super) fn read(&self) -> Option<ErrorRecord> {
        for _ in 0..64 {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let count = self.count.load(Ordering::Relaxed);
            let first_ns = self.first_ns.load(Ordering::Relaxed);
            let last_ns = self.last_ns.load(Ordering::Relaxed);
            let len = self.len.load(Ordering::Relaxed);
            let b = self.text_words();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            if count == 0 {
                return None;
            }
            let len = (len as usize).min(TEXT_LEN);
            return Some(ErrorRecord {
                count,
                first_ns,
                last_ns,
                text: String::from_utf8_lossy(&b[..len]).into_owned(),
            });
        }
        None
    }
}

/// Notes `text` at `now` in `slots` (the caller holds the writers' lock).
pub(super) fn note(slots: &[&ErrorSlot], text: &[u8], now: u64) {
    if let Some(s) = slots.iter().find(|s| s.holds(text)) {
        return s.bump(now);
    }
    let victim = slots
        .iter()
        .min_by_key(|s| {
            if s.count.load(Ordering::Relaxed) == 0 {
                0
            } else {
                s.last_ns.load(Ordering::Relaxed).max(1)
            }
        })
        .expect("slots");
    victim.put(text, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<ErrorSlot> {
        // SAFETY: an all-zero slot is valid (atomics and padding).
        (0..4).map(|_| unsafe { std::mem::zeroed() }).collect()
    }

    #[test]
    fn texts_are_cut_on_a_character_boundary() {
        let short = Text::new(format_args!("link {} cut", 7));
        assert_eq!(short.bytes(), b"link 7 cut");
        let long = "é".repeat(100); // 200 bytes
        let t = Text::new(format_args!("x{long}"));
        let s = std::str::from_utf8(t.bytes()).expect("valid UTF-8");
        assert!(s.ends_with("...") && s.len() <= TEXT_LEN, "{s}");
        assert!(s.len() >= TEXT_LEN - 4);
        let exact = "a".repeat(TEXT_LEN);
        assert_eq!(Text::new(format_args!("{exact}")).bytes(), exact.as_bytes());
    }

    #[test]
    fn repeats_bump_the_count_and_new_errors_take_the_oldest_slot() {
        let owned = slots();
        let s: Vec<&ErrorSlot> = owned.iter().collect();
        note(&s, b"a", 10);
        note(&s, b"a", 20);
        note(&s, b"b", 30);
        let a = s[0].read().unwrap();
        assert_eq!(
            (a.count, a.first_ns, a.last_ns, a.text.as_str()),
            (2, 10, 20, "a")
        );
        assert_eq!(s[1].read().unwrap().text, "b");
        note(&s, b"c", 40);
        note(&s, b"d", 50);
        // Full: "e" replaces the least recently noted, "a".
        note(&s, b"e", 60);
        let texts: Vec<String> = s.iter().map(|x| x.read().unwrap().text).collect();
        assert_eq!(texts, ["e", "b", "c", "d"]);
        assert_eq!(s[0].read().unwrap().count, 1);
        // A longer text with the same start is another text: it replaces "b", now oldest.
        note(&s, b"bb", 70);
        let texts: Vec<String> = s.iter().map(|x| x.read().unwrap().text).collect();
        assert_eq!(texts, ["e", "bb", "c", "d"]);
        assert!(slots()[0].read().is_none());
    }
}

//! Proof that the hot path allocates nothing after warm-up: a counting global allocator counts
//! every allocation made by this thread while the loan → serialize → send → poll → access loop
//! runs, in every subscriber access mode (control threads allocate for heartbeats; they are
//! not the hot path and not counted).

mod common;

use rdmabus::proto::market::{BookUpdate, Quote};
use rdmabus::{Access, Event, Policy, Psk, Subscriber};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (and frees) made by this thread while `f` runs.
fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCATIONS.with(|n| n.get()))
}

fn psk() -> Psk {
    Psk::parse("rdmabus-psk-v1:22222222222222222222222222222222222222222222222222222222222222ab")
        .unwrap()
}

#[test]
fn counting_allocator_sees_allocations() {
    // The instrument works: a Vec allocates and is counted.
    let (_, n) = count(|| std::hint::black_box(vec![1u8; 10]));
    assert!(n >= 1);
}

const MODES: [Access; 3] = [Access::Copy, Access::InPlace, Access::Unchecked];

#[test]
fn hot_path_allocates_nothing() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut quotes = node
        .publisher::<Quote>("q")
        .max_payload(96)
        .build()
        .unwrap();
    let mut books = node
        .publisher::<BookUpdate>("b")
        .policy(Policy::Drop)
        .build()
        .unwrap();
    // One subscriber per access mode on each topic (the copy buffer is allocated here).
    let mut qs: Vec<Subscriber<Quote>> = MODES
        .iter()
        .map(|&a| {
            common::subscriber::<Quote>(node.local_addr(), "q", psk())
                .slots(64)
                .access(a)
                .connect()
                .unwrap()
        })
        .collect();
    let mut bs: Vec<Subscriber<BookUpdate>> = MODES
        .iter()
        .map(|&a| {
            common::subscriber::<BookUpdate>(node.local_addr(), "b", psk())
                .slots(64)
                .access(a)
                .connect()
                .unwrap()
        })
        .collect();
    quotes
        .wait_for_subscribers(MODES.len(), Duration::from_secs(5))
        .unwrap();
    books
        .wait_for_subscribers(MODES.len(), Duration::from_secs(5))
        .unwrap();

    let round =
        |quotes: &mut rdmabus::Publisher<Quote>, qs: &mut [Subscriber<Quote>], i: u64| -> i64 {
            let quote = Quote::synthetic(i);
            let seq = quotes
                .loan()
                .unwrap()
                .write(&quote)
                .unwrap()
                .send()
                .unwrap();
            let mut sum = 0;
            for s in qs.iter_mut() {
                match s.recv().unwrap() {
                    Event::Message(m) => {
                        assert_eq!(m.seq(), seq);
                        sum += m.bid_px.to_native() + m.ask_px.to_native();
                    }
                    _ => panic!("gap"),
                }
            }
            sum
        };
    // Warm-up: several laps of the rings, so credit has been returned and every path was taken.
    for i in 0..1_000 {
        round(&mut quotes, &mut qs, i);
    }
    let (_, n) = count(|| {
        let mut acc = 0i64;
        for i in 1_000..21_000 {
            acc = acc.wrapping_add(round(&mut quotes, &mut qs, i));
        }
        acc
    });
    assert_eq!(
        n, 0,
        "{n} allocations on the hot path (quotes: copy, in place and unchecked)"
    );

    // Batches (`publish_all`): one doorbell per subscriber per batch over verbs, the same
    // reads (the Drop section below sends batches too, into rings they overfill).
    let batch: Vec<Quote> = (0..48).map(Quote::synthetic).collect();
    let batch_round = |quotes: &mut rdmabus::Publisher<Quote>, qs: &mut [Subscriber<Quote>]| {
        let first = quotes.publish_all(&batch[..16]).unwrap();
        let mut got = 0u64;
        for s in qs.iter_mut() {
            for k in 0..16 {
                match s.recv().unwrap() {
                    Event::Message(m) => {
                        assert_eq!(m.seq(), first + k);
                        got += 1;
                    }
                    _ => panic!("gap"),
                }
            }
        }
        got
    };
    for _ in 0..100 {
        batch_round(&mut quotes, &mut qs);
    }
    let (got, n) = count(|| {
        (0..1_000)
            .map(|_| batch_round(&mut quotes, &mut qs))
            .sum::<u64>()
    });
    assert_eq!(got, 1_000 * 16 * MODES.len() as u64);
    assert_eq!(n, 0, "{n} allocations on the hot path (batches of 16)");

    // Variable-length messages, and the Drop path: overfill the rings, then read gaps and
    // messages, in every mode.
    let book = BookUpdate::synthetic(7);
    let book_batch = vec![book.clone(); 50];
    for _ in 0..200 {
        books.publish(&book).unwrap();
        for s in bs.iter_mut() {
            let _ = s.recv().unwrap();
        }
    }
    let (per_mode, n) = count(|| {
        let mut per_mode = [(0u64, 0u64); MODES.len()];
        for _ in 0..50 {
            for _ in 0..50 {
                books.loan().unwrap().write(&book).unwrap().send().unwrap();
            }
            books.publish_all(&book_batch).unwrap();
            for (s, (gaps, msgs)) in bs.iter_mut().zip(per_mode.iter_mut()) {
                while let Some(e) = s.poll().unwrap() {
                    match e {
                        Event::Message(m) => {
                            assert_eq!(m.bids.len(), book.bids.len());
                            *msgs += 1;
                        }
                        _ => *gaps += 1,
                    }
                }
            }
        }
        per_mode
    });
    for (mode, (gaps, msgs)) in MODES.iter().zip(per_mode) {
        assert!(
            gaps > 0 && msgs > 0,
            "{mode}: the Drop path was not exercised: {gaps} gaps, {msgs} messages"
        );
    }
    assert_eq!(
        n, 0,
        "{n} allocations on the hot path (books, with drops and gaps, every mode)"
    );

    // The history: Drop subscribers that fall behind and are fed from it (by sends and by
    // `pump`), every mode.
    let mut hist = node
        .publisher::<Quote>("h")
        .max_payload(96)
        .policy(Policy::Drop)
        .history(512)
        .build()
        .unwrap();
    let mut hs: Vec<Subscriber<Quote>> = MODES
        .iter()
        .map(|&a| {
            common::subscriber::<Quote>(node.local_addr(), "h", psk())
                .slots(64)
                .access(a)
                .connect()
                .unwrap()
        })
        .collect();
    hist.wait_for_subscribers(MODES.len(), Duration::from_secs(5))
        .unwrap();
    let lap = |hist: &mut rdmabus::Publisher<Quote>, hs: &mut [Subscriber<Quote>]| {
        let mut got = 0u64;
        for i in 0..300 {
            hist.publish(&Quote::synthetic(i)).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while got < 300 * hs.len() as u64 {
            assert!(std::time::Instant::now() < deadline, "stuck at {got}");
            hist.pump();
            for s in hs.iter_mut() {
                while let Some(e) = s.poll().unwrap() {
                    if let Event::Message(_) = e {
                        got += 1;
                    }
                }
            }
        }
        got
    };
    for _ in 0..3 {
        lap(&mut hist, &mut hs);
    }
    let (got, n) = count(|| (0..20).map(|_| lap(&mut hist, &mut hs)).sum::<u64>());
    assert_eq!(
        got,
        20 * 300 * MODES.len() as u64,
        "a catch-up lost messages"
    );
    for s in &hs {
        assert!(s.stats().repaired > 0, "the history path was not exercised");
    }
    assert_eq!(
        n, 0,
        "{n} allocations on the hot path (catching up from the history, every mode)"
    );
}

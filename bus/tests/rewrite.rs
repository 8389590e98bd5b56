//! A publisher that rewrites a slot after the subscriber validated it. It writes a valid
//! `BookUpdate`, waits until the subscriber has returned it from `recv()`, then rewrites the
//! archived length of `bids` in the ring to 50,000,000, and the subscriber reads the levels.
//!
//! With `Access::Copy` (the default) the subscriber reads its own validated copy: the
//! rewrite changes nothing it holds. With `Access::InPlace` it reads the ring, and sees
//! 50,000,000 levels (an unbounded walk over them crashed it; the test stops at the length):
//! run `RDMABUS_REWRITE_ACCESS=in-place cargo test -p rdmabus --test rewrite` to watch it
//! fail. Over shared memory whatever the suite's transport; the rogue is a real publisher
//! speaking the protocol by hand.

mod common;

use common::raw::RawPub;
use rdmabus::proto::codec;
use rdmabus::proto::market::{BookUpdate, MAX_LEVELS};
use rdmabus::proto::slot::HEADER_LEN;
use rdmabus::{Access, Event, Psk, Subscriber, Transport};

/// What the rewritten length becomes.
const ROGUE_LEN: u32 = 50_000_000;

/// The handshake: a real rogue publisher (the real protocol, by hand: `common::raw::RawPub`)
/// and a subscriber in `access` mode attached to it; the rogue holds the subscriber's ring.
fn rogue(access: Access) -> (RawPub, Subscriber<BookUpdate>) {
    let psk = Psk::random();
    let (addr, rogue) = RawPub::serve(&psk, "books", std::any::type_name::<BookUpdate>(), 2048);
    let sub = Subscriber::<BookUpdate>::builder(addr, "books")
        .psk(psk)
        .transport(Transport::Shm)
        .slots(8)
        .access(access)
        .connect()
        .unwrap();
    (rogue.join().unwrap(), sub)
}

/// Where the archived `bids` length sits in a `BookUpdate` archive of `n` bytes: the root
/// (32 bytes) ends the archive, and `bids` (relative pointer, then length) is at 16..24 of it.
fn bids_len_at(n: usize) -> usize {
    n - 32 + 16 + 4
}

#[test]
fn a_slot_rewritten_after_recv_does_not_change_the_message() {
    let access: Access = std::env::var("RDMABUS_REWRITE_ACCESS")
        .map(|a| a.parse().unwrap())
        .unwrap_or(Access::Copy);
    let book = BookUpdate::synthetic(3);
    // The layout this test relies on.
    #[repr(align(64))]
    struct A([u8; 2048]);
    let mut buf = A([0; 2048]);
    let n = codec::encode_into(&book, &mut buf.0).unwrap();
    let at = bids_len_at(n);
    assert_eq!(
        u32::from_le_bytes(buf.0[at..at + 4].try_into().unwrap()) as usize,
        book.bids.len()
    );

    let (mut rogue, mut sub) = rogue(access);
    let seq = 0;
    rogue.write(0, seq, &buf.0[..n]);
    let Event::Message(m) = sub.recv().unwrap() else {
        panic!("gap")
    };
    assert_eq!((m.seq(), m.len()), (seq, n));
    assert!(BookUpdate::synthetic_matches(&m, 3));

    // The rogue's pointer is this message's slot: the archive sits there.
    let slot = rogue.geometry.offset(seq);
    let in_ring: Vec<u8> = (0..n)
        // SAFETY: slot + HEADER_LEN + n lies in the ring's mapping (n <= payload capacity),
        // alive as long as the subscriber and the publisher; raw-pointer reads.
        .map(|i| unsafe {
            rogue
                .ring
                .as_ptr()
                .add(slot + HEADER_LEN + i)
                .read_volatile()
        })
        .collect();
    assert_eq!(in_ring, buf.0[..n]);

    // Now that the subscriber holds the message: rewrite the length in its slot.
    // SAFETY: the offset lies in the ring's mapping, alive as long as the subscriber and the
    // publisher. A raw-pointer write: the rogue holds no reference to these bytes. (In
    // `Access::InPlace` the subscriber does, and this write is the rule it trusted the
    // publisher not to break.)
    unsafe {
        rogue
            .ring
            .as_mut_ptr()
            .add(slot + HEADER_LEN + at)
            .cast::<u32>()
            .write_volatile(ROGUE_LEN.to_le())
    };

    // The subscriber reads the levels (a bounded walk, so that a failure is an assertion
    // and not a crash).
    let levels = m.bids.iter().take(MAX_LEVELS + 1).count();
    assert_eq!(
        (m.bids.len(), levels),
        (book.bids.len(), book.bids.len()),
        "{access} mode: the message changed under the subscriber after recv()"
    );
    let qty: u64 = m.bids.iter().map(|l| l.qty.to_native()).sum();
    assert_eq!(qty, book.bids.iter().map(|l| l.qty).sum::<u64>());
    assert!(BookUpdate::synthetic_matches(&m, 3));
}

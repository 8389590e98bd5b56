//! A late joiner rebuilds a book from the publisher's history, then rides through a restart.
//!
//!     cargo run -p rdmabus-examples --bin late_joiner_book
//!
//! The publisher keeps the last `HISTORY` book snapshots (`PublisherBuilder::history`). A
//! subscriber joining after `EARLY` of them asks for all it holds (`HistoryRequest::All`): it
//! gets them first (`Received::from_history`), then the live stream, with no gap and no
//! duplicate at the seam. Then the publisher is replaced by a new one (a new epoch) that
//! resumes the numbering (`first_seq`); the subscriber, with `reconnect` on, reports an
//! `Event::Session` that continues the old numbering and gets what it missed from the new
//! publisher's history. At the end its book must equal the one the publisher built. (How many
//! updates come from history varies: live ones the joiner had no room for yet come from it too.)

use rdmabus::proto::market::BookUpdate;
use rdmabus::{Error, Event, HistoryRequest, IdleStrategy, Node, Psk, Reconnect, Subscriber};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const TOPIC: &str = "md.books";
/// Snapshots the publisher keeps for late joiners.
const HISTORY: u64 = 1024;
/// Updates published before the subscriber joins, while it listens, and after the restart.
const EARLY: u64 = 3000;
const LIVE: u64 = 2000;
const AFTER: u64 = 500;

/// The book: each instrument's latest snapshot (a `BookUpdate` replaces the whole book).
type Book = BTreeMap<u32, BookUpdate>;

fn main() -> Result<(), Error> {
    let psk = Psk::random();
    let node = Node::builder()
        .bind("127.0.0.1:0")
        .psk(psk.clone())
        .start()?;
    let mut book = Book::new(); // the publisher's own view
    let mut publish = |p: &mut rdmabus::Publisher<BookUpdate>| -> Result<(), Error> {
        let u = BookUpdate::synthetic(p.next_seq());
        p.publish(&u)?;
        book.insert(u.instrument_id, u);
        Ok(())
    };

    let start = |first| {
        node.publisher::<BookUpdate>(TOPIC)
            .history(HISTORY)
            .first_seq(first)
            .build()
    };
    let mut books = start(0)?;
    (0..EARLY).try_for_each(|_| publish(&mut books))?;
    println!("publisher: {EARLY} updates sent, the last {HISTORY} kept; a subscriber joins");
    let (addr, total) = (node.local_addr(), EARLY + LIVE + AFTER);
    let late = std::thread::spawn(move || subscribe(addr, psk, total));
    books.wait_for_subscribers(1, Duration::from_secs(5))?;
    // Each send also feeds the late joiner up to 16 messages from the history.
    (0..LIVE).try_for_each(|_| publish(&mut books))?;
    while books.pump() > 0 {
        std::thread::yield_now(); // let it catch up fully before the restart
    }

    // "Restart": a new publisher session on the same topic, resuming the numbering.
    let next = books.next_seq();
    books.close(Duration::from_secs(1));
    let mut books = start(next)?;
    println!(
        "publisher: restarted as {:016x}, resuming at #{next}",
        books.epoch()
    );
    (0..AFTER).try_for_each(|_| publish(&mut books))?;
    while !late.is_finished() {
        books.pump(); // feeds the reconnected subscriber from the history, sends nothing new
        std::thread::yield_now();
    }
    let rebuilt = late.join().expect("subscriber thread")?;
    books.close(Duration::from_secs(1));
    println!(
        "book: {} instruments; rebuilt equals the publisher's: {}",
        rebuilt.len(),
        rebuilt == book
    );
    assert_eq!(rebuilt, book, "the rebuilt book differs");
    Ok(())
}

/// Joins late, asks for the whole history, rides through restarts; returns the book it built.
fn subscribe(addr: SocketAddr, psk: Psk, total: u64) -> Result<Book, Error> {
    let mut sub = Subscriber::<BookUpdate>::builder(addr, TOPIC)
        .psk(psk)
        .history(HistoryRequest::All)
        .reconnect(Reconnect {
            give_up_after: Some(Duration::from_secs(10)),
            ..Reconnect::default()
        })
        .idle(IdleStrategy::Yield)
        .connect()?;
    let (mut book, mut first) = (Book::new(), None);
    loop {
        match sub.recv()? {
            Event::Message(m) => {
                let u: BookUpdate = rkyv::deserialize::<_, rkyv::rancor::Error>(m.archived())
                    .expect("a validated archive deserializes");
                book.insert(u.instrument_id, u);
                first.get_or_insert((m.seq(), m.from_history()));
                if m.seq() == total - 1 {
                    break;
                }
            }
            Event::Gap { first, count, .. } => println!("subscriber: lost {count} from #{first}"),
            Event::Session(s) => println!(
                "subscriber: {:016x} ended ({}); reconnected to {:016x} in {} attempt(s), \
                 numbering continues: {} (next #{})",
                s.previous_epoch, s.reason, s.epoch, s.attempts, s.continues, s.next_seq
            ),
            _ => {} // Event is non_exhaustive
        }
    }
    let (s, (seq, from_history)) = (sub.stats(), first.expect("a message"));
    println!("subscriber: first message #{seq} (from history: {from_history})");
    println!(
        "subscriber: {} updates, {} from history, {} gaps, {} reconnects",
        s.received, s.repaired, s.gaps, s.reconnects
    );
    Ok(book)
}

//! The hot path over shm, in one thread: serialize a message in place, send it, poll it, and
//! read it, in every subscriber access mode, for a `Quote` and for 1 KiB and 4 KiB payloads.
//! Later transports compare against this.
//!
//! Run: `cargo bench -p rdmabus --bench hot_path` (or `-- hot_path/` for the round trips only)

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rdmabus::proto::bench::BenchMsg;
use rdmabus::proto::codec;
use rdmabus::proto::credit::{CreditReturner, CreditTracker};
use rdmabus::proto::gap::GapTracker;
use rdmabus::proto::market::{BookUpdate, Quote};
use rdmabus::proto::RingGeometry;
use rdmabus::{Access, Event, Message, Node, Psk, Publisher, Subscriber};
use std::time::Duration;

fn psk() -> Psk {
    Psk::parse("rdmabus-psk-v1:33333333333333333333333333333333333333333333333333333333333333ab")
        .unwrap()
}

/// The access modes measured, by name (`in_place` is the behaviour before `Access` existed).
const MODES: [(&str, Access); 3] = [
    ("copy", Access::Copy),
    ("in_place", Access::InPlace),
    ("unchecked", Access::Unchecked),
];

/// One group `hot_path/<name>`: a round trip per iteration (`send` publishes message `i`,
/// `read` touches the received archive), one benchmark per access mode; the publisher keeps
/// `history` messages (nobody catches up: the cost of keeping them).
fn one_group<T: Message>(
    c: &mut Criterion,
    name: &str,
    history: u64,
    max_payload: usize,
    mut send: impl FnMut(&mut Publisher<T>, u64),
    read: impl Fn(&T::Archived) -> u64,
) {
    let node = Node::builder().psk(psk()).start().unwrap();
    let topic = format!("bench.{name}");
    let mut publisher = node
        .publisher::<T>(&topic)
        .max_payload(max_payload)
        .history(history)
        .build()
        .unwrap();
    let mut g = c.benchmark_group(format!("hot_path/{name}"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    for (mode, access) in MODES {
        let mut sub = Subscriber::<T>::builder(node.local_addr(), &topic)
            .psk(psk())
            .slots(1024)
            .access(access)
            .connect()
            .unwrap();
        publisher
            .wait_for_subscribers(1, Duration::from_secs(5))
            .unwrap();
        g.bench_function(mode, |b| {
            b.iter(|| {
                i += 1;
                send(&mut publisher, i);
                match sub.recv().unwrap() {
                    Event::Message(m) => black_box(read(m.archived())),
                    _ => unreachable!("Block never loses; no reconnect"),
                }
            })
        });
        drop(sub);
        // Let the publisher see the departure before the next subscriber joins.
        while publisher.subscriber_count() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    for (name, history) in [("quote", 0), ("quote_history_4096", 4096)] {
        one_group::<Quote>(
            c,
            name,
            history,
            96,
            |p, i| {
                p.loan()
                    .unwrap()
                    .write(&Quote::synthetic(i))
                    .unwrap()
                    .send()
                    .unwrap();
            },
            |q| q.bid_px.to_native() as u64,
        );
    }
    for size in [1024usize, 4096] {
        let mut msg = BenchMsg::of_size(size);
        one_group::<BenchMsg>(
            c,
            &format!("bytes_{size}"),
            0,
            BenchMsg::archived_len(size) + 64,
            move |p, i| {
                msg.stamp = i;
                p.loan().unwrap().write(&msg).unwrap().send().unwrap();
            },
            |m| m.stamp.to_native() ^ m.payload[m.payload.len() - 1] as u64,
        );
    }
}

fn pieces(c: &mut Criterion) {
    #[repr(align(64))]
    struct Slot([u8; 2048]);
    let mut slot = Slot([0; 2048]);
    let q = Quote::synthetic(42);
    let mut g = c.benchmark_group("codec_quote");
    g.bench_function("serialize_in_place", |b| {
        b.iter(|| codec::encode_into(black_box(&q), &mut slot.0).unwrap())
    });
    let n = codec::encode_into(&q, &mut slot.0).unwrap();
    g.bench_function("access_validated", |b| {
        b.iter(|| {
            codec::access::<Quote>(black_box(&slot.0[..n]))
                .unwrap()
                .bid_px
                .to_native()
        })
    });
    g.bench_function("access_unchecked", |b| {
        b.iter(|| {
            // SAFETY: the bytes were just written by encode_into for this type.
            let q = unsafe { codec::access_unchecked::<Quote>(black_box(&slot.0[..n])) };
            q.bid_px.to_native()
        })
    });
    g.finish();

    let book = BookUpdate::synthetic(7);
    let mut g = c.benchmark_group("codec_book");
    g.bench_function("serialize_in_place", |b| {
        b.iter(|| codec::encode_into(black_box(&book), &mut slot.0).unwrap())
    });
    let n = codec::encode_into(&book, &mut slot.0).unwrap();
    g.bench_function("access_validated", |b| {
        b.iter(|| {
            codec::access::<BookUpdate>(black_box(&slot.0[..n]))
                .unwrap()
                .bids
                .len()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ring_math");
    let geometry = RingGeometry::new(1024, 128).unwrap();
    let mut pos = 0u64;
    g.bench_function("slot_offset", |b| {
        b.iter(|| {
            pos = pos.wrapping_add(1);
            geometry.offset(black_box(pos))
        })
    });
    let mut credit = CreditTracker::new(1024, 0);
    let mut returner = CreditReturner::new(1024, 0);
    let mut word = 0;
    g.bench_function("credit_acquire_release", |b| {
        b.iter(|| {
            if credit.available() == 0 {
                credit.update(word).unwrap();
            }
            let p = credit.acquire().unwrap();
            if let Some(w) = returner.release() {
                word = w;
            }
            p
        })
    });
    let mut gaps = GapTracker::expecting(0);
    let mut seq = 0u64;
    g.bench_function("gap_observe", |b| {
        b.iter(|| {
            let e = gaps.observe(black_box(seq));
            seq += 1;
            e
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = round_trip, pieces
}
criterion_main!(benches);

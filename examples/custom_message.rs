//! Your own message type: derive rkyv's `Archive` and `Serialize`, and it can travel on the bus.
//!
//!     cargo run -p rdmabus-examples --bin custom_message
//!
//! Variable-length fields work (here an `ArrayVec` of fills and a bounded `ArrayString`), as
//! long as serializing them needs no heap; size the slots with `max_payload`.

use rdmabus::{Error, Event, Node, Psk, Subscriber};
use rkyv::{Archive, Serialize};
use std::time::Duration;

/// An execution report, as an order gateway might publish it.
#[derive(Archive, Serialize, Debug)]
#[rkyv(derive(Debug))]
pub struct ExecutionReport {
    /// The gateway's order id.
    pub order_id: u64,
    /// Where the order stands.
    pub status: OrderStatus,
    /// Fills so far (at most 8 per report).
    pub fills: arrayvec::ArrayVec<Fill, 8>,
}

/// Where an order stands.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum OrderStatus {
    /// Accepted, nothing filled.
    New,
    /// Some quantity filled.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Refused by the venue, with its reason code.
    Rejected(u16),
}

/// One fill.
#[derive(Archive, Serialize, Debug, Clone, Copy)]
#[rkyv(derive(Debug))]
pub struct Fill {
    /// Fill price, in 1e-8 units.
    pub px: i64,
    /// Filled quantity.
    pub qty: u64,
}

fn main() -> Result<(), Error> {
    let psk = Psk::random();
    let node = Node::builder().psk(psk.clone()).start()?;
    let mut reports = node
        .publisher::<ExecutionReport>("oms.exec")
        .max_payload(256)
        .build()?;
    let mut sub = Subscriber::<ExecutionReport>::builder(node.local_addr(), "oms.exec")
        .psk(psk)
        .connect()?;
    reports.wait_for_subscribers(1, Duration::from_secs(5))?;

    let mut fills = arrayvec::ArrayVec::new();
    fills.push(Fill {
        px: 101_250_000,
        qty: 300,
    });
    fills.push(Fill {
        px: 101_260_000,
        qty: 200,
    });
    reports.publish(&ExecutionReport {
        order_id: 7,
        status: OrderStatus::Filled,
        fills,
    })?;
    reports.publish(&ExecutionReport {
        order_id: 8,
        status: OrderStatus::Rejected(42),
        fills: Default::default(),
    })?;

    for _ in 0..2 {
        if let Event::Message(m) = sub.recv()? {
            let filled: u64 = m.fills.iter().map(|f| f.qty.to_native()).sum();
            println!(
                "#{} order {} {:?}: {} filled in {} fills",
                m.seq(),
                m.order_id,
                m.status,
                filled,
                m.fills.len()
            );
        }
    }
    Ok(())
}

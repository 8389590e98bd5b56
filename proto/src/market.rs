//! Market-data message types, archived with rkyv. Prices are fixed-point integers in
//! [`PRICE_SCALE`] units; quantities are whole units.

use arrayvec::ArrayVec;
use rkyv::{Archive, Deserialize, Serialize};

/// Price units per currency unit (prices are `i64` in units of 1e-8).
pub const PRICE_SCALE: i64 = 100_000_000;
/// Most price levels per side in a [`BookUpdate`].
pub const MAX_LEVELS: usize = 16;

/// Top-of-book quote.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Quote {
    /// Instrument identifier.
    pub instrument_id: u32,
    /// Best bid price, in `PRICE_SCALE` units.
    pub bid_px: i64,
    /// Best bid quantity.
    pub bid_qty: u64,
    /// Best ask price, in `PRICE_SCALE` units.
    pub ask_px: i64,
    /// Best ask quantity.
    pub ask_qty: u64,
    /// Exchange timestamp, ns since the Unix epoch.
    pub exchange_ts_ns: u64,
}

/// Which side took liquidity.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Side {
    /// The buyer crossed the spread.
    Buy,
    /// The seller crossed the spread.
    Sell,
}

/// A trade print.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Trade {
    /// Instrument identifier.
    pub instrument_id: u32,
    /// Trade price, in `PRICE_SCALE` units.
    pub px: i64,
    /// Traded quantity.
    pub qty: u64,
    /// Aggressor side.
    pub aggressor: Side,
    /// Venue trade identifier.
    pub trade_id: u64,
    /// Exchange timestamp, ns since the Unix epoch.
    pub exchange_ts_ns: u64,
}

/// One price level of a book.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PriceLevel {
    /// Level price, in `PRICE_SCALE` units.
    pub px: i64,
    /// Total quantity at the level.
    pub qty: u64,
    /// Number of orders at the level.
    pub orders: u32,
}

/// A book snapshot of up to [`MAX_LEVELS`] levels per side (variable length on the wire).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BookUpdate {
    /// Instrument identifier.
    pub instrument_id: u32,
    /// Exchange timestamp, ns since the Unix epoch.
    pub exchange_ts_ns: u64,
    /// Bids, best first.
    pub bids: ArrayVec<PriceLevel, MAX_LEVELS>,
    /// Asks, best first.
    pub asks: ArrayVec<PriceLevel, MAX_LEVELS>,
}

/// A small deterministic mixer, so synthetic data varies with the sequence.
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Quote {
    /// A deterministic synthetic quote for `seq` (what `rdmabus pub` and the demo publish).
    pub fn synthetic(seq: u64) -> Self {
        let r = mix(seq);
        let mid = 100 * PRICE_SCALE + (r % 10_000) as i64 * 1_000_000;
        Self {
            instrument_id: (r >> 48) as u32 % 64,
            bid_px: mid - 500_000,
            bid_qty: 1 + (r >> 8) % 1000,
            ask_px: mid + 500_000,
            ask_qty: 1 + (r >> 20) % 1000,
            exchange_ts_ns: seq,
        }
    }

    /// Whether an archived quote is exactly `Quote::synthetic(seq)`.
    pub fn synthetic_matches(a: &ArchivedQuote, seq: u64) -> bool {
        let e = Self::synthetic(seq);
        a.instrument_id == e.instrument_id
            && a.bid_px == e.bid_px
            && a.bid_qty == e.bid_qty
            && a.ask_px == e.ask_px
            && a.ask_qty == e.ask_qty
            && a.exchange_ts_ns == e.exchange_ts_ns
    }
}

impl Trade {
    /// A deterministic synthetic trade for `seq`.
    pub fn synthetic(seq: u64) -> Self {
        let r = mix(seq ^ 0x5555);
        Self {
            instrument_id: (r >> 48) as u32 % 64,
            px: 100 * PRICE_SCALE + (r % 10_000) as i64 * 1_000_000,
            qty: 1 + (r >> 8) % 500,
            aggressor: if r & 1 == 0 { Side::Buy } else { Side::Sell },
            trade_id: seq,
            exchange_ts_ns: seq,
        }
    }

    /// Whether an archived trade is exactly `Trade::synthetic(seq)`.
    pub fn synthetic_matches(a: &ArchivedTrade, seq: u64) -> bool {
        let e = Self::synthetic(seq);
        let side = match a.aggressor {
            ArchivedSide::Buy => Side::Buy,
            ArchivedSide::Sell => Side::Sell,
        };
        a.instrument_id == e.instrument_id
            && a.px == e.px
            && a.qty == e.qty
            && side == e.aggressor
            && a.trade_id == e.trade_id
            && a.exchange_ts_ns == e.exchange_ts_ns
    }
}

impl BookUpdate {
    /// A deterministic synthetic book for `seq`, 1 to `MAX_LEVELS` levels per side.
    pub fn synthetic(seq: u64) -> Self {
        let r = mix(seq ^ 0xb00c);
        let mid = 100 * PRICE_SCALE + (r % 10_000) as i64 * 1_000_000;
        let depth = 1 + (r >> 32) as usize % MAX_LEVELS;
        let level = |i: usize, sign: i64| PriceLevel {
            px: mid + sign * (i as i64 + 1) * 1_000_000,
            qty: 1 + (r >> (i % 32)) % 100,
            orders: 1 + i as u32,
        };
        Self {
            instrument_id: (r >> 48) as u32 % 64,
            exchange_ts_ns: seq,
            bids: (0..depth).map(|i| level(i, -1)).collect(),
            asks: (0..depth).map(|i| level(i, 1)).collect(),
        }
    }

    /// Whether an archived book is exactly `BookUpdate::synthetic(seq)`.
    pub fn synthetic_matches(a: &ArchivedBookUpdate, seq: u64) -> bool {
        let e = Self::synthetic(seq);
        let same = |got: &[ArchivedPriceLevel], want: &[PriceLevel]| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.px == w.px && g.qty == w.qty && g.orders == w.orders)
        };
        a.instrument_id == e.instrument_id
            && a.exchange_ts_ns == e.exchange_ts_ns
            && same(&a.bids, &e.bids)
            && same(&a.asks, &e.asks)
    }
}

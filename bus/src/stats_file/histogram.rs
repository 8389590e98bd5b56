//! The latency histogram's bucket math: log-linear, like HdrHistogram with 5 significant bits.
//!
//! Values below 32 ns have a bucket each. From 32 ns up, every power of two `[2^e, 2^(e+1))`
//! is split into 32 linear sub-buckets of width `2^(e-5)`, so a bucket is at most 1/32 of its
//! lower bound wide (about 3 % resolution). The last power of two covered is
//! `[2^35, 2^36)` ns (34 to 69 s); the last bucket also takes every larger value.
//! Pure integer math: recording is a `leading_zeros`, a shift and an add.

/// Linear sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 32;
/// `log2(SUB_BUCKETS)`.
const SUB_BITS: u32 = 5;
/// Buckets in all: 32 one-nanosecond buckets, then 32 per power of two from 2^5 to 2^35.
pub const BUCKETS: usize = SUB_BUCKETS * 32;
/// Values from this up (2^36 ns, about 68.7 s) are out of range: the last bucket takes them.
pub const LIMIT_NS: u64 = 1 << 36;

/// The bucket that counts `ns`.
#[inline]
pub const fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    if ns >= LIMIT_NS {
        return BUCKETS - 1;
    }
    // ns >= 32, so its top bit is at e >= 5; the 5 bits below it pick the sub-bucket.
    let e = 63 - ns.leading_zeros();
    let shift = e - SUB_BITS;
    let sub = (ns >> shift) as usize - SUB_BUCKETS;
    SUB_BUCKETS * (shift as usize + 1) + sub
}

/// The values bucket `i` counts: `[low, high)` in ns; the last bucket's `high` is `u64::MAX`,
/// meaning no bound (it also takes everything from [`LIMIT_NS`] up, `u64::MAX` included).
pub const fn bounds(i: usize) -> (u64, u64) {
    assert!(i < BUCKETS);
    if i < SUB_BUCKETS {
        return (i as u64, i as u64 + 1);
    }
    let shift = (i / SUB_BUCKETS - 1) as u32;
    let low = ((SUB_BUCKETS + i % SUB_BUCKETS) as u64) << shift;
    if i == BUCKETS - 1 {
        (low, u64::MAX)
    } else {
        (low, low + (1 << shift))
    }
}

/// The value at quantile `q` (0..=1) of the buckets `h`: the upper bound (exclusive, in ns)
/// of the bucket that holds it, the lower bound for the open last bucket; `None` when empty.
pub fn quantile(h: &[u64; BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in h.iter().enumerate() {
        seen += n;
        if seen >= want {
            let (low, high) = bounds(i);
            return Some(if high == u64::MAX { low } else { high });
        }
    }
    None
}

/// The bounds, in ns, of the Prometheus histogram made of these buckets: two per power of two
/// (`2^e` and `1.5 * 2^e`) from 128 ns to 51.5 s, each the lower bound of a bucket, so that
/// a cumulative count is exact: it counts the values below the bound. 58 bounds, plus `+Inf`.
pub fn prometheus_bounds() -> impl Iterator<Item = u64> {
    (7..36u32).flat_map(|e| [1u64 << e, 3u64 << (e - 1)])
}

/// The buckets `h` folded onto [`prometheus_bounds`]: for each bound (in ns), the values at
/// or above the previous bound and below it; then, for `u64::MAX` (`+Inf`), the rest.
pub fn fold(h: &[u64; BUCKETS]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(60);
    let mut from = 0;
    for b in prometheus_bounds() {
        let to = bucket_of(b);
        out.push((b, h[from..to].iter().sum()));
        from = to;
    }
    out.push((u64::MAX, h[from..].iter().sum()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(v: u64) {
        let i = bucket_of(v);
        let (low, high) = bounds(i);
        assert!(
            low <= v && (v < high || high == u64::MAX),
            "{v} in bucket {i} = [{low}, {high})"
        );
        if v < LIMIT_NS {
            // At most 1/32 of the value wide: the relative error of any value in it (the last
            // bucket's in-range part ends at the limit).
            let high = high.min(LIMIT_NS);
            assert!(v < high);
            assert!((high - low) * 32 <= low.max(32), "{v}: [{low}, {high})");
        }
    }

    #[test]
    fn buckets_tile_the_range_in_order() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, high) = bounds(i);
            assert_eq!(low, next, "bucket {i} starts where {} ends", i.max(1) - 1);
            assert!(high > low);
            assert_eq!(bucket_of(low), i);
            if high != u64::MAX {
                assert_eq!(bucket_of(high - 1), i);
            }
            next = high;
        }
        assert_eq!(next, u64::MAX);
        assert_eq!(bounds(BUCKETS - 1).0, LIMIT_NS - (1 << 30));
    }

    #[test]
    fn edges_and_limits() {
        for v in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            LIMIT_NS - 1,
            LIMIT_NS,
            u64::MAX,
        ] {
            check(v);
        }
        for e in 0..64 {
            for v in [(1u64 << e).saturating_sub(1), 1 << e, (1u64 << e) + 1] {
                check(v);
            }
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(31), 31);
        assert_eq!(bucket_of(32), 32);
        assert_eq!(bucket_of(64), 64);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        // 60 s is in range, at 3 %.
        let (low, high) = bounds(bucket_of(60_000_000_000));
        assert!(high - low <= 60_000_000_000 / 32);
    }

    #[test]
    fn prometheus_bounds_are_bucket_bounds_in_order() {
        let b: Vec<u64> = prometheus_bounds().collect();
        assert_eq!(b.len(), 58);
        assert_eq!((b[0], b[1], b[2]), (128, 192, 256));
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        for &x in &b {
            assert_eq!(bounds(bucket_of(x)).0, x, "{x} is a bucket's lower bound");
        }
        assert!(*b.last().unwrap() < LIMIT_NS);
    }

    #[test]
    fn fold_and_quantile() {
        let mut h = [0u64; BUCKETS];
        for v in [5, 127, 128, 191, 192, 1_000, 1_000_000, u64::MAX] {
            h[bucket_of(v)] += 1;
        }
        let f = fold(&h);
        assert_eq!(f.len(), 59);
        assert_eq!(f.iter().map(|x| x.1).sum::<u64>(), 8);
        assert_eq!(f[0], (128, 2)); // 5 and 127
        assert_eq!(f[1], (192, 2)); // 128 and 191
        assert_eq!(f[2], (256, 1)); // 192
        assert_eq!(f.last().unwrap().1, 1); // u64::MAX: only +Inf
        assert_eq!(quantile(&h, 0.0), Some(6));
        assert_eq!(quantile(&h, 0.5), Some(192)); // the 4th of 8: 191
        let p = quantile(&h, 0.7).unwrap(); // the 6th: 1000
        assert!((1_000..=1_000 + 1_000 / 32).contains(&p), "{p}");
        assert_eq!(quantile(&h, 1.0), Some(LIMIT_NS - (1 << 30)));
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    proptest! {
        #[test]
        fn every_value_lands_in_a_bucket_that_holds_it(v in any::<u64>()) {
            check(v);
        }

        #[test]
        fn in_range_values_land_within_a_32nd(v in 0..LIMIT_NS) {
            check(v);
        }

        #[test]
        fn buckets_are_monotone(a in 0..LIMIT_NS * 2, b in 0..LIMIT_NS * 2) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(bucket_of(lo) <= bucket_of(hi));
        }
    }
}

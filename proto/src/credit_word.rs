//! The credit word a verbs subscriber RDMA-writes into its publisher's memory: the consumed
//! position and a check word derived from it, 16 bytes. A NIC promises no atomicity for a
//! write, and a CPU reading while it lands may see old and new bytes mixed; a mixed pair fails
//! the check and is ignored (the reader keeps the last good value), so a torn read can never
//! be taken for a position.

/// Bytes of the credit word on the wire.
pub const CREDIT_WORD_LEN: usize = 16;

/// The check word for `consumed`: a bijective mix of all 64 bits (the SplitMix64 finaliser),
/// so that changing any byte of the position changes about half the check's bits.
pub fn check_of(consumed: u64) -> u64 {
    let mut z = consumed ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The two little-endian words to write for `consumed`.
pub fn encode(consumed: u64) -> [u64; 2] {
    [consumed.to_le(), check_of(consumed).to_le()]
}

/// The position in a pair of words as read, or `None` if they do not belong together
/// (a write was landing while they were read, or the peer wrote garbage).
pub fn decode(words: [u64; 2]) -> Option<u64> {
    let consumed = u64::from_le(words[0]);
    (u64::from_le(words[1]) == check_of(consumed)).then_some(consumed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(w: [u64; 2]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&w[0].to_ne_bytes());
        b[8..].copy_from_slice(&w[1].to_ne_bytes());
        b
    }

    fn words(b: [u8; 16]) -> [u64; 2] {
        [
            u64::from_ne_bytes(b[..8].try_into().unwrap()),
            u64::from_ne_bytes(b[8..].try_into().unwrap()),
        ]
    }

    #[test]
    fn round_trips() {
        for v in [0, 1, 255, 256, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            assert_eq!(decode(encode(v)), Some(v));
        }
        assert_eq!(decode([0, 0]), None, "zeroed memory is not a position");
    }

    proptest! {
        /// Any mix of an old and a new write, at any byte granularity (each byte from one or
        /// the other), is either one of the two writes or rejected.
        #[test]
        fn a_torn_read_is_never_a_third_value(old in any::<u64>(), step in 1u64..1_000_000,
                                              mask in any::<u16>()) {
            let new = old.wrapping_add(step);
            let (a, b) = (bytes(encode(old)), bytes(encode(new)));
            let mut mixed = [0u8; 16];
            for i in 0..16 {
                mixed[i] = if mask & (1 << i) != 0 { b[i] } else { a[i] };
            }
            match decode(words(mixed)) {
                None => {}
                Some(v) => prop_assert!(v == old || v == new, "torn read gave {v}"),
            }
        }
    }
}

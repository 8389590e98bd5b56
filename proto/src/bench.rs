//! The benchmark message: a timestamp and a payload of any size, serialized in place like any
//! other message (the payload is built once per size, so serializing allocates nothing).

use rkyv::{Archive, Deserialize, Serialize};

/// A benchmark message of `payload.len()` application bytes.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BenchMsg {
    /// Sender's timestamp or round number.
    pub stamp: u64,
    /// Opaque bytes.
    pub payload: Vec<u8>,
}

impl BenchMsg {
    /// A message with `size` payload bytes.
    pub fn of_size(size: usize) -> Self {
        Self {
            stamp: 0,
            payload: (0..size).map(|i| i as u8).collect(),
        }
    }

    /// Serialized size of a message with `size` payload bytes (archive plus alignment).
    pub fn archived_len(size: usize) -> usize {
        size.div_ceil(8) * 8 + 24
    }

    /// The exact size of the archive of [`of_size`](Self::of_size)`(size)`, as
    /// [`encode_into`](crate::codec::encode_into) writes it (at most
    /// [`archived_len`](Self::archived_len)).
    pub fn encoded_len(size: usize) -> usize {
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.resize(Self::archived_len(size), 0);
        crate::codec::encode_into(&Self::of_size(size), &mut buf)
            .expect("archived_len is an upper bound")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{access, encode_into};

    #[test]
    fn sizes_roundtrip() {
        #[repr(align(64))]
        struct Buf([u8; 70_000]);
        let mut buf = Box::new(Buf([0; 70_000]));
        for size in [0usize, 16, 64, 1000, 65_536] {
            let m = BenchMsg::of_size(size);
            let n = encode_into(&m, &mut buf.0).unwrap();
            assert!(n <= BenchMsg::archived_len(size), "{size}: {n}");
            assert_eq!(BenchMsg::encoded_len(size), n);
            let a = access::<BenchMsg>(&buf.0[..n]).unwrap();
            assert_eq!(a.payload.len(), size);
            assert_eq!(a.payload.as_slice(), &m.payload[..]);
        }
    }
}

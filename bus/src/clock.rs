//! Wall-clock nanoseconds for publish timestamps and one-way latency (CLOCK_REALTIME, read
//! through the vDSO: no system call). Across machines it is as good as their PTP sync.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

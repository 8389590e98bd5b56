//! What a peer may cost the publisher: concurrent handshakes (in all and per address),
//! subscribers and ring bytes per topic, and how many refusals are logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default cap on handshakes in progress at once.
pub const DEFAULT_MAX_HANDSHAKES: u32 = 64;
/// Default cap on handshakes in progress at once from one address.
pub const DEFAULT_MAX_HANDSHAKES_PER_PEER: u32 = 8;
/// Default cap on subscribers of one topic.
pub const DEFAULT_MAX_SUBSCRIBERS: u32 = 64;
/// Default cap on the ring bytes of all subscribers of one topic (1 GiB).
pub const DEFAULT_MAX_RING_BYTES: u64 = 1 << 30;

/// Handshakes in progress, counted in all and per peer address.
pub(crate) struct HandshakeSlots {
    max: u32,
    max_per_peer: u32,
    inner: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One handshake's place; given back when dropped.
pub(crate) struct HandshakePermit {
    slots: Arc<HandshakeSlots>,
    ip: IpAddr,
}

impl HandshakeSlots {
    pub fn new(max: u32, max_per_peer: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_peer,
            inner: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a handshake from `ip`, or why there is none.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakePermit, &'static str> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 >= self.max {
            return Err("too many handshakes in progress");
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.max_per_peer {
            return Err("too many handshakes in progress from this address");
        }
        *n += 1;
        g.0 += 1;
        Ok(HandshakePermit {
            slots: self.clone(),
            ip,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> u32 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut g = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// A topic's caps and what its subscribers hold of them.
pub(crate) struct TopicBudget {
    pub max_subscribers: u32,
    pub max_ring_bytes: u64,
    subscribers: AtomicU32,
    ring_bytes: AtomicU64,
}

/// One subscriber's share of its topic's budget; given back when dropped (when the link is
/// removed, or the handshake fails).
pub(crate) struct Reservation {
    budget: Arc<TopicBudget>,
    ring_bytes: u64,
}

impl TopicBudget {
    pub fn new(max_subscribers: u32, max_ring_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            max_subscribers,
            max_ring_bytes,
            subscribers: AtomicU32::new(0),
            ring_bytes: AtomicU64::new(0),
        })
    }

    /// Takes a subscriber's place, or says why not.
    pub fn reserve_subscriber(self: &Arc<Self>) -> Result<Reservation, String> {
        let taken = self
            .subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_subscribers).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Reservation {
                budget: self.clone(),
                ring_bytes: 0,
            }),
            Err(n) => Err(format!(
                "the topic has {n} subscribers, its limit is {}",
                self.max_subscribers
            )),
        }
    }
}

impl Reservation {
    /// Adds `bytes` of ring to this subscriber's share, or says why not.
    pub fn add_ring_bytes(&mut self, bytes: u64) -> Result<(), String> {
        let b = &self.budget;
        b.ring_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(bytes).filter(|&t| t <= b.max_ring_bytes)
            })
            .map_err(|n| {
                format!(
                    "a ring of {bytes} bytes would take the topic's subscribers to more than its \
                     limit of {} bytes ({n} in use)",
                    b.max_ring_bytes
                )
            })?;
        self.ring_bytes += bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.budget
            .ring_bytes
            .fetch_sub(self.ring_bytes, Ordering::AcqRel);
    }
}

/// Lets through at most `burst` log lines per `window`, and says how many it held back.
pub(crate) struct LogLimiter {
    burst: u32,
    window: Duration,
    inner: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            inner: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed since the last line let through)` if this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(g.0) >= self.window {
            g.0 = now;
            g.1 = 0;
        }
        if g.1 < self.burst {
            g.1 += 1;
            let suppressed = g.2;
            g.2 = 0;
            Some(suppressed)
        } else {
            g.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_cap_in_all_and_per_peer() {
        let s = HandshakeSlots::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let p1 = s.try_acquire(a).unwrap();
        let _p2 = s.try_acquire(a).unwrap();
        assert!(s.try_acquire(a).is_err());
        let _p3 = s.try_acquire(b).unwrap();
        assert!(s.try_acquire(b).is_err(), "global cap");
        drop(p1);
        assert_eq!(s.in_progress(), 2);
        let _p4 = s.try_acquire(a).unwrap();
    }

    #[test]
    fn budgets_are_given_back() {
        let b = TopicBudget::new(2, 100);
        let mut r1 = b.reserve_subscriber().unwrap();
        r1.add_ring_bytes(60).unwrap();
        let mut r2 = b.reserve_subscriber().unwrap();
        assert!(b.reserve_subscriber().is_err());
        assert!(r2.add_ring_bytes(41).is_err());
        r2.add_ring_bytes(40).unwrap();
        drop(r1);
        let mut r3 = b.reserve_subscriber().unwrap();
        r3.add_ring_bytes(60).unwrap();
        assert!(r3.add_ring_bytes(u64::MAX).is_err());
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
    }
}

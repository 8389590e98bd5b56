//! What a busy-polling loop does when there is nothing to do.

/// How `recv()` and a blocked `send()` wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IdleStrategy {
    /// Spin on the CPU: lowest latency, burns a core (pin the thread to an isolated one).
    #[default]
    BusySpin,
    /// Spin briefly, then `sched_yield`: for more pollers than cores.
    Yield,
    /// Spin, yield, then sleep 50 µs at a time: for idle-heavy, latency-tolerant consumers.
    Backoff,
}

impl IdleStrategy {
    /// Waits once; `idle_rounds` counts consecutive empty polls.
    #[inline]
    pub fn idle(self, idle_rounds: u32) {
        match self {
            Self::BusySpin => std::hint::spin_loop(),
            Self::Yield if idle_rounds < 64 => std::hint::spin_loop(),
            Self::Yield => std::thread::yield_now(),
            Self::Backoff if idle_rounds < 64 => std::hint::spin_loop(),
            Self::Backoff if idle_rounds < 256 => std::thread::yield_now(),
            Self::Backoff => std::thread::sleep(std::time::Duration::from_micros(50)),
        }
    }
}

impl std::str::FromStr for IdleStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spin" => Ok(Self::BusySpin),
            "yield" => Ok(Self::Yield),
            "backoff" => Ok(Self::Backoff),
            _ => Err(format!(
                "unknown idle strategy {s:?}: use spin, yield or backoff"
            )),
        }
    }
}

//! What a publisher does when a subscriber's ring is full.

/// Per-subscriber flow-control policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Wait until the subscriber frees a slot: nothing is ever lost (a slow subscriber slows
    /// the publisher).
    #[default]
    Block,
    /// Skip the subscriber for this message and count the drop; the subscriber sees a gap
    /// naming exactly the sequences it lost.
    Drop,
    /// Cut the subscriber loose (it is told it was a slow consumer); the others go on.
    Disconnect,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Self::Block),
            "drop" => Ok(Self::Drop),
            "disconnect" => Ok(Self::Disconnect),
            _ => Err(format!(
                "unknown policy {s:?}: use block, drop or disconnect"
            )),
        }
    }
}

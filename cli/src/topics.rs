//! The CLI's topics and their message types.

use rdmabus::proto::market::{BookUpdate, Quote, Trade};
use rdmabus::{Error, Publisher};

/// Topic names the CLI knows, with the type each carries.
pub const TOPICS: &[(&str, &str)] = &[
    ("quotes", "Quote"),
    ("trades", "Trade"),
    ("books", "BookUpdate"),
];

/// Checks a topic name given on the command line.
pub fn check(name: &str) -> Result<(), String> {
    if TOPICS.iter().any(|(t, _)| *t == name) {
        Ok(())
    } else {
        Err(format!(
            "unknown topic {name:?}: the CLI knows quotes, trades and books"
        ))
    }
}

/// Parses a topic name given on the command line.
pub fn parse(s: &str) -> Result<String, String> {
    check(s).map(|_| s.to_string())
}

/// A publisher of one of the CLI's topics.
pub enum AnyPublisher {
    Quotes(Publisher<Quote>),
    Trades(Publisher<Trade>),
    Books(Publisher<BookUpdate>),
}

impl AnyPublisher {
    /// Creates the publisher for `topic` on `node` (`first_seq`: resume a numbering there).
    pub fn new(
        node: &rdmabus::Node,
        topic: &str,
        policy: rdmabus::Policy,
        idle: rdmabus::IdleStrategy,
        block_timeout: Option<std::time::Duration>,
        history: u64,
        first_seq: Option<u64>,
    ) -> Result<Self, Error> {
        fn configure<T: rdmabus::Message>(
            b: rdmabus::PublisherBuilder<T>,
            (policy, idle, block_timeout, history, first_seq): Options,
        ) -> rdmabus::PublisherBuilder<T> {
            let b = b
                .policy(policy)
                .idle(idle)
                .block_timeout(block_timeout)
                .history(history);
            match first_seq {
                Some(s) => b.first_seq(s),
                None => b,
            }
        }
        type Options = (
            rdmabus::Policy,
            rdmabus::IdleStrategy,
            Option<std::time::Duration>,
            u64,
            Option<u64>,
        );
        let o: Options = (policy, idle, block_timeout, history, first_seq);
        Ok(match topic {
            "quotes" => Self::Quotes(
                configure(node.publisher("quotes"), o)
                    .max_payload(96)
                    .build()?,
            ),
            "trades" => Self::Trades(
                configure(node.publisher("trades"), o)
                    .max_payload(96)
                    .build()?,
            ),
            "books" => Self::Books(
                configure(node.publisher("books"), o)
                    .max_payload(992)
                    .build()?,
            ),
            other => return Err(Error::Config(check(other).unwrap_err())),
        })
    }

    /// Publishes the synthetic message for the next sequence.
    #[inline]
    pub fn publish_next(&mut self) -> Result<u64, Error> {
        match self {
            Self::Quotes(p) => {
                let seq = p.next_seq();
                p.publish(&Quote::synthetic(seq))
            }
            Self::Trades(p) => {
                let seq = p.next_seq();
                p.publish(&Trade::synthetic(seq))
            }
            Self::Books(p) => {
                let seq = p.next_seq();
                p.publish(&BookUpdate::synthetic(seq))
            }
        }
    }

    /// Waits for `n` subscribers.
    pub fn wait_for_subscribers(&mut self, n: usize, t: std::time::Duration) -> Result<(), Error> {
        match self {
            Self::Quotes(p) => p.wait_for_subscribers(n, t),
            Self::Trades(p) => p.wait_for_subscribers(n, t),
            Self::Books(p) => p.wait_for_subscribers(n, t),
        }
    }

    /// Waits for `n` subscribers, at most `timeout`; false if a signal came first.
    pub fn wait_for_subscribers_or_signal(
        &mut self,
        n: usize,
        timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if crate::signals::stopped().is_some() {
                return Ok(false);
            }
            match self.wait_for_subscribers(n, std::time::Duration::from_millis(20)) {
                Ok(()) => return Ok(true),
                Err(Error::Timeout(_)) if std::time::Instant::now() < deadline => {}
                Err(Error::Timeout(_)) => {
                    return Err(Error::Timeout(format!(
                        "{} of {n} subscribers joined topic {:?} within {timeout:?}",
                        self.subscriber_count(),
                        self.topic()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connected subscribers.
    pub fn subscriber_count(&mut self) -> usize {
        match self {
            Self::Quotes(p) => p.subscriber_count(),
            Self::Trades(p) => p.subscriber_count(),
            Self::Books(p) => p.subscriber_count(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> rdmabus::PublisherStats {
        match self {
            Self::Quotes(p) => p.stats(),
            Self::Trades(p) => p.stats(),
            Self::Books(p) => p.stats(),
        }
    }

    /// Topic name.
    pub fn topic(&self) -> &str {
        match self {
            Self::Quotes(p) => p.topic(),
            Self::Trades(p) => p.topic(),
            Self::Books(p) => p.topic(),
        }
    }

    /// Feeds subscribers that are behind from the history (see `Publisher::pump`).
    pub fn pump(&mut self) -> usize {
        match self {
            Self::Quotes(p) => p.pump(),
            Self::Trades(p) => p.pump(),
            Self::Books(p) => p.pump(),
        }
    }

    /// Says goodbye to every subscriber, after feeding those behind for up to `t`.
    pub fn close(self, t: std::time::Duration) -> rdmabus::PublisherStats {
        match self {
            Self::Quotes(p) => p.close(t),
            Self::Trades(p) => p.close(t),
            Self::Books(p) => p.close(t),
        }
    }
}

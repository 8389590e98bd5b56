//! A node: the control-plane listener of one process, hosting any number of topics.

use super::accept;
use super::limits::{self, HandshakeSlots, LogLimiter, Reservation, TopicBudget};
use crate::transport::RemoteRing;
use crate::{Error, Message, Psk, PublisherBuilder};
use rdmabus_proto::RingGeometry;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most events kept for [`Node::events`].
const MAX_EVENTS: usize = 4096;

/// Something that happened on the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A subscriber joined a topic.
    Joined {
        /// Topic.
        topic: String,
        /// Subscriber id.
        id: u32,
        /// The name the subscriber gave.
        name: String,
        /// Its address.
        peer: SocketAddr,
    },
    /// A connection was refused during the handshake.
    Rejected {
        /// Its address.
        peer: SocketAddr,
        /// Why, as told to the peer and logged.
        reason: String,
    },
}

/// A subscriber that finished its handshake, waiting for the publisher to adopt it.
pub(crate) struct NewLink {
    pub id: u32,
    pub name: String,
    pub ring: Box<dyn RemoteRing>,
    pub geometry: RingGeometry,
    pub state: Arc<crate::control::session::LinkState>,
    pub counters: crate::stats_file::Counters,
    /// This subscriber's share of the topic's caps, given back when the link goes.
    pub reservation: Reservation,
    /// How much retained history it asked for.
    pub history: rdmabus_proto::history::HistoryRequest,
    /// Reconnecting and continuing: the sequence it expects next.
    pub resume_from: Option<u64>,
}

/// What the control plane knows of one topic.
pub(crate) struct TopicShared {
    pub name: String,
    pub schema: &'static str,
    pub slot_size: u32,
    /// The next sequence, stored by the publisher at every send and read by handshakes: on
    /// cache lines of its own, so that the control threads' writes to the fields around it
    /// (ids, the pending queue, its lock) never take the line from the publisher's core.
    pub next_seq: crossbeam_utils::CachePadded<AtomicU64>,
    /// The publisher's session identity, sent in `Accept` and `Welcome`.
    pub epoch: u64,
    /// Where the session resumed a numbering, if it did (sent in `Accept`).
    pub resumed_at: Mutex<Option<u64>>,
    /// Messages the publisher retains (its history depth).
    pub history: u64,
    pub next_id: AtomicU32,
    pub has_pending: AtomicBool,
    pub pending: Mutex<Vec<NewLink>>,
    /// Set (under the `pending` lock) when the publisher is dropped or closed: a handshake
    /// that finishes later is refused.
    pub closed: AtomicBool,
    pub staging: crate::transport::Staging,
    pub budget: Arc<TopicBudget>,
}

/// State shared by the node's threads and its publishers.
pub(crate) struct NodeShared {
    pub addr: SocketAddr,
    pub psk: Psk,
    pub heartbeat: Duration,
    pub topics: Mutex<HashMap<String, Arc<TopicShared>>>,
    pub shutdown: AtomicBool,
    pub events: Mutex<VecDeque<NodeEvent>>,
    pub device: Option<String>,
    pub gid_index: Option<u8>,
    pub verbs: crate::verbs_options::VerbsOptions,
    pub slots: Arc<HandshakeSlots>,
    /// Refusals and dropped connections are logged at most this often.
    pub refusal_log: LogLimiter,
    /// The Unix socket shm subscribers hand their memory over on (bound at first use).
    pub fd_exchange: std::sync::OnceLock<Result<crate::shm::FdExchange, String>>,
}

impl NodeShared {
    /// Logs a refusal or a dropped connection, rate-limited.
    pub fn log_refusal(&self, peer: SocketAddr, what: &str) {
        crate::stats_file::note_error(format_args!("{what} (peer {})", peer.ip()));
        if let Some(suppressed) = self.refusal_log.allow() {
            if suppressed > 0 {
                tracing::warn!(%peer, suppressed, "{what} (and {suppressed} similar lines suppressed)");
            } else {
                tracing::warn!(%peer, "{what}");
            }
        }
    }

    /// The node's fd-exchange socket, bound on first use.
    pub fn fd_exchange(&self) -> Result<&crate::shm::FdExchange, String> {
        self.fd_exchange
            .get_or_init(|| crate::shm::FdExchange::bind().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| e.clone())
    }

    pub fn event(&self, e: NodeEvent) {
        let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == MAX_EVENTS {
            q.pop_front();
        }
        q.push_back(e);
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicShared>> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    bind: Option<String>,
    psk: Option<Psk>,
    heartbeat: Duration,
    device: Option<String>,
    gid_index: Option<u8>,
    verbs: crate::verbs_options::VerbsOptions,
    max_handshakes: u32,
    max_handshakes_per_peer: u32,
}

impl NodeBuilder {
    /// Most handshakes in progress at once (default 64); a connection beyond it is closed at
    /// once, with no thread spent on it.
    pub fn max_handshakes(mut self, n: u32) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Most handshakes in progress at once from one IP address (default 8).
    pub fn max_handshakes_per_peer(mut self, n: u32) -> Self {
        self.max_handshakes_per_peer = n;
        self
    }

    /// Address to listen on for subscribers (default `127.0.0.1:0`, an ephemeral port).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.bind = Some(addr.into());
        self
    }

    /// The pre-shared key subscribers must prove (default: from `RDMABUS_PSK`).
    pub fn psk(mut self, psk: Psk) -> Self {
        self.psk = Some(psk);
        self
    }

    /// Heartbeat interval (default 200 ms; a peer silent for 5 intervals is declared lost).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// RDMA device for verbs subscribers (default: the one whose RoCE v2 GID is the address
    /// the subscriber connected to).
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = Some(name.into());
        self
    }

    /// GID index for verbs subscribers (default: the RoCE v2 GID of the connection's address).
    pub fn gid_index(mut self, index: u8) -> Self {
        self.gid_index = Some(index);
        self
    }

    /// RDMA knobs for verbs links: port, traffic class (DSCP), service level, MTU cap, QP
    /// timeout and retries (default [`VerbsOptions::default`](crate::VerbsOptions)); checked
    /// when a link is set up.
    pub fn verbs_options(mut self, options: crate::verbs_options::VerbsOptions) -> Self {
        self.verbs = options;
        self
    }

    /// Binds the listener and starts accepting subscribers.
    pub fn start(self) -> Result<Node, Error> {
        self.verbs.check()?;
        let psk = match self.psk {
            Some(p) => p,
            None => Psk::from_env_default()?,
        };
        let bind = self.bind.unwrap_or_else(|| "127.0.0.1:0".into());
        let addrs: Vec<SocketAddr> = bind
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {bind}"), e))?
            .collect();
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| Error::io(format!("listening on {bind}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading listener address", e))?;
        if self.max_handshakes == 0 || self.max_handshakes_per_peer == 0 {
            return Err(Error::Config(
                "max_handshakes and max_handshakes_per_peer must be at least 1".into(),
            ));
        }
        if self.heartbeat.is_zero() || self.heartbeat > Duration::from_secs(60) {
            return Err(Error::Config(
                "heartbeat must be between 1 ms and 60 s".into(),
            ));
        }
        let shared = Arc::new(NodeShared {
            addr,
            psk,
            heartbeat: self.heartbeat,
            topics: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            events: Mutex::new(VecDeque::new()),
            device: self.device,
            gid_index: self.gid_index,
            verbs: self.verbs,
            slots: HandshakeSlots::new(self.max_handshakes, self.max_handshakes_per_peer),
            refusal_log: LogLimiter::new(10, Duration::from_secs(10)),
            fd_exchange: std::sync::OnceLock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rdmabus-listen".into())
            .spawn(move || accept_loop(listener, s))
            .map_err(|e| Error::io("spawning the listener thread", e))?;
        tracing::info!(%addr, "node listening");
        Ok(Node {
            shared,
            thread: Some(thread),
        })
    }
}

fn accept_loop(listener: TcpListener, node: Arc<NodeShared>) {
    for conn in listener.incoming() {
        if node.shutdown.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                // No thread, and nothing read, for a connection beyond the caps.
                let permit = match node.slots.try_acquire(peer.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        drop(stream);
                        node.log_refusal(peer, &format!("connection closed: {why}"));
                        continue;
                    }
                };
                let n = node.clone();
                let spawned = std::thread::Builder::new()
                    .name("rdmabus-conn".into())
                    .spawn(move || accept::serve(n, stream, permit));
                if let Err(e) = spawned {
                    tracing::error!("cannot spawn a connection thread: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The control-plane listener of a process. Publishers are created from it; dropping it stops
/// accepting new subscribers (existing links live on with their publishers).
pub struct Node {
    shared: Arc<NodeShared>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// A builder with the defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            bind: None,
            psk: None,
            heartbeat: Duration::from_millis(200),
            device: None,
            gid_index: None,
            verbs: Default::default(),
            max_handshakes: limits::DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_peer: limits::DEFAULT_MAX_HANDSHAKES_PER_PEER,
        }
    }

    /// The address subscribers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Starts building a publisher of `T` on `topic`.
    pub fn publisher<T: Message>(&self, topic: &str) -> PublisherBuilder<T> {
        PublisherBuilder::new(self.shared.clone(), topic)
    }

    /// Handshakes in progress right now.
    pub fn handshakes_in_progress(&self) -> u32 {
        self.shared.slots.in_progress()
    }

    /// Takes the control-plane events recorded since the last call (joins, refusals).
    pub fn events(&self) -> Vec<NodeEvent> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

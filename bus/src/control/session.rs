//! After the handshake: sealed heartbeats both ways, goodbye, and the shared state of one link
//! that the hot path reads with a single relaxed load.

use super::framed::{is_disconnect, FramedStream};
use crate::clock::now_ns;
use rdmabus_proto::handshake::{ControlMsg, Goodbye, GoodbyeReason, Heartbeat, Session, StreamEnd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ACTIVE: u8 = 0;
const LOCAL_CLOSE: u8 = 1;
const PEER_LOST: u8 = 2;
const PEER_CLOSED: u8 = 3;

/// How a link ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Still up.
    Active,
    /// This side closed it (reason sent to the peer).
    Local(GoodbyeReason, String),
    /// The peer vanished: connection lost, killed, heartbeats stopped, or a protocol error.
    Lost(String),
    /// The peer said goodbye.
    Closed(GoodbyeReason, String),
}

/// State of one link shared between the hot path and its session thread.
pub struct LinkState {
    code: AtomicU8,
    ended: Mutex<Ended>,
    finished: std::sync::atomic::AtomicBool,
    /// Where the publisher's stream ended: set by the publisher before it closes (sent in
    /// its goodbye), or from the publisher's goodbye on the subscriber's side.
    stream_end: Mutex<Option<StreamEnd>>,
}

impl LinkState {
    /// A new active link.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            code: AtomicU8::new(ACTIVE),
            ended: Mutex::new(Ended::Active),
            finished: Default::default(),
            stream_end: Mutex::new(None),
        })
    }

    /// Hot path: whether the link is still up.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.code.load(Ordering::Relaxed) == ACTIVE
    }

    fn set(&self, code: u8, ended: Ended) -> bool {
        let mut guard = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if *guard != Ended::Active {
            return false;
        }
        *guard = ended;
        self.code.store(code, Ordering::Release);
        true
    }

    /// Asks the session to say goodbye with `reason` and close.
    pub fn close_locally(&self, reason: GoodbyeReason, message: impl Into<String>) -> bool {
        self.set(LOCAL_CLOSE, Ended::Local(reason, message.into()))
    }

    /// Publisher: says goodbye with `reason`, naming where the stream ended.
    pub fn close_with_end(
        &self,
        reason: GoodbyeReason,
        message: impl Into<String>,
        end: StreamEnd,
    ) -> bool {
        let mut g = self.stream_end.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_active() {
            *g = Some(end);
        }
        drop(g);
        self.close_locally(reason, message)
    }

    /// Where the publisher's stream ended, if it said so.
    pub fn stream_end(&self) -> Option<StreamEnd> {
        *self.stream_end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the peer vanished.
    pub fn peer_lost(&self, why: impl Into<String>) -> bool {
        self.set(PEER_LOST, Ended::Lost(why.into()))
    }

    /// Records the peer's goodbye, and where its stream ended.
    pub fn peer_said_goodbye(&self, g: Goodbye) {
        if let Some(end) = g.end {
            let mut e = self.stream_end.lock().unwrap_or_else(|p| p.into_inner());
            if self.is_active() {
                *e = Some(end);
            }
        }
        self.peer_closed(g.reason, g.message);
    }

    /// Records the peer's goodbye.
    pub fn peer_closed(&self, reason: GoodbyeReason, message: impl Into<String>) -> bool {
        self.set(PEER_CLOSED, Ended::Closed(reason, message.into()))
    }

    /// Whether the session thread has finished (goodbye sent, connection closed).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// How the link ended (cold path).
    pub fn ended(&self) -> Ended {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The connection and its sealed session, after the handshake.
pub struct Channel {
    /// The TCP connection.
    pub stream: FramedStream,
    /// Seals what is sent, opens what is received.
    pub session: Session,
}

impl Channel {
    fn send(&mut self, msg: &ControlMsg) -> Result<(), crate::Error> {
        let frame = self.session.seal(msg);
        self.stream.send_raw(&frame)
    }

    /// The next authentic message, waiting until `deadline`.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<ControlMsg>, crate::Error> {
        loop {
            if let Some(m) = self
                .session
                .poll_message()
                .map_err(|e| crate::Error::Protocol(e.to_string()))?
            {
                return Ok(Some(m));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read_until(deadline, &mut chunk)? {
                None => return Ok(None),
                Some(n) => self
                    .session
                    .handle_input(&chunk[..n])
                    .map_err(|e| crate::Error::Protocol(e.to_string()))?,
            }
        }
    }
}

/// Runs heartbeats for a link on its own thread until either side ends it.
pub fn spawn(
    mut chan: Channel,
    state: Arc<LinkState>,
    heartbeat: Duration,
    name: String,
) -> Result<JoinHandle<()>, crate::Error> {
    std::thread::Builder::new()
        .name("rdmabus-ctl".into())
        .spawn(move || run(&mut chan, &state, heartbeat, &name))
        .map_err(|e| crate::Error::io("spawning a control thread", e))
}

/// Runs heartbeats for a link on the calling thread until either side ends it.
pub fn run(chan: &mut Channel, state: &LinkState, heartbeat: Duration, name: &str) {
    run_inner(chan, state, heartbeat, name);
    state.finished.store(true, Ordering::Release);
}

fn run_inner(stream: &mut Channel, state: &LinkState, heartbeat: Duration, name: &str) {
    let dead_after = (heartbeat * 5).max(Duration::from_millis(500));
    let tick = heartbeat.min(Duration::from_millis(20));
    let mut next_beat = Instant::now();
    let mut last_rx = Instant::now();
    loop {
        match state.ended() {
            Ended::Active => {}
            Ended::Local(reason, message) => {
                let end = state.stream_end();
                let _ = stream.send(&ControlMsg::Goodbye(Goodbye {
                    reason,
                    message,
                    end,
                }));
                stream.stream.shutdown();
                return;
            }
            Ended::Lost(_) | Ended::Closed(..) => {
                stream.stream.shutdown();
                return;
            }
        }
        let now = Instant::now();
        if now >= next_beat {
            if let Err(e) = stream.send(&ControlMsg::Heartbeat(Heartbeat { sent_ns: now_ns() })) {
                // The peer may have said goodbye and closed: its goodbye is still readable.
                let deadline = Instant::now() + Duration::from_millis(100);
                loop {
                    match stream.recv_until(deadline) {
                        Ok(Some(ControlMsg::Goodbye(g))) => {
                            state.peer_said_goodbye(g);
                            break;
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => {
                            crate::stats_file::note_error(format_args!("{name}: heartbeat: {e}"));
                            state.peer_lost(format!("sending heartbeat: {e}"));
                            break;
                        }
                    }
                }
                continue;
            }
            next_beat = now + heartbeat;
        }
        match stream.recv_until(Instant::now() + tick) {
            Ok(Some(ControlMsg::Heartbeat(_))) => last_rx = Instant::now(),
            Ok(Some(ControlMsg::Goodbye(g))) => {
                tracing::debug!(link = ?name, reason = ?g.reason, message = ?g.message, "peer said goodbye");
                state.peer_said_goodbye(g);
            }
            Ok(Some(other)) => {
                let why = format!(
                    "protocol violation: unexpected {} after the handshake",
                    other.kind()
                );
                tracing::warn!(link = ?name, "{why}");
                crate::stats_file::note_error(format_args!("{name}: {why}"));
                if state.peer_lost(why.clone()) {
                    let _ = stream.send(&ControlMsg::Goodbye(Goodbye {
                        reason: GoodbyeReason::Error,
                        message: why,
                        end: None,
                    }));
                }
            }
            Ok(None) => {
                if last_rx.elapsed() > dead_after {
                    let why = format!("no heartbeat for {} ms", last_rx.elapsed().as_millis());
                    tracing::warn!(link = ?name, "{why}");
                    crate::stats_file::note_error(format_args!("{name}: {why}"));
                    state.peer_lost(why);
                }
            }
            Err(e) => {
                let why = if is_disconnect(&e) {
                    format!("connection lost ({e})")
                } else {
                    e.to_string()
                };
                tracing::info!(link = ?name, "{}", why.escape_debug());
                crate::stats_file::note_error(format_args!("{name}: {why}"));
                state.peer_lost(why);
            }
        }
    }
}

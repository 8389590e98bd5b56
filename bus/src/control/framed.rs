//! A TCP control connection: bytes with deadlines (the handshake state machines and the
//! session consume them), and plain-frame helpers for peers that speak the raw protocol.

use crate::Error;
use rdmabus_proto::handshake::{ControlMsg, FrameDecoder};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Most bytes read from the socket at once.
const CHUNK: usize = 4096;

/// A TCP stream carrying control frames.
pub struct FramedStream {
    stream: TcpStream,
    peer: SocketAddr,
    decoder: FrameDecoder,
}

impl FramedStream {
    /// Wraps a connected stream (sets TCP_NODELAY and a 5 s write timeout).
    pub fn new(stream: TcpStream) -> Result<Self, Error> {
        let peer = stream
            .peer_addr()
            .map_err(|e| Error::io("reading peer address", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| Error::io("setting write timeout", e))?;
        Ok(Self {
            stream,
            peer,
            decoder: FrameDecoder::default(),
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// This side's address (the interface the connection uses).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.stream
            .local_addr()
            .map_err(|e| Error::io("reading local address", e))
    }

    /// Sends bytes as they are (whole frames from a state machine, or deliberately not).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io(format!("sending to {}", self.peer), e))
    }

    /// Sends one unsealed message (raw peers and tests; the bus seals through its session).
    pub fn send(&mut self, msg: &ControlMsg) -> Result<(), Error> {
        self.send_raw(&msg.encode())
    }

    /// Reads what the peer sent, waiting until `deadline`: `Ok(None)` if nothing came by
    /// then; a closed connection is an error of kind `UnexpectedEof`.
    pub fn read_until(
        &mut self,
        deadline: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(wait))
            .map_err(|e| Error::io("setting read timeout", e))?;
        match self.stream.read(buf) {
            Ok(0) => Err(Error::io(
                format!("connection to {}", self.peer),
                std::io::Error::new(ErrorKind::UnexpectedEof, "closed by peer"),
            )),
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("reading from {}", self.peer), e)),
        }
    }

    /// Receives one unsealed message, waiting until `deadline`; `Ok(None)` if none arrived by
    /// then (raw peers and tests).
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<ControlMsg>, Error> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                frame.header.check_version()?;
                return Ok(Some(frame.decode_plain()?));
            }
            let mut chunk = [0u8; CHUNK];
            match self.read_until(deadline, &mut chunk)? {
                None => return Ok(None),
                Some(n) => self.decoder.push(&chunk[..n])?,
            }
        }
    }

    /// Receives one unsealed message within `timeout`, or fails naming what was awaited.
    pub fn recv_within(&mut self, timeout: Duration, what: &str) -> Result<ControlMsg, Error> {
        self.recv_until(Instant::now() + timeout)?.ok_or_else(|| {
            Error::Timeout(format!("no {what} from {} within {timeout:?}", self.peer))
        })
    }

    /// Receives one whole frame (sealed or not) as bytes, within `timeout` (raw peers).
    pub fn recv_frame_within(
        &mut self,
        timeout: Duration,
    ) -> Result<rdmabus_proto::handshake::RawFrame, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let mut chunk = [0u8; CHUNK];
            match self.read_until(deadline, &mut chunk)? {
                None => {
                    return Err(Error::Timeout(format!(
                        "no frame from {} within {timeout:?}",
                        self.peer
                    )))
                }
                Some(n) => self.decoder.push(&chunk[..n])?,
            }
        }
    }

    /// Closes both directions.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Whether an error means the peer closed or reset the connection.
pub fn is_disconnect(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if matches!(source.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted))
}

//! Control messages over a TCP stream, with deadlines and partial-read buffering.

use crate::Error;
use rdmabus_proto::frame::{decode_header, FrameError, FRAME_HEADER_LEN};
use rdmabus_proto::handshake::ControlMsg;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A TCP stream that sends and receives framed control messages.
pub struct FramedStream {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
}

impl FramedStream {
    /// Wraps a connected stream (sets TCP_NODELAY).
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
            buf: Vec::with_capacity(4096),
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

    /// Sends one message.
    pub fn send(&mut self, msg: &ControlMsg) -> Result<(), Error> {
        self.send_raw(&msg.encode())
    }

    /// Sends bytes as they are (already framed, or deliberately not).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io(format!("sending to {}", self.peer), e))
    }

    /// Receives one message, waiting until `deadline`; `Ok(None)` if none arrived by then.
    /// A closed connection is an error of kind `UnexpectedEof`.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<ControlMsg>, Error> {
        loop {
            if let Some(msg) = self.take_frame()? {
                return Ok(Some(msg));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(|e| Error::io("setting read timeout", e))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::io(
                        format!("connection to {}", self.peer),
                        std::io::Error::new(ErrorKind::UnexpectedEof, "closed by peer"),
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Error::io(format!("reading from {}", self.peer), e)),
            }
        }
    }

    /// Receives one message within `timeout`, or fails naming what was awaited.
    pub fn recv_within(&mut self, timeout: Duration, what: &str) -> Result<ControlMsg, Error> {
        self.recv_until(Instant::now() + timeout)?.ok_or_else(|| {
            Error::Timeout(format!("no {what} from {} within {timeout:?}", self.peer))
        })
    }

    fn take_frame(&mut self) -> Result<Option<ControlMsg>, Error> {
        if self.buf.len() < FRAME_HEADER_LEN {
            // Garbage shorter than a header is caught as soon as the magic is wrong.
            if !self.buf.is_empty() && !b"RDMB".starts_with(&self.buf[..self.buf.len().min(4)]) {
                let mut m = [0u8; 4];
                m[..self.buf.len().min(4)].copy_from_slice(&self.buf[..self.buf.len().min(4)]);
                return Err(FrameError::BadMagic(m).into());
            }
            return Ok(None);
        }
        let header = decode_header(self.buf[..FRAME_HEADER_LEN].try_into().unwrap())?;
        header.check_version()?;
        let end = FRAME_HEADER_LEN + header.len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = ControlMsg::decode(&self.buf[FRAME_HEADER_LEN..end])?;
        self.buf.drain(..end);
        Ok(Some(msg))
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

//! `rdmabus stat --listen ADDR`: `/metrics` over HTTP/1.x, one short-lived thread per
//! connection, one request per connection. A client is given [`CLIENT_DEADLINE`] in all to
//! send a request head of at most [`MAX_HEAD`] bytes and take the answer; at most
//! [`MAX_CLIENTS`] are served at once (more are closed at once), so a slow or hostile client
//! holds one thread for a bounded time and never stops the server.

use rdmabus::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time a client has, from its connection, to send its request and take the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes a request head may take.
pub const MAX_HEAD: usize = 8192;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 32;

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// `GET /metrics` (or `HEAD`); whether it accepts OpenMetrics.
    Metrics { head: bool, openmetrics: bool },
    /// Another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not HTTP.
    Bad,
}

fn parse(head: &[u8]) -> Ask {
    let Ok(text) = std::str::from_utf8(head) else {
        return Ask::Bad;
    };
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with("HTTP/1.") || first.next().is_some() {
        return Ask::Bad;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ask::BadMethod,
    };
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Ask::NotFound;
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    Ask::Metrics { head, openmetrics }
}

/// Reads a request head (up to the blank line) before `deadline`; `Err(431)` when too long.
fn read_head(s: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Option<u16>> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        s.set_read_timeout(Some(left)).map_err(|_| None)?;
        let n = match s.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => n,
        };
        // Look for the end from a little before the new bytes (it may straddle reads).
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = buf[from..len].windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(from + end);
            return Ok(buf);
        }
        if len == MAX_HEAD {
            return Err(Some(431));
        }
    }
}

/// Writes all of `bytes` before `deadline`.
fn write_all(s: &mut TcpStream, bytes: &[u8], deadline: Instant) -> bool {
    for chunk in bytes.chunks(16 * 1024) {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.set_write_timeout(Some(left)).is_err() {
                return false;
            }
            match s.write(chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => chunk = &chunk[n..],
            }
        }
    }
    true
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
    head: bool,
    by: Instant,
) -> bool {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    write_all(s, &out, by)
}

/// Serves one connection; true when it was answered with the metrics.
fn serve_one(mut s: TcpStream, only: Option<u32>) -> bool {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    if s.set_nonblocking(false).is_err() {
        return false;
    }
    let _ = s.set_nodelay(true);
    let text = "text/plain; charset=utf-8";
    let answered = match read_head(&mut s, deadline) {
        Err(None) => false,
        Err(Some(_)) => {
            respond(
                &mut s,
                "431 Request Header Fields Too Large",
                text,
                "request head too long\n",
                false,
                deadline,
            );
            false
        }
        Ok(h) => match parse(&h) {
            Ask::Metrics { head, openmetrics } => {
                let procs = super::snapshot::snapshot(&rdmabus::stats_file::list(), only);
                let body = super::prom::encode(procs, openmetrics);
                let ctype = if openmetrics {
                    super::prom::OPENMETRICS_TYPE
                } else {
                    super::prom::PROMETHEUS_TYPE
                };
                respond(&mut s, "200 OK", ctype, &body, head, deadline)
            }
            Ask::NotFound => {
                respond(
                    &mut s,
                    "404 Not Found",
                    text,
                    "not found: try /metrics\n",
                    false,
                    deadline,
                );
                false
            }
            Ask::BadMethod => {
                respond(
                    &mut s,
                    "405 Method Not Allowed",
                    text,
                    "GET or HEAD\n",
                    false,
                    deadline,
                );
                false
            }
            Ask::Bad => {
                respond(
                    &mut s,
                    "400 Bad Request",
                    text,
                    "bad request\n",
                    false,
                    deadline,
                );
                false
            }
        },
    };
    let _ = s.shutdown(std::net::Shutdown::Both);
    answered
}

/// Serves `/metrics` on `addr` until a signal, or `count` answers with the metrics.
pub fn run(addr: SocketAddr, count: Option<u64>, only: Option<u32>) -> Result<(), Error> {
    let listener =
        TcpListener::bind(addr).map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting the listener non-blocking", e))?;
    eprintln!("rdmabus stat: serving /metrics on http://{local}/metrics");
    let answered = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        if crate::signals::stopped().is_some() {
            return Ok(());
        }
        if count.is_some_and(|c| answered.load(Ordering::Acquire) >= c) {
            return Ok(());
        }
        match listener.accept() {
            Ok((s, _peer)) => {
                if open.load(Ordering::Acquire) >= MAX_CLIENTS {
                    drop(s); // busy: closed at once
                    continue;
                }
                open.fetch_add(1, Ordering::AcqRel);
                let (a, o) = (answered.clone(), open.clone());
                let spawned = std::thread::Builder::new()
                    .name("rdmabus-metrics".into())
                    .spawn(move || {
                        if serve_one(s, only) {
                            a.fetch_add(1, Ordering::AcqRel);
                        }
                        o.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::warn!("accepting a metrics client: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_strictly() {
        let m = |head, openmetrics| Ask::Metrics { head, openmetrics };
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x"), m(false, false));
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0"), m(false, false));
        assert_eq!(parse(b"HEAD /metrics HTTP/1.1"), m(true, false));
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0"),
            m(false, true)
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Ask::NotFound);
        assert_eq!(parse(b"GET /metricsx HTTP/1.1"), Ask::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1"), Ask::BadMethod);
        assert_eq!(parse(b"GET /metrics"), Ask::Bad);
        assert_eq!(parse(b"GET /metrics SPDY/3"), Ask::Bad);
        assert_eq!(parse(b"\xff\xfe"), Ask::Bad);
    }
}

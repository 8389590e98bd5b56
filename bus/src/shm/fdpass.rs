//! Passing file descriptors (the sealed memfds of a shared-memory link) between processes
//! over an abstract-namespace Unix socket with `SCM_RIGHTS`.
//!
//! The side that waits ([`FdExchange`], the publisher) listens on `rdmabus/<pid>/<random>`
//! and registers single-use 32-byte tickets ([`FdExchange::expect`]); the other side
//! ([`exchange`]) connects, presents a ticket with its descriptors and receives the reply's.
//! Abstract sockets carry no permissions, so anyone in the network namespace can connect:
//! the ticket is what authorizes a connection. Everything a connection can send is bounded
//! (one fixed-size request, at most [`MAX_FDS`] descriptors, a read timeout, at most
//! [`MAX_CONNECTIONS`] served at once); anything else is closed without a reply.

use crate::Error;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of a ticket.
pub const TICKET_LEN: usize = 32;
/// Descriptors one message may carry, either way.
pub const MAX_FDS: usize = 4;
/// Connections served at once; beyond them a new connection is closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The byte of a successful reply.
const REPLY_OK: u8 = 1;
/// Bytes of a control-message buffer for `MAX_FDS` descriptors.
// SAFETY: CMSG_SPACE is plain arithmetic on its argument.
const CMSG_BUF_LEN: usize = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;

/// A control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// The waiting side of a descriptor exchange: an abstract socket and its accept thread.
pub struct FdExchange {
    name: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    tickets: Mutex<HashMap<[u8; TICKET_LEN], Slot>>,
    arrived: Condvar,
    active: AtomicUsize,
    /// An eventfd: readable once the exchange is dropped.
    stop: OwnedFd,
}

enum Slot {
    Waiting,
    Arrived { conn: OwnedFd, fds: Vec<OwnedFd> },
}

fn os_err(context: impl Into<String>) -> Error {
    Error::io(context, std::io::Error::last_os_error())
}

fn retry<T: Copy + PartialOrd + Default>(mut f: impl FnMut() -> T) -> std::io::Result<T> {
    loop {
        let r = f();
        if r >= T::default() {
            return Ok(r);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn abstract_addr(name: &str) -> Result<(libc::sockaddr_un, libc::socklen_t), Error> {
    // SAFETY: an all-zero sockaddr_un is a valid value of this plain C struct.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() + 1 > addr.sun_path.len() {
        return Err(Error::Config(format!(
            "fd exchange name {name:?} is empty or too long"
        )));
    }
    // sun_path[0] stays 0: the abstract namespace.
    for (dst, &b) in addr.sun_path[1..].iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + bytes.len();
    Ok((addr, len as libc::socklen_t))
}

fn seqpacket(flags: libc::c_int) -> Result<OwnedFd, Error> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if fd < 0 {
        return Err(os_err("creating a Unix socket"));
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_timeout(fd: BorrowedFd<'_>, opt: libc::c_int, d: Duration) -> Result<(), Error> {
    // Zero would mean "no timeout".
    let d = d.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval of the size passed, alive for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(os_err("setting a socket timeout"));
    }
    Ok(())
}

/// Sends `data` as one message with `fds` attached (at most `MAX_FDS`).
fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut cmsg = CmsgBuf([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value of this plain C struct.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is plain arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        // SAFETY: msg_control points to CMSG_BUF_LEN aligned bytes, at least the
        // CMSG_SPACE(bytes) set as msg_controllen, so the first header and its data (bytes
        // <= MAX_FDS * 4) lie inside the buffer.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            let data = libc::CMSG_DATA(hdr) as *mut RawFd;
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points to a valid iovec over `data` and a control buffer that outlive the
    // call; the kernel only reads them.
    let n = retry(|| unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    if n as usize != data.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short send",
        ));
    }
    Ok(())
}

/// One received message: its length, its descriptors (CLOEXEC), and whether it was whole.
struct Received {
    len: usize,
    fds: Vec<OwnedFd>,
    truncated: bool,
    ctrl_truncated: bool,
    other_control: bool,
}

/// Receives one message into `buf`, with at most `MAX_FDS` descriptors (more set
/// `ctrl_truncated`; the kernel closes those that did not fit).
fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut cmsg = CmsgBuf([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value of this plain C struct.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF_LEN;
    // SAFETY: msg points to a valid iovec over `buf` and to the control buffer, both
    // writable and alive for the call, with their true lengths.
    let n = retry(|| unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut out = Received {
        len: n as usize,
        fds: Vec::new(),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        ctrl_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        other_control: false,
    };
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed control
    // messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them. Each SCM_RIGHTS descriptor was
    // just installed in our table by this recvmsg and is owned by nobody else.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr) as *const RawFd;
                let bytes = ((*hdr).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    out.fds
                        .push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            } else {
                out.other_control = true;
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    Ok(out)
}

fn random_hex() -> Result<String, Error> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| Error::Config(format!("random source: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl FdExchange {
    /// Listens on the abstract socket `rdmabus/<pid>/<16 random hex digits>` and starts the
    /// accept thread.
    pub fn bind() -> Result<FdExchange, Error> {
        let name = format!("rdmabus/{}/{}", std::process::id(), random_hex()?);
        let (addr, len) = abstract_addr(&name)?;
        let listener = seqpacket(libc::SOCK_NONBLOCK)?;
        // SAFETY: addr is a valid sockaddr_un of at least `len` bytes, alive for the call.
        let r = unsafe {
            libc::bind(
                listener.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        if r != 0 {
            return Err(os_err(format!("binding the fd exchange socket {name}")));
        }
        // SAFETY: listen(2) takes no pointers.
        if unsafe { libc::listen(listener.as_raw_fd(), MAX_CONNECTIONS as libc::c_int) } != 0 {
            return Err(os_err(format!("listening on {name}")));
        }
        // SAFETY: eventfd(2) takes no pointers.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(os_err("creating an eventfd"));
        }
        let shared = Arc::new(Shared {
            tickets: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            active: AtomicUsize::new(0),
            // SAFETY: eventfd just returned this descriptor; nothing else owns it.
            stop: unsafe { OwnedFd::from_raw_fd(stop) },
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rdmabus-fdx".into())
            .spawn(move || accept_loop(listener, s))
            .map_err(|e| Error::io("starting the fd exchange thread", e))?;
        Ok(FdExchange {
            name,
            shared,
            thread: Some(thread),
        })
    }

    /// The abstract socket's name, for the peer's [`exchange`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the single-use `ticket` and waits, until `deadline`, for a peer to present
    /// it; then sends `reply` (at most [`MAX_FDS`]) back over that connection and returns the
    /// peer's descriptors. The ticket is removed either way.
    pub fn expect(
        &self,
        ticket: [u8; TICKET_LEN],
        reply: Vec<OwnedFd>,
        deadline: Instant,
    ) -> Result<Vec<OwnedFd>, Error> {
        self.try_register(ticket, reply)?.wait(deadline)
    }

    /// Registers the single-use `ticket` now (before the peer is told it, so it can never
    /// arrive first), to be waited for later with [`Registration::wait`]. The ticket is
    /// removed when the registration is dropped. Panics on more than [`MAX_FDS`] replies or a
    /// ticket already registered (tickets are random).
    pub fn register(&self, ticket: [u8; TICKET_LEN], reply: Vec<OwnedFd>) -> Registration {
        self.try_register(ticket, reply)
            .expect("a fresh random ticket and at most MAX_FDS descriptors")
    }

    fn try_register(
        &self,
        ticket: [u8; TICKET_LEN],
        reply: Vec<OwnedFd>,
    ) -> Result<Registration, Error> {
        if reply.len() > MAX_FDS {
            return Err(Error::Config(format!(
                "{} descriptors to pass, at most {MAX_FDS}",
                reply.len()
            )));
        }
        let mut tickets = self
            .shared
            .tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if tickets.contains_key(&ticket) {
            return Err(Error::Config(
                "fd exchange ticket already registered".into(),
            ));
        }
        tickets.insert(ticket, Slot::Waiting);
        Ok(Registration {
            shared: self.shared.clone(),
            name: self.name.clone(),
            ticket,
            reply,
        })
    }
}

/// A ticket registered on an [`FdExchange`], waiting for its peer.
pub struct Registration {
    shared: Arc<Shared>,
    name: String,
    ticket: [u8; TICKET_LEN],
    reply: Vec<OwnedFd>,
}

impl Registration {
    /// Waits, until `deadline`, for the peer to present the ticket; then sends the reply's
    /// descriptors back over that connection and returns the peer's.
    pub fn wait(self, deadline: Instant) -> Result<Vec<OwnedFd>, Error> {
        let mut tickets = self
            .shared
            .tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (conn, fds) = loop {
            if matches!(tickets.get(&self.ticket), Some(Slot::Arrived { .. })) {
                match tickets.remove(&self.ticket) {
                    Some(Slot::Arrived { conn, fds }) => break (conn, fds),
                    _ => unreachable!("checked under the same lock"),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tickets.remove(&self.ticket);
                return Err(Error::Timeout(format!(
                    "no peer presented its ticket on fd exchange {}",
                    self.name
                )));
            }
            tickets = self
                .shared
                .arrived
                .wait_timeout(tickets, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(tickets);
        let borrowed: Vec<BorrowedFd<'_>> = self.reply.iter().map(|f| f.as_fd()).collect();
        send_with_fds(conn.as_fd(), &[REPLY_OK], &borrowed)
            .map_err(|e| Error::io("sending descriptors back over the fd exchange", e))?;
        Ok(fds)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Gone already if it was waited for; otherwise the peer never came.
        self.shared
            .tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ticket);
    }
}

impl Drop for FdExchange {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.shared.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decrements the count of connections being served when a handler ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: OwnedFd, shared: Arc<Shared>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of 2 pollfd, alive for the call.
        if retry(|| unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) }).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        // SAFETY: accept4 with null address pointers (we do not want the peer address).
        let raw = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED)
            ) {
                // Out of descriptors or memory: do not spin.
                tracing::warn!("fd exchange: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            continue; // closes it
        }
        let guard = ActiveGuard(shared.clone());
        let spawned = std::thread::Builder::new()
            .name("rdmabus-fdx-conn".into())
            .spawn(move || serve(conn, guard));
        if let Err(e) = spawned {
            tracing::warn!("fd exchange: no thread for a connection: {e}");
        }
    }
}

/// Reads one request from `conn`; hands it to the `expect` waiting for its ticket, or closes.
fn serve(conn: OwnedFd, guard: ActiveGuard) {
    let shared = &guard.0;
    if set_timeout(conn.as_fd(), libc::SO_RCVTIMEO, READ_TIMEOUT).is_err()
        || set_timeout(conn.as_fd(), libc::SO_SNDTIMEO, READ_TIMEOUT).is_err()
    {
        return;
    }
    let mut ticket = [0u8; TICKET_LEN];
    let Ok(req) = recv_with_fds(conn.as_fd(), &mut ticket) else {
        return;
    };
    if req.ctrl_truncated {
        // The kernel could not install the descriptors: this process is out of them.
        tracing::warn!(
            "fd exchange: a peer's descriptors were lost (out of file descriptors? raise \
             RLIMIT_NOFILE)"
        );
    }
    if req.len != TICKET_LEN
        || req.truncated
        || req.ctrl_truncated
        || req.other_control
        || req.fds.len() > MAX_FDS
    {
        return; // drops (closes) the connection and every descriptor received
    }
    let mut tickets = shared.tickets.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot @ Slot::Waiting) = tickets.get_mut(&ticket) {
        *slot = Slot::Arrived { conn, fds: req.fds };
        shared.arrived.notify_all();
    }
}

/// The peer's side: connects to the fd exchange `name`, presents `ticket` with `fds` (at
/// most [`MAX_FDS`]) and returns the descriptors sent back, all before `deadline`.
pub fn exchange(
    name: &str,
    ticket: [u8; TICKET_LEN],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> Result<Vec<OwnedFd>, Error> {
    if fds.len() > MAX_FDS {
        return Err(Error::Config(format!(
            "{} descriptors to pass, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let timeout = || {
        Error::Timeout(format!(
            "fd exchange {name} did not answer before the deadline"
        ))
    };
    let remaining = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(timeout)?;
    let (addr, len) = abstract_addr(name)?;
    let sock = seqpacket(0)?;
    set_timeout(sock.as_fd(), libc::SO_RCVTIMEO, remaining)?;
    set_timeout(sock.as_fd(), libc::SO_SNDTIMEO, remaining)?;
    let is_timeout = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN | libc::EINPROGRESS | libc::ETIMEDOUT)
        )
    };
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes, alive for the call.
    let r = retry(|| unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    });
    match r {
        Ok(_) => {}
        Err(e) if is_timeout(&e) => return Err(timeout()),
        Err(e) => return Err(Error::io(format!("connecting to fd exchange {name}"), e)),
    }
    match send_with_fds(sock.as_fd(), &ticket, fds) {
        Ok(()) => {}
        Err(e) if is_timeout(&e) => return Err(timeout()),
        Err(e) => return Err(Error::io(format!("sending to fd exchange {name}"), e)),
    }
    let mut reply = [0u8; 1];
    let got = match recv_with_fds(sock.as_fd(), &mut reply) {
        Ok(got) => got,
        Err(e) if is_timeout(&e) => return Err(timeout()),
        Err(e) => return Err(Error::io(format!("receiving from fd exchange {name}"), e)),
    };
    if got.ctrl_truncated {
        return Err(Error::Protocol(format!(
            "fd exchange {name} sent more than {MAX_FDS} descriptors (control message truncated)"
        )));
    }
    if got.len == 0 {
        return Err(Error::Protocol(format!(
            "fd exchange {name} refused the ticket (unknown, expired or already used)"
        )));
    }
    if got.len != 1 || got.truncated || got.other_control || reply[0] != REPLY_OK {
        return Err(Error::Protocol(format!(
            "fd exchange {name} sent a malformed reply"
        )));
    }
    Ok(got.fds)
}

//! Sealed memfds and the descriptor exchange, with real memfds, pipes and sockets.

use super::fdpass::{self, FdExchange, MAX_CONNECTIONS, TICKET_LEN};
use super::{ShmLocalRing, ShmRegion, ShmRemoteRing, CREDIT_FILE_LEN};
use crate::transport::{LocalRing, RemoteRing};
use crate::Error;
use rdmabus_proto::{RingGeometry, SlotHeader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// A memfd of `len` bytes, every page written, with `seals` added (`None`: created without
/// MFD_ALLOW_SEALING).
fn raw_memfd(len: usize, seals: Option<libc::c_int>) -> OwnedFd {
    let flags = libc::MFD_CLOEXEC
        | if seals.is_some() {
            libc::MFD_ALLOW_SEALING
        } else {
            0
        };
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"rdmabus-test".as_ptr(), flags) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: memfd_create just returned it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let zeros = vec![0u8; len];
    // SAFETY: pwrite from a buffer of `len` bytes into our descriptor.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), zeros.as_ptr().cast(), len, 0) };
    assert_eq!(n, len as isize);
    if let Some(s) = seals.filter(|&s| s != 0) {
        // SAFETY: plain syscall on our descriptor.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, s) };
        assert_eq!(r, 0);
    }
    fd
}

fn refused(fd: OwnedFd, len: usize) -> String {
    match ShmRegion::from_peer_fd(fd, len, "ring") {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

fn ticket() -> [u8; TICKET_LEN] {
    let mut t = [0u8; TICKET_LEN];
    getrandom::getrandom(&mut t).unwrap();
    t
}

/// A plain seqpacket connection to the exchange `name`, to send it anything.
fn raw_connect(name: &str) -> std::os::unix::net::UnixStream {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: socket just returned it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path[1..].iter_mut().zip(name.as_bytes()) {
        *d = b as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    // SAFETY: addr is valid for len bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as u32,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // (A UnixStream only to read and write it; the socket stays seqpacket.)
    std::os::unix::net::UnixStream::from(fd)
}

/// Sends `data` on `s` and says whether the exchange closed it without a reply.
fn closed_without_reply(s: &std::os::unix::net::UnixStream, data: &[u8]) -> bool {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = (&mut &*s).write_all(data);
    let mut b = [0u8; 8];
    matches!((&mut &*s).read(&mut b), Ok(0))
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[test]
fn an_unsealed_memfd_is_refused() {
    let m = refused(raw_memfd(4096, Some(0)), 4096);
    assert!(
        m.contains("ring memfd is not sealed against shrinking"),
        "{m}"
    );
    // Without MFD_ALLOW_SEALING the kernel sets only F_SEAL_SEAL: still not sealed.
    let m = refused(raw_memfd(4096, None), 4096);
    assert!(m.contains("not sealed against shrinking"), "{m}");
    let m = refused(raw_memfd(4096, Some(libc::F_SEAL_SHRINK)), 4096);
    assert!(
        m.contains("ring memfd is not sealed against growing"),
        "{m}"
    );
    let ok = raw_memfd(4096, Some(libc::F_SEAL_SHRINK | libc::F_SEAL_GROW));
    assert_eq!(
        ShmRegion::from_peer_fd(ok, 4096, "ring").unwrap().len(),
        4096
    );
}

#[test]
fn a_hugetlbfs_memfd_is_refused() {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB;
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"rdmabus-test-huge".as_ptr(), flags) };
    if fd < 0 {
        eprintln!(
            "no hugetlbfs memfd here: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: memfd_create just returned it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = 2 << 20;
    // SAFETY: plain syscalls on our descriptor.
    let ok = unsafe {
        libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) == 0
            && libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            ) == 0
    };
    if !ok {
        eprintln!("cannot size or seal a hugetlbfs memfd here");
        return;
    }
    let m = refused(fd, len);
    assert!(m.contains("ring descriptor is not a tmpfs memfd"), "{m}");
}

#[test]
fn a_memfd_of_the_wrong_size_is_refused() {
    let fd = ShmRegion::memfd("ring", 4096)
        .unwrap()
        .fd()
        .try_clone_to_owned()
        .unwrap();
    let m = refused(fd, 8192);
    assert!(m.contains("ring memfd is 4096 bytes, expected 8192"), "{m}");
}

#[test]
fn a_pipe_or_a_socket_is_refused() {
    let mut p = [0; 2];
    // SAFETY: `p` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned both; each is owned once.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let m = refused(r, 4096);
    assert!(m.contains("ring descriptor is not a regular file"), "{m}");
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let m = refused(a.into(), 4096);
    assert!(m.contains("not a regular file"), "{m}");
}

#[test]
fn a_sealed_ring_cannot_be_resized_and_its_mapping_survives() {
    let len = 3 * 4096;
    let region = ShmRegion::memfd("ring", len).unwrap();
    // What the peer holds: its own descriptor of the same memfd.
    let peer = region.fd().try_clone_to_owned().unwrap();
    for size in [0, 4096, len as libc::off_t + 4096] {
        // SAFETY: plain syscall on our descriptor.
        let r = unsafe { libc::ftruncate(peer.as_raw_fd(), size) };
        let e = std::io::Error::last_os_error();
        assert_eq!(
            (r, e.raw_os_error()),
            (-1, Some(libc::EPERM)),
            "ftruncate {size}"
        );
    }
    // SAFETY: plain syscall on our descriptor.
    let r = unsafe { libc::fallocate(peer.as_raw_fd(), 0, 0, 2 * len as libc::off_t) };
    assert_eq!(r, -1, "fallocate past the end must fail");
    // SAFETY: F_ADD_SEALS: no F_SEAL_WRITE while a writable mapping exists (ours).
    let r = unsafe { libc::fcntl(peer.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
    let e = std::io::Error::last_os_error();
    assert_eq!(
        (r, e.raw_os_error()),
        (-1, Some(libc::EBUSY)),
        "F_SEAL_WRITE"
    );
    // Every page, the last byte included, is still there (no SIGBUS).
    let p = region.as_mut_ptr();
    for off in [0, 4096, len - 1] {
        // SAFETY: off < len, inside the mapping; nobody else touches it.
        unsafe {
            p.add(off).write_volatile(0xa5);
            assert_eq!(p.add(off).read_volatile(), 0xa5);
        }
    }
    // Before the peer has sealed it, holes can be punched (and would be allocated anew, to
    // whoever touches them).
    let other = ShmRegion::memfd("ring", len).unwrap();
    assert!(punch(other.fd(), 4096, 4096).is_ok());
    // The peer maps it too and sees the bytes.
    let theirs = ShmRegion::from_peer_fd(peer, len, "ring").unwrap();
    // SAFETY: in bounds of the peer's mapping of the same memfd.
    let last = unsafe { theirs.as_ptr().add(len - 1).read_volatile() };
    assert_eq!(last, 0xa5);
    // Mapped and sealed: no hole can be punched, through the descriptor or a mapping; no new
    // writable mapping or write(2); the two mappings that exist stay writable.
    for fd in [region.fd(), theirs.fd()] {
        let e = punch(fd, 0, len).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }
    // SAFETY: madvise on our live mapping of `len` bytes.
    let r = unsafe { libc::madvise(region.as_mut_ptr().cast(), len, libc::MADV_REMOVE) };
    let e = std::io::Error::last_os_error();
    assert_eq!(
        (r, e.raw_os_error()),
        (-1, Some(libc::EPERM)),
        "MADV_REMOVE"
    );
    let e = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(region.fd().as_raw_fd())
        .unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EPERM),
        "a new writable mapping: {e}"
    );
    // SAFETY: pwrite of one byte from a live buffer.
    let r = unsafe { libc::pwrite(region.fd().as_raw_fd(), [1u8].as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1, "write(2)");
    // SAFETY: in bounds of both mappings; nobody else touches them.
    unsafe {
        region.as_mut_ptr().write_volatile(1);
        theirs.as_mut_ptr().add(1).write_volatile(2);
        assert_eq!(theirs.as_ptr().read_volatile(), 1);
        assert_eq!(region.as_ptr().add(1).read_volatile(), 2);
    }
}

/// `fallocate(PUNCH_HOLE)` of `len` bytes at `offset`.
fn punch(fd: std::os::fd::BorrowedFd<'_>, offset: usize, len: usize) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on a descriptor we hold.
    match unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as _, len as _) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn a_memfd_with_a_hole_is_refused() {
    let len = 4 * 4096;
    // Punched out after it was written.
    let fd = raw_memfd(len, Some(libc::F_SEAL_SHRINK | libc::F_SEAL_GROW));
    punch(fd.as_fd(), 2 * 4096, 4096).unwrap();
    let m = refused(fd, len);
    assert!(
        m.contains("ring memfd has a hole at byte 8192 of 16384"),
        "{m}"
    );
    // Only reserved, never written (its pages read as holes: the peer cannot tell them from
    // punched ones); only sized.
    for reserve in [true, false] {
        // SAFETY: a valid NUL-terminated name.
        let fd = unsafe {
            libc::memfd_create(
                c"rdmabus-test".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        // SAFETY: memfd_create just returned it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscalls on our descriptor.
        unsafe {
            let r = if reserve {
                libc::fallocate(fd.as_raw_fd(), 0, 0, len as libc::off_t)
            } else {
                libc::ftruncate(fd.as_raw_fd(), len as libc::off_t)
            };
            assert_eq!(r, 0);
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
            assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals), 0);
        }
        let m = refused(fd, len);
        assert!(m.contains("ring memfd has a hole at byte 0"), "{m}");
    }
}

#[test]
fn a_memfd_whose_seals_are_sealed_is_refused() {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    let m = refused(raw_memfd(4096, Some(seals)), 4096);
    assert!(
        m.contains("ring memfd cannot be sealed against hole punching"),
        "{m}"
    );
    // Already sealed against punching by its creator: it cannot be mapped writable.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;
    let m = refused(raw_memfd(4096, Some(seals)), 4096);
    assert!(m.contains("mapping the peer's ring memfd"), "{m}");
}

#[test]
fn memfd_refuses_an_empty_region() {
    assert!(matches!(ShmRegion::memfd("ring", 0), Err(Error::Config(_))));
}

#[test]
fn a_full_exchange_maps_both_ways() {
    let geometry = RingGeometry::new(8, 128).unwrap();
    let ex = FdExchange::bind().unwrap();
    assert!(ex
        .name()
        .starts_with(&format!("rdmabus/{}/", std::process::id())));
    assert_eq!(ex.name().rsplit('/').next().unwrap().len(), 16);
    let t = ticket();
    let name = ex.name().to_string();
    // Registered before the subscriber can come, as the publisher does at Accept.
    let credit = ShmRegion::memfd("credit", CREDIT_FILE_LEN).unwrap();
    let reply = vec![credit.fd().try_clone_to_owned().unwrap()];
    let registration = ex.register(t, reply);
    let sub = std::thread::spawn(move || {
        let mut local = ShmLocalRing::create_sealed(geometry).unwrap();
        let mut credit = fdpass::exchange(&name, t, &local.fds(), soon(5000)).unwrap();
        assert_eq!(credit.len(), 1);
        local.attach_credit_fd(credit.pop().unwrap(), 0, 0).unwrap();
        // The publisher's write arrives through the ring: its flags word is the completion.
        let start = Instant::now();
        let imm = loop {
            if let Some(imm) = local.poll().unwrap() {
                break imm;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no completion");
            std::thread::yield_now();
        };
        // Over shm the immediate is the low half of the slot's sequence, not a queue entry.
        assert_eq!(imm, 0);
        // SAFETY: slot 0 lies in the ring mapping (64 bytes at least); the publisher wrote it
        // before the completion and does not write it again; read by copy, not borrowed.
        let slot: [u8; 64] = unsafe { std::ptr::read_unaligned(local.slot_ptr(0).cast()) };
        let header = SlotHeader::from_bytes(&slot).unwrap();
        assert_eq!((header.seq, header.len), (0, 5));
        assert_eq!(&slot[32..37], b"hello");
        // Credit goes back through the publisher's memfd.
        local.return_credit(1).unwrap();
    });
    let mut fds = registration.wait(soon(5000)).unwrap();
    assert_eq!(fds.len(), 1);
    let ring = fds.pop().unwrap();
    // SAFETY: F_GETFD on a descriptor we own.
    let flags = unsafe { libc::fcntl(ring.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(
        flags & libc::FD_CLOEXEC,
        0,
        "received descriptors are CLOEXEC"
    );
    let mut remote = ShmRemoteRing::from_fds_with_credit(ring, credit, geometry).unwrap();
    remote
        .write(0, &SlotHeader::new(0, 1, 5, 0), b"hello", 0)
        .unwrap();
    sub.join().unwrap();
    assert_eq!(remote.consumed(), 1);
}

#[test]
fn the_ring_is_checked_against_the_geometry_and_the_credit_is_shared() {
    let geometry = RingGeometry::new(4, 64).unwrap();
    let credit = || ShmRegion::memfd("credit", CREDIT_FILE_LEN).unwrap();
    let local = ShmLocalRing::create_sealed(geometry).unwrap();
    let [r] = local.fds().map(|f| f.try_clone_to_owned().unwrap());
    let remote = ShmRemoteRing::from_fds_with_credit(r, credit(), geometry).unwrap();
    let mut local = local;
    local
        .attach_credit_fd(remote.credit_fd().try_clone_to_owned().unwrap(), 0, 42)
        .unwrap();
    assert_eq!(remote.consumed(), 42);
    local.return_credit(43).unwrap();
    assert_eq!(remote.consumed(), 43);
    let again = remote.credit_fd().try_clone_to_owned().unwrap();
    let m = local.attach_credit_fd(again, 0, 0).unwrap_err().to_string();
    assert!(m.contains("mapping the peer's credit word memfd"), "{m}");
    // A credit offset outside the credit word's memfd, or unaligned, is refused.
    for offset in [4, 64, u64::MAX - 3] {
        // (A fresh one: once mapped on both sides, a memfd can be mapped writable no more.)
        let fd = credit().fd().try_clone_to_owned().unwrap();
        let m = local
            .attach_credit_fd(fd, offset, 0)
            .unwrap_err()
            .to_string();
        assert!(m.contains("credit offset"), "{offset}: {m}");
    }
    // Another geometry than the memfd was made for.
    let [r] = local.fds().map(|f| f.try_clone_to_owned().unwrap());
    let other = RingGeometry::new(8, 64).unwrap();
    let m = ShmRemoteRing::from_fds_with_credit(r, credit(), other)
        .err()
        .unwrap()
        .to_string();
    assert!(m.contains("ring memfd is 256 bytes, expected 512"), "{m}");
    // The credit word must be the size the subscriber expects.
    let [r] = local.fds().map(|f| f.try_clone_to_owned().unwrap());
    let small = ShmRegion::memfd("credit", 8).unwrap();
    assert!(matches!(
        ShmRemoteRing::from_fds_with_credit(r, small, geometry),
        Err(Error::Config(_))
    ));
}

#[test]
fn a_wrong_ticket_gets_nothing_and_does_not_disturb_the_right_one() {
    let ex = FdExchange::bind().unwrap();
    let right = ticket();
    let payload = ShmRegion::memfd("credit", CREDIT_FILE_LEN).unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let reply = vec![payload.fd().try_clone_to_owned().unwrap()];
            ex.expect(right, reply, soon(5000))
        });
        // Wrong tickets, a short request and garbage, while the right one is pending.
        let mine = ShmRegion::memfd("ring", 4096).unwrap();
        for _ in 0..3 {
            let e = fdpass::exchange(ex.name(), ticket(), &[mine.fd()], soon(3000)).unwrap_err();
            assert!(e.to_string().contains("refused the ticket"), "{e}");
        }
        // Requests of the wrong length: closed, no reply; a silent client: closed after the
        // read timeout.
        assert!(closed_without_reply(&raw_connect(ex.name()), &right[..31]));
        let mut long = right.to_vec();
        long.push(0);
        assert!(closed_without_reply(&raw_connect(ex.name()), &long));
        assert!(closed_without_reply(&raw_connect(ex.name()), b""));
        let got = fdpass::exchange(ex.name(), right, &[mine.fd()], soon(3000)).unwrap();
        assert_eq!(got.len(), 1);
        let theirs = waiting.join().unwrap().unwrap();
        assert_eq!(theirs.len(), 1);
        // Single use: the same ticket again is refused.
        let e = fdpass::exchange(ex.name(), right, &[], soon(3000)).unwrap_err();
        assert!(e.to_string().contains("refused the ticket"), "{e}");
    });
}

#[test]
fn expect_returns_by_its_deadline_when_nobody_comes() {
    let ex = FdExchange::bind().unwrap();
    let t = ticket();
    let start = Instant::now();
    let e = ex.expect(t, Vec::new(), soon(300)).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The ticket is gone.
    let e = fdpass::exchange(ex.name(), t, &[], soon(3000)).unwrap_err();
    assert!(e.to_string().contains("refused the ticket"), "{e}");
    // A client whose deadline passed does not wait either.
    let e = fdpass::exchange(ex.name(), t, &[], Instant::now()).unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
}

#[test]
fn connections_beyond_the_limit_are_closed_and_drop_does_not_hang() {
    let ex = FdExchange::bind().unwrap();
    let name = ex.name().to_string();
    let connect = || raw_connect(&name);
    // MAX_CONNECTIONS idle connections occupy every handler.
    let idle: Vec<_> = (0..MAX_CONNECTIONS).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // One more is closed at once, without waiting for the read timeout.
    let extra = connect();
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let start = Instant::now();
    let mut b = [0u8; 8];
    let n = std::io::Read::read(&mut &extra, &mut b).unwrap();
    assert_eq!(n, 0, "closed");
    assert!(start.elapsed() < Duration::from_millis(900));
    drop(idle);
    // Handlers free up; a right ticket then works.
    let t = ticket();
    std::thread::scope(|s| {
        let w = s.spawn(|| ex.expect(t, Vec::new(), soon(5000)));
        let start = Instant::now();
        loop {
            match fdpass::exchange(ex.name(), t, &[], soon(3000)) {
                Ok(fds) => break assert!(fds.is_empty()),
                Err(e) => assert!(start.elapsed() < Duration::from_secs(4), "{e}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        w.join().unwrap().unwrap();
    });
    // Dropped with a connection still being served: returns promptly.
    let _pending = connect();
    let start = Instant::now();
    drop(ex);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_request_with_too_many_descriptors_is_closed() {
    let ex = FdExchange::bind().unwrap();
    let s = raw_connect(ex.name());
    let memfds: Vec<ShmRegion> = (0..6).map(|_| ShmRegion::memfd("x", 64).unwrap()).collect();
    let raw: Vec<libc::c_int> = memfds.iter().map(|m| m.fd().as_raw_fd()).collect();
    let t = ticket();
    #[repr(C, align(8))]
    struct Buf([u8; 128]);
    let mut cmsg = Buf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: t.as_ptr() as *mut libc::c_void,
        iov_len: t.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header and 6 fds fit the 128 bytes.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(24) as usize;
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN(24) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(hdr) as *mut libc::c_int, 6);
    }
    // Even with its ticket registered, it is refused.
    std::thread::scope(|sc| {
        let w = sc.spawn(|| ex.expect(t, Vec::new(), soon(1000)));
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: msg points to live buffers.
        let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
        assert_eq!(n, 32, "{}", std::io::Error::last_os_error());
        assert!(closed_without_reply(&s, b""));
        assert!(matches!(w.join().unwrap(), Err(Error::Timeout(_))));
    });
}

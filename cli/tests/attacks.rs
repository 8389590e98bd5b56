//! Attacks on the control plane, as they happen: a relay on the path, peers without the key,
//! a flood of idle connections, forged log lines, guessable keys. Each ran against the old
//! protocol and succeeded there (see the issue); here each must fail.

mod common;

use common::psk;
use common::raw::RawSub;
use rdmabus::proto::handshake::*;
use rdmabus::proto::market::Quote;
use rdmabus::{Error, NodeEvent};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a relay does to the frames it forwards from the subscriber to the publisher.
type Tamper = fn(index: usize, frame: &mut Vec<u8>);

/// A relay between one subscriber and the publisher at `upstream`: forwards every byte, but
/// hands each subscriber→publisher frame to `tamper` first. Returns its address.
fn relay(upstream: SocketAddr, tamper: Tamper, inject_goodbye: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind(format!("{}:0", common::test_ip())).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (down, _) = l.accept().unwrap();
        let up = TcpStream::connect(upstream).unwrap();
        let (mut down_r, mut up_w) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let (mut up_r, mut down_w) = (up, down);
        std::thread::spawn(move || {
            let mut dec = FrameDecoder::default();
            let mut buf = [0u8; 4096];
            let mut index = 0;
            while let Ok(n) = down_r.read(&mut buf) {
                if n == 0 || dec.push(&buf[..n]).is_err() {
                    break;
                }
                while let Ok(Some(f)) = dec.next_frame() {
                    let mut bytes = f.bytes;
                    tamper(index, &mut bytes);
                    index += 1;
                    if up_w.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }
            let _ = up_w.shutdown(Shutdown::Both);
        });
        let mut buf = [0u8; 4096];
        let mut injected = false;
        loop {
            let _ = up_r.set_read_timeout(Some(Duration::from_millis(20)));
            match up_r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if down_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(_) => {}
            }
            if !injected && inject_goodbye.load(Ordering::Acquire) {
                injected = true;
                let forged = ControlMsg::Goodbye(Goodbye {
                    reason: GoodbyeReason::Shutdown,
                    message: "forged by the relay".into(),
                    end: None,
                })
                .encode();
                let _ = down_w.write_all(&forged);
            }
        }
        let _ = down_w.shutdown(Shutdown::Both);
    });
    addr
}

#[test]
fn a_relay_that_swaps_the_ring_gets_nothing() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node.publisher::<Quote>("quotes").build().unwrap();
    // Frame 2 from the subscriber is Auth (Hello, Proof, Auth): the relay rewrites its ring.
    let r = relay(
        node.local_addr(),
        |i, f| {
            if i == 2 {
                let at = f.len() - 40;
                f[at] ^= 0x01;
            }
        },
        Arc::new(AtomicBool::new(false)),
    );
    let err = common::subscriber::<Quote>(r, "quotes", psk())
        .timeout(Duration::from_secs(3))
        .connect()
        .err()
        .expect("the subscriber connected through a tampering relay");
    eprintln!("subscriber: {err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reason = None;
    while reason.is_none() && Instant::now() < deadline {
        for e in node.events() {
            match e {
                NodeEvent::Rejected { reason: r, .. } => reason = Some(r),
                NodeEvent::Joined { .. } => panic!("the relay's ring was adopted"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let reason = reason.expect("the publisher recorded nothing");
    assert!(reason.contains("MAC"), "{reason}");
    p.publish(&Quote::synthetic(1)).unwrap();
    assert!(p.stats().subscribers.is_empty());
}

#[test]
fn a_relay_cannot_forge_a_goodbye() {
    let node = common::node_builder(psk()).start().unwrap();
    let mut p = node.publisher::<Quote>("quotes").build().unwrap();
    let inject = Arc::new(AtomicBool::new(false));
    let r = relay(node.local_addr(), |_, _| {}, inject.clone());
    let mut sub = common::subscriber::<Quote>(r, "quotes", psk())
        .connect()
        .unwrap();
    p.wait_for_subscribers(1, Duration::from_secs(5)).unwrap();
    inject.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    let end = loop {
        match sub.recv_timeout(Duration::from_millis(50)) {
            Err(e) => break e,
            Ok(_) => assert!(
                Instant::now() < deadline,
                "the link survived a forged frame"
            ),
        }
    };
    // The forged goodbye is a protocol violation, never an orderly close it could fake.
    assert!(
        !matches!(&end, Error::Closed { message, .. } if message.contains("forged")),
        "{end}"
    );
    assert!(end.to_string().contains("unauthenticated"), "{end}");
}

fn task_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_thousand_idle_connections_cost_bounded_threads_and_a_subscriber_still_gets_in() {
    // On loopback whatever the suite's transport: the flood comes from 127.0.0.2.
    let node = rdmabus::Node::builder()
        .bind("127.0.0.1:0")
        .psk(psk())
        .start()
        .unwrap();
    let mut p = node.publisher::<Quote>("quotes").build().unwrap();
    // 1000 sockets here and as many accepted on the other side: lift the soft limit (the
    // Soft-RoCE guest starts at 1024).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= 2100,
        "RLIMIT_NOFILE {} too low for this test",
        lim.rlim_cur
    );
    let before = task_count();
    // The flood comes from another loopback address than the legitimate subscriber.
    let attacker: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let target = node.local_addr();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&attacker.into()).unwrap();
        s.connect(&target.into()).unwrap();
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let during = task_count();
    assert!(
        during <= before + 8 + 2,
        "1000 idle connections took {} threads",
        during - before
    );
    assert!(node.handshakes_in_progress() <= 8);
    let t0 = Instant::now();
    let mut sub = match rdmabus::Subscriber::<Quote>::builder(target, "quotes")
        .psk(psk())
        .connect()
    {
        Ok(s) => s,
        Err(e) => panic!(
            "a legitimate subscriber was locked out after {:?}: {e}; node: {:?}",
            t0.elapsed(),
            node.events()
        ),
    };
    eprintln!("subscriber joined in {:?} during the flood", t0.elapsed());
    p.wait_for_subscribers(1, Duration::from_secs(5)).unwrap();
    p.publish(&Quote::synthetic(7)).unwrap();
    match sub.recv_timeout(Duration::from_secs(5)).unwrap() {
        Some(rdmabus::Event::Message(m)) => assert!(Quote::synthetic_matches(&m, 7)),
        _ => panic!("no message"),
    }
    drop(idle);
}

#[test]
fn peer_strings_cannot_forge_log_lines() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["pub", "--listen", "127.0.0.1:0", "-t", "quotes"])
        .env("RDMABUS_PSK", common::KEY)
        .env("RDMABUS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, _) = common::pub_address(&mut lines);
    let forged = "x\n2026-01-01T00:00:00Z  WARN FORGED: publisher compromised";
    // A key holder with a newline in its schema and its name: refused, and logged.
    let mut sub = RawSub::connect(addr, &psk(), "quotes", forged, TransportKind::Shm);
    let e = sub.refusal();
    assert!(
        matches!(
            &e,
            HandshakeError::Rejected {
                code: RejectCode::SchemaMismatch,
                ..
            }
        ),
        "{e}"
    );
    // And one without the key.
    let mut other = RawSub::connect(
        addr,
        &rdmabus::Psk::random(),
        "quotes",
        forged,
        TransportKind::Shm,
    );
    let _ = other.refusal();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let log: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        log.iter().any(|l| l.contains("SchemaMismatch")),
        "the refusal was not logged: {log:#?}"
    );
    for l in &log {
        assert!(!l.starts_with("2026-01-01"), "forged log line: {l:?}");
    }
}

#[test]
fn guessable_keys_are_refused_everywhere() {
    // A passphrase in the environment: refused before anything listens.
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args([
            "pub",
            "--listen",
            "127.0.0.1:0",
            "-t",
            "quotes",
            "--count",
            "1",
        ])
        .env("RDMABUS_PSK", "correct horse battery staple")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rdmabus keygen") && err.contains("offline"),
        "{err}"
    );
    // `keygen` writes a key the commands take, and refuses to overwrite it.
    let dir = std::env::temp_dir().join(format!("rdmabus-attack-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("psk");
    let gen = |p: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_rdmabus"))
            .arg("keygen")
            .arg(p)
            .output()
            .unwrap()
    };
    assert!(gen(&key).status.success());
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.starts_with("rdmabus-psk-v1:"), "{text}");
    assert!(rdmabus::Psk::from_file(&key).is_ok());
    let again = gen(&key);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "keygen overwrote a key"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

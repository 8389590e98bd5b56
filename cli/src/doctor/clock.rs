//! Clock sync: one-way latencies between machines are publisher stamps read on another clock.

use super::report::{Report, Verdict};
use super::sys::processes;

/// The time daemons looked for (`comm` is at most 15 characters).
const DAEMONS: [&str; 7] = [
    "chronyd",
    "ntpd",
    "ptp4l",
    "phc2sys",
    "timemaster",
    "systemd-timesyn",
    "openntpd",
];

/// The kernel's sync state (adjtimex) and the time daemons running.
pub fn check(r: &mut Report) {
    let what = "clock sync";
    let running: Vec<&str> = {
        let p = processes();
        DAEMONS
            .into_iter()
            .filter(|d| p.iter().any(|n| n == d))
            .collect()
    };
    let by = if running.is_empty() {
        "no time daemon seen".to_string()
    } else {
        format!("running: {}", running.join(", "))
    };
    // SAFETY: timex is plain data, valid all zero; modes 0 only reads the kernel's state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return r.add(
            "clock.sync",
            Verdict::Info,
            what,
            &format!(
                "unknown, adjtimex failed ({}); {by}",
                std::io::Error::last_os_error()
            ),
            None,
        );
    }
    let unsync = tx.status & libc::STA_UNSYNC != 0 || state == libc::TIME_ERROR;
    let hint = "cross-machine latencies need synced clocks: chrony for tens of µs, ptp4l + phc2sys (PTP on the NIC) for sub-µs";
    if !unsync {
        let v = if tx.maxerror > 100_000 {
            Verdict::Warn
        } else {
            Verdict::Ok
        };
        r.add(
            "clock.sync",
            v,
            what,
            &format!(
                "synchronized, max error {} µs, estimated error {} µs; {by}",
                tx.maxerror, tx.esterror
            ),
            (v == Verdict::Warn).then_some(hint),
        );
    } else if !running.is_empty() {
        r.add(
            "clock.sync",
            Verdict::Info,
            what,
            &format!("the kernel says not synchronized (yet?); {by}"),
            Some("`chronyc tracking` / `pmc -u -b 0 'GET TIME_STATUS_NP'` tell why"),
        );
    } else {
        r.add(
            "clock.sync",
            Verdict::Warn,
            what,
            &format!("not synchronized; {by}"),
            Some(hint),
        );
    }
}

/// How publish timestamps are taken: the TSC (one `rdtsc`) or a CLOCK_REALTIME read each, and
/// what such a read costs here (on a VM with an emulated clock source, microseconds).
pub fn check_stamps(r: &mut Report) {
    let what = "timestamps";
    let source = rdmabus::clock::clock_source();
    let tsc = rdmabus::clock::Stamper::new().uses_tsc();
    let t0 = std::time::Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(rdmabus::clock::now_ns());
    }
    let read_ns = t0.elapsed().as_nanos() / 1000;
    let detail = format!(
        "{}; clock source {}; a CLOCK_REALTIME read takes {read_ns} ns (mean of 1000)",
        if tsc {
            "from the TSC (one rdtsc per stamp)"
        } else {
            "one CLOCK_REALTIME read per stamp (the TSC is not trusted here)"
        },
        if source.is_empty() {
            "unknown"
        } else {
            &source
        },
    );
    if !tsc && read_ns > 200 && cfg!(target_arch = "x86_64") {
        r.add(
            "clock.stamps",
            Verdict::Warn,
            what,
            &detail,
            Some(
                "every publish pays that read: if this machine's TSC is steady (a VM whose \
                 kernel chose an emulated clock source), RDMABUS_CLOCK=tsc stamps from it, \
                 re-anchored to CLOCK_REALTIME every 50 ms",
            ),
        );
    } else {
        r.add("clock.stamps", Verdict::Ok, what, &detail, None);
    }
}

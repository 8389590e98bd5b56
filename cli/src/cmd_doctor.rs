//! `rdmabus doctor`: is this machine ready for kernel-bypass messaging, and if not, what to do.

use crate::Exit;
use rdmabus::Error;
use std::fs;
use std::path::Path;

/// Arguments of `rdmabus doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Info,
    Warn,
    Fail,
}

struct Report {
    counts: [u32; 4],
}

impl Report {
    fn line(&mut self, v: Verdict, what: &str, detail: &str, hint: Option<&str>) {
        self.counts[v as usize] += 1;
        let tag = match v {
            Verdict::Ok => "[ OK ]",
            Verdict::Info => "[INFO]",
            Verdict::Warn => "[WARN]",
            Verdict::Fail => "[FAIL]",
        };
        println!("{tag} {what}: {detail}");
        if let Some(h) = hint {
            println!("       hint: {h}");
        }
    }
}

fn read(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn rdma_devices(r: &mut Report) {
    let Ok(dir) = fs::read_dir("/sys/class/infiniband") else {
        r.line(
            Verdict::Fail,
            "RDMA devices",
            "none (/sys/class/infiniband is missing: no RDMA driver loaded)",
            Some("on a VM without an RDMA NIC: `modprobe crc32_generic rdma_rxe && rdma link add rxe0 type rxe netdev eth0` (README: Soft-RoCE); the shm transport needs no device"),
        );
        return;
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        r.line(
            Verdict::Fail,
            "RDMA devices",
            "none",
            Some("`rdma link add rxe0 type rxe netdev eth0` for Soft-RoCE"),
        );
        return;
    }
    let mut usable = 0;
    for name in &names {
        let port = format!("/sys/class/infiniband/{name}/ports/1");
        let state = read(format!("{port}/state")).unwrap_or_else(|| "?".into());
        let link = read(format!("{port}/link_layer")).unwrap_or_else(|| "?".into());
        let mtu = match crate::rdma::port_mtu(name) {
            Ok(m) => format!(
                "active MTU {m} (a message is one packet while its archive is at most {} B: \
                 MTU minus the {}-byte slot header)",
                m as usize - rdmabus::proto::slot::HEADER_LEN,
                rdmabus::proto::slot::HEADER_LEN
            ),
            Err(e) => format!("cannot open ({e})"),
        };
        let mut gids = Vec::new();
        let mut roce_v2 = 0;
        for i in 0..256 {
            let Some(gid) = read(format!("{port}/gids/{i}")) else {
                break;
            };
            if gid.chars().all(|c| c == '0' || c == ':') {
                continue;
            }
            let ty = read(format!("{port}/gid_attrs/types/{i}")).unwrap_or_else(|| "-".into());
            let ndev = read(format!("{port}/gid_attrs/ndevs/{i}")).unwrap_or_else(|| "-".into());
            if ty.contains("v2") {
                roce_v2 += 1;
            }
            gids.push(format!("GID {i}: {gid} ({ty}, {ndev})"));
        }
        let active = state.contains("ACTIVE");
        let verdict = if active && (roce_v2 > 0 || link == "InfiniBand") {
            Verdict::Ok
        } else {
            Verdict::Warn
        };
        if verdict == Verdict::Ok {
            usable += 1;
        }
        let hint = (!active).then_some("the port is not ACTIVE: check the cable or the netdev's link (`ip link`), then `rdma link`");
        r.line(
            verdict,
            &format!("RDMA device {name}"),
            &format!("port 1 {state}, link layer {link}, {mtu}"),
            hint,
        );
        for g in gids {
            println!("         {g}");
        }
    }
    if usable == 0 {
        r.line(
            Verdict::Fail,
            "RDMA",
            "no device with an active port and a RoCE v2 GID",
            Some("give the netdev an IP address: RoCE v2 GIDs follow the interface's addresses"),
        );
    }
}

fn memlock(r: &mut Report) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let hint = "`ulimit -l unlimited` in the shell, `LimitMEMLOCK=infinity` in a systemd unit, or `* - memlock unlimited` in /etc/security/limits.conf";
    if rc != 0 {
        r.line(Verdict::Warn, "memlock limit", "unknown", Some(hint));
    } else if lim.rlim_cur == libc::RLIM_INFINITY {
        r.line(Verdict::Ok, "memlock limit", "unlimited", None);
    } else {
        let mib = lim.rlim_cur / (1 << 20);
        let v = if mib >= 256 {
            Verdict::Ok
        } else {
            Verdict::Warn
        };
        r.line(
            v,
            "memlock limit",
            &format!("{mib} MiB (every registered ring and staging area counts against it)"),
            (v == Verdict::Warn).then_some(hint),
        );
    }
}

fn hugepages(r: &mut Report) {
    let info = read("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0")
            .to_string()
    };
    let (total, free, size) = (
        field("HugePages_Total:"),
        field("HugePages_Free:"),
        field("Hugepagesize:"),
    );
    r.line(
        Verdict::Info,
        "hugepages",
        &format!("{total} configured, {free} free, {size} kB each (rdmabus rings use 4 KiB pages today)"),
        (total == "0").then_some("`echo 512 > /proc/sys/vm/nr_hugepages` reserves 1 GiB of 2 MiB pages, fewer TLB misses for large rings"),
    );
}

fn cpus(r: &mut Report) {
    let mut governors: Vec<String> = (0..1024)
        .map_while(|i| {
            Path::new(&format!("/sys/devices/system/cpu/cpu{i}"))
                .exists()
                .then(|| {
                    read(format!(
                        "/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_governor"
                    ))
                })
        })
        .flatten()
        .collect();
    governors.sort();
    governors.dedup();
    match governors.as_slice() {
        [] => r.line(Verdict::Info, "CPU frequency governor", "not exposed (a VM, or a fixed-frequency CPU)", None),
        [g] if g == "performance" => r.line(Verdict::Ok, "CPU frequency governor", "performance", None),
        gs => r.line(
            Verdict::Warn,
            "CPU frequency governor",
            &gs.join(", "),
            Some("`cpupower frequency-set -g performance`: a core that clocks down between messages adds microseconds"),
        ),
    }
    let isolated = read("/sys/devices/system/cpu/isolated").unwrap_or_default();
    if isolated.is_empty() {
        r.line(
            Verdict::Warn,
            "isolated CPUs",
            "none: busy pollers share their cores with everything else",
            Some("boot with `isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3`, then pin pollers there (`--cpu 2,3`)"),
        );
    } else {
        r.line(Verdict::Ok, "isolated CPUs", &isolated, None);
    }
    let allowed = rdmabus::affinity::allowed_cpus();
    let target = allowed.last().copied().unwrap_or(0);
    let pinned = std::thread::spawn(move || rdmabus::affinity::pin_current_thread(target)).join();
    match pinned {
        Ok(Ok(())) => r.line(
            Verdict::Ok,
            "pinning a busy-poll thread",
            &format!("works (tried CPU {target} of {allowed:?})"),
            None,
        ),
        Ok(Err(e)) => r.line(
            Verdict::Fail,
            "pinning a busy-poll thread",
            &e.to_string(),
            Some("check the cgroup's cpuset (`cat /proc/self/status | grep Cpus_allowed`)"),
        ),
        Err(_) => r.line(
            Verdict::Fail,
            "pinning a busy-poll thread",
            "the test thread panicked",
            None,
        ),
    }
}

fn shm(r: &mut Report) {
    let dir = rdmabus::shm::shm_dir();
    let probe = format!("{dir}/rdmabus-doctor-{}", std::process::id());
    match fs::write(&probe, b"x") {
        Ok(()) => {
            let _ = fs::remove_file(&probe);
            // SAFETY: statvfs fills the struct for a NUL-terminated path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            let c = std::ffi::CString::new(dir.clone()).unwrap_or_default();
            // SAFETY: c is a valid C string and st a writable statvfs.
            let free = if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
                st.f_bavail as u64 * st.f_frsize as u64 / (1 << 20)
            } else {
                0
            };
            r.line(
                Verdict::Ok,
                "shared-memory directory",
                &format!("{dir} writable, {free} MiB free"),
                None,
            );
        }
        Err(e) => r.line(
            Verdict::Fail,
            "shared-memory directory",
            &format!("{dir}: {e}"),
            Some("set RDMABUS_SHM_DIR to a writable tmpfs"),
        ),
    }
}

fn soft_roce(r: &mut Report) {
    if Path::new("/sys/module/rdma_rxe").exists() {
        r.line(Verdict::Info, "Soft-RoCE", "rdma_rxe loaded (software RoCE: correct but far slower than a NIC; compare against ib_write_lat on the same device)", None);
    }
}

/// Runs `rdmabus doctor`; exits with [`Exit::DoctorFailed`] when a check failed.
pub fn run(_: DoctorArgs) -> Result<Exit, Error> {
    let mut r = Report { counts: [0; 4] };
    println!("rdmabus doctor");
    rdma_devices(&mut r);
    soft_roce(&mut r);
    memlock(&mut r);
    hugepages(&mut r);
    cpus(&mut r);
    shm(&mut r);
    let [ok, info, warn, fail] = r.counts;
    println!("\n{ok} ok, {info} info, {warn} warnings, {fail} failures");
    if fail > 0 {
        eprintln!("rdmabus: doctor: {fail} check(s) failed (see above)");
        return Ok(Exit::DoctorFailed);
    }
    Ok(Exit::Ok)
}

//! Memory: the memlock limit (registered rings count against it), hugepages, and
//! transparent hugepages.

use super::report::{Report, Verdict};
use super::sys::read;
use super::Ctx;

/// A subscriber ring with the defaults: 1024 slots of 1 KiB.
const DEFAULT_RING: u64 = 1 << 20;
/// Below this, a few topics' rings and a publisher's staging do not register (over verbs).
const FAIL_BELOW: u64 = 4 * DEFAULT_RING;
/// At or above this, or unlimited, the limit is no concern.
const OK_FROM: u64 = 256 << 20;

/// RLIMIT_MEMLOCK against what registering rings needs.
pub fn memlock(ctx: &Ctx, r: &mut Report) {
    let what = "memlock limit";
    let hint = "`ulimit -l unlimited` in the shell, `LimitMEMLOCK=infinity` in a systemd unit, or `* - memlock unlimited` in /etc/security/limits.conf";
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return r.add(
            "memory.memlock",
            Verdict::Info,
            what,
            "unknown, getrlimit failed",
            Some(hint),
        );
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return r.add("memory.memlock", Verdict::Ok, what, "unlimited", None);
    }
    let cur: u64 = lim.rlim_cur;
    let detail = format!(
        "{} (every ring and staging area registered over verbs counts against it; a default ring is {})",
        size(cur),
        size(DEFAULT_RING)
    );
    if !ctx.uses_rdma() {
        return r.add(
            "memory.memlock",
            Verdict::Info,
            what,
            &format!("{detail}; shm registers nothing"),
            None,
        );
    }
    let v = if cur < FAIL_BELOW {
        Verdict::Fail
    } else if cur < OK_FROM {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    r.add(
        "memory.memlock",
        ctx.rdma(v),
        what,
        &detail,
        (v != Verdict::Ok).then_some(hint),
    );
}

/// Bytes as MiB when whole, KiB otherwise.
fn size(b: u64) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b / 1024)
    }
}

/// /proc/meminfo's field `key` (the number before its unit).
fn meminfo(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// Hugepages configured and free.
pub fn hugepages(r: &mut Report) {
    let what = "hugepages";
    let Some(info) = read("/proc/meminfo") else {
        return r.add(
            "memory.hugepages",
            Verdict::Info,
            what,
            "unknown, cannot read /proc/meminfo",
            None,
        );
    };
    let (Some(total), Some(free), Some(size)) = (
        meminfo(&info, "HugePages_Total:"),
        meminfo(&info, "HugePages_Free:"),
        meminfo(&info, "Hugepagesize:"),
    ) else {
        return r.add(
            "memory.hugepages",
            Verdict::Info,
            what,
            "unknown, /proc/meminfo has no HugePages fields (no hugetlbfs in this kernel)",
            None,
        );
    };
    let two_mib = read("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .map(|n| format!("; 2 MiB pages free: {n}"))
        .unwrap_or_default();
    r.add(
        "memory.hugepages",
        Verdict::Info,
        what,
        &format!("{total} configured, {free} free, {size} kB each{two_mib} (the staging and verbs rings go on 2 MiB pages while free ones exist; RDMABUS_HUGEPAGES)"),
        (total == 0).then_some("`echo 512 > /proc/sys/vm/nr_hugepages` reserves 1 GiB of 2 MiB pages, fewer TLB misses for large rings"),
    );
}

/// The bracketed choice of a sysfs selector (`always [madvise] never` → `madvise`).
fn selected(s: &str) -> Option<&str> {
    let a = s.find('[')?;
    let b = s[a..].find(']')? + a;
    Some(&s[a + 1..b])
}

/// Transparent hugepages: `always` (with its compaction) stalls at random.
pub fn thp(r: &mut Report) {
    let what = "transparent hugepages";
    let base = "/sys/kernel/mm/transparent_hugepage";
    let Some(enabled) = read(format!("{base}/enabled")) else {
        return r.add(
            "memory.thp",
            Verdict::Info,
            what,
            "unknown, cannot read (a kernel without THP)",
            None,
        );
    };
    let enabled = selected(&enabled).unwrap_or("?").to_string();
    let defrag = read(format!("{base}/defrag")).map(|d| selected(&d).unwrap_or("?").to_string());
    let detail = format!(
        "enabled {enabled}, defrag {}",
        defrag.as_deref().unwrap_or("unknown")
    );
    if enabled == "always" || defrag.as_deref() == Some("always") {
        r.add(
            "memory.thp",
            Verdict::Warn,
            what,
            &detail,
            Some("khugepaged and direct compaction stall threads at random: `echo madvise > /sys/kernel/mm/transparent_hugepage/enabled` (and defrag), or `transparent_hugepage=madvise` at boot"),
        );
    } else {
        r.add("memory.thp", Verdict::Ok, what, &detail, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_meminfo_parse() {
        assert_eq!(selected("always [madvise] never"), Some("madvise"));
        assert_eq!(selected("always"), None);
        let info = "MemTotal: 100 kB\nHugePages_Total:       4\nHugepagesize:       2048 kB\n";
        assert_eq!(meminfo(info, "HugePages_Total:"), Some(4));
        assert_eq!(meminfo(info, "Hugepagesize:"), Some(2048));
        assert_eq!(meminfo(info, "HugePages_Free:"), None);
    }
}

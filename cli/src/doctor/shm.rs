//! The shared-memory directory: writable, tmpfs, room for rings.

use super::report::{Report, Verdict};
use std::fs;

/// Below this much free space, a few large rings no longer fit.
const LOW_MIB: u64 = 64;
/// statfs magic numbers of memory-backed file systems: tmpfs, ramfs, hugetlbfs.
const MEMORY_FS: [i64; 3] = [0x0102_1994, 0x8584_58f6, 0x9584_58f6];

/// One check of `RDMABUS_SHM_DIR` (default /dev/shm).
pub fn check(r: &mut Report) {
    let what = "shared-memory directory";
    let dir = rdmabus::shm::shm_dir();
    let probe = format!("{dir}/rdmabus-doctor-{}", std::process::id());
    if let Err(e) = fs::write(&probe, b"x") {
        return r.add(
            "shm.dir",
            Verdict::Fail,
            what,
            &format!("{dir}: {e}"),
            Some("set RDMABUS_SHM_DIR to a writable tmpfs"),
        );
    }
    let _ = fs::remove_file(&probe);
    let Ok(c) = std::ffi::CString::new(dir.clone()) else {
        return r.add(
            "shm.dir",
            Verdict::Fail,
            what,
            &format!("{dir}: a NUL in the path"),
            None,
        );
    };
    // SAFETY: statfs is plain data, valid all zero.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and st a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return r.add(
            "shm.dir",
            Verdict::Info,
            what,
            &format!(
                "{dir} writable; size unknown ({})",
                std::io::Error::last_os_error()
            ),
            None,
        );
    }
    let mib = |blocks: u64| blocks * st.f_bsize as u64 / (1 << 20);
    let (size, free) = (mib(st.f_blocks as u64), mib(st.f_bavail as u64));
    let detail = format!("{dir} writable, {size} MiB, {free} MiB free");
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let memory = MEMORY_FS.contains(&(st.f_type as i64));
    if !memory {
        r.add("shm.dir", Verdict::Warn, what, &format!("{detail}, not a memory file system"), Some("rings on a disk-backed file system get written back to disk: use a tmpfs (RDMABUS_SHM_DIR)"));
    } else if free < LOW_MIB {
        r.add(
            "shm.dir",
            Verdict::Warn,
            what,
            &format!("{detail}: little room for rings"),
            Some("`mount -o remount,size=1G /dev/shm`, or RDMABUS_SHM_DIR on a larger tmpfs"),
        );
    } else {
        r.add("shm.dir", Verdict::Ok, what, &detail, None);
    }
}

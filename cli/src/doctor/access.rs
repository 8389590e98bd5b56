//! Whether this user may use the RDMA devices: `/dev/infiniband` files, and the RDMA
//! network-namespace mode (what a container sees).

use super::report::{Report, Verdict};
use super::sys::{names, read, run_tool, Tool};
use super::Ctx;
use std::ffi::CString;

/// Both checks.
pub fn check(ctx: &Ctx, r: &mut Report) {
    uverbs(ctx, r);
    netns(r);
}

/// Whether this process may read and write `path` (access(2), as the kernel will judge open).
fn read_write(path: &str) -> bool {
    let Ok(c) = CString::new(path) else {
        return false;
    };
    // SAFETY: c is a NUL-terminated path; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

fn uverbs(ctx: &Ctx, r: &mut Report) {
    let what = "/dev/infiniband access";
    let files: Vec<String> = names("/dev/infiniband")
        .into_iter()
        .filter(|f| f.starts_with("uverbs"))
        .collect();
    if files.is_empty() {
        return r.add(
            "access.uverbs",
            ctx.rdma(Verdict::Fail),
            what,
            "no /dev/infiniband/uverbs* device files: userspace verbs cannot open a device",
            Some("load ib_uverbs (`modprobe ib_uverbs`); in a container pass the device (`--device /dev/infiniband/uverbs0`)"),
        );
    }
    let denied: Vec<&String> = files
        .iter()
        .filter(|f| !read_write(&format!("/dev/infiniband/{f}")))
        .collect();
    let cm = if read_write("/dev/infiniband/rdma_cm") {
        ", rdma_cm read/write"
    } else {
        ", rdma_cm absent or not writable (rdmabus does not use it)"
    };
    if denied.is_empty() {
        r.add(
            "access.uverbs",
            Verdict::Ok,
            what,
            &format!("{} read/write{cm}", files.join(", ")),
            None,
        );
    } else {
        let names: Vec<&str> = denied.iter().map(|s| s.as_str()).collect();
        r.add(
            "access.uverbs",
            ctx.rdma(Verdict::Fail),
            what,
            &format!("this user may not read and write {} (of {})", names.join(", "), files.join(", ")),
            Some("add the user to the group that owns them (`ls -l /dev/infiniband`; often `rdma`), or a udev rule with MODE=\"0666\""),
        );
    }
}

fn netns(r: &mut Report) {
    let what = "RDMA netns mode";
    let param = read("/sys/module/ib_core/parameters/netns_mode");
    let (mode, src) = match param.as_deref() {
        Some("Y") | Some("1") => (Some("shared"), "ib_core netns_mode"),
        Some("N") | Some("0") => (Some("exclusive"), "ib_core netns_mode"),
        _ => match run_tool("rdma", &["system"]) {
            Tool::Output(o) if o.contains("netns shared") => (Some("shared"), "`rdma system`"),
            Tool::Output(o) if o.contains("netns exclusive") => {
                (Some("exclusive"), "`rdma system`")
            }
            _ => (None, ""),
        },
    };
    match mode {
        Some("shared") => r.add(
            "access.netns",
            Verdict::Info,
            what,
            &format!("shared ({src}): every network namespace sees every RDMA device"),
            None,
        ),
        Some(m) => r.add(
            "access.netns",
            Verdict::Info,
            what,
            &format!("{m} ({src}): a device is seen only in the namespace it was moved to"),
            Some("for a container: `rdma dev set DEV netns NS` (or use the initial namespace)"),
        ),
        None => r.add(
            "access.netns",
            Verdict::Info,
            what,
            "unknown, cannot read (no ib_core netns_mode parameter, no `rdma` tool answer)",
            None,
        ),
    }
}

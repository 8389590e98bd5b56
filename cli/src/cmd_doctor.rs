//! `rdmabus doctor`: is this machine ready for kernel-bypass messaging, and if not, what to do.
//! The checks live in `doctor/`, one file per group.

#[path = "doctor/mod.rs"]
mod doctor;

use crate::Exit;
use doctor::report::Verdict;
use doctor::Want;
use rdmabus::Error;
use std::io::Write;

/// Arguments of `rdmabus doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The transport to check the machine for.
    #[arg(long, value_enum, default_value = "auto")]
    transport: Want,
    /// One JSON document on stdout instead of text: {"version":1,"transport","checks":[{"id",
    /// "group","verdict":"ok|info|warn|fail","summary","detail","hint"}],"counts","exit"}.
    #[arg(long)]
    json: bool,
    /// Check only this RDMA device (for example mlx5_0, rxe0).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
}

/// Runs `rdmabus doctor`: [`Exit::DoctorFailed`] (1) when a check failed, else 0 (warnings
/// allowed).
pub fn run(a: DoctorArgs) -> Result<Exit, Error> {
    let report = doctor::run_checks(a.transport, a.device.as_deref());
    let exit = if report.worst() == Verdict::Fail {
        Exit::DoctorFailed
    } else {
        Exit::Ok
    };
    let out = if a.json {
        report.json(a.transport.name(), exit.code()) + "\n"
    } else {
        report.text(a.transport.name())
    };
    // A closed stdout (`doctor | head`) is no reason to panic; the status still tells.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    let failed = report.counts().fail;
    if failed > 0 {
        eprintln!("rdmabus: doctor: {failed} check(s) failed (see above)");
    }
    Ok(exit)
}

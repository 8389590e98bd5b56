//! Reading the machine defensively: files that may be missing, lists of CPUs, the kernel
//! command line, running processes, and tools that may not be installed.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A file's contents, trimmed; `None` when it cannot be read (missing, no permission).
pub fn read(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The names in a directory, sorted; empty when it cannot be read.
pub fn names(p: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|a| natural(a));
    v
}

/// A sort key that orders `state2` before `state10`.
fn natural(s: &str) -> (String, u64) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = s.split_at(s.len() - digits);
    (head.to_string(), tail.parse().unwrap_or(0))
}

/// A kernel CPU list as CPU numbers (the library's parser, shared with its NUMA node lists).
pub use rdmabus::affinity::parse_list as cpu_list;

/// CPU numbers in kernel list form (`0-3,8`).
pub fn cpu_ranges(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        return "none".into();
    }
    rdmabus::affinity::ranges(cpus)
}

/// The kernel command line's parameters (what follows `--` goes to init, not the kernel).
pub fn cmdline() -> Option<Vec<String>> {
    let s = read("/proc/cmdline")?;
    Some(
        s.split_whitespace()
            .take_while(|w| *w != "--")
            .map(str::to_string)
            .collect(),
    )
}

/// The value of `key=value` on the kernel command line (the last one wins, as in the
/// kernel), or `Some("")` for a bare `key`.
pub fn cmdline_param(params: &[String], key: &str) -> Option<String> {
    params.iter().rev().find_map(|p| match p.split_once('=') {
        Some((k, v)) if k == key => Some(v.to_string()),
        None if p == key => Some(String::new()),
        _ => None,
    })
}

/// The names (`comm`) of the running processes this user can see.
pub fn processes() -> Vec<String> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .filter_map(|e| read(e.path().join("comm")))
                .collect()
        })
        .unwrap_or_default()
}

/// What running a tool gave.
pub enum Tool {
    /// Not installed (not on `PATH`).
    Absent,
    /// It ran and failed, or did not end in time: its stderr or why.
    Failed(String),
    /// It ran and succeeded: its stdout.
    Output(String),
}

/// Runs `tool args`, at most 3 s (then it is killed), stdin closed.
pub fn run_tool(tool: &str, args: &[&str]) -> Tool {
    let mut child = match Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Tool::Absent,
        Err(e) => return Tool::Failed(e.to_string()),
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => Tool::Output(out),
        Some(s) => Tool::Failed(
            err.lines()
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| s.to_string()),
        ),
        None => Tool::Failed("did not answer within 3 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_cmdline_parameter_wins() {
        let p: Vec<String> = ["quiet", "iommu=off", "iommu=pt", "idle=poll"]
            .map(String::from)
            .to_vec();
        assert_eq!(cmdline_param(&p, "iommu").as_deref(), Some("pt"));
        assert_eq!(cmdline_param(&p, "quiet").as_deref(), Some(""));
        assert_eq!(cmdline_param(&p, "isolcpus"), None);
    }

    #[test]
    fn names_sort_naturally() {
        assert!(natural("state2") < natural("state10"));
    }

    #[test]
    fn a_missing_tool_is_absent() {
        assert!(matches!(
            run_tool("rdmabus-no-such-tool", &[]),
            Tool::Absent
        ));
    }
}

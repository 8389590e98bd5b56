//! Shared-memory files that cannot be turned against us: a planted symlink, another user's
//! file, a full tmpfs, another PID namespace's stats file.

mod common;

use rdmabus::stats_file::{self, StatsFile};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The uid other users' files get here.
const NOBODY: u32 = 65534;

/// A fresh directory, removed (and unmounted, if a tmpfs was mounted on it) when dropped.
struct TempDir {
    path: PathBuf,
    mounted: bool,
}

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("rdmabus-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self {
            path,
            mounted: false,
        }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A pid with no process behind it (a child that has exited and been reaped).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

fn listed(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = stats_file::list_in(&dir.path)
        .iter()
        .map(|f| f.path().file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_planted_symlink_is_not_followed() {
    let dir = TempDir::new("symlink");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.join("rdmabus-stats-1-planted");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let e = StatsFile::create_at(&link)
        .err()
        .expect("created through a symlink");
    eprintln!("refused as it should: {e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // A dangling one does not make its target appear either.
    let nowhere = dir.join("nowhere");
    let dangling = dir.join("rdmabus-stats-2-dangling");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    assert!(StatsFile::create_at(&dangling).is_err());
    assert!(!nowhere.exists());
    // And list() does not follow a symlink to a valid stats file (it lists the file once).
    let real = dir.join("rdmabus-stats-3-real");
    let _f = StatsFile::create_at(&real).unwrap();
    assert_eq!(
        std::fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::os::unix::fs::symlink(&real, dir.join("rdmabus-stats-4-link")).unwrap();
    assert_eq!(listed(&dir), ["rdmabus-stats-3-real"]);
}

#[test]
fn a_file_of_another_user_is_neither_written_nor_mapped() {
    let dir = TempDir::new("owner");
    // A FIFO where a stats file would be: skipped, and list() does not block on it.
    let fifo = dir.join("rdmabus-stats-5-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let ours = dir.join("rdmabus-stats-1-ours");
    let _ours = StatsFile::create_at(&ours).unwrap();
    if !is_root() {
        eprintln!(
            "files: not root, so no file of another user can be made: checking only our own files"
        );
        assert_eq!(listed(&dir), ["rdmabus-stats-1-ours"]);
        return;
    }
    // Pre-created by another user at the path we create: not opened, not truncated.
    let planted = dir.join("rdmabus-stats-2-planted");
    std::fs::write(&planted, b"theirs").unwrap();
    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(StatsFile::create_at(&planted).is_err());
    assert_eq!(std::fs::read(&planted).unwrap(), b"theirs");
    assert_eq!(std::fs::metadata(&planted).unwrap().uid(), NOBODY);
    // A perfect stats file of a live process (this one), but owned by another user: that
    // user could truncate it under our mapping, so list() skips it, and never removes it.
    let theirs = dir.join("rdmabus-stats-3-theirs");
    drop(StatsFile::create_at(&theirs).unwrap());
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    assert!(StatsFile::open(&theirs).is_err());
    assert_eq!(listed(&dir), ["rdmabus-stats-1-ours"]);
    assert!(theirs.exists() && planted.exists() && fifo.exists());
}

#[test]
fn stats_files_of_another_pid_namespace_are_never_removed() {
    let dir = TempDir::new("pidns");
    let own_ns = stats_file::own_pid_ns();
    assert_ne!(own_ns, 0, "no /proc/self/ns/pid");
    let patch = |path: &Path, offset: u64, v: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        if offset == 8 {
            f.write_all_at(&(v as u32).to_le_bytes(), offset).unwrap();
        } else {
            f.write_all_at(&v.to_le_bytes(), offset).unwrap();
        }
    };
    let gone = dead_pid();
    let make = |name: &str| {
        let p = dir.join(name);
        drop(StatsFile::create_at(&p).unwrap());
        p
    };
    // This process's own file: kept.
    let live = dir.join("rdmabus-stats-1-live");
    let _live = StatsFile::create_at(&live).unwrap();
    // Another namespace, a pid that is dead here: its pid means nothing here, kept.
    let foreign = make("rdmabus-stats-2-foreign");
    patch(&foreign, 24, own_ns ^ 0x5a5a);
    patch(&foreign, 8, gone as u64);
    // Ours, process gone: removed.
    let dead = make("rdmabus-stats-3-dead");
    patch(&dead, 8, gone as u64);
    // Ours, pid alive but started at another time (pid reuse): removed.
    let reused = make("rdmabus-stats-4-reused");
    let f = StatsFile::open(&reused).unwrap();
    patch(&reused, 32, f.start_ticks() + 1);
    drop(f);
    let files = stats_file::list_in(&dir.path);
    let names: Vec<_> = files
        .iter()
        .map(|f| f.path().file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["rdmabus-stats-1-live", "rdmabus-stats-2-foreign"]);
    assert!(files[0].in_our_pid_ns() && !files[1].in_our_pid_ns());
    assert_eq!(files[1].pid(), gone);
    assert!(
        live.exists() && foreign.exists(),
        "a live or foreign file was removed"
    );
    assert!(!dead.exists() && !reused.exists(), "stale files were kept");
    // Again: still there.
    drop(files);
    assert_eq!(listed(&dir).len(), 2);
    assert!(foreign.exists());
}

/// Runs `cmd` to completion (at most 60 s) and returns its output.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within 60 s")
        })
}

#[track_caller]
fn no_signal(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        None,
        "{what} died of signal {:?} (SIGBUS is {}); stderr: {stderr}",
        out.status.signal(),
        libc::SIGBUS
    );
    stderr
}

#[test]
fn a_full_tmpfs_is_a_clear_warning_never_a_sigbus() {
    let mut dir = TempDir::new("full");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir.path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "files: cannot mount a tmpfs (root: {}): the full-tmpfs test did not run",
            is_root()
        );
        return;
    }
    dir.mounted = true;
    // Fill it.
    {
        let mut f = std::fs::File::create(dir.join("filler")).unwrap();
        let chunk = vec![0xffu8; 4096];
        let err = loop {
            if let Err(e) = std::io::Write::write_all(&mut f, &chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
    // A publisher: no stats file (a clear warning), and it runs on.
    let out = run(Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["pub", "--listen", "127.0.0.1:0", "-t", "quotes"])
        .args(["--count", "1000", "--rate", "0"])
        .env("RDMABUS_PSK", common::KEY)
        .env("RDMABUS_SHM_DIR", &dir.path));
    let stderr = no_signal("rdmabus pub", &out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no stats file") && stderr.contains("No space left on device"),
        "no clear warning: {stderr}"
    );
    assert!(
        stderr.contains(&format!("reserving {} bytes", StatsFile::LEN)),
        "{stderr}"
    );
    assert!(stderr.contains("published 1000"), "{stderr}");
    // `rdmabus stat` there: nothing to show, no crash.
    let out = run(Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["stat", "--once"])
        .env("RDMABUS_SHM_DIR", &dir.path));
    let stderr = no_signal("rdmabus stat", &out);
    assert!(out.status.success(), "{stderr}");
    // A shm subscriber whose ring cannot be had: a clear error at creation, no SIGBUS.
    let (_publisher, addr) = common::publisher("-t quotes --rate 1000");
    let out = run(Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["sub", "--connect", &addr.to_string(), "-t", "quotes"])
        .args(["--count", "10", "--transport", "shm", "--slots", "64"])
        .env("RDMABUS_PSK", common::KEY)
        .env("RDMABUS_SHM_DIR", &dir.path));
    let stderr = no_signal("rdmabus sub", &out);
    eprintln!("sub on a full tmpfs: {}", stderr.trim());
    if !out.status.success() {
        assert!(
            stderr.contains("reserving") || stderr.contains("No space left"),
            "unclear error: {stderr}"
        );
    }
}

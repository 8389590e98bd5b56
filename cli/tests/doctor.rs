//! `rdmabus doctor` as scripts see it: the real binary, its `--json` document, its exit
//! status (0 no check failed, 1 one did, 2 bad usage), and, in the Soft-RoCE guest
//! (`RDMABUS_TEST_TRANSPORT=verbs`), the rxe ports it finds.

use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const VERDICTS: [&str; 4] = ["ok", "info", "warn", "fail"];

/// A fresh shm directory for one run (doctor writes a probe file there), removed after.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rdmabus-doctor-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn doctor(args: &[&str]) -> Output {
    // One directory per run: the tests run in parallel, and one's removal must not be seen by
    // another's doctor.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = Dir::new(&RUNS.fetch_add(1, Ordering::Relaxed).to_string());
    Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .arg("doctor")
        .args(args)
        .env("RDMABUS_SHM_DIR", &dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `doctor --json ARGS`, checks the document's shape and that the exit status follows
/// its worst verdict; returns the document and the status.
fn json(args: &[&str]) -> (Value, i32) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = doctor(&all);
    let code = out.status.code().expect("doctor ended by a signal");
    let stdout = text(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor {all:?}: not one JSON document ({e}): {stdout}"));
    assert_eq!(doc["version"], 1, "{stdout}");
    let checks = doc["checks"].as_array().expect("checks is an array");
    assert!(!checks.is_empty(), "{stdout}");
    let mut ids = HashSet::new();
    let mut counts = [0u64; 4];
    for c in checks {
        let id = c["id"].as_str().unwrap_or_else(|| panic!("no id: {c}"));
        assert!(ids.insert(id.to_string()), "id {id} twice: {stdout}");
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "id {id:?}"
        );
        assert_eq!(
            c["group"].as_str(),
            id.split('.').next(),
            "group is the id's first part: {c}"
        );
        let v = c["verdict"]
            .as_str()
            .unwrap_or_else(|| panic!("no verdict: {c}"));
        let k = VERDICTS
            .iter()
            .position(|x| *x == v)
            .unwrap_or_else(|| panic!("verdict {v:?}: {c}"));
        counts[k] += 1;
        assert!(c["summary"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        assert!(c["detail"].as_str().is_some(), "{c}");
        assert!(c["hint"].is_null() || c["hint"].is_string(), "{c}");
    }
    for (k, name) in VERDICTS.iter().enumerate() {
        assert_eq!(doc["counts"][name], counts[k], "counts.{name}: {stdout}");
    }
    let want = if counts[3] > 0 { 1 } else { 0 };
    assert_eq!(code, want, "exit status against the verdicts: {stdout}");
    assert_eq!(doc["exit"], code, "{stdout}");
    (doc, code)
}

fn checks(doc: &Value) -> &Vec<Value> {
    doc["checks"].as_array().unwrap()
}

fn has_rdma_device() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn the_json_document_is_complete_and_the_status_follows_its_worst_verdict() {
    for t in ["auto", "shm", "verbs"] {
        let (doc, _) = json(&["--transport", t]);
        assert_eq!(doc["transport"], t);
    }
    let (doc, _) = json(&[]);
    assert_eq!(doc["transport"], "auto", "auto is the default");
}

#[test]
fn over_shm_no_rdma_check_fails_and_a_failure_says_why() {
    let (doc, code) = json(&["--transport", "shm"]);
    let failed: Vec<&Value> = checks(&doc)
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    for c in &failed {
        let group = c["group"].as_str().unwrap();
        assert!(
            !["rdma", "roce", "access", "irq", "numa"].contains(&group),
            "over shm an RDMA finding is no failure: {c}"
        );
        assert!(c["hint"].is_string(), "a failure says what to do: {c}");
    }
    if !has_rdma_device() {
        let dev = checks(&doc)
            .iter()
            .find(|c| c["id"] == "rdma.devices")
            .expect("an rdma.devices check");
        assert_eq!(dev["verdict"], "info", "{dev}");
    }
    let out = doctor(&["--transport", "shm"]);
    assert_eq!(out.status.code(), Some(code));
    if code != 0 {
        assert!(
            text(&out.stdout).contains("[FAIL]") && text(&out.stderr).contains("failed"),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        eprintln!("doctor --transport shm failed here: {failed:?}");
    }
}

#[test]
fn verbs_without_a_device_is_a_failure() {
    if has_rdma_device() {
        eprintln!("doctor: this machine has RDMA devices: the no-device failure was not checked");
        return;
    }
    let (doc, code) = json(&["--transport", "verbs"]);
    assert_eq!(code, 1);
    let dev = checks(&doc)
        .iter()
        .find(|c| c["id"] == "rdma.devices")
        .expect("an rdma.devices check");
    assert_eq!(dev["verdict"], "fail", "{dev}");
}

#[test]
fn a_device_that_does_not_exist_is_a_failure_naming_those_that_do() {
    let (doc, code) = json(&["--device", "rdmabus-no-such-device"]);
    assert_eq!(code, 1);
    let c = checks(&doc)
        .iter()
        .find(|c| c["id"] == "rdma.device")
        .expect("an rdma.device check");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("devices here"),
        "{c}"
    );
}

#[test]
fn the_text_report_has_a_line_per_check_and_the_counts() {
    let (doc, code) = json(&["--transport", "shm"]);
    let out = doctor(&["--transport", "shm"]);
    assert_eq!(out.status.code(), Some(code));
    let stdout = text(&out.stdout);
    let tagged = stdout
        .lines()
        .filter(|l| {
            ["[ OK ]", "[INFO]", "[WARN]", "[FAIL]"]
                .iter()
                .any(|t| l.starts_with(t))
        })
        .count();
    assert_eq!(tagged, checks(&doc).len(), "{stdout}");
    let n = &doc["counts"];
    let last = format!(
        "{} ok, {} info, {} warnings, {} failures",
        n["ok"], n["info"], n["warn"], n["fail"]
    );
    assert!(stdout.contains(&last), "{last:?} in {stdout}");
    // The shm directory differs between the two runs: the summaries, with their tags.
    for c in checks(&doc).iter().filter(|c| c["verdict"] == "warn") {
        let line = format!("[WARN] {}: ", c["summary"].as_str().unwrap());
        assert!(stdout.contains(&line), "{line:?} in {stdout}");
    }
}

#[test]
fn odd_input_is_a_usage_error() {
    for args in [
        &["--transport", "nonsense"][..],
        &["--transport"][..],
        &["--bogus"][..],
        &["--device"][..],
        &["extra"][..],
    ] {
        let out = doctor(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "doctor {args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            out.stdout.is_empty(),
            "doctor {args:?}: {}",
            text(&out.stdout)
        );
    }
}

/// In the Soft-RoCE guest: an rxe port is found ACTIVE with a RoCE v2 GID, and `--device`
/// checks that device only.
#[test]
fn over_verbs_a_port_is_ok_with_a_roce_v2_gid() {
    if std::env::var("RDMABUS_TEST_TRANSPORT").as_deref() != Ok("verbs") {
        eprintln!("skipped: RDMABUS_TEST_TRANSPORT is not verbs");
        return;
    }
    let (doc, _) = json(&["--transport", "verbs"]);
    let port = checks(&doc)
        .iter()
        .find(|c| {
            c["id"].as_str().unwrap().starts_with("rdma.port.")
                && c["verdict"] == "ok"
                && c["detail"].as_str().unwrap().contains("RoCE v2")
        })
        .unwrap_or_else(|| panic!("no ok port with a RoCE v2 GID: {doc:#}"));
    eprintln!(
        "doctor: {} {}: {}",
        port["id"], port["verdict"], port["detail"]
    );
    let usable = checks(&doc)
        .iter()
        .find(|c| c["id"] == "rdma.usable")
        .unwrap();
    assert_eq!(usable["verdict"], "ok", "{usable}");
    let device = port["id"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(2)
        .unwrap()
        .to_string();
    let (doc, _) = json(&["--transport", "verbs", "--device", &device]);
    let ports: Vec<&str> = checks(&doc)
        .iter()
        .filter_map(|c| c["id"].as_str())
        .filter(|id| id.starts_with("rdma.port."))
        .collect();
    assert!(!ports.is_empty(), "{doc:#}");
    assert!(
        ports
            .iter()
            .all(|id| id.split('.').nth(2) == Some(device.as_str())),
        "--device {device}: {ports:?}"
    );
}

/// `doctor --json --transport shm` with `var=value` set: the check `id` and the exit status.
fn check_with(var: &str, value: &str, id: &str) -> (Value, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["doctor", "--json", "--transport", "shm"])
        .env(var, value)
        .env("RDMABUS_SHM_DIR", std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} check"));
    (c, out.status.code())
}

/// `clock.stamps` says where publish stamps come from, following `RDMABUS_CLOCK`, and what a
/// CLOCK_REALTIME read costs here.
#[test]
fn the_stamps_check_follows_rdmabus_clock() {
    let (realtime, _) = check_with("RDMABUS_CLOCK", "realtime", "clock.stamps");
    let detail = realtime["detail"].as_str().unwrap();
    assert!(
        detail.contains("one CLOCK_REALTIME read per stamp"),
        "{realtime}"
    );
    assert!(detail.contains("clock source") && detail.contains(" ns (mean of 1000)"));
    if cfg!(target_arch = "x86_64") {
        let (tsc, _) = check_with("RDMABUS_CLOCK", "tsc", "clock.stamps");
        assert_eq!(tsc["verdict"], "ok", "{tsc}");
        assert!(
            tsc["detail"].as_str().unwrap().starts_with("from the TSC"),
            "{tsc}"
        );
    }
}

/// `numa.placement` fails for a node that is not online (every publisher would refuse to
/// start), and the status says so; under `auto` it is fine.
#[test]
fn an_offline_numa_node_is_a_failure() {
    let (c, code) = check_with("RDMABUS_NUMA_NODE", "4095", "numa.placement");
    assert_eq!(c["verdict"], "fail", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("no such node online"),
        "{c}"
    );
    assert_eq!(code, Some(1));
    let (c, _) = check_with("RDMABUS_NUMA_NODE", "auto", "numa.placement");
    assert_eq!(c["verdict"], "ok", "{c}");
}

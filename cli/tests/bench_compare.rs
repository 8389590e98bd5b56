//! `rdmabus bench compare` reads perftest's `--out_json` reports (perftest 4.5-0.17's unquoted,
//! trailing-comma form and master's quoted one), prefers them over the text output beside them,
//! falls back to the text output where there is no report, and stops with a clear error on a
//! broken report. Fixtures and where their format comes from: tests/fixtures/perftest/README.md.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/perftest")
}

fn compare(perftest: &str, scaling: bool) -> Output {
    let f = fixtures();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdmabus"));
    cmd.args(["bench", "compare", "--perftest"])
        .arg(f.join(perftest))
        .arg("--pingpong")
        .arg(f.join("bus/pingpong.json"))
        .arg("--fanout")
        .arg(f.join("bus/fanout-sizes.json"));
    if scaling {
        cmd.arg("--scaling").arg(f.join("bus/fanout-scaling.json"));
    }
    cmd.output().unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The cells of the table row whose first cells are `first`.
fn row(out: &str, first: &[&str]) -> Vec<String> {
    out.lines()
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.len() > first.len() && cells.iter().zip(first).all(|(c, f)| c == f))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{out}"))
}

#[test]
fn json_reports_give_the_ratios_and_win_over_text() {
    let out = stdout_ok(&compare("json", true));
    // lat-64.json (a real ib_write_lat report): t_typical 4001.25, not the 999.00 of lat-64.txt
    // beside it; bw-64.json (a real ib_write_bw report): MsgRate 0.014892 Mpps.
    // Bus: p50 6001.876 us, 7446 msgs/s.
    assert_eq!(
        row(&out, &["64"]),
        ["64", "4001.25", "6001.88", "1.50", "0.0149", "0.0074", "0.50"]
    );
    // lat-1024.json (master form): 120.50 us; bw-1024 has only text: 0.007000 Mpps.
    assert_eq!(
        row(&out, &["1024"]),
        ["1024", "120.50", "241.00", "2.00", "0.0070", "0.0056", "0.80"]
    );
    // bw-q1-64.json 0.008 Mpps over 1 QP, bw-q2-64.json 0.010 Mpps over 2.
    assert_eq!(
        row(&out, &["64", "1"]),
        ["64", "1", "0.0080", "8000", "4000", "4000", "0.50"]
    );
    assert_eq!(
        row(&out, &["64", "2"]),
        ["64", "2", "0.0100", "5000", "3750", "7500", "0.75"]
    );
}

#[test]
fn text_output_alone_still_works() {
    // The text output of the same real runs as json/lat-64.json and json/bw-64.json.
    let out = stdout_ok(&compare("text", true));
    assert_eq!(
        row(&out, &["64"]),
        ["64", "4001.25", "6001.88", "1.50", "0.0149", "0.0074", "0.50"]
    );
    // No perftest run for 1024 B nor for the scaling: shown as missing, not an error.
    assert_eq!(
        row(&out, &["1024"]),
        ["1024", "—", "241.00", "—", "—", "0.0056", "—"]
    );
    assert_eq!(
        row(&out, &["64", "2"]),
        ["64", "2", "—", "—", "3750", "7500", "—"]
    );
}

#[test]
fn a_broken_report_is_a_clear_error_not_a_panic() {
    let out = compare("malformed", false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "compare succeeded on a broken report"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("lat-64.json"), "{err}");
    assert!(err.contains("line 26"), "{err}"); // t_avg, cut off

    assert!(err.contains("truncated"), "{err}");
    // No half table before the error.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// `--wire` puts each bus size beside perftest runs of its wire size (`bench wire`): the
/// 64 B row against `lat-w112.json`/`bw-w112.json`; a report of another size under that
/// name is refused, a missing one is "—".
#[test]
fn wire_sizes_are_compared_at_the_bytes_on_the_wire() {
    let wire = Command::new(env!("CARGO_BIN_EXE_rdmabus"))
        .args(["bench", "wire", "--sizes", "64,1024"])
        .output()
        .unwrap();
    assert_eq!(stdout_ok(&wire).trim(), "112 1072");
    let f = fixtures();
    let run = |perftest: &str| {
        Command::new(env!("CARGO_BIN_EXE_rdmabus"))
            .args(["bench", "compare", "--wire", "--perftest"])
            .arg(f.join(perftest))
            .arg("--pingpong")
            .arg(f.join("bus/pingpong.json"))
            .arg("--fanout")
            .arg(f.join("bus/fanout-sizes.json"))
            .output()
            .unwrap()
    };
    let out = stdout_ok(&run("wire"));
    // lat-w112.json: t_typical 11.99 us; bw-w112.json: MsgRate 0.048499 Mpps. Bus: p50
    // 6001.876 us, 7446 msgs/s.
    assert_eq!(
        row(&out, &["64"]),
        ["64", "112", "11.99", "6001.88", "500.57", "0.0485", "0.0074", "0.15"]
    );
    assert_eq!(
        row(&out, &["1024"]),
        ["1024", "1072", "—", "241.00", "—", "—", "0.0056", "—"]
    );
    // A 120 B report named for 112 B is an error, not a silent comparison.
    let bad = tempdir_with("lat-w112.json", &f.join("wire/lat-w120.json"));
    let out = run(bad.to_str().unwrap());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not 112 B"), "{err}");
}

/// A fresh folder holding a copy of `src` named `name`.
fn tempdir_with(name: &str, src: &std::path::Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rdmabus-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src, dir.join(name)).unwrap();
    dir
}

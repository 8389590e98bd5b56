//! `rdmabus bench compare`: puts perftest's raw-verbs figures beside `rdmabus bench` results
//! for the same sizes and prints the ratios (bus ÷ raw verbs) as a Markdown table.

use super::perftest;
use rdmabus::Error;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `rdmabus bench compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Folder of perftest outputs: `lat-SIZE.json` (ib_write_lat --out_json) and `bw-SIZE.json`
    /// (ib_write_bw --out_json) reports, or, where a report is missing, the text outputs
    /// `lat-SIZE.txt` and `bw-SIZE.txt`.
    #[arg(long, value_name = "DIR")]
    pub perftest: PathBuf,
    /// `rdmabus bench pingpong --json` output.
    #[arg(long, value_name = "FILE")]
    pub pingpong: PathBuf,
    /// `rdmabus bench fanout --json` output with 1-subscriber rows per size.
    #[arg(long, value_name = "FILE")]
    pub fanout: PathBuf,
    /// `rdmabus bench fanout --json` output with several subscriber counts; compared with
    /// `ib_write_bw -q N` outputs named `bw-qN-SIZE.json` (or `.txt`) in the perftest folder.
    #[arg(long, value_name = "FILE")]
    pub scaling: Option<PathBuf>,
    /// Compare at the same wire size: each bus size against perftest runs of the bytes its
    /// message takes on the wire (slot header + archive, `rdmabus bench wire`), named
    /// `lat-wBYTES` and `bw-wBYTES` in the perftest folder.
    #[arg(long)]
    pub wire: bool,
}

/// Bytes a bench message of `size` payload bytes takes on the wire: its slot header and its
/// archive, as one RDMA write carries them.
pub fn wire_size(size: usize) -> usize {
    rdmabus::proto::slot::HEADER_LEN + rdmabus::proto::bench::BenchMsg::encoded_len(size)
}

/// Arguments of `rdmabus bench wire`.
#[derive(clap::Args, Debug)]
pub struct WireArgs {
    /// Payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sizes: Vec<usize>,
}

/// Prints the wire size of each size, space-separated (for a script's perftest runs).
pub fn run_wire(a: WireArgs) -> Result<(), Error> {
    super::check_sizes(&a.sizes)?;
    let w: Vec<String> = a.sizes.iter().map(|&s| wire_size(s).to_string()).collect();
    println!("{}", w.join(" "));
    Ok(())
}

/// perftest's figure for one run, `results.KEY` of its `--out_json` report `STEM.json` if there
/// is one, else column 4 of the data row of its text output `STEM.txt` (t_typical for
/// ib_write_lat, MsgRate in Mpps for ib_write_bw, the same figures). None when the run left
/// neither (a failed run writes no report and no row); an unreadable report is an error.
fn perftest_figure(dir: &Path, stem: &str, size: u64, key: &str) -> Result<Option<f64>, Error> {
    let json = dir.join(format!("{stem}.json"));
    match std::fs::read_to_string(&json) {
        Ok(text) => {
            let bad = |m: String| {
                Error::io(
                    format!("perftest report {}", json.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, m),
                )
            };
            let f = perftest::result(&text, key).map_err(bad)?;
            match f.size {
                Some(s) if s != size => Err(bad(format!(
                    "a report for {s} B messages, not {size} B (results.MsgSize)"
                ))),
                _ => Ok(Some(f.value)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(perftest_row(&dir.join(format!("{stem}.txt")))
                .ok()
                .map(|c| c[4]))
        }
        Err(e) => Err(Error::io(format!("reading {}", json.display()), e)),
    }
}

/// The data row of a perftest text output file.
fn perftest_row(path: &Path) -> Result<Vec<f64>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    parse_perftest_row(&text)
        .ok_or_else(|| Error::Protocol(format!("no perftest result row in {}", path.display())))
}

/// The first line of at least five numbers after a `#bytes` header (a failed run has none).
fn parse_perftest_row(text: &str) -> Option<Vec<f64>> {
    let mut seen_header = false;
    for line in text.lines() {
        if line.trim_start().starts_with("#bytes") {
            seen_header = true;
            continue;
        }
        if seen_header {
            let cols: Result<Vec<f64>, _> =
                line.split_whitespace().map(str::parse::<f64>).collect();
            if let Ok(cols) = cols {
                if cols.len() >= 5 {
                    return Some(cols);
                }
            }
        }
    }
    None
}

fn load(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_str(&text).map_err(|e| Error::Protocol(format!("{}: {e}", path.display())))
}

/// Runs the comparison.
pub fn run(a: CompareArgs) -> Result<(), Error> {
    let pp = load(&a.pingpong)?;
    let fo = load(&a.fanout)?;
    // The whole report is made before any of it is printed: a broken perftest report stops it
    // with an error, not after half a table.
    let mut out = Vec::new();
    let rows = |v: &Value| v["rows"].as_array().cloned().unwrap_or_default();
    let mut bus_lat = BTreeMap::new();
    for r in rows(&pp) {
        bus_lat.insert(
            r["size"].as_u64().unwrap_or(0),
            r["latency"]["p50_ns"].as_f64().unwrap_or(0.0) / 1e3,
        );
    }
    let mut bus_rate = BTreeMap::new();
    for r in rows(&fo).iter().filter(|r| r["subscribers"] == 1) {
        bus_rate.insert(
            r["size"].as_u64().unwrap_or(0),
            r["msgs_per_s"].as_f64().unwrap_or(0.0),
        );
    }
    // With --wire: a column for the wire size, and perftest's figures are at that size.
    let (wire_col, at_wire, columns) = if a.wire {
        (" wire B |", " (wire B)", 8)
    } else {
        ("", "", 7)
    };
    out.push(format!("| size B |{wire_col} ib_write_lat t_typical us{at_wire} | bus pingpong p50 us | latency ratio (bus ÷ raw) | ib_write_bw Mmsg/s{at_wire} | bus 1-sub Mmsg/s | rate ratio (bus ÷ raw) |"));
    out.push(format!("|{}", "---:|".repeat(columns)));
    for (size, lat) in &bus_lat {
        let (raw_size, tag, col) = if a.wire {
            let w = wire_size(*size as usize) as u64;
            (w, format!("w{w}"), format!(" {w} |"))
        } else {
            (*size, size.to_string(), String::new())
        };
        let raw_lat = perftest_figure(&a.perftest, &format!("lat-{tag}"), raw_size, "t_typical")?;
        let raw_bw = perftest_figure(&a.perftest, &format!("bw-{tag}"), raw_size, "MsgRate")?;
        let rate = bus_rate.get(size).copied();
        let f =
            |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "—".into());
        out.push(format!(
            "| {size} |{col} {} | {lat:.2} | {} | {} | {} | {} |",
            f(raw_lat, 2),
            f(raw_lat.map(|r| lat / r), 2),
            f(raw_bw, 4),
            f(rate.map(|r| r / 1e6), 4),
            f(raw_bw.zip(rate).map(|(raw, r)| r / 1e6 / raw), 2),
        ));
    }
    if let Some(scaling) = &a.scaling {
        out.push(String::new());
        scaling_table(&mut out, &a.perftest, &load(scaling)?)?;
    }
    println!("{}", out.join("\n"));
    Ok(())
}

/// Fan-out against N raw queue pairs: `ib_write_bw -q N` spreads its writes over N QPs, so its
/// aggregate rate ÷ N is what each of N subscribers could get from raw verbs on this device.
fn scaling_table(out: &mut Vec<String>, perftest: &Path, fo: &Value) -> Result<(), Error> {
    out.push("| size B | subscribers | ib_write_bw -q N, all QPs Mmsg/s | raw per destination msgs/s | bus msgs/s (to every subscriber) | bus writes/s | rate ratio (bus ÷ raw) |".to_string());
    out.push("|---:|---:|---:|---:|---:|---:|---:|".to_string());
    for r in fo["rows"].as_array().into_iter().flatten() {
        let (Some(size), Some(n), Some(rate)) = (
            r["size"].as_u64(),
            r["subscribers"].as_u64(),
            r["msgs_per_s"].as_f64(),
        ) else {
            continue;
        };
        let raw = perftest_figure(perftest, &format!("bw-q{n}-{size}"), size, "MsgRate")?
            .map(|mpps| mpps * 1e6);
        let per_dest = raw.map(|raw| raw / n as f64);
        let f =
            |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "—".into());
        out.push(format!(
            "| {size} | {n} | {} | {} | {rate:.0} | {:.0} | {} |",
            f(raw.map(|r| r / 1e6), 4),
            f(per_dest, 0),
            rate * n as f64,
            f(per_dest.map(|p| rate / p), 2),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_perftest_row;

    const LAT: &str = "\
 GID: 00:00:00:00:00:00:00:00:00:00:255:255:10:77:00:02
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 64      3000          55.12          3202.51      114.20     \t       130.84     \t98.37\t\t473.90 \t\t1201.13
---------------------------------------------------------------------------------------
";
    const BW: &str = "\
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 64         40000            0.65               0.51   \t\t   0.008326
---------------------------------------------------------------------------------------
";

    #[test]
    fn reads_latency_and_bandwidth_rows() {
        assert_eq!(parse_perftest_row(LAT).unwrap()[4], 114.20);
        assert_eq!(parse_perftest_row(BW).unwrap()[4], 0.008326);
    }

    #[test]
    fn a_failed_run_has_no_row() {
        let failed = "---\n #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n";
        assert!(parse_perftest_row(failed).is_none());
        assert!(parse_perftest_row("Couldn't connect to 10.77.0.2:18515").is_none());
    }
}

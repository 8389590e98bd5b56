//! A latency-by-percentile plot as a self-contained SVG: percentiles on a log "nines" axis
//! (50, 90, 99, 99.9, …), latency on a log axis, one line per configuration.

use super::result::Row;
use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// x of percentile `p`: log10(1 / (1 - p/100)), capped at 5 nines.
fn nines(p: f64) -> f64 {
    (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders `rows` as an SVG document.
pub fn svg(title: &str, rows: &[Row]) -> String {
    let values = rows
        .iter()
        .flat_map(|r| r.latency.curve.iter().map(|c| c.1.max(1) as f64));
    let (lo, hi) = values.fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (ylo, yhi) = (
        (lo.max(1.0)).log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let xmax = 5.0;
    let px = |x: f64| LEFT + x / xmax * (W - LEFT - RIGHT);
    let py = |ns: f64| TOP + (1.0 - (ns.max(1.0).log10() - ylo) / (yhi - ylo)) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="25" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = px(i as f64);
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    let mut e = ylo;
    while e <= yhi {
        let y = py(10f64.powf(e));
        let label = match e as i32 {
            ..=2 => format!("{} ns", 10f64.powf(e)),
            3..=5 => format!("{} us", 10f64.powf(e - 3.0)),
            _ => format!("{} ms", 10f64.powf(e - 6.0)),
        };
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        e += 1.0;
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">one-way latency</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
    for (i, r) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = r
            .latency
            .curve
            .iter()
            .map(|&(p, ns)| format!("{:.1},{:.1}", px(nines(p)), py(ns as f64)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 15.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            ly + 4.0,
            esc(&r.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

//! `--plot`: the runs drawn as one SVG, by hand (no plotting crate): two
//! panels, throughput over time and latency by percentile.

use crate::report::{Latency, Run};

/// An SVG with two panels: delivered messages per second over time, and
/// latency at each percentile (log scale), one line per run.
pub fn plot(runs: &[&Run]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 360.0;
    const PANEL: f64 = 380.0;
    let colors = ["#1f77b4", "#d62728"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Panel 1: throughput over time.
    let series: Vec<&[f64]> = runs.iter().map(|r| r.timeline.as_slice()).collect();
    let max_rate = series
        .iter()
        .copied()
        .flatten()
        .copied()
        .fold(1.0, f64::max);
    let max_len = series.iter().map(|s| s.len()).max().unwrap_or(1).max(2);
    let (x0, y0, pw, ph) = (60.0, 30.0, PANEL - 70.0, H - 80.0);
    svg += &format!(
        "<text x=\"{x0}\" y=\"18\">delivered msg/s over time (0.1 s steps, max {max_rate:.0})</text>\n\
         <rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n"
    );
    for (i, s) in series.iter().enumerate() {
        svg += &polyline(
            s.iter().enumerate().map(|(j, v)| {
                let x = x0 + pw * j as f64 / (max_len - 1) as f64;
                (x, y0 + ph - ph * v / max_rate)
            }),
            colors[i % 2],
            1.5,
        );
    }
    // Panel 2: latency by percentile, log scale.
    let quantiles = Latency::NAMES;
    let lat: Vec<[f64; 5]> = runs
        .iter()
        .map(|r| r.latency_us.values().map(|v| v.max(0.1)))
        .collect();
    let hi = lat
        .iter()
        .flatten()
        .cloned()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    let lo = lat
        .iter()
        .flatten()
        .cloned()
        .fold(f64::MAX, f64::min)
        .log10()
        .floor()
        .min(hi - 1.0);
    let (x1, pw2) = (PANEL + 100.0, W - PANEL - 130.0);
    svg += &format!(
        "<text x=\"{x1}\" y=\"18\">one-way latency, µs (log scale)</text>\n\
         <rect x=\"{x1}\" y=\"{y0}\" width=\"{pw2}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n"
    );
    for decade in (lo as i32)..=(hi as i32) {
        let y = y0 + ph - ph * (f64::from(decade) - lo) / (hi - lo);
        svg += &format!(
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{}</text>\n",
            x1 - 6.0,
            10f64.powi(decade)
        );
    }
    for (k, q) in quantiles.iter().enumerate() {
        let x = x1 + pw2 * k as f64 / (quantiles.len() - 1) as f64;
        svg += &format!(
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{q}</text>\n",
            y0 + ph + 16.0
        );
    }
    for (i, l) in lat.iter().enumerate() {
        svg += &polyline(
            l.iter().enumerate().map(|(k, v)| {
                let x = x1 + pw2 * k as f64 / (quantiles.len() - 1) as f64;
                (x, y0 + ph - ph * (v.log10() - lo) / (hi - lo))
            }),
            colors[i % 2],
            2.0,
        );
    }
    for (i, r) in runs.iter().enumerate() {
        svg += &format!(
            "<text x=\"{x0}\" y=\"{}\" fill=\"{}\">{}</text>\n",
            H - 22.0 + 14.0 * i as f64 - 14.0 * (runs.len() as f64 - 1.0),
            colors[i % 2],
            r.mode
        );
    }
    svg += "</svg>\n";
    svg
}

/// A line through `points` in `color`, `width` pixels wide.
fn polyline(points: impl Iterator<Item = (f64, f64)>, color: &str, width: f64) -> String {
    let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{}\"/>\n",
        points.join(" ")
    )
}

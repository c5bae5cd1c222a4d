//! `--plot` and `--csv`: the runs' throughput over time and latency
//! distribution, drawn with plotters as a PNG or SVG picture, or written as
//! CSV rows. Both read the same two series ([`throughput`], [`latency`]),
//! so the CSV holds what the picture shows.
//!
//! The text in a picture is drawn with the font embedded from `fonts/`
//! (plotters' `ab_glyph`), so no font needs to be installed.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::args::{Plot, PlotFormat};
use crate::report::{Run, readable_us};

/// Why a picture or a CSV file was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The embedded font did not load (a broken build, not the user's doing).
    #[error("the embedded font does not load")]
    Font,
    /// plotters could not draw or save the picture.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The picture's file.
        path: String,
        /// plotters' error.
        message: String,
    },
    /// The CSV file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The CSV file.
        path: String,
        /// The write's error.
        source: std::io::Error,
    },
}

/// The picture's size in pixels (an SVG's too).
pub const SIZE: (u32, u32) = (1200, 500);

/// The lines' colors, a run each: the relay's, then the baseline's.
const COLORS: [RGBColor; 2] = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28)];

/// DejaVu Sans cut to Latin-1 (see fonts/README.md).
const FONT: &[u8] = include_bytes!("fonts/DejaVuSans-Latin1.ttf");

/// The throughput series of `run`: for each 0.1 s step, the seconds from
/// the first send to its start and the messages received per second in it.
pub fn throughput(run: &Run) -> impl Iterator<Item = (f64, f64)> + '_ {
    (run.timeline_per_sec.iter().enumerate()).map(|(step, rate)| (step as f64 / 10.0, *rate))
}

/// The latency series of `run`: percentile (0 to 100) and latency in µs.
pub fn latency(run: &Run) -> impl Iterator<Item = (f64, f64)> + '_ {
    (run.latency_percentiles.iter()).map(|p| (p.percentile, p.us))
}

/// Writes `runs` to `path` as CSV: `run,series,x,y`, a row a point of
/// [`throughput`] and [`latency`].
pub fn write_csv(runs: &[Run], path: &Path) -> Result<(), PlotError> {
    let mut csv = String::from("run,series,x,y\n");
    for run in runs {
        let series = [("throughput", throughput(run).collect::<Vec<_>>())]
            .into_iter()
            .chain([("latency", latency(run).collect())]);
        for (name, points) in series {
            for (x, y) in points {
                let _ = writeln!(csv, "{},{name},{x},{y}", run.mode);
            }
        }
    }
    std::fs::write(path, csv).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Draws `runs` into the picture `plot` names: throughput over time on
/// the left, the latency distribution on the right.
pub fn draw(runs: &[Run], plot: &Plot) -> Result<(), PlotError> {
    static FONT_LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = FONT_LOADED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if !loaded {
        return Err(PlotError::Font);
    }
    let drawn = match plot.format {
        PlotFormat::Png => charts(
            BitMapBackend::new(&plot.path, SIZE).into_drawing_area(),
            runs,
        ),
        PlotFormat::Svg => charts(SVGBackend::new(&plot.path, SIZE).into_drawing_area(), runs),
    };
    drawn.map_err(|message| PlotError::Draw {
        path: plot.path.display().to_string(),
        message,
    })
}

/// The two charts on `root`, saved.
fn charts<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[Run]) -> Result<(), String> {
    let failed = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(failed)?;
    let root = root
        .titled(&title(runs), ("sans-serif", 20))
        .map_err(failed)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    throughput_chart(&left, runs).map_err(failed)?;
    latency_chart(&right, runs).map_err(failed)?;
    root.present().map_err(failed)
}

/// What ran: the runs' names and the traffic.
fn title(runs: &[Run]) -> String {
    let names: Vec<&str> = runs.iter().map(|r| r.mode.name()).collect();
    let Some(run) = runs.first() else {
        return "udpbench".into();
    };
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "udpbench: {}, {} × {}, {} B messages",
        names.join(" beside "),
        plural(run.publishers, "publisher"),
        plural(run.subscribers, "subscriber"),
        run.size
    )
}

/// Messages received per second over time, a line per run.
fn throughput_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Run],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || runs.iter().flat_map(throughput);
    let seconds = points().map(|(x, _)| x).fold(0.1, f64::max);
    // Headroom above the highest point for the legend.
    let top = points().map(|(_, y)| y).fold(1.0, f64::max) * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput over time", ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("time since the first send (s)")
        .y_desc("messages received per second")
        .y_label_formatter(&|v| si(*v))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    for (run, color) in runs.iter().zip(COLORS) {
        line(&mut chart, run, throughput(run), color)?;
    }
    legend(&mut chart, runs, SeriesLabelPosition::UpperRight)
}

/// Latency by percentile on HdrHistogram's axis, log 1/(1-p): 90 % at 10,
/// 99 % at 100; a line per run.
fn latency_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Run],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let last_nine = (runs.iter())
        .map(|r| nines(100.0, r.received))
        .fold(2.0, f64::max)
        .ceil();
    let mut x_ticks = vec![1.0, 2.0];
    x_ticks.extend((1..=last_nine as i32).map(|n| 10f64.powi(n)));
    let micros = || runs.iter().flat_map(latency).map(|(_, us)| us.max(0.01));
    let low = 10f64.powf(micros().fold(f64::MAX, f64::min).log10().floor());
    let high = 10f64
        .powf(micros().fold(0.0, f64::max).log10().ceil())
        .max(low * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption("Latency by percentile", ("sans-serif", 17))
        .margin(12)
        .margin_right(30) // room for the last percentile's label
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1f64..10f64.powf(last_nine))
                .log_scale()
                .with_key_points(x_ticks),
            (low..high)
                .log_scale()
                .with_key_points(log_ticks(low, high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile (log scale of 1/(1-p))")
        .y_desc("one-way latency (log scale)")
        .x_label_formatter(&|x| percent_label(x.log10()))
        .y_label_formatter(&|us| readable_us(*us))
        .draw()?;
    for (run, color) in runs.iter().zip(COLORS) {
        let points = latency(run).map(|(p, us)| (10f64.powf(nines(p, run.received)), us.max(low)));
        line(&mut chart, run, points, color)?;
    }
    legend(&mut chart, runs, SeriesLabelPosition::UpperLeft)
}

/// Draws `points` as `run`'s line in `color`, named for the legend.
fn line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    run: &Run,
    points: impl Iterator<Item = (X::ValueType, Y::ValueType)>,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(run.mode.name())
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2)));
    Ok(())
}

/// The runs' names beside their colors, when there is more than one.
fn legend<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    runs: &[Run],
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
{
    if runs.len() < 2 {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Where percentile `p` lies on the 1/(1-p) axis, in nines
/// (log10(1/(1-p))). 100 %, the slowest of `received` messages, lies
/// where that message does: 1 - p = 1/received.
fn nines(p: f64, received: u64) -> f64 {
    let last = (received.max(1) as f64).log10();
    if p >= 100.0 {
        last
    } else {
        (-(1.0 - p / 100.0).log10()).min(last)
    }
}

/// The percentile at `nines` on the axis, as its tick reads: 0%, 50%, 90%,
/// 99%, 99.9%, ...
fn percent_label(nines: f64) -> String {
    let percent = 100.0 - 100.0 * 10f64.powf(-nines);
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// Ticks of a log axis from `low` to `high` (powers of ten): every power of
/// ten, and 2 and 5 times it when the axis spans at most three of them.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let decades = (high / low).log10().round() as i32;
    let steps: &[f64] = if decades <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    (0..=decades)
        .flat_map(|d| steps.iter().map(move |s| low * 10f64.powi(d) * s))
        .filter(|t| *t <= high * 1.000_001)
        .collect()
}

/// `v` with an SI suffix: 950, 12k, 1.5M.
fn si(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.trim_end_matches(".0"))
}

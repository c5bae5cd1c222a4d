//! `udpbench` end to end: it runs in each mode and its report adds up.
//!
//! Nothing here depends on how fast the machine is: the tests check the
//! report's invariants (every message sent to every subscriber is either
//! received or lost; the throughput is what was received over the time the
//! report gives; the timeline sums to what was received), never a figure.
//! The only loss asserted to be zero is at 2,000 messages a second for one
//! second, where a lost message would be a bug, not a slow machine.

mod common;

#[allow(dead_code)] // the tool's printing is not used here
#[path = "../tools/udpbench/report.rs"]
mod report;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{ChildGuard, DEADLINE, Relay, json_lines, signal, udprelay_log, wait_until};
use report::{Latency, Mode, Report, Run, readable_us};

/// `extra` and a run of one second at 2,000 messages a second per
/// publisher: slow enough that a lost message is a bug.
fn paced<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    [extra, &["--duration", "1s", "--rate", "2000"]].concat()
}

/// Runs udpbench to the end (at most DEADLINE), with `tmpdir` as its
/// TMPDIR if given.
fn udpbench_output_in(args: &[&str], tmpdir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udpbench"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = tmpdir {
        cmd.env("TMPDIR", dir);
    }
    ChildGuard::spawn("udpbench", &mut cmd).output_deadline(DEADLINE)
}

/// Runs udpbench to the end (at most DEADLINE).
fn udpbench_output(args: &[&str]) -> Output {
    udpbench_output_in(args, None)
}

/// Runs udpbench with `--json`, which must succeed, and reads its report,
/// which has the same top-level keys whatever ran.
fn udpbench(args: &[&str]) -> Report {
    let mut args = args.to_vec();
    args.push("--json");
    let out = udpbench_output(&args);
    assert!(
        out.status.success(),
        "udpbench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["ratio", "runs"],
        "one shape for every report: {json}"
    );
    serde_json::from_value(json).unwrap_or_else(|e| panic!("not a udpbench report: {e}"))
}

fn single(report: Report) -> Run {
    match <[Run; 1]>::try_from(report.runs) {
        Ok([run]) => {
            assert_eq!(report.ratio, None, "no ratio without a baseline");
            run
        }
        Err(runs) => panic!("one run expected: {runs:?}"),
    }
}

/// Whether `a` and `b` agree to within rounding.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// What holds for every run, whatever the machine's speed: the run did what
/// it was asked, and its figures add up.
fn assert_consistent(r: &Run, mode: Mode, publishers: usize, subscribers: usize, rate: u64) {
    assert_eq!(r.mode, mode, "{r:?}");
    assert_eq!(
        (r.publishers, r.subscribers, r.size, r.rate),
        (publishers, subscribers, 64, rate),
        "{r:?}"
    );
    assert!(
        r.sent > 0,
        "every publisher sends its first message at once"
    );
    assert_eq!(
        r.received + r.lost,
        r.sent * subscribers as u64,
        "every message to every subscriber is received or lost: {r:?}"
    );
    assert!(r.seconds >= r.publishing_seconds && r.publishing_seconds > 0.0);
    assert!(close(r.delivered_per_sec * r.seconds, r.received as f64));
    assert!(close(
        r.delivered_mb_per_sec * 1e6 * r.seconds,
        (r.received * 64) as f64
    ));
    // Each 0.1 s step holds its count times ten.
    let timeline: f64 = r.timeline_per_sec.iter().sum();
    assert!(close(timeline / 10.0, r.received as f64), "{r:?}");
    let l = r.latency.values();
    assert!(
        l.windows(2).all(|w| w[0] <= w[1]),
        "percentiles rise: {l:?}"
    );
    assert!(r.received == 0 || l[0] > 0.0, "a message takes some time");
    assert_distribution(r);
    assert_eq!(
        r.channel.is_some(),
        !matches!(
            mode,
            Mode::BaselineKernel | Mode::BaselineForwarder | Mode::BaselineSocat
        ),
        "a channel exactly where a relay carried the traffic: {r:?}"
    );
}

/// The latency distribution runs from 0 % to 100 % (the slowest message),
/// rising, with ten points a tenfold step towards 100 % while there are
/// messages to show them.
fn assert_distribution(r: &Run) {
    let d = &r.latency_percentiles;
    if r.received == 0 {
        assert!(d.is_empty(), "{d:?}");
        return;
    }
    let (first, last) = (d[0], d[d.len() - 1]);
    assert_eq!((first.percentile, last.percentile), (0.0, 100.0), "{d:?}");
    assert_eq!(last.us, r.latency.max_us);
    assert!(
        d.windows(2)
            .all(|w| w[0].percentile < w[1].percentile && w[0].us <= w[1].us)
    );
    // 1 - p = 10^(-k/10) for k = 0, 1, ... while at least one message is
    // that slow, then the maximum.
    let steps = (r.received as f64).log10() * 10.0;
    let grid = d.len() as f64 - 1.0;
    assert!(
        grid == (steps - 1e-6).floor() + 1.0 || grid == (steps + 1e-6).floor() + 1.0,
        "{} points for {} messages: {d:?}",
        d.len(),
        r.received
    );
    let p50 = d.iter().find(|p| (p.percentile - 50.0).abs() < 0.2);
    assert!(
        p50.is_some(),
        "a point at 3 tenths of a tenfold step: {d:?}"
    );
}

#[test]
fn paced_run_through_a_spawned_relay_loses_nothing() {
    let r = single(udpbench(&paced(&["--spawn", "--subscribers", "2"])));
    assert_consistent(&r, Mode::Relay, 1, 2, 2000);
    assert_eq!((r.lost, r.duplicated), (0, 0), "{r:?}");
    assert!(r.relay_cpu_seconds.is_some(), "a spawned relay is measured");
}

#[test]
fn reliable_run_delivers_everything_it_sent() {
    let r = single(udpbench(&["--spawn", "--duration", "1s", "--reliable"]));
    assert_consistent(&r, Mode::RelayReliable, 1, 1, 0);
    assert_eq!((r.received, r.duplicated), (r.sent, 0), "{r:?}");
}

#[test]
fn kernel_baseline_runs_without_a_relay() {
    let r = single(udpbench(&paced(&["--baseline", "kernel"])));
    assert_consistent(&r, Mode::BaselineKernel, 1, 1, 2000);
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.relay_cpu_seconds, None, "no relay, no relay CPU");
}

#[test]
fn raw_run_goes_through_the_relays_plain_udp_ports() {
    let r = single(udpbench(&paced(&[
        "--spawn",
        "--raw",
        "--subscribers",
        "2",
    ])));
    assert_consistent(&r, Mode::RelayRaw, 1, 2, 2000);
    assert_eq!(r.lost, 0, "{r:?}");
    assert!(r.relay_cpu_seconds.is_some());
}

#[test]
fn baseline_beside_the_relay_reports_the_ratio_and_plots_and_tabulates_both() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, csv) = (dir.path().join("bench.svg"), dir.path().join("bench.csv"));
    let report = udpbench(&paced(&[
        "--spawn",
        "--baseline",
        "kernel",
        "--plot",
        svg.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]));
    let (Some(ratio), [relay, baseline]) = (report.ratio, &report.runs[..]) else {
        panic!("a relay run, a baseline run and their ratio expected: {report:?}");
    };
    assert_consistent(relay, Mode::Relay, 1, 1, 2000);
    assert_consistent(baseline, Mode::BaselineKernel, 1, 1, 2000);
    assert!(close(
        ratio.throughput,
        relay.delivered_per_sec / baseline.delivered_per_sec
    ));
    assert!(close(
        ratio.latency_p50,
        relay.latency.p50_us / baseline.latency.p50_us
    ));

    let drawing = std::fs::read_to_string(&svg).unwrap();
    let svg = parse_svg(&drawing);
    assert_eq!((svg.width, svg.height), (1200.0, 500.0));
    // A line per run in each chart, and a 2-point sample of it in each
    // chart's legend.
    for (run, color) in [(relay, RELAY_COLOR), (baseline, BASELINE_COLOR)] {
        let mut lengths: Vec<usize> = (svg.lines.iter())
            .filter(|(stroke, _)| stroke == color)
            .map(|(_, points)| points.len())
            .collect();
        lengths.sort();
        let mut expected = vec![
            2,
            2,
            run.timeline_per_sec.len(),
            run.latency_percentiles.len(),
        ];
        expected.sort();
        assert_eq!(lengths, expected, "{color} lines of {}", run.mode);
    }
    for text in [
        "Throughput over time",
        "time since the first send (s)",
        "messages received per second",
        "Latency by percentile",
        "percentile (log scale of 1/(1-p))",
        "one-way latency (log scale)",
        "0%",
        "50%",
        "90%",
        "99%",
        "relay",
        "baseline-kernel",
    ] {
        assert!(
            svg.texts.iter().any(|t| t == text),
            "no {text:?}: {:?}",
            svg.texts
        );
    }

    // The CSV holds what the charts show.
    let table = std::fs::read_to_string(&csv).unwrap();
    let mut rows = table.lines();
    assert_eq!(rows.next(), Some("run,series,x,y"));
    let rows: Vec<(String, String, f64, f64)> = rows
        .map(|row| {
            let cells: Vec<&str> = row.split(',').collect();
            let [run, series, x, y] = cells[..] else {
                panic!("not four cells: {row}");
            };
            (
                run.into(),
                series.into(),
                x.parse().unwrap(),
                y.parse().unwrap(),
            )
        })
        .collect();
    // (serde_json reads a float to within a unit in the last place.)
    let same = |a: &[(f64, f64)], b: &[(f64, f64)]| {
        a.len() == b.len() && (a.iter().zip(b)).all(|(p, q)| close(p.0, q.0) && close(p.1, q.1))
    };
    for run in [relay, baseline] {
        let series = |name: &str| -> Vec<(f64, f64)> {
            (rows.iter())
                .filter(|(r, s, ..)| r == run.mode.name() && s == name)
                .map(|&(_, _, x, y)| (x, y))
                .collect()
        };
        let timeline: Vec<(f64, f64)> = (run.timeline_per_sec.iter().enumerate())
            .map(|(step, rate)| (step as f64 / 10.0, *rate))
            .collect();
        let throughput = series("throughput");
        assert!(same(&throughput, &timeline), "{throughput:?} {run:?}");
        let distribution: Vec<(f64, f64)> = (run.latency_percentiles.iter())
            .map(|p| (p.percentile, p.us))
            .collect();
        let latency = series("latency");
        assert!(same(&latency, &distribution), "{latency:?} {run:?}");
    }
    let points = relay.timeline_per_sec.len() + relay.latency_percentiles.len();
    let others = baseline.timeline_per_sec.len() + baseline.latency_percentiles.len();
    assert_eq!(rows.len(), points + others, "no rows but those");
}

/// The relay's line color in a plot; the baseline's.
const RELAY_COLOR: &str = "#1F77B4";
const BASELINE_COLOR: &str = "#D62728";

/// What a drawing holds: its size, each polyline (stroke and points) and
/// each text.
struct Svg {
    width: f64,
    height: f64,
    lines: Vec<(String, Vec<(f64, f64)>)>,
    texts: Vec<String>,
}

/// Reads `svg`, checking that it is one well-formed `<svg>` element whose
/// polylines lie inside its width and height.
fn parse_svg(svg: &str) -> Svg {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    let mut open: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut drawing = Svg {
        width: 0.0,
        height: 0.0,
        lines: Vec::new(),
        texts: Vec::new(),
    };
    let mut rest = svg.trim_end();
    while let Some(at) = rest.find('<') {
        let text = &rest[..at];
        assert!(!text.contains(['>', '&']), "stray text: {text:?}");
        if open.last().is_some_and(|t| t == "text") {
            drawing.texts.push(text.trim().to_string());
        } else {
            assert!(text.trim().is_empty(), "text outside <text>: {text:?}");
        }
        let end = rest[at..].find('>').expect("an unclosed tag") + at;
        let tag = &rest[at + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
            continue;
        }
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        let name = tag.split([' ', '/']).next().unwrap().to_string();
        if open.is_empty() {
            roots += 1;
            assert_eq!(name, "svg", "the root element");
            assert_eq!(
                attr(tag, "xmlns").as_deref(),
                Some("http://www.w3.org/2000/svg")
            );
            drawing.width = attr(tag, "width").unwrap().parse().unwrap();
            drawing.height = attr(tag, "height").unwrap().parse().unwrap();
        }
        if name == "polyline" {
            let points: Vec<(f64, f64)> = attr(tag, "points")
                .unwrap()
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').expect("x,y");
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            for &(x, y) in &points {
                assert!(
                    (0.0..=drawing.width).contains(&x) && (0.0..=drawing.height).contains(&y),
                    "({x}, {y}) outside the drawing"
                );
            }
            drawing.lines.push((attr(tag, "stroke").unwrap(), points));
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(rest.is_empty(), "text after the root: {rest:?}");
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert_eq!(roots, 1);
    drawing
}

#[test]
fn png_plot_draws_each_chart_in_the_runs_color() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("bench.png");
    let r = single(udpbench(&paced(&[
        "--baseline",
        "kernel",
        "--plot",
        png.to_str().unwrap(),
    ])));
    assert_consistent(&r, Mode::BaselineKernel, 1, 1, 2000);
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.width, frame.height), (1200, 500));
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    let width = frame.width as usize;
    let colored = |rgb: [u8; 3], left: bool| {
        (pixels[..frame.buffer_size()].chunks(3).enumerate())
            .filter(|(i, px)| (i % width < width / 2) == left && **px == rgb)
            .count()
    };
    let (blue, red) = ([0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28]);
    assert!(colored(blue, true) > 100, "the throughput line");
    assert!(colored(blue, false) > 100, "the latency line");
    assert_eq!(
        colored(red, true) + colored(red, false),
        0,
        "one run, one color"
    );
    assert!(
        colored([255, 255, 255], true) > width * 100,
        "a white background"
    );
}

#[test]
fn plot_takes_a_png_or_svg_name_and_refuses_others_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("bench.txt");
    let out = udpbench_output(&["--baseline", "kernel", "--plot", txt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(".png or .svg"), "{stderr}");
    assert!(out.stdout.is_empty() && !txt.exists(), "nothing ran");
}

/// One line of `--find-lossless`'s progress on stderr: the rate a run was
/// paced at (0 at full speed), its delivered messages per second as
/// printed, and its loss.
fn probes(stderr: &str) -> Vec<(u64, String, u64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("udpbench: baseline-forwarder, "))
        .map(|l| {
            let (rate, rest) = l.split_once(": ").unwrap();
            let rate = match rate {
                "full speed" => 0,
                r => r
                    .strip_suffix(" msg/s per publisher")
                    .unwrap()
                    .parse()
                    .unwrap(),
            };
            let (delivered, lost) = rest.split_once(" msg/s delivered, ").unwrap();
            let lost = lost.strip_suffix(" lost").unwrap().parse().unwrap();
            (rate, delivered.to_string(), lost)
        })
        .collect()
}

/// A figure of the text report: the word after `label` on its line.
fn figure<'a>(report: &'a str, label: &str) -> &'a str {
    let at = report
        .find(label)
        .unwrap_or_else(|| panic!("{label}: {report}"))
        + label.len();
    report[at..].split_whitespace().next().unwrap()
}

/// The text report's latency line names each figure's unit.
fn assert_latency_in_units(report: &str) {
    let line = (report.lines())
        .find_map(|l| l.trim_start().strip_prefix("latency "))
        .unwrap_or_else(|| panic!("no latency line: {report}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let names: Vec<&str> = words.chunks(3).map(|w| w[0]).collect();
    assert_eq!(names, Latency::NAMES, "{line}");
    for w in words.chunks(3) {
        assert!(w[1].parse::<f64>().is_ok(), "{line}");
        assert!(["µs", "ms", "s"].contains(&w[2]), "{line}");
    }
}

#[test]
fn latency_reads_in_the_unit_that_suits_it() {
    for (us, text) in [
        (0.5, "0.5 µs"),
        (7.424, "7.42 µs"),
        (25.43, "25.4 µs"),
        (130.04, "130 µs"),
        (999.7, "1 ms"),
        (27_672.6, "27.7 ms"),
        (1_500.0, "1.5 ms"),
        (2_500_000.0, "2.5 s"),
    ] {
        assert_eq!(readable_us(us), text, "{us} µs");
    }
}

#[test]
fn find_lossless_reports_a_lossless_run_it_made() {
    let out = udpbench_output(&[
        "--baseline",
        "relay",
        "--find-lossless",
        "--duration",
        "300ms",
        // Three copies of every message make the forwarder lose at full
        // speed on most machines, so the bisection runs too.
        "--subscribers",
        "3",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let runs = probes(&stderr);
    // An unpaced run first; if it lost, seven bisection steps, each paced
    // at a whole thousand messages a second.
    assert!(runs.len() == 1 || runs.len() == 8, "{stderr}");
    assert_eq!(runs[0].0, 0, "the first run is unpaced: {stderr}");
    assert!(
        runs[1..]
            .iter()
            .all(|&(rate, _, _)| rate > 0 && rate % 1000 == 0),
        "{stderr}"
    );
    if !out.status.success() {
        // A machine too busy for any lossless rate: then no run was.
        assert!(stderr.contains("no lossless rate found below"), "{stderr}");
        assert!(runs.iter().all(|&(_, _, lost)| lost > 0), "{stderr}");
        return;
    }
    assert_latency_in_units(&stdout);
    let sent: u64 = figure(&stdout, "sent").parse().unwrap();
    let lost: u64 = figure(&stdout, "lost").parse().unwrap();
    let delivered = figure(&stdout, "throughput");
    assert!(lost * 1000 <= sent * 3, "under a thousandth lost: {stdout}");
    let made = runs
        .iter()
        .position(|(_, d, l)| d == delivered && *l == lost)
        .unwrap_or_else(|| panic!("the reported run is not one it made: {stdout}{stderr}"));
    assert!(
        runs.len() == 1 || made > 0,
        "after a lossy unpaced run, a paced one is reported: {stderr}"
    );
}

#[test]
fn mode_names_are_the_json_names() {
    for (mode, name) in [
        (Mode::Relay, "relay"),
        (Mode::RelayReliable, "relay-reliable"),
        (Mode::RelayRaw, "relay-raw"),
        (Mode::BaselineKernel, "baseline-kernel"),
        (Mode::BaselineForwarder, "baseline-forwarder"),
        (Mode::BaselineSocat, "baseline-socat"),
    ] {
        assert_eq!(mode.name(), name);
        assert_eq!(serde_json::to_value(mode).unwrap(), name);
        assert_eq!(serde_json::from_value::<Mode>(name.into()).unwrap(), mode);
    }
}

#[test]
fn relay_args_reach_the_spawned_relay() {
    let r = single(udpbench(&paced(&[
        "--spawn",
        "--relay-arg=--busy-poll=1ms",
    ])));
    assert_consistent(&r, Mode::Relay, 1, 1, 2000);
    assert_eq!(r.lost, 0, "{r:?}");
    let out = udpbench_output(&["--spawn", "--relay-arg=--no-such-flag", "--duration", "1s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn in_process_relay_runs_plain_and_raw_on_a_thread_of_udpbench() {
    let modes = [
        (&["--subscribers", "2"][..], Mode::Relay, 2),
        (&["--raw"][..], Mode::RelayRaw, 1),
    ];
    for (extra, mode, subscribers) in modes {
        let args = paced(&[&["--spawn", "--in-process"][..], extra].concat());
        let r = single(udpbench(&args));
        assert_consistent(&r, mode, 1, subscribers, 2000);
        assert_eq!((r.lost, r.duplicated), (0, 0), "{r:?}");
        assert!(
            r.relay_cpu_seconds.is_some(),
            "the relay thread is measured"
        );
    }
}

/// The child processes of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    (std::fs::read_to_string(path).unwrap_or_default())
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// True while `pid` runs (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[test]
fn udpbench_signalled_alone_stops_its_relay_and_removes_its_data() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udpbench"));
    cmd.args(["--spawn", "--duration", "60s", "--rate", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut bench = ChildGuard::spawn("udpbench", &mut cmd);
    let pid = bench.child().id();
    let mut relay = None;
    wait_until("udpbench to start its relay", || {
        relay = children(pid).into_iter().next();
        relay.is_some()
    });
    let relay = relay.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{relay}/cmdline")).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    let at = args
        .iter()
        .position(|a| *a == "--data-dir")
        .expect("--data-dir");
    let dir = std::path::PathBuf::from(args[at + 1]);
    wait_until("the relay's data directory", || dir.exists());
    signal(pid, "TERM");
    let status = bench.wait_deadline(DEADLINE);
    assert_eq!(status.code(), Some(130));
    wait_until("the relay to stop", || !running(relay));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn relay_only_flags_beside_relay_are_usage_errors_that_say_why() {
    for flag in [
        "--raw",
        "--relay-arg=--busy-poll=1ms",
        "--in-process",
        "--auth",
    ] {
        // Nothing listens on port 9: a run would fail, not exit 2.
        let out = udpbench_output(&["--relay", "127.0.0.1:9", flag, "--duration", "1s"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = flag.split('=').next().unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("udpbench: {name} needs --spawn, not --relay: ")),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing ran");
    }
}

/// The channels in a relay's data directory, as `udprelay log ls` lists them.
fn channels(data_dir: &Path) -> Vec<String> {
    (json_lines(udprelay_log(data_dir, &["ls", "--json"])).iter())
        .map(|channel| channel["channel"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn relay_runs_use_the_named_channel_or_a_fresh_one_each() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let short = ["--relay", &addr, "--duration", "200ms", "--rate", "1000"];
    let named = single(udpbench(&[&short[..], &["--channel", "mine"]].concat()));
    assert_eq!(named.channel.as_deref(), Some("mine"));
    let fresh: Vec<String> = (0..2)
        .map(|_| single(udpbench(&short)).channel.unwrap())
        .collect();
    for name in &fresh {
        let mut parts = name.split('-');
        assert_eq!(parts.next(), Some("bench"), "{name}");
        let numbers: Vec<u64> = parts.map(|p| p.parse().unwrap()).collect();
        assert_eq!(numbers.len(), 2, "bench-PID-N: {name}");
    }
    assert_ne!(fresh[0], fresh[1], "a fresh channel each run");
    let mut stored = channels(&relay.data_dir());
    stored.sort();
    let mut expected = vec!["mine".to_string(), fresh[0].clone(), fresh[1].clone()];
    expected.sort();
    assert_eq!(
        stored, expected,
        "each run's channel stays in the relay's log"
    );
}

#[test]
fn unpaced_spawned_relay_says_where_its_log_goes_and_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let unpaced = udpbench_output_in(
        &["--spawn", "--duration", "200ms", "--json"],
        Some(tmp.path()),
    );
    let stderr = String::from_utf8_lossy(&unpaced.stderr);
    assert!(unpaced.status.success(), "{stderr}");
    let notice = (stderr.lines())
        .find(|l| l.contains("logs every message"))
        .unwrap_or_else(|| panic!("no word of the relay's log: {stderr}"));
    let dir = tmp.path().display().to_string();
    for words in [dir.as_str(), "removed at the end", "--rate"] {
        assert!(notice.contains(words), "{words:?} not in {notice:?}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");

    let paced = udpbench_output_in(&paced(&["--spawn"]), Some(tmp.path()));
    let stderr = String::from_utf8_lossy(&paced.stderr);
    assert!(paced.status.success(), "{stderr}");
    assert!(!stderr.contains("logs every message"), "paced: {stderr}");
}

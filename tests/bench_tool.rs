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

use std::process::{Command, Output, Stdio};

use common::{ChildGuard, DEADLINE, signal, wait_until};
use report::{Latency, Mode, Report, Run};

/// `extra` and a run of one second at 2,000 messages a second per
/// publisher: slow enough that a lost message is a bug.
fn paced<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    [extra, &["--duration", "1s", "--rate", "2000"]].concat()
}

/// Runs udpbench to the end (at most DEADLINE).
fn udpbench_output(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_udpbench"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    ChildGuard::spawn("udpbench", &mut cmd).output_deadline(DEADLINE)
}

/// Runs udpbench with `--json`, which must succeed, and reads its report.
fn udpbench(args: &[&str]) -> Report {
    let mut args = args.to_vec();
    args.push("--json");
    let out = udpbench_output(&args);
    assert!(
        out.status.success(),
        "udpbench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a udpbench report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn single(report: Report) -> Run {
    match report {
        Report::Single(run) => run,
        Report::Comparison(c) => panic!("one run expected, got a comparison: {c:?}"),
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
    let timeline: f64 = r.timeline.iter().sum();
    assert!(close(timeline / 10.0, r.received as f64), "{r:?}");
    let l = r.latency_us.values();
    assert!(
        l.windows(2).all(|w| w[0] <= w[1]),
        "percentiles rise: {l:?}"
    );
    assert!(r.received == 0 || l[0] > 0.0, "a message takes some time");
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
fn baseline_beside_the_relay_reports_the_ratio_and_plots_both() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let report = udpbench(&paced(&[
        "--spawn",
        "--baseline",
        "kernel",
        "--plot",
        svg.to_str().unwrap(),
    ]));
    let Report::Comparison(c) = report else {
        panic!("a relay run and a baseline run expected: {report:?}");
    };
    assert_consistent(&c.relay, Mode::Relay, 1, 1, 2000);
    assert_consistent(&c.baseline, Mode::BaselineKernel, 1, 1, 2000);
    assert!(close(
        c.ratio.throughput,
        c.relay.delivered_per_sec / c.baseline.delivered_per_sec
    ));
    assert!(close(
        c.ratio.latency_p50,
        c.relay.latency_us.p50 / c.baseline.latency_us.p50
    ));

    let drawing = std::fs::read_to_string(&svg).unwrap();
    let points = assert_svg(&drawing);
    assert_eq!(points.len(), 4, "two panels, a line per run in each");
    let quantiles = Latency::NAMES.len();
    for (line, expected) in points.iter().zip([
        c.relay.timeline.len(),
        c.baseline.timeline.len(),
        quantiles,
        quantiles,
    ]) {
        assert_eq!(line.len(), expected, "a point per value: {line:?}");
    }
    for mode in ["relay", "baseline-kernel"] {
        assert!(drawing.contains(&format!(">{mode}</text>")), "{drawing}");
    }
}

/// Checks that `svg` is one well-formed `<svg>` element whose polylines lie
/// inside its width and height; returns each polyline's points.
fn assert_svg(svg: &str) -> Vec<Vec<(f64, f64)>> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..].split('"').next()?.to_string())
    };
    let mut open: Vec<String> = Vec::new();
    let mut roots = 0;
    let (mut width, mut height) = (0.0, 0.0);
    let mut lines = Vec::new();
    let mut rest = svg.trim_end();
    while let Some(at) = rest.find('<') {
        assert!(
            !rest[..at].contains(['>', '&']),
            "stray text: {:?}",
            &rest[..at]
        );
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
            width = attr(tag, "width").unwrap().parse().unwrap();
            height = attr(tag, "height").unwrap().parse().unwrap();
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
                    (0.0..=width).contains(&x) && (0.0..=height).contains(&y),
                    "({x}, {y}) outside the drawing"
                );
            }
            lines.push(points);
        }
        if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(rest.is_empty(), "text after the root: {rest:?}");
    assert!(open.is_empty(), "unclosed: {open:?}");
    assert_eq!(roots, 1);
    lines
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

//! `udpbench` end to end: it spawns its own relay, measures, and reports.

use std::process::Command;

fn udpbench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_udpbench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run udpbench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("udpbench --json prints one JSON object")
}

#[test]
fn paced_run_through_a_spawned_relay_loses_nothing() {
    let r = udpbench(&[
        "--spawn",
        "--duration",
        "1s",
        "--rate",
        "2000",
        "--subscribers",
        "2",
    ]);
    assert_eq!(r["mode"], "relay");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 1000, "{r}");
    assert_eq!(r["received"].as_u64().unwrap(), 2 * sent, "{r}");
    assert_eq!(r["lost"], 0);
    assert!(r["latency_us"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["relay_cpu_seconds"].as_f64().is_some(), "{r}");
}

#[test]
fn reliable_run_delivers_everything_it_sent() {
    let r = udpbench(&["--spawn", "--duration", "1s", "--reliable"]);
    assert_eq!(r["mode"], "relay-reliable");
    assert_eq!(r["received"], r["sent"], "{r}");
    assert_eq!(r["duplicated"], 0);
}

#[test]
fn kernel_baseline_runs_without_a_relay() {
    let r = udpbench(&["--baseline", "kernel", "--duration", "1s", "--rate", "2000"]);
    assert_eq!(r["mode"], "baseline-kernel");
    assert_eq!(r["received"], r["sent"], "{r}");
}

#[test]
fn baseline_beside_the_relay_reports_the_ratio_and_plots_both() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let r = udpbench(&[
        "--spawn",
        "--baseline",
        "kernel",
        "--duration",
        "1s",
        "--rate",
        "2000",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(r["relay"]["mode"], "relay");
    assert_eq!(r["baseline"]["mode"], "baseline-kernel");
    let ratio = r["ratio"]["throughput"].as_f64().unwrap();
    assert!(
        ratio > 0.5 && ratio < 1.5,
        "paced runs deliver alike: {ratio}"
    );
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg"), "{drawing}");
    assert_eq!(
        drawing.matches("<polyline").count(),
        4,
        "two panels, two runs each"
    );
    assert!(drawing.trim_end().ends_with("</svg>"));
}

#[test]
fn raw_run_goes_through_the_relays_plain_udp_ports() {
    let r = udpbench(&[
        "--spawn",
        "--raw",
        "--duration",
        "1s",
        "--rate",
        "2000",
        "--subscribers",
        "2",
    ]);
    assert_eq!(r["mode"], "relay-raw");
    let sent = r["sent"].as_u64().unwrap();
    assert!(sent >= 1000, "{r}");
    assert_eq!(r["received"].as_u64().unwrap(), 2 * sent, "{r}");
    assert!(r["relay_cpu_seconds"].as_f64().is_some(), "{r}");
}

#[test]
fn find_lossless_reports_a_run_under_a_thousandth_lost() {
    // The minimal forwarder loses at full speed on this machine, so the
    // search bisects the rate; whatever it settles on must be lossless.
    let r = udpbench(&[
        "--baseline",
        "relay",
        "--find-lossless",
        "--duration",
        "300ms",
    ]);
    assert_eq!(r["mode"], "baseline-forwarder");
    let (sent, lost) = (r["sent"].as_u64().unwrap(), r["lost"].as_u64().unwrap());
    assert!(sent > 0 && lost * 1000 <= sent, "{r}");
}

#[test]
fn relay_args_reach_the_spawned_relay() {
    let r = udpbench(&[
        "--spawn",
        "--relay-arg=--busy-poll=1ms",
        "--duration",
        "1s",
        "--rate",
        "2000",
    ]);
    assert_eq!(r["received"], r["sent"], "{r}");
    let out = Command::new(env!("CARGO_BIN_EXE_udpbench"))
        .args(["--spawn", "--relay-arg=--no-such-flag", "--duration", "1s"])
        .output()
        .expect("run udpbench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

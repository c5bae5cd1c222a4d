//! `udprelay --metrics ADDR` with the real binary: Prometheus text on
//! /metrics that Debian's `promtool check metrics` accepts, counters that
//! agree with `udpcat stats`, `/healthz`, and a port in use refused in one
//! line. promtool is optional here (skipped, saying so) unless
//! `UDPRELAY_REQUIRE_PROMTOOL` is set, as `.ci/run` does.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().expect("a body")),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Each sample of the exposition text without labels: name -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    (text.lines())
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn udpcat_stats(relay: &Relay) -> HashMap<String, u64> {
    let out = udpcat(&["stats", &relay.addr_str()], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).lines())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_under_traffic_pass_promtool_and_agree_with_udpcat_stats() {
    const N: u64 = 200;
    let relay = Relay::start(&["--metrics", "127.0.0.1:0"]);
    let base = format!("http://{}", relay.metrics.expect("the metrics line"));
    let sub = Subscriber::start(&[
        &relay.addr_str(),
        "news",
        "--reliable",
        "--count",
        &N.to_string(),
    ]);
    let input: String = (0..N).map(|i| format!("message {i}\n")).collect();
    let published = udpcat(
        &["pub", &relay.addr_str(), "news", "--reliable"],
        input.as_bytes(),
    );
    assert!(published.status.success());
    let (status, _, _) = sub.finish();
    assert!(status.success());
    // The exporter shows what the loop handed over a moment ago.
    let mut text = String::new();
    wait_until("the scrape to show every message published", || {
        text = get(&format!("{base}/metrics")).1;
        samples(&text).get("udprelay_messages_published_total") == Some(&(N as f64))
    });
    let scraped = samples(&text);
    let stats = udpcat_stats(&relay);
    for name in [
        "messages_published",
        "messages_delivered",
        "sessions_opened",
        "subscriptions_opened",
    ] {
        let metric = format!("udprelay_{name}_total");
        assert_eq!(
            scraped.get(&metric).copied(),
            Some(stats[name] as f64),
            "{metric} against udpcat stats {name}"
        );
    }
    assert!(scraped["udprelay_messages_delivered_total"] >= N as f64);
    assert!(
        text.contains(&format!(
            "udprelay_channel_next_offset{{channel=\"news\"}} {N}"
        )),
        "{text}"
    );
    assert!(
        text.contains("udprelay_channel_messages{channel=\"other\"} 0"),
        "{text}"
    );
    assert!(
        scraped["udprelay_receive_to_send_seconds_count"] > 0.0,
        "{text}"
    );
    assert!(scraped.contains_key("udprelay_kernel_receive_drops_total"));
    assert!(scraped["process_resident_memory_bytes"] > 0.0);
    assert!(scraped.contains_key("process_cpu_seconds_total"));
    if tool_available(
        "promtool",
        "UDPRELAY_REQUIRE_PROMTOOL",
        "apt-get install prometheus",
    ) {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(get(&format!("{base}/healthz")), (200, "ok\n".to_string()));
    assert_eq!(get(&format!("{base}/nothing")).0, 404);
}

#[test]
fn a_metrics_port_in_use_is_one_line_and_a_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(udprelay_bin())
        .args(["--listen", "127.0.0.1:0", "--metrics", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("metrics: cannot listen on {addr}")),
        "{stderr}"
    );
}

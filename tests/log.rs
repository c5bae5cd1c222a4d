//! End to end: the message log through the real binaries.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn udprelay(args: &[&str]) -> Output {
    Command::new(udprelay_bin())
        .args(args)
        .output()
        .expect("run udprelay")
}

fn log_cmd(action: &str, data_dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["log", action, "--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    udprelay(&args)
}

fn lines(n: usize, prefix: &str) -> String {
    (0..n).map(|i| format!("{prefix}-{i}\n")).collect()
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    let relay = Relay::start(&[]);
    let input = lines(10_000, "durable");
    let out = udpcat(&["pub", &relay.addr_str(), "orders"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // udpcat exits only after its last ping came back, so the relay has
    // handled (and stored) every message before the kill.
    let dir = relay.kill9();

    let relay = Relay::start_in(dir, &[]);
    let dump = log_cmd("dump", &relay.data_dir(), &["orders", "--format", "json"]);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let records = json_lines(&dump.stdout);
    assert_eq!(records.len(), 10_000);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["payload"], format!("durable-{i}"));
    }

    let sub = Subscriber::start(&[
        &relay.addr_str(),
        "orders",
        "--count",
        "1",
        "--format",
        "json",
    ]);
    let out = udpcat(
        &[
            "pub",
            &relay.addr_str(),
            "orders",
            "--message",
            "after restart",
        ],
        b"",
    );
    assert!(out.status.success());
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    let got = json_lines(&stdout);
    assert_eq!(got[0]["offset"], 10_000);
    assert_eq!(got[0]["payload"], "after restart");
}

#[test]
fn subscriber_from_earliest_gets_every_stored_message_then_live_ones() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let stored = lines(1000, "stored");
    assert!(
        udpcat(&["pub", &addr, "history"], stored.as_bytes())
            .status
            .success()
    );

    let sub = Subscriber::start(&[&addr, "history", "--from", "earliest", "--count", "1003"]);
    let live = lines(3, "live");
    assert!(
        udpcat(&["pub", &addr, "history"], live.as_bytes())
            .status
            .success()
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, format!("{stored}{live}"));
}

#[test]
fn subscriber_from_an_offset_resumes_there() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    assert!(
        udpcat(&["pub", &addr, "c"], lines(10, "m").as_bytes())
            .status
            .success()
    );
    let sub = Subscriber::start(&[
        &addr, "c", "--from", "7", "--count", "3", "--format", "json",
    ]);
    let (status, stdout, _) = sub.finish();
    assert!(status.success());
    let offsets: Vec<_> = json_lines(&stdout)
        .iter()
        .map(|r| r["offset"].clone())
        .collect();
    assert_eq!(offsets, [7, 8, 9]);
}

#[test]
fn retention_removes_old_segments_and_reports_the_gap() {
    let relay = Relay::start(&[
        "--segment-size",
        "64K",
        "--retain-bytes",
        "128K",
        "--max-message-size",
        "60000",
    ]);
    let addr = relay.addr_str();
    // ~140-byte records: about 470 per 64 KiB segment, so 3000 fill several.
    let payload: String = (0..3000)
        .map(|i| format!("{i:05}-{}\n", "r".repeat(100)))
        .collect();
    assert!(
        udpcat(&["pub", &addr, "metrics"], payload.as_bytes())
            .status
            .success()
    );
    let data = relay.data_dir();
    let mut first = 0u64;
    wait_until("retention to delete the oldest segments", || {
        let ls = log_cmd("ls", &data, &[]);
        let text = String::from_utf8_lossy(&ls.stdout).into_owned();
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("metrics"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        first = row.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let bytes: u64 = row.get(5).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        first > 0 && bytes <= 128 * 1024 && row.get(2) == Some(&"3000")
    });

    let sub = Subscriber::start(&[
        &addr, "metrics", "--from", "0", "--count", "1", "--format", "json",
    ]);
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(json_lines(&stdout)[0]["offset"], first);
    assert!(
        stderr.contains(&format!("offsets 0..{first} are not available")),
        "the gap is reported: {stderr}"
    );
}

#[test]
fn a_second_relay_on_the_same_data_directory_exits_clearly() {
    let relay = Relay::start(&[]);
    let out = udprelay(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        relay.data_dir().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another udprelay"), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not claim to be listening");
}

#[test]
fn corruption_in_the_middle_is_refused_until_the_operator_truncates() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    assert!(
        udpcat(&["pub", &addr, "ledger"], lines(100, "entry").as_bytes())
            .status
            .success()
    );
    assert!(udpcat(&["pub", &addr, "other"], b"fine\n").status.success());
    let (status, _, dir) = relay.terminate();
    assert!(status.success());
    let data = dir.path().join("data");
    let clean = log_cmd("verify", &data, &[]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    // Flip one bit in the payload of record 50 of 100.
    let seg = data.join("channels/ledger/00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"entry-50")
        .expect("record 50 in the segment");
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let verify = log_cmd("verify", &data, &[]);
    assert!(!verify.status.success());
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains("ledger") && report.contains("mid-log corruption"),
        "{report}"
    );

    // The relay starts, serves the healthy channel, refuses the damaged one.
    let relay = Relay::start_in(dir, &[]);
    assert!(
        relay.stderr().contains("ledger"),
        "the damage is logged: {}",
        relay.stderr()
    );
    let addr = relay.addr_str();
    let refused = udpcat(&["pub", &addr, "ledger", "--message", "x"], b"");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unavailable"));
    assert!(
        udpcat(&["pub", &addr, "other", "--message", "y"], b"")
            .status
            .success()
    );
    let (_, _, dir) = relay.terminate();

    // The operator's choice: drop everything from the damaged record on.
    let relay = Relay::start_in(dir, &["--truncate-corrupt", "ledger"]);
    let addr = relay.addr_str();
    let sub = Subscriber::start(&[&addr, "ledger", "--count", "1", "--format", "json"]);
    assert!(
        udpcat(&["pub", &addr, "ledger", "--message", "fresh"], b"")
            .status
            .success()
    );
    let (status, stdout, _) = sub.finish();
    assert!(status.success());
    assert_eq!(
        json_lines(&stdout)[0]["offset"],
        50,
        "records 0..50 are kept"
    );
}

#[test]
fn log_tools_explain_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = log_cmd("ls", dir.path(), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a udprelay data directory"));

    let relay = Relay::start(&[]);
    let data = relay.data_dir();
    let out = log_cmd("dump", &data, &["nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no channel named"));
}

fn stat(client: &mut TestClient, name: &str) -> u64 {
    client.stats()[name]
}

#[test]
fn fsync_always_syncs_before_delivering_and_interval_syncs_in_the_background() {
    let relay = Relay::start(&["--fsync", "always"]);
    let mut c = TestClient::new(relay.addr);
    c.subscribe(1, "d");
    c.publish("d", b"x");
    let got = c.barrier();
    assert!(
        got.iter()
            .any(|g| matches!(g, Got::Deliver { offset: 0, .. })),
        "{got:?}"
    );
    assert_eq!(
        stat(&mut c, "log_syncs"),
        1,
        "the delivery waited for one sync"
    );

    let relay = Relay::start(&["--fsync", "interval=20"]);
    let mut c = TestClient::new(relay.addr);
    c.publish("d", b"x");
    c.barrier();
    wait_until("a background sync", || stat(&mut c, "log_syncs") >= 1);
    assert_eq!(stat(&mut c, "log_errors"), 0);
}

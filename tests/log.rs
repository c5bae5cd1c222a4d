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

/// Stops the relay with SIGTERM and checks that it exited cleanly and that
/// `log verify` finds nothing wrong in what it left.
fn stop_clean(relay: Relay) -> tempfile::TempDir {
    let (status, stderr, dir) = relay.terminate();
    assert!(status.success(), "{stderr}");
    let verify = log_cmd("verify", &dir.path().join("data"), &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    dir
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
    let dir = stop_clean(relay);
    let data = dir.path().join("data");

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

/// Publishes one message and checks that the relay took it.
fn publish_one(addr: &str, channel: &str, message: &str) {
    let out = udpcat(&["pub", addr, channel, "--message", message], b"");
    assert!(
        out.status.success(),
        "publish to {channel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes written over a record's payload by the damage tests.
const DAMAGE: &[u8; 8] = b"DAMAGED!";

/// Relay flags that make several small segments of the damage tests' records.
const SMALL_SEGMENTS: &[&str] = &["--segment-size", "16K", "--max-message-size", "1000"];

/// The payload of record `i` in the damage tests (about 120 bytes a record,
/// so some 130 fit in a 16 KiB segment).
fn ledger_entry(i: usize) -> String {
    format!("entry-{i:05}-{}", "p".repeat(80))
}

/// A data directory whose channel `ledger` has 400 records in several
/// segments, with 8 bytes of record 50's payload (in the oldest, sealed,
/// segment) overwritten, and a healthy channel `other`. Returns the
/// directory and the damaged record's byte position in its segment.
fn ledger_damaged_in_an_older_segment() -> (tempfile::TempDir, usize) {
    let relay = Relay::start(SMALL_SEGMENTS);
    let addr = relay.addr_str();
    let entries: String = (0..400).map(|i| ledger_entry(i) + "\n").collect();
    let out = udpcat(&["pub", &addr, "ledger"], entries.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    publish_one(&addr, "other", "fine");
    let (status, _, dir) = relay.terminate();
    assert!(status.success());

    let channel = dir.path().join("data/channels/ledger");
    let segments = std::fs::read_dir(&channel)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(
        segments >= 3,
        "the test needs several segments, got {segments}"
    );
    let seg = channel.join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let payload_at = bytes
        .windows(12)
        .position(|w| *w == ledger_entry(50).as_bytes()[..12])
        .expect("record 50 in the oldest segment");
    bytes[payload_at + 20..payload_at + 28].copy_from_slice(DAMAGE);
    std::fs::write(&seg, &bytes).unwrap();
    // The record header (28 bytes) comes before the payload.
    let record_at = payload_at - 28;

    let verify = log_cmd("verify", &dir.path().join("data"), &[]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        !verify.status.success() && report.contains("00000000000000000000.seg: byte"),
        "the damage is there: {report}"
    );
    (dir, record_at)
}

/// A `udpcat sub` whose stdout and stderr lines are read as they come.
struct WatchedSub {
    _process: ChildGuard,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    out_lines: Vec<String>,
    err_lines: Vec<String>,
}

impl WatchedSub {
    fn start(args: &[&str]) -> WatchedSub {
        let mut cmd = Command::new(udpcat_bin());
        cmd.arg("sub")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut process = ChildGuard::spawn("udpcat sub", &mut cmd);
        let stdout = line_reader(process.child().stdout.take().unwrap());
        let stderr = line_reader(process.child().stderr.take().unwrap());
        WatchedSub {
            _process: process,
            stdout,
            stderr,
            out_lines: Vec::new(),
            err_lines: Vec::new(),
        }
    }

    /// Takes in the lines that have arrived so far.
    fn read(&mut self) {
        self.out_lines.extend(self.stdout.try_iter());
        self.err_lines.extend(self.stderr.try_iter());
    }

    fn damaged_lines(&self) -> Vec<&String> {
        let damage = String::from_utf8_lossy(DAMAGE);
        self.out_lines
            .iter()
            .filter(|l| l.contains(&*damage))
            .collect()
    }
}

/// Subscribes to `ledger` from the earliest record with `extra` flags and
/// checks that exactly records 0..50 arrive, never the damaged record 50,
/// and that the relay's error log names the file and the position.
fn damaged_record_is_never_sent(relay: &Relay, record_at: usize, extra: &[&str]) -> WatchedSub {
    let addr = relay.addr_str();
    let mut args = vec![
        addr.as_str(),
        "ledger",
        "--from",
        "earliest",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut sub = WatchedSub::start(&args);
    let named = format!("00000000000000000000.seg: record 50 at byte {record_at} is damaged");
    wait_until(
        "the relay to report the damage, or the damage to arrive",
        || {
            sub.read();
            relay.stderr().contains(&named) || !sub.damaged_lines().is_empty()
        },
    );
    assert!(
        sub.damaged_lines().is_empty(),
        "a damaged record was delivered: {:?}",
        sub.damaged_lines()
    );
    // What the relay sent before it found the damage is on its way.
    wait_until("records 0..50 to arrive", || {
        sub.read();
        sub.out_lines.len() >= 50
    });
    let got = json_lines(sub.out_lines.join("\n"));
    let offsets: Vec<u64> = got.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (0..50).collect::<Vec<_>>());
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["payload"], ledger_entry(i));
    }
    let stderr = relay.stderr();
    assert!(
        stderr.contains("ERROR") && stderr.contains("channels/ledger/00000000000000000000.seg"),
        "an error line names the file: {stderr}"
    );
    sub
}

/// The relay keeps serving `other` while `ledger` is refused.
fn serves_other_refuses_ledger(relay: &Relay) {
    let addr = relay.addr_str();
    let refused = udpcat(&["pub", &addr, "ledger", "--message", "x"], b"");
    assert!(
        !refused.status.success(),
        "publishing to the damaged channel is refused"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unavailable"));
    let sub = Subscriber::start(&[&addr, "other", "--from", "earliest", "--count", "2"]);
    publish_one(&addr, "other", "still");
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "fine\nstill\n");
}

#[test]
fn damage_in_an_older_segment_is_never_replayed_and_is_truncated_on_request() {
    let (dir, record_at) = ledger_damaged_in_an_older_segment();

    // A plain subscriber from the earliest record: the replay stops before
    // the damage, and the channel is refused from then on.
    let relay = Relay::start_in(dir, SMALL_SEGMENTS);
    damaged_record_is_never_sent(&relay, record_at, &[]);
    serves_other_refuses_ledger(&relay);
    let (status, _, dir) = relay.terminate();
    assert!(status.success());

    // A plain restart remembers: the channel stays refused.
    let relay = Relay::start_in(dir, SMALL_SEGMENTS);
    assert!(
        relay.stderr().contains("found damaged while it was served"),
        "{}",
        relay.stderr()
    );
    serves_other_refuses_ledger(&relay);
    let (_, _, dir) = relay.terminate();

    // The operator's choice: keep records 0..50, delete everything after.
    let mut args = SMALL_SEGMENTS.to_vec();
    args.extend(["--truncate-corrupt", "ledger"]);
    let relay = Relay::start_in(dir, &args);
    let addr = relay.addr_str();
    let sub = Subscriber::start(&[
        &addr, "ledger", "--from", "earliest", "--count", "51", "--format", "json",
    ]);
    publish_one(&addr, "ledger", "fresh");
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    let got = json_lines(&stdout);
    for (i, r) in got[..50].iter().enumerate() {
        assert_eq!(
            (r["offset"].as_u64(), &r["payload"]),
            (Some(i as u64), &ledger_entry(i).into())
        );
    }
    assert_eq!(
        (got[50]["offset"].as_u64(), &got[50]["payload"]),
        (Some(50), &"fresh".into())
    );
    let dir = stop_clean(relay);
    let data = dir.path().join("data");
    let files: Vec<String> = std::fs::read_dir(data.join("channels/ledger"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert_eq!(
        files,
        ["00000000000000000000.seg"],
        "the later segments are deleted"
    );
}

#[test]
fn damage_in_an_older_segment_is_never_sent_to_a_reliable_subscriber() {
    let (dir, record_at) = ledger_damaged_in_an_older_segment();
    // The relay drops the subscription with an error instead of sending the
    // damaged record, and refuses the channel.
    let relay = Relay::start_in(dir, SMALL_SEGMENTS);
    let mut sub = damaged_record_is_never_sent(&relay, record_at, &["--reliable"]);
    wait_until("the subscriber to be told", || {
        sub.read();
        sub.err_lines
            .iter()
            .any(|l| l.contains("relay refused (unavailable)"))
    });
    serves_other_refuses_ledger(&relay);
}

/// The payload of message `i` in the live-dump test: its length varies, so
/// records end at every alignment.
fn live_entry(i: usize) -> String {
    format!("live-{i:06}-{}", "x".repeat(i % 97))
}

#[test]
fn log_dump_beside_a_relay_that_is_appending_prints_only_whole_records() {
    const CHUNKS: usize = 20;
    const PER_CHUNK: usize = 500;
    let relay = Relay::start(SMALL_SEGMENTS);
    let data = relay.data_dir();
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", &relay.addr_str(), "live"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let mut input = publisher.child().stdin.take().unwrap();

    let check_dump = |round: usize, seen_before: usize| -> usize {
        let dump = log_cmd("dump", &data, &["live", "--format", "json"]);
        let stderr = String::from_utf8_lossy(&dump.stderr);
        // Before the first message arrives the channel does not exist yet.
        if !dump.status.success() && seen_before == 0 && stderr.contains("no channel named") {
            return 0;
        }
        assert!(dump.status.success(), "dump {round}: {stderr}");
        let records = json_lines(&dump.stdout);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["offset"], i as u64, "dump {round}: offsets are dense");
            assert_eq!(r["payload"], live_entry(i), "dump {round}: record {i}");
        }
        records.len()
    };
    // Each chunk is still being published and appended while the dump runs.
    let mut seen = Vec::new();
    for chunk in 0..CHUNKS {
        use std::io::Write;
        let lines: String = (chunk * PER_CHUNK..(chunk + 1) * PER_CHUNK)
            .map(|i| live_entry(i) + "\n")
            .collect();
        input.write_all(lines.as_bytes()).unwrap();
        input.flush().unwrap();
        seen.push(check_dump(chunk, seen.last().copied().unwrap_or(0)));
    }
    drop(input);
    let status = publisher.wait_deadline(DEADLINE);
    assert!(status.success(), "the publisher finished");
    assert_eq!(check_dump(CHUNKS, 1), CHUNKS * PER_CHUNK);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "each dump saw at least what the one before did: {seen:?}"
    );
}

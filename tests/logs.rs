//! `udprelay --log-format json`: every line the relay logs is one JSON
//! object with its time, level and message, for log shippers.

mod common;

use common::*;

#[test]
fn json_logs_are_one_object_a_line() {
    let relay = Relay::start(&["--log-format", "json"]);
    let (status, stderr, _dir) = relay.terminate();
    assert!(status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "a start and a stop at least: {stderr}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message"] {
            assert!(value.get(key).is_some(), "no {key}: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"draining on SIGTERM") && l.contains("\"timeout\":")),
        "the drain, with its fields: {stderr}"
    );
}

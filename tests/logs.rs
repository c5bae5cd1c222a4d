//! `udprelay --log-format json`: every line the relay logs is one JSON
//! object with its time, level and message, for log shippers. A flood of
//! bad input is one line per interval naming its source, never a line per
//! datagram.

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

#[test]
fn a_flood_of_bad_datagrams_is_one_summary_line_naming_its_source() {
    let relay = Relay::start(&[]);
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut client = TestClient::new(relay.addr);
    let garbage = [0x42u8; 40];
    // Paced by a barrier now and then, so the socket buffer keeps up.
    for round in 0..20 {
        for _ in 0..100 {
            socket.send_to(&garbage, relay.addr).unwrap();
        }
        wait_until("the relay to count the garbage", || {
            client.stats()["dropped_not_protocol"] >= (round + 1) * 100
        });
    }
    let (status, stderr, _dir) = relay.terminate();
    assert!(status.success(), "{stderr}");
    let summaries: Vec<&str> = (stderr.lines())
        .filter(|l| l.contains("refused in the last"))
        .collect();
    assert_eq!(summaries.len(), 1, "one line for 2,000 datagrams: {stderr}");
    assert!(
        summaries[0].contains("dropped_not_protocol=2000")
            && summaries[0].contains("most from 127.0.0.2 (at least 2000)"),
        "{}",
        summaries[0]
    );
    assert!(
        stderr.lines().count() < 20,
        "no line per datagram: {stderr}"
    );
}

//! SIGTERM drains, with the real binaries: a reliable publisher in the
//! middle of 100,000 messages finishes with every one acknowledged and
//! stored, and the relay exits 0 once done; a new subscription is refused
//! while a drain waits, and a second SIGTERM stops it at once. (What it
//! tells systemd is checked in tests/reload.rs.)

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

#[test]
fn sigterm_lets_a_reliable_publisher_in_mid_run_finish_everything_acknowledged() {
    const N: usize = 100_000;
    let mut relay = Relay::start(&["--drain-timeout", "60s"]);
    let (publisher, mut stdin) = reliable_publisher(&relay.addr_str(), "orders");
    let input: String = (0..N).map(|i| format!("order-{i:06}\n")).collect();
    let feed = std::thread::spawn(move || {
        stdin.write_all(input.as_bytes()).unwrap();
        input
    });
    let mut watcher = TestClient::new(relay.addr);
    wait_until("the relay to store the first messages", || {
        watcher.stats()["messages_published"] >= 1000
    });
    signal(relay.process.child().id(), "TERM");
    let input = feed.join().unwrap();
    let out = publisher.output_deadline(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the publisher: {stderr}");
    let status = relay.process.wait_deadline(DEADLINE);
    let said = relay.stderr();
    assert!(status.success(), "the relay exited {status:?}: {said}");
    assert!(said.contains("draining on SIGTERM"), "{said}");
    assert!(said.contains("drained: stopping"), "{said}");
    let dump = Command::new(udprelay_bin())
        .args(["log", "dump", "orders", "--data-dir"])
        .arg(relay.data_dir())
        .output()
        .unwrap();
    let stored: Vec<String> = (String::from_utf8_lossy(&dump.stdout).lines())
        .map(|l| l.split('\t').nth(2).unwrap().to_string())
        .collect();
    let want: Vec<&str> = input.lines().collect();
    assert_eq!(stored.len(), N, "every message stored once");
    assert!(stored == want, "in order");
}

#[test]
fn a_drain_refuses_newcomers_and_a_second_sigterm_stops_it_at_once() {
    let mut relay = Relay::start(&["--drain-timeout", "600s"]);
    let mut sub = Subscriber::start(&[&relay.addr_str(), "news", "--reliable"]);
    // The subscriber stops answering: the drain would wait for it.
    let pid = sub.pid();
    signal(pid, "STOP");
    let published = udpcat(&["pub", &relay.addr_str(), "news"], b"one\n");
    assert!(published.status.success());
    let relay_pid = relay.process.child().id();
    signal(relay_pid, "TERM");
    wait_until("the relay to say it drains", || {
        relay.stderr().contains("draining on SIGTERM")
    });
    // A newcomer is turned away meanwhile.
    let refused = udpcat(&["sub", &relay.addr_str(), "news", "--timeout", "5s"], b"");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a subscription was taken while draining: {said}"
    );
    assert!(said.contains("shutting down"), "{said}");
    signal(relay_pid, "TERM");
    let status = relay.process.wait_deadline(DEADLINE);
    assert!(status.success(), "{status:?}");
    assert!(
        !relay.stderr().contains("drained: stopping"),
        "{}",
        relay.stderr()
    );
    signal(pid, "CONT");
}

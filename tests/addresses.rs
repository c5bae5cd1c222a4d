//! Addresses as a new user writes them: host names work for every address
//! flag of the relay and the tools, and a missing port is said as such.

mod common;

use common::*;

#[test]
fn host_names_work_for_the_relay_and_its_tools() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_at(dir, "localhost:0", &["--raw-out", "feed=localhost:9"]);
    assert!(relay.addr.ip().is_loopback());
    let by_name = format!("localhost:{}", relay.addr.port());
    let out = udpcat(&["pub", &by_name, "news"], b"hello\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chaos = Chaos::start_named(&by_name);
    let out = udpcat(&["pub", &chaos.addr_str(), "news"], b"through chaos\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client = TestClient::new(relay.addr);
    assert_eq!(client.stats()["messages_published"], 2);
}

#[test]
fn an_address_without_a_port_says_the_port_is_missing() {
    let out = udpcat(&["pub", "127.0.0.1", "news"], b"x\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("\"127.0.0.1\" has no port: write HOST:PORT"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(udprelay_bin())
        .args(["--listen", "localhost", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("\"localhost\" has no port"), "{stderr}");
}

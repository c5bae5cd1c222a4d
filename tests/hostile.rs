//! End to end: what a hostile client could make the real `udprelay` do,
//! each hole found in review closed and held closed.

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;

use common::*;
use udprelay::wire::{self, DeliveryMode, Frame, StartPosition};

/// The relay's counters, as `udpcat stats` prints them.
fn stats(relay: &Relay) -> HashMap<String, u64> {
    let out = udpcat(&["stats", &relay.addr_str()], b"");
    assert!(
        out.status.success(),
        "udpcat stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Frames naming new messages of 65,535 one-byte pieces, packed into a
/// datagram of at most `size` bytes, message ids from `first`.
fn fragment_bomb(first: u32, size: usize) -> (Vec<u8>, u32) {
    let mut datagram = wire::DatagramBuilder::new(size);
    let mut msg_id = first;
    while datagram
        .push(&Frame::Fragment {
            msg_id,
            index: 0,
            count: u16::MAX,
            channel: "b",
            chunk: b"x",
        })
        .is_ok()
    {
        msg_id += 1;
    }
    (datagram.finish(), msg_id)
}

/// The budget the test relay is given, and what besides it the relay may
/// grow by: allocator slack and the first use of its buffers. Before the
/// fix, one 64 KB datagram asked for 7 GB and ten 1400-byte ones made
/// 961 MB resident.
const BUDGET: u64 = 8 << 20;
const SLACK: u64 = 24 << 20;

#[test]
fn a_fragment_bomb_leaves_memory_within_the_reassembly_budget() {
    let mut relay = Relay::start(&["--reassembly-memory", "8M"]);
    let pid = relay.process.child().id();
    let mut client = TestClient::new(relay.addr);
    client.barrier();
    let before = resident_bytes(pid);

    // One datagram as large as UDP carries, packed with new messages.
    let (datagram, mut next) = fragment_bomb(0, 65_507);
    client.send_raw(&datagram);
    client.barrier();
    // Then a stream of ordinary-sized ones, waiting for each batch of 20
    // to be read so that none is lost to a full socket buffer.
    for round in 0..10 {
        for _ in 0..20 {
            let (datagram, after) = fragment_bomb(next, 1400);
            next = after;
            client.send_raw(&datagram);
        }
        client.barrier();
        let grown = resident_bytes(pid).saturating_sub(before);
        assert!(
            grown <= BUDGET + SLACK,
            "round {round}: resident memory grew {grown} bytes, over the {BUDGET}-byte budget and {SLACK} bytes of slack"
        );
    }
    let counters = stats(&relay);
    assert!(
        counters["dropped_limit"] > 0,
        "the budget refused messages: {counters:?}"
    );
    // The relay still works for honest clients.
    client.subscribe(1, "after");
    client.publish("after", b"hello");
    let got = client.barrier();
    assert!(
        got.iter()
            .any(|g| matches!(g, Got::Deliver { payload, .. } if payload == b"hello")),
        "{got:?}"
    );
}

#[test]
fn subscribing_to_many_names_does_not_keep_channel_slots() {
    let relay = Relay::start(&["--max-channels", "50", "--lease", "300ms"]);
    // An attacker at its own address: it can prove that address, so its
    // subscriptions are served, and take slots while it renews them.
    let attacker = TestClient::new(relay.addr);
    let names: Vec<String> = (0..200).map(|i| format!("typo-{i}")).collect();
    for (d, chunk) in names.chunks(10).enumerate() {
        let frames: Vec<Frame<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(i, name)| Frame::Subscribe {
                sub_id: (d * 10 + i) as u32,
                mode: DeliveryMode::Unreliable,
                start: StartPosition::Latest,
                channel: name,
                group: None,
                origins: false,
                resume: udprelay::wire::ResumeVector::EMPTY,
            })
            .collect();
        attacker.send(&frames);
    }
    // The attacker never renews: once the leases lapse the slots are free.
    wait_until("the subscribed-only channels to be forgotten", || {
        let s = stats(&relay);
        s["subscriptions"] == 0 && s["channels"] == 0
    });
    let out = udpcat(&["pub", &relay.addr_str(), "real", "--message", "m"], b"");
    assert!(
        out.status.success(),
        "a real publisher was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stats(&relay)["channels_forgotten"] >= 50);
}

#[test]
fn a_subscription_forged_from_the_relays_own_port_sends_nothing() {
    let relay = Relay::start(&["--raw-in", "127.0.0.1:0=feed"]);
    let raw_in = relay.raw_in[0];
    let subscribe = wire::encode_datagram(&[Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "feed",
        group: None,
        origins: false,
        resume: udprelay::wire::ResumeVector::EMPTY,
    }])
    .unwrap();
    let Ok(forger) = forge::Forger::try_new() else {
        eprintln!("skipped: forging a source port needs CAP_NET_RAW (run as root, as CI does)");
        return;
    };
    forger.send(raw_in, relay.addr, &subscribe);
    // Before the fix, this publish started a loop through the raw-in port
    // that appended its own deliveries at hundreds of MB/s.
    let mut client = TestClient::new(relay.addr);
    client.barrier();
    client.publish("feed", b"one");
    client.barrier();
    let counters = stats(&relay);
    assert_eq!(counters["dropped_own_address"], 1, "{counters:?}");
    assert_eq!(
        counters["raw_received"], 0,
        "the relay fed its own raw port"
    );
    assert_eq!(counters["messages_published"], 1);
    assert_eq!(counters["subscriptions"], 0);
}

#[test]
fn a_raw_egress_to_the_relays_own_port_is_refused_at_start() {
    let port = free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let raw_in = format!("127.0.0.1:{port}=a");
    let raw_out = format!("a=127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(udprelay_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--raw-in", &raw_in, "--raw-out", &raw_out])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = ChildGuard::spawn("udprelay", &mut cmd).output_deadline(DEADLINE);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("own sockets"), "{stderr}");
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

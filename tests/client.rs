//! End to end: the client side (`udpcat`) against the real `udprelay`, where
//! the relay goes away, comes back, or is asked by a stranger.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use common::*;
use udprelay::relay::Counters;
use udprelay::wire::{self, Frame};

fn dump(data_dir: &Path, channel: &str, extra: &[&str]) -> Output {
    Command::new(udprelay_bin())
        .args(["log", "dump", channel, "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("run udprelay log dump")
}

/// `udpcat pub --reliable` of `messages` numbered lines, its stdin written
/// by a thread as fast as udpcat reads it.
fn reliable_publisher(addr: &str, channel: &str, messages: usize, extra: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", addr, channel, "--reliable"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub --reliable", &mut cmd);
    let mut stdin = publisher.child().stdin.take().unwrap();
    thread::spawn(move || {
        let input: String = (0..messages).map(|i| format!("m-{i}\n")).collect();
        // A publisher that gave up closes the pipe: its exit tells the test.
        let _ = stdin.write_all(input.as_bytes());
    });
    publisher
}

/// Waits until the relay's log of `channel` holds at least `n` messages.
fn wait_stored(data_dir: &Path, channel: &str, n: u64) {
    let from = (n - 1).to_string();
    wait_until(&format!("{n} messages stored in {channel}"), || {
        let out = dump(data_dir, channel, &["--from", &from, "--count", "1"]);
        out.status.success() && !out.stdout.is_empty()
    });
}

#[test]
fn reliable_publisher_rides_through_a_relay_restart() {
    const MESSAGES: usize = 100_000;
    let relay = Relay::start(&[]);
    let listen = relay.addr_str();
    let data_dir = relay.data_dir();
    // A reply timeout far beyond a restart: the test is about riding
    // through, not about how fast the relay comes back.
    let mut publisher =
        reliable_publisher(&listen, "restart", MESSAGES, &["--reply-timeout", "30s"]);
    // Mid-run: some stored, the rest still coming, messages in flight.
    wait_stored(&data_dir, "restart", 1_000);
    assert!(
        publisher.child().try_wait().unwrap().is_none(),
        "the publisher finished before the kill"
    );
    let dir = relay.kill9();
    let relay = Relay::start_at(dir, &listen, &[]);

    let out = publisher.output_deadline(DEADLINE);
    assert!(
        out.status.success(),
        "the publisher did not ride through the restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = dump(&data_dir, "restart", &[]);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    let log = String::from_utf8(log.stdout).unwrap();
    // Exactly-once across a restart is not asserted here (a message stored
    // but not acknowledged at the kill may be stored again): every message
    // at least once, at dense offsets.
    let mut seen = vec![false; MESSAGES];
    for (i, line) in log.lines().enumerate() {
        let mut fields = line.split('\t');
        let offset: usize = fields.next().unwrap().parse().unwrap();
        assert_eq!(offset, i, "offsets are dense");
        let payload = fields.nth(1).unwrap();
        let n: usize = payload.strip_prefix("m-").unwrap().parse().unwrap();
        seen[n] = true;
    }
    let missing: Vec<usize> = (0..MESSAGES).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "{} of {MESSAGES} messages missing, the first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    drop(relay);
}

#[test]
fn reliable_publisher_gives_up_after_the_reply_timeout_of_silence() {
    let relay = Relay::start(&[]);
    let data_dir = relay.data_dir();
    let publisher = reliable_publisher(
        &relay.addr_str(),
        "gone",
        100_000,
        &["--reply-timeout", "1s"],
    );
    wait_stored(&data_dir, "gone", 1_000);
    let _dir = relay.kill9();
    let out = publisher.output_deadline(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a publisher to a dead relay exited 0"
    );
    assert!(
        stderr.contains("were not acknowledged: no answer from the relay within 1s"),
        "{stderr}"
    );
}

#[test]
fn stats_to_a_stranger_is_one_datagram_no_larger_than_the_request() {
    let relay = Relay::start(&[]);
    // An address the relay never heard from, as a forged source would be.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The unpaged request of earlier builds (12 bytes): no room, no answer.
    let unpadded = [b'U', b'R', 1, 0, 0, 0, 0, 0, 0x0A, 0, 0, 0];
    stranger.send_to(&unpadded, relay.addr).unwrap();
    // The smallest paged request of earlier builds: too small even for an
    // address token (32 bytes).
    let small = wire::encode_datagram(&[Frame::StatsRequest {
        cursor: 0,
        padding: 4,
    }])
    .unwrap();
    assert_eq!(small.len(), 20);
    stranger.send_to(&small, relay.addr).unwrap();
    // A padded one from an address that has not proven itself: the answer
    // is a token for it, no larger than the request, never the counters.
    let padded = wire::encode_datagram(&[Frame::StatsRequest {
        cursor: 0,
        padding: 600,
    }])
    .unwrap();
    stranger.send_to(&padded, relay.addr).unwrap();

    // The relay answers in order: the first datagram back answers `padded`,
    // so nothing came for the two before it.
    let mut buf = vec![0u8; 65_536];
    stranger.set_read_timeout(Some(DEADLINE)).unwrap();
    let (n, from) = stranger
        .recv_from(&mut buf)
        .expect("no answer to a padded STATS request");
    assert_eq!(from, relay.addr);
    assert!(
        n <= padded.len(),
        "a {n}-byte answer to a {}-byte request",
        padded.len()
    );
    let frames: Vec<_> = wire::decode_datagram(&buf[..n]).unwrap().collect();
    assert!(
        matches!(frames[..], [Ok(Frame::AddressToken { .. })]),
        "{frames:?}"
    );
    // The one wait for something that must not come: there is no event to
    // wait for instead. Half a second is far longer than the loopback round
    // trip the first answer took; a second answer would come at once.
    stranger
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    if let Ok((n, _)) = stranger.recv_from(&mut buf) {
        panic!("a second datagram ({n} bytes) for one request");
    }

    // The stranger's requests were counted; `udpcat stats` pages through
    // every counter, in pages of 200 bytes as in ones of 1400.
    let names: Vec<&str> = Counters::default()
        .entries(0, 0)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for size in ["200", "1400"] {
        let out = udpcat(&["stats", &relay.addr_str(), "--datagram-size", size], b"");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let printed: Vec<(&str, u64)> = stdout
            .lines()
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name, value.parse().expect("a number"))
            })
            .collect();
        let printed_names: Vec<&str> = printed.iter().map(|(n, _)| *n).collect();
        assert_eq!(printed_names, names, "every counter once, in order");
        let count = |name: &str| printed.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(
            count("dropped_unproven") >= 3,
            "the stranger's three requests: {stdout}"
        );
        assert!(
            count("tokens_sent") >= 2,
            "the stranger's and udpcat's: {stdout}"
        );
    }
}

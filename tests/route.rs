//! End to end: routing in the client, with the real binaries. Several
//! relays in ADDR, each at another distance (udpchaos in front of it adds
//! delay), and `--pick` choosing among them.

mod common;

use common::*;

/// Three relays: one direct, one 20 ms and one 40 ms away (each way).
struct Three {
    relays: [Relay; 3],
    _chaos: [Chaos; 2],
    /// The addresses clients use: 40 ms, direct, 20 ms.
    list: String,
    direct: String,
    far: String,
}

fn three() -> Three {
    let relays = [Relay::start(&[]), Relay::start(&[]), Relay::start(&[])];
    let near = Chaos::start(relays[1].addr, &["--delay", "20ms"]);
    let far = Chaos::start(relays[2].addr, &["--delay", "40ms"]);
    let direct = relays[0].addr_str();
    Three {
        list: format!("{},{},{}", far.addr_str(), direct, near.addr_str()),
        far: far.addr_str(),
        direct,
        relays,
        _chaos: [near, far],
    }
}

/// Publishes one message through the list with `--pick how`; returns what
/// udpcat said on stderr.
fn publish_with(t: &Three, how: &str) -> String {
    let out = udpcat(&["pub", &t.list, "news", "--pick", how], b"hello\n");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn stored(relay: &Relay) -> usize {
    let dump = std::process::Command::new(udprelay_bin())
        .args(["log", "dump", "news", "--data-dir"])
        .arg(relay.data_dir())
        .output()
        .unwrap();
    String::from_utf8_lossy(&dump.stdout).lines().count()
}

/// `udpcat pub LIST stream --pick first` (and `extra`), with its stdin.
fn spawn_publisher(list: &str, extra: &[&str]) -> (ChildGuard, std::process::ChildStdin) {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", list, "stream", "--pick", "first"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let stdin = publisher.child().stdin.take().unwrap();
    (publisher, stdin)
}

/// The numbers stored on channel "stream" in data directory `dir`.
fn dump_stream(dir: &std::path::Path) -> Vec<u32> {
    let out = std::process::Command::new(udprelay_bin())
        .args(["log", "dump", "stream", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap().parse().unwrap())
        .collect()
}

/// Feeds `first` to a publisher of "stream", waits until relay `a` stored
/// `stored` messages, kills it -9, and feeds `rest`; returns A's directory
/// and what the publisher said on stderr, once it succeeded, having moved
/// to `b`.
fn kill_midway(
    (a, b): (Relay, &Relay),
    (publisher, mut stdin): (ChildGuard, std::process::ChildStdin),
    (first, stored, rest): (&str, u64, &str),
) -> (tempfile::TempDir, String) {
    use std::io::Write;
    stdin.write_all(first.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut watcher = TestClient::new(a.addr);
    wait_until(&format!("relay A stored the first {stored}"), || {
        watcher.stats()["messages_published"] >= stored
    });
    let a_dir = a.kill9();
    stdin.write_all(rest.as_bytes()).unwrap();
    drop(stdin);
    let out = publisher.output_deadline(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("stopped answering; now using {}", b.addr_str())),
        "{stderr}"
    );
    (a_dir, stderr)
}

#[test]
fn nearest_picks_the_relay_with_the_lowest_round_trip() {
    let t = three();
    let said = publish_with(&t, "nearest");
    assert!(
        said.contains(&format!("picked {} (nearest)", t.direct)),
        "{said}"
    );
    assert_eq!(stored(&t.relays[0]), 1, "{said}");
    assert_eq!(stored(&t.relays[1]) + stored(&t.relays[2]), 0);
    // Every relay was measured, and said how loaded it is.
    assert_eq!(said.matches(" rtt ").count(), 3, "{said}");
    assert_eq!(said.matches(" load ").count(), 3, "{said}");
}

#[test]
fn first_picks_the_first_that_answers_and_two_choices_never_a_far_one() {
    let t = three();
    let said = publish_with(&t, "first");
    assert!(
        said.contains(&format!("picked {} (first)", t.far)),
        "{said}"
    );
    // The 20 and 40 ms relays are over 1.5x the direct one's round trip.
    let said = publish_with(&t, "two-choices");
    assert!(
        said.contains(&format!("picked {} (two-choices)", t.direct)),
        "{said}"
    );
}

#[test]
fn a_relay_that_is_down_is_passed_over_and_none_answering_is_one_clear_line() {
    let up = Relay::start(&[]);
    let down = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    let list = format!("{down_addr},{}", up.addr_str());
    let out = udpcat(&["ping", &list, "--count", "1", "--pick", "first"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{down_addr} no answer")),
        "{stderr}"
    );
    let out = udpcat(
        &["ping", &down_addr, "--count", "1", "--pick", "nearest"],
        b"",
    );
    assert!(!out.status.success());
    let out = udpcat(
        &[
            "ping",
            &format!("{down_addr},{down_addr}"),
            "--count",
            "1",
            "--reply-timeout",
            "300ms",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim(),
        "udpcat: none of the 2 relays answered within 300ms"
    );
}

#[test]
fn a_subscriber_moves_to_another_relay_when_its_relay_is_killed() {
    for mode in ["plain", "reliable"] {
        let a = Relay::start(&[]);
        let b = Relay::start(&[]);
        let (a_addr, b_addr) = (a.addr_str(), b.addr_str());
        let list = format!("{a_addr},{b_addr}");
        let mut args = vec![&list[..], "news", "--pick", "first", "--count", "2"];
        if mode == "reliable" {
            args.push("--reliable");
        }
        let sub = Subscriber::start(&args);
        let out = udpcat(&["pub", &a_addr, "news"], b"one\n");
        assert!(out.status.success());
        let _dir = a.kill9();
        // A second of silence, and it subscribes at the other relay.
        let said = sub.stderr_until("subscribed to");
        assert!(
            said.contains(&format!("now using {b_addr}")),
            "{mode}: {said}"
        );
        let out = udpcat(&["pub", &b_addr, "news"], b"two\n");
        assert!(out.status.success());
        let (status, stdout, stderr) = sub.finish();
        assert!(status.success(), "{mode}: {stderr}");
        assert_eq!(stdout, "one\ntwo\n", "{mode}");
    }
}

#[test]
fn a_reliable_publisher_moves_to_another_relay_and_loses_nothing() {
    let a = Relay::start(&[]);
    let b = Relay::start(&[]);
    let list = format!("{},{}", a.addr_str(), b.addr_str());
    let publisher = spawn_publisher(&list, &["--reliable"]);
    let lines =
        |range: std::ops::Range<u32>| -> String { range.map(|i| format!("{i}\n")).collect() };
    // The first half is in A's log before A is killed.
    let (a_dir, _) = kill_midway((a, &b), publisher, (&lines(0..500), 500, &lines(500..1000)));
    let (on_a, on_b) = (
        dump_stream(&a_dir.path().join("data")),
        dump_stream(&b.data_dir()),
    );
    let mut all: Vec<u32> = on_a.iter().chain(&on_b).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (0..1000).collect::<Vec<_>>(),
        "A held {}, B {}",
        on_a.len(),
        on_b.len()
    );
    // B took the rest, in order (what A stored but had not acknowledged
    // when it died may be on both).
    assert!(on_b.windows(2).all(|w| w[0] < w[1]), "B in order");
    assert!(on_b.contains(&999));
}

#[test]
fn a_plain_publisher_moves_to_another_relay_when_its_relay_is_killed() {
    let a = Relay::start(&[]);
    let b = Relay::start(&[]);
    let list = format!("{},{}", a.addr_str(), b.addr_str());
    let publisher = spawn_publisher(&list, &[]);
    let lines =
        |range: std::ops::Range<u32>| -> String { range.map(|i| format!("{i:06}\n")).collect() };
    // Windows of the rest go to A unanswered until the publisher gives A
    // up; what is left goes to B.
    let _ = kill_midway(
        (a, &b),
        publisher,
        (&lines(0..100), 100, &lines(100..50_000)),
    );
    let on_b = dump_stream(&b.data_dir());
    assert!(!on_b.is_empty(), "B got the rest");
    assert!(on_b.windows(2).all(|w| w[0] < w[1]), "in order, once");
    assert_eq!(on_b.last(), Some(&49_999), "up to the end of the input");
}

//! End to end: reliable publishing and subscribing with the real binaries,
//! through `udpchaos` for a lossy path.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

fn numbered(n: usize, prefix: &str) -> String {
    (0..n).map(|i| format!("{prefix}-{i:05}\n")).collect()
}

#[test]
fn ten_thousand_messages_cross_lossy_paths_complete_and_in_order() {
    let relay = Relay::start(&[]);
    let lossy = ["--loss", "0.1", "--delay", "20ms", "--seed"];
    let to_publisher = Chaos::start(relay.addr, &[&lossy[..], &["1"]].concat());
    let to_subscriber = Chaos::start(relay.addr, &[&lossy[..], &["2"]].concat());
    let sub = Subscriber::start(&[
        &to_subscriber.addr_str(),
        "lossy",
        "--reliable",
        "--count",
        "10000",
        "--reply-timeout",
        "10s",
    ]);
    let input = numbered(10_000, "m");
    let out = udpcat(
        &[
            "pub",
            &to_publisher.addr_str(),
            "lossy",
            "--reliable",
            "--reply-timeout",
            "10s",
        ],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "sub: {stderr}");
    assert!(
        stdout == input,
        "the subscriber got {} lines, not the 10,000 in order",
        stdout.lines().count()
    );
    // And the log holds each exactly once.
    let dump = Command::new(udprelay_bin())
        .args(["log", "dump", "lossy", "--data-dir"])
        .arg(relay.data_dir())
        .output()
        .unwrap();
    let payloads: String = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| format!("{}\n", l.split('\t').nth(2).unwrap()))
        .collect();
    assert!(
        payloads == input,
        "the log holds {} records",
        payloads.lines().count()
    );
}

#[test]
fn a_killed_reliable_subscriber_resumes_with_no_gap_and_no_duplicate() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let input = numbered(3000, "r");
    let out = udpcat(&["pub", &addr, "resume", "--reliable"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A subscriber reads part of the channel, then dies without a word.
    let mut cmd = Command::new(udpcat_bin());
    cmd.args([
        "sub",
        &addr,
        "resume",
        "--reliable",
        "--from",
        "earliest",
        "--format",
        "json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut first = ChildGuard::spawn("udpcat sub", &mut cmd);
    let mut lines = BufReader::new(first.child().stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 1000 {
        let line = lines
            .next()
            .expect("the subscriber stopped before 1000 messages")
            .unwrap();
        seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    signal(first.child().id(), "KILL");
    first.wait_deadline(DEADLINE);
    let last = seen.last().unwrap()["offset"].as_u64().unwrap();

    // A new one resumes after the last offset it printed.
    let from = (last + 1).to_string();
    let rest = 3000 - (last + 1);
    let sub = Subscriber::start(&[
        &addr,
        "resume",
        "--reliable",
        "--from",
        &from,
        "--count",
        &rest.to_string(),
        "--format",
        "json",
    ]);
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    let offsets: Vec<u64> = seen
        .iter()
        .chain(json_lines(&stdout).iter())
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (0..3000).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
}

#[test]
fn reliable_publish_fails_clearly_when_the_relay_is_gone() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let (status, _, _dir) = relay.terminate();
    assert!(status.success());
    let out = udpcat(
        &[
            "pub",
            &addr,
            "x",
            "--reliable",
            "--message",
            "m",
            "--reply-timeout",
            "1s",
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no relay at") || stderr.contains("no answer"),
        "{stderr}"
    );
}

#[test]
fn relay_refusals_end_a_reliable_publish_with_the_count_not_acknowledged() {
    let relay = Relay::start(&["--max-message-size", "10"]);
    let out = udpcat(
        &["pub", &relay.addr_str(), "x", "--reliable"],
        b"short\nthis one is far too long\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too-large"), "{stderr}");
    assert!(stderr.contains("were not acknowledged"), "{stderr}");
}

#[test]
fn a_one_megabyte_message_crosses_a_lossy_path_intact() {
    let relay = Relay::start(&[]);
    let lossy = ["--loss", "0.1", "--delay", "5ms", "--seed"];
    let to_publisher = Chaos::start(relay.addr, &[&lossy[..], &["7"]].concat());
    let to_subscriber = Chaos::start(relay.addr, &[&lossy[..], &["8"]].concat());
    let mut rng = udprelay::rng::Rng::new(99);
    let mut big = vec![0u8; 1 << 20];
    rng.fill(&mut big);
    let file = relay.dir.path().join("big.bin");
    std::fs::write(&file, &big).unwrap();

    let sub = Subscriber::start(&[
        &to_subscriber.addr_str(),
        "blobs",
        "--reliable",
        "--count",
        "1",
        "--format",
        "raw",
        "--reply-timeout",
        "10s",
    ]);
    let out = udpcat(
        &[
            "pub",
            &to_publisher.addr_str(),
            "blobs",
            "--reliable",
            "--whole",
            "--file",
            file.to_str().unwrap(),
            "--reply-timeout",
            "10s",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish_bytes();
    assert!(status.success(), "sub: {stderr}");
    assert_eq!(stdout.len(), big.len());
    assert_eq!(
        crc32fast::hash(&stdout),
        crc32fast::hash(&big),
        "checksums match"
    );
}

#[test]
fn counters_of_each_reliable_stream_are_visible() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    // The subscriber waits for one more message than the first publish sends,
    // so it is still subscribed when the counters are read.
    let sub = Subscriber::start(&[&addr, "seen", "--reliable", "--count", "101", "-v"]);
    let input = numbered(100, "s");
    let out = udpcat(
        &["pub", &addr, "seen", "--reliable", "-v"],
        input.as_bytes(),
    );
    assert!(out.status.success());
    let pub_report = String::from_utf8_lossy(&out.stderr);
    assert!(
        pub_report.contains("100 message(s) acknowledged on seen (100 pieces"),
        "{pub_report}"
    );
    assert!(
        pub_report.contains("retransmissions") && pub_report.contains("srtt"),
        "{pub_report}"
    );

    // While the subscriber is still there, the relay lists both streams.
    let value = |text: &str, kind: &str, what: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(kind) && l.split(' ').nth(2) == Some(what))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let mut text = String::new();
    wait_until(
        "the relay to report the subscription's 100 messages sent",
        || {
            let stats = udpcat(&["stats", &addr], b"");
            text = String::from_utf8_lossy(&stats.stdout).into_owned();
            value(&text, "subscription ", "sent").is_some_and(|v| v >= 100)
        },
    );
    assert_eq!(value(&text, "session ", "received"), Some(100), "{text}");
    assert!(value(&text, "subscription ", "rtt_us").is_some(), "{text}");
    assert!(
        value(&text, "subscription ", "window").is_some_and(|w| w >= 16),
        "{text}"
    );

    let last = udpcat(
        &["pub", &addr, "seen", "--reliable", "--message", "last"],
        b"",
    );
    assert!(last.status.success());
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, format!("{input}last\n"));
    assert!(
        stderr.contains("101 messages received in order"),
        "{stderr}"
    );
}

#[test]
fn a_reliable_wildcard_subscriber_gets_every_matching_channel_whole_and_in_order() {
    // Two channels the pattern matches (one stored before it starts, one
    // created after), one it does not, all across a lossy path.
    let relay = Relay::start(&[]);
    let lossy = ["--loss", "0.1", "--delay", "5ms", "--seed"];
    let to_publisher = Chaos::start(relay.addr, &[&lossy[..], &["11"]].concat());
    let to_subscriber = Chaos::start(relay.addr, &[&lossy[..], &["12"]].concat());
    let publish = |channel: &str, input: &str| {
        let out = udpcat(
            &[
                "pub",
                &to_publisher.addr_str(),
                channel,
                "--reliable",
                "--reply-timeout",
                "10s",
            ],
            input.as_bytes(),
        );
        assert!(
            out.status.success(),
            "pub {channel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (eu, us) = (numbered(400, "eu"), numbered(400, "us"));
    publish("orders.eu", &eu[..eu.len() / 2]);
    let sub = Subscriber::start(&[
        &to_subscriber.addr_str(),
        "orders.*",
        "--reliable",
        "--from",
        "earliest",
        "--count",
        "800",
        "--format",
        "json",
        "--reply-timeout",
        "10s",
    ]);
    publish("orders.us", &us);
    publish("orders.eu.late", "not one token\n");
    publish("orders.eu", &eu[eu.len() / 2..]);
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "sub: {stderr}");
    let mut by_channel: std::collections::BTreeMap<String, String> = Default::default();
    for (i, m) in json_lines(&stdout).iter().enumerate() {
        let channel = m["channel"].as_str().unwrap().to_string();
        let lines = by_channel.entry(channel.clone()).or_default();
        assert_eq!(
            m["offset"].as_u64().unwrap(),
            lines.lines().count() as u64,
            "message {i} on {channel}: offsets in order with no gap"
        );
        lines.push_str(m["payload"].as_str().unwrap());
        lines.push('\n');
    }
    assert_eq!(by_channel.len(), 2, "{:?}", by_channel.keys());
    assert!(
        by_channel["orders.eu"] == eu,
        "orders.eu: {} lines",
        by_channel["orders.eu"].lines().count()
    );
    assert!(
        by_channel["orders.us"] == us,
        "orders.us: {} lines",
        by_channel["orders.us"].lines().count()
    );
    assert!(stderr.contains("following orders.us"), "{stderr}");
}

#[test]
fn a_reliable_queue_group_gets_every_message_once_and_its_slow_member_the_fewest() {
    let relay = Relay::start(&[]);
    // The third member is 30 ms away each way: its acknowledgements come
    // late, so it has the most unacknowledged messages.
    let far = Chaos::start(relay.addr, &["--delay", "30ms", "--seed", "3"]);
    let paths = [relay.addr_str(), relay.addr_str(), far.addr_str()];
    let mut members: Vec<Subscriber> = paths
        .iter()
        .map(|addr| Subscriber::start(&[addr, "jobs", "--reliable", "--group", "workers"]))
        .collect();
    let lines: Vec<_> = members.iter_mut().map(Subscriber::stdout_lines).collect();
    let n = 3000;
    let input = numbered(n, "job");
    let out = udpcat(
        &["pub", &relay.addr_str(), "jobs", "--reliable"],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<Vec<String>> = vec![Vec::new(); 3];
    let deadline = std::time::Instant::now() + DEADLINE;
    while got.iter().map(Vec::len).sum::<usize>() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the members got {:?} of {n} messages",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (k, rx) in lines.iter().enumerate() {
            if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(5)) {
                got[k].push(line);
            }
            got[k].extend(rx.try_iter());
        }
    }
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    let mut all: Vec<String> = got.into_iter().flatten().collect();
    all.sort();
    let want: Vec<String> = input.lines().map(String::from).collect();
    assert_eq!(all, want, "each message to one member, none twice");
    assert!(
        counts[2] < counts[0] && counts[2] < counts[1],
        "the far member got the fewest: {counts:?}"
    );
    // And the relay gave none to a second member.
    let stats = udpcat(&["stats", &relay.addr_str()], b"");
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains("group_redeliveries 0"), "{stats}");
    drop(members);
}

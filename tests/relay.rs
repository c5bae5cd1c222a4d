//! End to end: the real `udprelay` and `udpcat` binaries on 127.0.0.1.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use udprelay::rng::Rng;
use udprelay::wire::{self, DeliveryMode, Frame, StartPosition, WireError};

#[test]
fn quick_start_publishes_three_lines_in_order() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let sub = Subscriber::start(&[&addr, "news", "--count", "3", "--format", "json"]);
    let out = udpcat(&["pub", &addr, "news"], b"a\nb\nc\n");
    assert!(
        out.status.success(),
        "pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "sub failed: {stderr}");
    let msgs = json_lines(&stdout);
    assert_eq!(msgs.len(), 3, "{stdout}");
    for (i, (m, p)) in msgs.iter().zip(["a", "b", "c"]).enumerate() {
        assert_eq!(m["channel"], "news");
        assert_eq!(m["offset"], i as u64);
        assert_eq!(m["payload"], p);
        assert!(m["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000_000);
    }
}

#[test]
fn a_wildcard_subscriber_reads_every_channel_its_pattern_matches() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let publish = |channel: &str, line: &[u8]| {
        let out = udpcat(&["pub", &addr, channel], line);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish("sensors.a", b"stored\n");
    let sub = Subscriber::start(&[
        &addr,
        "sensors.>",
        "--from",
        "earliest",
        "--count",
        "3",
        "--format",
        "json",
    ]);
    publish("sensors", b"not one token more\n");
    publish("other.a", b"elsewhere\n");
    publish("sensors.b.c", b"deeper\n");
    publish("sensors.a", b"live\n");
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "sub failed: {stderr}");
    let got: Vec<(String, u64, String)> = json_lines(&stdout)
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("channel"), m["offset"].as_u64().unwrap(), s("payload"))
        })
        .collect();
    let want = [
        ("sensors.a", 0, "stored"),
        ("sensors.b.c", 0, "deeper"),
        ("sensors.a", 1, "live"),
    ];
    assert_eq!(
        got,
        want.map(|(c, o, p)| (c.to_string(), o, p.to_string())),
        "{stderr}"
    );
    // A pattern is not a channel one can publish to.
    let out = udpcat(&["pub", &addr, "sensors.*"], b"x\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-channel"));
}

#[test]
fn the_members_of_a_queue_group_share_a_channel_each_message_once() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let members: Vec<Subscriber> = (0..3)
        .map(|_| Subscriber::start(&[&addr, "jobs", "--group", "workers", "--timeout", "6s"]))
        .collect();
    let everyone = Subscriber::start(&[&addr, "jobs", "--count", "30"]);
    let input: String = (0..30).map(|i| format!("job-{i:02}\n")).collect();
    let out = udpcat(&["pub", &addr, "jobs"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = everyone.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, input, "a subscriber outside the group gets all");
    let mut shared: Vec<String> = Vec::new();
    for member in members {
        let (status, stdout, stderr) = member.finish();
        assert!(status.success(), "{stderr}");
        let got: Vec<String> = stdout.lines().map(String::from).collect();
        assert!(!got.is_empty(), "every member takes a share");
        shared.extend(got);
    }
    shared.sort();
    let want: Vec<String> = input.lines().map(String::from).collect();
    assert_eq!(shared, want, "each message to one member, none twice");
}

#[test]
fn two_subscribers_each_receive_every_message() {
    fan_out(&[]);
}

#[test]
fn a_busy_polling_relay_delivers_the_same() {
    fan_out(&["--busy-poll", "2ms"]);
}

fn fan_out(relay_flags: &[&str]) {
    let relay = Relay::start(relay_flags);
    let addr = relay.addr_str();
    let subs: Vec<_> = (0..2)
        .map(|_| Subscriber::start(&[&addr, "fan", "--count", "50"]))
        .collect();
    let input: String = (0..50).map(|i| format!("message {i}\n")).collect();
    let out = udpcat(&["pub", &addr, "fan"], input.as_bytes());
    assert!(out.status.success());
    for sub in subs {
        let (status, stdout, stderr) = sub.finish();
        assert!(status.success(), "{stderr}");
        assert_eq!(stdout, input);
    }
}

#[test]
fn unsubscribed_client_receives_nothing_more() {
    let relay = Relay::start(&[]);
    let mut alice = TestClient::new(relay.addr);
    let mut bob = TestClient::new(relay.addr);
    let mut publisher = TestClient::new(relay.addr);
    alice.subscribe(1, "news");
    bob.subscribe(2, "news");
    publisher.publish("news", b"first");
    publisher.barrier();
    let first = |g: &Vec<Got>| {
        g.iter()
            .filter(|x| matches!(x, Got::Deliver { .. }))
            .count()
    };
    assert_eq!(first(&alice.barrier()), 1);
    assert_eq!(first(&bob.barrier()), 1);

    alice.send(&[Frame::Unsubscribe { sub_id: 1 }]);
    assert!(
        alice.barrier().is_empty(),
        "unsubscribe is silent when it succeeds"
    );
    publisher.publish("news", b"second");
    publisher.barrier();
    // The relay sent any deliver for "second" before it read the pings below,
    // so each barrier shows exactly what each client got.
    assert_eq!(alice.barrier(), vec![]);
    assert_eq!(
        bob.barrier(),
        vec![Got::Deliver {
            sub_id: 2,
            offset: 1,
            payload: b"second".to_vec()
        }]
    );
}

#[test]
fn lapsed_lease_stops_delivery() {
    let relay = Relay::start(&["--lease", "300ms"]);
    let mut silent = TestClient::new(relay.addr);
    let mut other = TestClient::new(relay.addr);
    silent.subscribe(7, "news");
    // `silent` now sends nothing; `other` watches the relay's counters (its
    // packets do not refresh someone else's lease).
    wait_until("the lease of the silent subscriber to lapse", || {
        other.stats()["subscriptions_expired"] == 1
    });
    other.publish("news", b"after the lease");
    other.barrier();
    assert_eq!(
        silent.barrier(),
        vec![],
        "an expired subscriber must get nothing"
    );
    assert_eq!(other.stats()["subscriptions"], 0);
}

#[test]
fn plain_udp_datagram_at_raw_in_reaches_a_subscriber() {
    let relay = Relay::start(&["--raw-in", "127.0.0.1:0=syslog"]);
    let sub = Subscriber::start(&[
        &relay.addr_str(),
        "syslog",
        "--count",
        "2",
        "--format",
        "json",
    ]);
    // What `nc -u` does: one plain datagram per line, no protocol at all.
    send_like_nc(relay.raw_in[0], &["<13>hello from nc", "second datagram"]);
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    let msgs = json_lines(&stdout);
    assert_eq!(msgs[0]["payload"], "<13>hello from nc");
    assert_eq!(msgs[0]["offset"], 0);
    assert_eq!(msgs[1]["payload"], "second datagram");
    assert_eq!(msgs[1]["channel"], "syslog");
}

#[test]
fn raw_out_forwards_each_message_as_a_plain_datagram() {
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener.set_read_timeout(Some(DEADLINE)).unwrap();
    let mapping = format!("metrics={}", listener.local_addr().unwrap());
    let relay = Relay::start(&["--raw-out", &mapping]);
    let out = udpcat(
        &["pub", &relay.addr_str(), "metrics"],
        b"cpu:42|g\nmem:7|g\n",
    );
    assert!(out.status.success());
    let mut buf = [0u8; 2048];
    for want in [&b"cpu:42|g"[..], b"mem:7|g"] {
        let (n, from) = listener.recv_from(&mut buf).expect("raw-out datagram");
        assert_eq!(&buf[..n], want);
        assert_eq!(from, relay.addr);
    }
}

/// Classifies a datagram the way the relay must: the test decodes with the
/// same library, so it knows exactly how many drops of each kind to expect.
fn expected_drop(d: &[u8]) -> Option<&'static str> {
    match wire::decode_datagram(d) {
        Err(WireError::BadMagic) => Some("dropped_not_protocol"),
        Err(WireError::UnsupportedVersion(_)) => Some("dropped_bad_version"),
        Err(WireError::UnsupportedFlags(_)) => Some("dropped_unsupported"),
        Err(_) => Some("dropped_malformed"),
        Ok(mut frames) => frames.any(|f| f.is_err()).then_some("dropped_malformed"),
    }
}

#[test]
fn hundred_thousand_hostile_datagrams_are_dropped_and_counted() {
    // Mutated subscribes sign the fuzzer up under many ids; a low cap keeps
    // the fan-out to it (which it never reads) from dominating the run.
    let relay = Relay::start(&["--max-subscriptions-per-client", "16"]);
    let fuzzer = TestClient::new(relay.addr);
    // The relay reads one socket in arrival order, so a barrier from another
    // client also proves every earlier fuzz datagram was handled.
    let mut control = TestClient::new(relay.addr);
    let valid = wire::encode_datagram(&[
        Frame::Publish {
            channel: "fuzz",
            payload: b"payload",
        },
        Frame::Subscribe {
            sub_id: 1,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "fuzz",
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        },
        Frame::Ping {
            nonce: 9,
            load: false,
        },
        Frame::Unsubscribe { sub_id: 1 },
    ])
    .unwrap();
    let mut rng = Rng::new(0xF00D);
    let mut expected = std::collections::HashMap::<&str, u64>::new();
    let mut buf = Vec::new();
    for i in 0..100_000u32 {
        buf.clear();
        if i % 2 == 0 {
            buf.resize(rng.below(300) as usize + 1, 0);
            rng.fill(&mut buf);
            if i % 4 == 0 && buf.len() >= 8 {
                buf[..8].copy_from_slice(&valid[..8]);
            }
        } else {
            buf.extend_from_slice(&valid);
            for _ in 0..=rng.below(3) {
                let at = rng.below(buf.len() as u64) as usize;
                buf[at] ^= 1 << rng.below(8);
            }
            if rng.chance(0.3) {
                buf.truncate(rng.below(buf.len() as u64) as usize + 1);
            }
        }
        if let Some(kind) = expected_drop(&buf) {
            *expected.entry(kind).or_default() += 1;
        }
        fuzzer.send_raw(&buf);
        // Pace by round trip: the relay's socket buffer never overflows, so
        // every datagram is counted and the expectations below are exact.
        if i % 256 == 255 {
            control.barrier();
        }
    }
    let stats = control.stats();
    for (kind, want) in &expected {
        if *kind == "dropped_unsupported" {
            // Also counts well-formed requests for reliable mode, which
            // mutations of the mode byte produce.
            assert!(stats[*kind] >= *want, "{kind}: stats {stats:?}");
        } else {
            assert_eq!(stats[*kind], *want, "{kind}: stats {stats:?}");
        }
    }
    assert!(expected["dropped_not_protocol"] > 10_000);
    assert!(expected["dropped_malformed"] > 10_000);
    assert!(stats["datagrams_received"] >= 100_000);

    // Still relaying and still answering.
    let addr = relay.addr_str();
    let ping = udpcat(&["ping", &addr, "--count", "1"], b"");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let sub = Subscriber::start(&[&addr, "after-flood", "--count", "1"]);
    assert!(
        udpcat(&["pub", &addr, "after-flood", "--message", "alive"], b"")
            .status
            .success()
    );
    let (status, stdout, _) = sub.finish();
    assert!(status.success());
    assert_eq!(stdout, "alive\n");

    // The counters are in the exit log too.
    let (status, stderr, _dir) = relay.terminate();
    assert!(status.success(), "relay exit: {status:?}\n{stderr}");
    let want = format!("dropped_not_protocol={}", expected["dropped_not_protocol"]);
    assert!(stderr.contains(&want), "exit log lacks {want}:\n{stderr}");
}

#[test]
fn sigterm_stops_the_relay_with_exit_code_zero() {
    let relay = Relay::start(&[]);
    let mut c = TestClient::new(relay.addr);
    c.publish("x", b"y");
    c.barrier();
    let (status, stderr, _dir) = relay.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("messages_published=1"), "{stderr}");
}

/// Runs the relay on `listen`, which must fail to start: returns its one
/// line of stderr (and checks it claimed nothing on stdout).
fn refused_start(listen: &str, data_dir: &std::path::Path) -> String {
    let out = std::process::Command::new(udprelay_bin())
        .args(["--listen", listen, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started on {listen}");
    assert!(out.stdout.is_empty(), "it must not claim to be listening");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn port_in_use_is_one_clear_line_and_a_failure() {
    let relay = Relay::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(&relay.addr_str(), dir.path());
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn an_open_relay_on_a_public_address_must_be_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start("0.0.0.0:0", dir.path());
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--allow-anonymous"),
        "{stderr}"
    );
    // Asked for, it serves (a PING from loopback reaches a relay on 0.0.0.0).
    let relay = Relay::start_at(dir, "0.0.0.0:0", &["--allow-anonymous"]);
    let port = relay.addr.port();
    let mut client = TestClient::new(SocketAddr::from(([127, 0, 0, 1], port)));
    client.barrier();
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--lease", "5"][..],
        &["--listen", "nowhere"],
        &["--raw-in", "syslog"],
        &["--max-message-size", "100000000"],
        &["--no-such-flag"],
    ] {
        let out = std::process::Command::new(udprelay_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?}: no message");
    }
}

#[test]
fn udpcat_fails_clearly_without_a_relay() {
    // A port that was free a moment ago: nothing listens there.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let addr = port.to_string();
    for args in [
        vec![
            "pub",
            &addr,
            "news",
            "--message",
            "x",
            "--reply-timeout",
            "1s",
        ],
        vec!["sub", &addr, "news", "--reply-timeout", "1s"],
        vec!["ping", &addr, "--count", "1", "--reply-timeout", "1s"],
    ] {
        let out = udpcat(&args, b"");
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no relay at") || stderr.contains("no answer"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn udpcat_sub_timeout_reports_missing_messages() {
    let relay = Relay::start(&[]);
    let sub = Subscriber::start(&[
        &relay.addr_str(),
        "quiet",
        "--count",
        "2",
        "--timeout",
        "300ms",
    ]);
    let (status, stdout, stderr) = sub.finish();
    assert!(!status.success());
    assert_eq!(stdout, "");
    assert!(stderr.contains("received 0 of 2"), "{stderr}");
}

#[test]
fn udpcat_reports_relay_refusals() {
    let relay = Relay::start(&["--max-message-size", "10"]);
    let out = udpcat(
        &[
            "pub",
            &relay.addr_str(),
            "news",
            "--message",
            "much longer than ten bytes",
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too-large"), "{stderr}");
}

#[test]
fn udpcat_publishes_a_file_many_times_without_loss() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let file = relay.dir.path().join("lines.txt");
    let lines: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
    std::fs::write(&file, &lines).unwrap();
    let sub = Subscriber::start(&[&addr, "bulk", "--count", "20000"]);
    let out = udpcat(
        &[
            "pub",
            &addr,
            "bulk",
            "--file",
            file.to_str().unwrap(),
            "--count",
            "200",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 20_000);
    assert_eq!(stdout, lines.repeat(200));
}

#[test]
fn a_relay_whose_stdout_is_closed_keeps_relaying() {
    // Whoever started it stopped reading before it printed its ports (as
    // `udprelay | head -1` does): its writes fail, and it must not die.
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(udprelay_bin());
    cmd.args([
        "--listen",
        &addr,
        "--raw-out",
        "x=127.0.0.1:9",
        "--data-dir",
    ])
    .arg(dir.path())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut relay = ChildGuard::spawn("udprelay", &mut cmd);
    drop(relay.child().stdout.take());
    wait_until("the relay to answer a ping", || {
        udpcat(&["ping", &addr, "--count", "1"], b"")
            .status
            .success()
    });
    assert!(
        relay.child().try_wait().unwrap().is_none(),
        "the relay exited"
    );
}

//! A usage error is one line naming the tool and the problem, exit status
//! 2, for each of the four binaries; `--help` is clap's whole text, exit 0.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_bad_flag_is_one_line_and_help_is_the_whole_text() {
    let chaos = std::path::Path::new(udpchaos_bin());
    let bench = chaos.with_file_name("udpbench");
    let cases: [(&str, &std::ffi::OsStr, &[&str], &str); 4] = [
        (
            "udprelay",
            udprelay_bin().as_ref(),
            &["--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            "udpcat",
            udpcat_bin().as_ref(),
            &["pub"],
            "not provided: <ADDR> <CHANNEL>",
        ),
        (
            "udpchaos",
            chaos.as_os_str(),
            &["--loss", "2"],
            "2 is not between 0 and 1",
        ),
        (
            "udpbench",
            bench.as_os_str(),
            &["--size", "x"],
            "invalid value 'x' for '--size",
        ),
    ];
    for (tool, bin, args, want) in cases {
        let out = Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tool}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{tool}: {stderr}");
        assert!(stderr.starts_with(&format!("{tool}: ")), "{stderr}");
        assert!(stderr.contains(want), "{tool}: {stderr}");
        let help = Command::new(bin).arg("--help").output().unwrap();
        assert!(help.status.success(), "{tool} --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).lines().count() > 5,
            "{tool} --help"
        );
    }
}

#[test]
fn ctrl_c_ends_udpcat_ping_with_its_totals() {
    use std::process::Stdio;
    let relay = Relay::start(&[]);
    let mut cmd = Command::new(udpcat_bin());
    cmd.args([
        "ping",
        &relay.addr_str(),
        "--count",
        "0",
        "--interval",
        "20ms",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut ping = ChildGuard::spawn("udpcat ping", &mut cmd);
    let lines = line_reader(ping.child().stdout.take().unwrap());
    for seq in 1..=2 {
        let line = lines.recv_timeout(DEADLINE).expect("a pong");
        assert!(line.contains(&format!("seq={seq} ")), "{line}");
    }
    signal(ping.child().id(), "INT");
    assert!(ping.wait_deadline(DEADLINE).success());
    let rest: Vec<String> = lines.iter().collect();
    let totals = rest
        .iter()
        .find(|l| l.contains(" pings, "))
        .expect("the totals");
    let (sent, answered) = totals
        .split_once(" pings, ")
        .map(|(n, rest)| {
            (
                n.parse::<u32>().unwrap(),
                rest.split(' ').next().unwrap().parse::<u32>().unwrap(),
            )
        })
        .unwrap();
    assert!(answered >= 2 && answered <= sent, "{totals}");
    assert!(totals.ends_with("% loss"), "{totals}");
    assert!(
        rest.iter().any(|l| l.starts_with("rtt min/avg/max = ")),
        "{rest:?}"
    );
}

#[test]
fn a_start_past_the_end_starts_at_the_end_unless_told_to_wait() {
    use std::process::Stdio;
    let relay = Relay::start(&[]);
    let out = udpcat(&["pub", &relay.addr_str(), "news"], b"1\n2\n3\n4\n5\n");
    assert!(out.status.success());
    let mut cmd = Command::new(udpcat_bin());
    cmd.args([
        "sub",
        &relay.addr_str(),
        "news",
        "--from",
        "999999",
        "--count",
        "1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut sub = ChildGuard::spawn("udpcat sub", &mut cmd);
    let said = line_reader(sub.child().stderr.take().unwrap());
    let first = said.recv_timeout(DEADLINE).expect("a line");
    assert!(
        first.contains("news ends before offset 999999 (its next message is 5): starting there"),
        "{first}"
    );
    let second = said.recv_timeout(DEADLINE).expect("a line");
    assert!(
        second.contains("subscribed to news at offset 5"),
        "{second}"
    );
    let out = udpcat(&["pub", &relay.addr_str(), "news"], b"six\n");
    assert!(out.status.success());
    let got = sub.output_deadline(DEADLINE);
    assert!(got.status.success());
    assert_eq!(String::from_utf8_lossy(&got.stdout), "six\n");
    // Told to wait, it waits for that offset.
    let waited = udpcat(
        &[
            "sub",
            &relay.addr_str(),
            "news",
            "--from",
            "999999",
            "--wait",
            "--timeout",
            "500ms",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(
        stderr.contains("subscribed to news at offset 999999"),
        "{stderr}"
    );
    assert!(waited.stdout.is_empty());
}

#[test]
fn a_line_over_the_maximum_is_one_message_too_large_without_a_made_up_size() {
    let relay = Relay::start(&[]);
    let line = format!("{}\n", "a".repeat(2_000_000));
    let addr = relay.addr_str();
    for extra in [&[][..], &["--reliable"][..]] {
        let mut args = vec!["pub", addr.as_str(), "news"];
        args.extend_from_slice(extra);
        let out = udpcat(&args, line.as_bytes());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("message larger than the maximum of 1048576 bytes"),
            "{extra:?}: {stderr}"
        );
        if !extra.is_empty() {
            assert!(
                stderr.contains("udpcat: 1 message(s) were not acknowledged"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn ctrl_c_on_a_reliable_publisher_says_how_much_of_the_input_is_stored() {
    use std::io::Write;
    let relay = Relay::start(&[]);
    let (mut publisher, mut stdin) = reliable_publisher(&relay.addr_str(), "news");
    stdin.write_all(b"1\n2\n3\n4\n5\n").unwrap();
    stdin.flush().unwrap();
    let mut watcher = TestClient::new(relay.addr);
    wait_until("the relay to store the five", || {
        watcher.stats()["messages_published"] >= 5
    });
    signal(publisher.child().id(), "INT");
    let out = publisher.output_deadline(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: 5 of 5 message(s) read were acknowledged"),
        "{stderr}"
    );
    drop(stdin);
}

#[test]
fn udpbench_refuses_arguments_that_would_make_a_meaningless_run() {
    let bench = std::path::Path::new(udpchaos_bin()).with_file_name("udpbench");
    for (args, want) in [
        (&["--publishers", "0"][..], "0 is not in 1..=1024"),
        (&["--subscribers", "0"][..], "0 is not in 1..=1024"),
        (&["--size", "2000000"][..], "2000000 is not in 20..=65000"),
        (&["--size", "8"][..], "8 is not in 20..=65000"),
    ] {
        let out = Command::new(&bench).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn stats_and_the_log_commands_speak_json_and_ls_quotes_names_with_spaces() {
    let relay = Relay::start(&[]);
    for channel in ["news", "two words"] {
        assert!(
            udpcat(&["pub", &relay.addr_str(), channel], b"hi\n")
                .status
                .success()
        );
    }
    let stats = udpcat(&["stats", &relay.addr_str(), "--json"], b"");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("one JSON object");
    assert_eq!(stats["messages_published"], 2);
    // Read by something that stops reading (`| head -c 10`): a quiet end.
    let mut cmd = std::process::Command::new(udpcat_bin());
    cmd.args(["stats", &relay.addr_str(), "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut closed = ChildGuard::spawn("udpcat stats", &mut cmd);
    drop(closed.child().stdout.take());
    let out = closed.output_deadline(DEADLINE);
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing to say");
    let (_, _, dir) = relay.terminate();
    let data = dir.path().join("data");
    let log = |args: &[&str]| udprelay_log(&data, args);
    let listed = json_lines(log(&["ls", "--json"]));
    let names: Vec<&str> = listed
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["news", "two words"]);
    assert!(listed.iter().all(|c| c["messages"] == 1));
    let table = log(&["ls"]);
    assert!(
        table.lines().any(|l| l.starts_with("\"two words\" ")),
        "{table}"
    );
    let verified: serde_json::Value = serde_json::from_str(&log(&["verify", "--json"])).unwrap();
    assert_eq!(verified["checked"], 2);
    assert_eq!(verified["problems"], serde_json::json!([]));
}

#[test]
fn a_dash_for_the_file_of_udpcat_pub_is_its_stdin() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    for (args, input) in [
        (&["--file", "-"][..], &b"one\ntwo\n"[..]),
        (&["-"][..], b"three\n"),
        (&["-", "--whole"][..], b"four\nfive"),
    ] {
        let mut all = vec!["pub", addr.as_str(), "news"];
        all.extend_from_slice(args);
        let out = udpcat(&all, input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pub {args:?}: {stderr}");
    }
    let out = udpcat(
        &["sub", &addr, "news", "--from", "earliest", "--count", "4"],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "one\ntwo\nthree\nfour\nfive\n"
    );
    // A file and --message at once is a usage error, not a guess.
    let both = udpcat(&["pub", &addr, "news", "-", "--message", "x"], b"");
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn short_flags_count_format_and_quiet_do_what_the_long_ones_do() {
    let relay = Relay::start(&[]);
    let other = Relay::start(&[]);
    let addr = relay.addr_str();
    // Two relays: without -q udpcat says which it picked.
    let both = format!("{addr},{}", other.addr_str());
    let args = ["pub", &both, "news", "-c", "2", "-q", "--pick", "first"];
    let published = udpcat(&args, b"hi\n");
    assert!(published.status.success());
    assert_eq!(String::from_utf8_lossy(&published.stderr), "");
    let args = [
        "sub", &addr, "news", "-f", "json", "-c", "2", "-q", "--from", "earliest",
    ];
    let got = udpcat(&args, b"");
    assert!(got.status.success());
    assert_eq!(String::from_utf8_lossy(&got.stderr), "", "-q: no notes");
    let got = json_lines(&got.stdout);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|m| m["payload"] == "hi"), "{got:?}");
    let pinged = udpcat(&["ping", &both, "-c", "2", "-q", "--interval", "1ms"], b"");
    assert!(pinged.status.success());
    assert_eq!(String::from_utf8_lossy(&pinged.stderr), "");
    let stdout = String::from_utf8_lossy(&pinged.stdout);
    assert!(
        !stdout.contains("pong from"),
        "-q: only the totals: {stdout}"
    );
    assert!(stdout.contains("2 pings, 2 answered, 0% loss"), "{stdout}");
}

/// A stand-in relay on a socket of the test's own that answers every ping
/// with its pong and says on `answered` each time it has, until `stop`.
fn answer_pings(
    socket: std::net::UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<()> {
    use udprelay::wire::{self, Frame};
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(frames) = wire::decode_datagram(&buf[..n]) else {
                continue;
            };
            for frame in frames.flatten() {
                if let Frame::Ping { nonce, .. } = frame {
                    let pong = wire::encode_datagram(&[Frame::Pong { nonce, load: None }]);
                    socket.send_to(&pong.unwrap(), from).unwrap();
                    let _ = answered.send(());
                }
            }
        }
    })
}

#[test]
fn udpcat_ping_json_is_one_object_of_totals_also_on_ctrl_c() {
    use std::process::Stdio;
    use std::sync::{Arc, atomic::AtomicBool, mpsc};
    let relay = Relay::start(&[]);
    let out = udpcat(
        &[
            "ping",
            &relay.addr_str(),
            "--json",
            "-c",
            "3",
            "--interval",
            "1ms",
        ],
        b"",
    );
    assert!(out.status.success());
    let totals = json_lines(&out.stdout);
    assert_eq!(totals.len(), 1, "one object, no line per pong: {totals:?}");
    let totals = &totals[0];
    assert_eq!(totals["relay"], relay.addr_str());
    assert_eq!(
        (totals["sent"].as_u64(), totals["received"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(totals["loss_percent"], 0.0);
    let us = |key: &str| {
        totals[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {totals}"))
    };
    assert!(0.0 < us("rtt_min_us") && us("rtt_min_us") <= us("rtt_avg_us"));
    assert!(us("rtt_avg_us") <= us("rtt_max_us"), "{totals}");
    // Until Ctrl-C: the pongs a stand-in relay sent tell when to press it.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let (stop, (answered, pongs)) = (Arc::new(AtomicBool::new(false)), mpsc::channel());
    let stand_in = answer_pings(socket, Arc::clone(&stop), answered);
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["ping", &addr, "--json", "-c", "0", "--interval", "20ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ping = ChildGuard::spawn("udpcat ping --json", &mut cmd);
    for n in 1..=2 {
        pongs
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("udpcat ping sent no ping {n} within {DEADLINE:?}"));
    }
    signal(ping.child().id(), "INT");
    let out = ping.output_deadline(DEADLINE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    stand_in.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let totals = json_lines(&out.stdout);
    assert_eq!(totals.len(), 1, "{totals:?}");
    let (sent, received) = (totals[0]["sent"].as_u64(), totals[0]["received"].as_u64());
    assert!(received >= Some(2) && received <= sent, "{totals:?}");
    assert!(totals[0]["rtt_max_us"].as_f64().is_some(), "{totals:?}");
}

/// What `--timestamps rfc3339` should print for `unix_nanos`: `time`'s own
/// RFC 3339 to the second, then all nine digits of the fraction, in UTC.
fn rfc3339_of(unix_nanos: u64) -> String {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos)).unwrap();
    let whole = t.format(&Rfc3339).unwrap();
    format!("{}.{:09}Z", &whole[..19], unix_nanos % 1_000_000_000)
}

#[test]
fn sub_and_log_dump_show_stored_timestamps_as_rfc3339_when_asked() {
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    assert!(udpcat(&["pub", &addr, "news"], b"a\nb\n").status.success());
    let sub = |extra: &[&str]| {
        let mut args = vec![
            "sub",
            addr.as_str(),
            "news",
            "--from",
            "earliest",
            "-c",
            "2",
            "-q",
        ];
        args.extend_from_slice(extra);
        let out = udpcat(&args, b"");
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stored: Vec<u64> = json_lines(sub(&["-f", "json"]))
        .iter()
        .map(|m| m["timestamp"].as_u64().unwrap())
        .collect();
    let want: Vec<String> = (stored.iter().zip(["a", "b"]))
        .map(|(&t, p)| format!("{}\t{p}", rfc3339_of(t)))
        .collect();
    assert_eq!(
        sub(&["--timestamps", "rfc3339"])
            .lines()
            .collect::<Vec<_>>(),
        want
    );
    let unix = format!("{}\ta\n{}\tb\n", stored[0], stored[1]);
    assert_eq!(sub(&["--timestamps", "unix-ns"]), unix);
    assert_eq!(sub(&[]), "a\nb\n", "no timestamp unless asked");
    let json = json_lines(sub(&["-f", "json", "--timestamps", "rfc3339"]));
    assert_eq!(json[1]["timestamp_rfc3339"], rfc3339_of(stored[1]));
    assert_eq!(json[1]["timestamp"], stored[1], "the nanoseconds stay");
    let raw = udpcat(
        &["sub", &addr, "news", "-f", "raw", "--timestamps", "rfc3339"],
        b"",
    );
    assert_eq!(
        raw.status.code(),
        Some(2),
        "raw has no room for a timestamp"
    );
    assert_eq!(String::from_utf8_lossy(&raw.stderr).lines().count(), 1);
    // The log holds the same times: dump shows them alike.
    let (_, _, dir) = relay.terminate();
    let data = dir.path().join("data");
    let dump =
        |extra: &[&str]| udprelay_log(&data, &[&["dump", "news", "-c", "1"], extra].concat());
    assert_eq!(
        dump(&[]),
        format!("0\t{}\ta\n", stored[0]),
        "unix-ns by default"
    );
    let rfc = dump(&["--timestamps", "rfc3339"]);
    assert_eq!(rfc, format!("0\t{}\ta\n", rfc3339_of(stored[0])));
    assert_eq!(dump(&["--timestamps", "none"]), "0\ta\n");
    let json = json_lines(dump(&["-f", "json", "--timestamps", "rfc3339"]));
    assert_eq!(json[0]["timestamp_rfc3339"], rfc3339_of(stored[0]));
}

//! End to end: a relay with a key file, the real binaries. Under `--auth
//! required` nothing unauthenticated is answered or stored; keyed clients
//! (udpcat with --credential, and a test client sealing by hand) work; a
//! captured datagram sent again is dropped; an expired credential and a
//! wrong secret get no session; a denied request tells its keyed client why.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{Chaos, Relay, Subscriber, TestClient, new_key, send_like_nc, udpcat, udprelay_bin};
use udprelay::auth::{Credential, KeyFile};
use udprelay::client::Handshake;
use udprelay::wire::{self, AckKind, DeliveryMode, ErrorCode, Frame, StartPosition, StatEntries};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A relay requiring keys, with key "alice" (news.> both ways) and key
/// "admin" (everything, admin).
struct Keyed {
    relay: Relay,
    alice: Credential,
    admin: Credential,
    keys: std::path::PathBuf,
}

fn keyed_relay(mode: &str) -> Keyed {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let alice = new_key(
        &keys,
        "alice",
        &["--publish", "news.>", "--subscribe", "news.>"],
    );
    let admin = new_key(
        &keys,
        "admin",
        &["--publish", ">", "--subscribe", ">", "--admin"],
    );
    let keys_arg = keys.to_str().unwrap().to_string();
    let relay = Relay::start_in(dir, &["--keys", &keys_arg, "--auth", mode]);
    Keyed {
        relay,
        alice,
        admin,
        keys,
    }
}

/// Every frame type the protocol has, and then some that are not
/// udprelay at all, as plain datagrams.
fn every_kind_of_plain_datagram(round: u64) -> Vec<Vec<u8>> {
    let token = [7u8; wire::TOKEN_LEN];
    let ranges = [0u8; 0];
    let stats = [("x", 1u64)];
    let frames: Vec<Frame<'_>> = vec![
        Frame::Publish {
            channel: "news.flood",
            payload: b"unauthenticated",
        },
        Frame::Subscribe {
            sub_id: 1,
            mode: DeliveryMode::Reliable,
            start: StartPosition::Earliest,
            channel: "news.flood",
            group: None,
            origins: false,
            resume: udprelay::wire::ResumeVector::EMPTY,
        },
        Frame::Unsubscribe { sub_id: 1 },
        Frame::Subscribed {
            sub_id: 1,
            first_offset: 0,
            next_offset: 0,
            lease_ms: 0,
        },
        Frame::Deliver {
            sub_id: 1,
            offset: 0,
            timestamp: 0,
            payload: b"x",
            origin: None,
        },
        Frame::Ack {
            kind: AckKind::Subscription,
            id: 1,
            cumulative: round,
            window: 64,
            ranges: &ranges,
        },
        Frame::Ping {
            nonce: round,
            load: false,
        },
        Frame::Pong {
            nonce: round,
            load: None,
        },
        Frame::Error {
            code: ErrorCode::MALFORMED,
            reason: "x",
        },
        Frame::StatsRequest {
            cursor: 0,
            padding: 600,
        },
        Frame::Stats {
            cursor: 0,
            next: None,
            entries: StatEntries::List(&stats),
        },
        Frame::ReliablePublish {
            session: 9,
            seq: round,
            acked_below: 0,
            more: false,
            channel: "news.flood",
            payload: b"unauthenticated",
        },
        Frame::Fragment {
            msg_id: round as u32,
            index: 0,
            count: 2,
            channel: "news.flood",
            chunk: b"half",
        },
        Frame::DeliverFragment {
            sub_id: 1,
            offset: 0,
            timestamp: 0,
            total: 8,
            at: 0,
            chunk: b"half",
            origin: None,
        },
        Frame::AddressToken { token },
        Frame::Validate { token },
        Frame::Handshake {
            key_id: 1,
            expires: 0,
            message: [round as u8; wire::NOISE_MESSAGE_LEN],
        },
        Frame::HandshakeReply {
            session: 1,
            message: [0; wire::NOISE_MESSAGE_LEN],
        },
    ];
    let mut out: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| wire::encode_datagram(std::slice::from_ref(f)).unwrap())
        .collect();
    // A token in front of a subscribe (forged), a sealed datagram of a
    // session that does not exist, bad version, not udprelay at all.
    out.push(wire::encode_datagram(&[Frame::Validate { token }, frames[1]]).unwrap());
    let mut sealed = vec![b'U', b'R', 1, wire::FLAG_AUTH];
    sealed.extend_from_slice(&(round as u32 | 1 << 16).to_le_bytes());
    sealed.extend_from_slice(&[0u8; 40]);
    out.push(sealed);
    out.push(vec![b'U', b'R', 9, 0, 0, 0, 0, 0]);
    out.push(b"GET / HTTP/1.0\r\n\r\n".to_vec());
    out
}

fn stats_of(client: &mut TestClient) -> HashMap<String, u64> {
    client.stats()
}

#[test]
fn under_auth_required_ten_thousand_unauthenticated_datagrams_get_nothing_and_store_nothing() {
    let k = keyed_relay("required");
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker.connect(k.relay.addr).unwrap();
    let mut admin = TestClient::keyed(k.relay.addr, &k.admin);
    let mut sent = 0u64;
    let mut round = 0u64;
    while sent < 10_000 {
        for d in every_kind_of_plain_datagram(round) {
            if sent == 10_000 {
                break;
            }
            attacker.send(&d).unwrap();
            sent += 1;
            // Paced by round trips, so no buffer on the way overflows.
            if sent.is_multiple_of(250) {
                admin.barrier();
            }
        }
        round += 1;
    }
    admin.barrier();
    // The relay answered the keyed client after handling every datagram
    // above; anything it sent the attacker would be queued by now.
    attacker.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    match attacker.recv(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("the attacker got an answer: {other:?}"),
    }
    let stats = stats_of(&mut admin);
    let refused =
        stats["dropped_unauthenticated"] + stats["dropped_forged"] + stats["handshakes_refused"];
    assert_eq!(
        refused, 10_000,
        "every datagram counted as refused: {stats:?}"
    );
    assert_eq!(stats["messages_published"], 0);
    assert_eq!(stats["subscriptions_opened"], 0);
    assert_eq!(stats["sessions_opened"], 0, "no reliable session");
    // Nothing stored: the data directory has no channel.
    let ls = Command::new(udprelay_bin())
        .args(["log", "ls", "--data-dir"])
        .arg(k.relay.data_dir())
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("news.flood"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );
}

#[test]
fn udpcat_with_a_credential_publishes_subscribes_pings_and_reads_stats() {
    let k = keyed_relay("required");
    let cred = k.alice.to_string();
    let dir = tempfile::tempdir().unwrap();
    let cred_file = dir.path().join("alice.cred");
    std::fs::write(&cred_file, format!("{cred}\n")).unwrap();
    let cred_file = cred_file.to_str().unwrap();
    let addr = k.relay.addr_str();
    let sub = Subscriber::start(&[&addr, "news.eu", "--count", "3", "--credential", &cred]);
    let reliable = Subscriber::start(&[
        &addr,
        "news.eu",
        "--reliable",
        "--count",
        "3",
        "--credential-file",
        cred_file,
    ]);
    let out = udpcat(
        &["pub", &addr, "news.eu", "--credential-file", cred_file],
        b"one\ntwo\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = udpcat(
        &["pub", &addr, "news.eu", "--reliable", "--credential", &cred],
        b"three\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [sub, reliable] {
        let (status, stdout, stderr) = s.finish();
        assert!(status.success(), "{stderr}");
        assert_eq!(stdout, "one\ntwo\nthree\n");
    }
    let ping = udpcat(&["ping", &addr, "--count", "1", "--credential", &cred], b"");
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    let stats = udpcat(&["stats", &addr, "--credential", &cred], b"");
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.status.success());
    assert!(text.contains("handshakes "), "{text}");
    // Without the credential, the same commands get nothing.
    let plain = udpcat(
        &["ping", &addr, "--count", "1", "--reply-timeout", "300ms"],
        b"",
    );
    assert!(!plain.status.success());
}

#[test]
fn a_reliable_publish_with_a_credential_crosses_ten_percent_loss() {
    let k = keyed_relay("required");
    let cred = k.alice.to_string();
    let lossy = ["--loss", "0.1", "--delay", "5ms", "--seed"];
    let to_pub = Chaos::start(k.relay.addr, &[&lossy[..], &["11"]].concat());
    let to_sub = Chaos::start(k.relay.addr, &[&lossy[..], &["12"]].concat());
    let input: String = (0..2000).map(|i| format!("m{i}\n")).collect();
    let sub = Subscriber::start(&[
        &to_sub.addr_str(),
        "news.lossy",
        "--reliable",
        "--count",
        "2000",
        "--reply-timeout",
        "10s",
        "--credential",
        &cred,
    ]);
    let out = udpcat(
        &[
            "pub",
            &to_pub.addr_str(),
            "news.lossy",
            "--reliable",
            "--reply-timeout",
            "10s",
            "--credential",
            &cred,
        ],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert!(
        stdout == input,
        "got {} lines, not 2000 in order",
        stdout.lines().count()
    );
}

#[test]
fn a_captured_sealed_datagram_sent_again_is_not_stored_twice() {
    let k = keyed_relay("required");
    let mut alice = TestClient::keyed(k.relay.addr, &k.alice);
    let publish = wire::encode_datagram(&[Frame::Publish {
        channel: "news.once",
        payload: b"pay me once",
    }])
    .unwrap();
    let captured = alice.seal(&publish);
    alice.socket.send(&captured).unwrap();
    alice.socket.send(&captured).unwrap();
    // From another address (an attacker who captured it), too.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.send_to(&captured, k.relay.addr).unwrap();
    alice.barrier();
    let stats = alice.stats();
    assert_eq!(stats["messages_published"], 1);
    assert_eq!(stats["dropped_replayed"], 1);
    assert_eq!(stats["dropped_forged"], 1);
    let dump = Command::new(udprelay_bin())
        .args(["log", "dump", "news.once", "--data-dir"])
        .arg(k.relay.data_dir())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout).lines().count(), 1);
}

#[test]
fn a_subscriber_whose_credential_expires_says_so_and_stops() {
    // The relay ends the session at the expiry and answers nothing more;
    // udpcat must not wait for messages that cannot come.
    let k = keyed_relay("required");
    let file = KeyFile::load(&k.keys).unwrap();
    let soon = file.named("alice").unwrap().derive(unix_now() + 2);
    let sub = Subscriber::start(&[
        &k.relay.addr_str(),
        "news.soon",
        "--credential",
        &soon.to_string(),
    ]);
    let (status, _, stderr) = sub.finish();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("expired at"), "{stderr}");
}

#[test]
fn an_expired_credential_or_a_wrong_secret_is_refused() {
    let k = keyed_relay("required");
    let file = KeyFile::load(&k.keys).unwrap();
    let expired = file.named("alice").unwrap().derive(unix_now() - 10);
    let out = udpcat(
        &[
            "pub",
            &k.relay.addr_str(),
            "news.x",
            "--credential",
            &expired.to_string(),
        ],
        b"x\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expired"), "{stderr}");
    // Sent anyway (a client whose clock is behind): the relay refuses it.
    let mut wrong = k.alice.clone();
    wrong.secret = k.admin.secret.clone();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(k.relay.addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for credential in [&expired, &wrong] {
        let mut hs = Handshake::new(credential, 0).unwrap();
        let start = Instant::now();
        for i in 0..4 {
            let d = hs
                .poll_transmit(start + udprelay::client::HANDSHAKE_RETRY * i)
                .unwrap();
            socket.send(&d).unwrap();
        }
    }
    // A valid, time-limited credential works beside them.
    let valid = file.named("alice").unwrap().derive(unix_now() + 3600);
    let mut ok = TestClient::keyed(k.relay.addr, &valid);
    ok.barrier();
    assert!(
        socket.recv(&mut buf).is_err(),
        "no answer to a refused handshake"
    );
    let stats = ok.stats();
    assert_eq!(stats["handshakes"], 1);
    assert_eq!(stats["handshakes_refused"], 8);
}

#[test]
fn a_denied_request_tells_the_keyed_client_which_permission_is_missing() {
    let k = keyed_relay("required");
    let cred = k.alice.to_string();
    let addr = k.relay.addr_str();
    let out = udpcat(&["pub", &addr, "orders.new", "--credential", &cred], b"x\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("relay refused (denied): no permission to publish to channel \"orders.new\""),
        "{stderr}"
    );
    let out = udpcat(
        &[
            "sub",
            &addr,
            "orders.new",
            "--credential",
            &cred,
            "--reply-timeout",
            "1s",
        ],
        b"",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no permission to subscribe to channel \"orders.new\""),
        "{stderr}"
    );
    let mut admin = TestClient::keyed(k.relay.addr, &k.admin);
    let stats = admin.stats();
    assert_eq!(stats["dropped_denied"], 2, "udpcat sub stops at a denial");
    assert_eq!(stats["messages_published"], 0);
}

#[test]
fn under_auth_optional_anonymous_clients_get_the_anonymous_permissions_and_stats_hides_others() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[anonymous]\npublish = [\"public.>\"]\nsubscribe = [\"public.>\"]\n",
    )
    .unwrap();
    let alice = new_key(&keys, "alice", &["--publish", ">", "--subscribe", ">"]);
    let keys_arg = keys.to_str().unwrap().to_string();
    let relay = Relay::start_in(dir, &["--keys", &keys_arg]);
    let addr = relay.addr_str();
    // Anonymous: public.> works, the rest is dropped without a word.
    let sub = Subscriber::start(&[&addr, "public.a", "--count", "1"]);
    let out = udpcat(&["pub", &addr, "public.a"], b"hello\n");
    assert!(out.status.success());
    let (status, stdout, _) = sub.finish();
    assert!(status.success());
    assert_eq!(stdout, "hello\n");
    let mut anon = TestClient::new(relay.addr);
    anon.publish("private.a", b"x");
    let got = anon.barrier();
    assert!(
        got.is_empty(),
        "an anonymous denial is not answered: {got:?}"
    );
    // A keyed client's reliable subscription is its own business: an
    // anonymous STATS lists no stream of it, alice's lists hers.
    let _reliable = Subscriber::start(&[
        &addr,
        "private.a",
        "--reliable",
        "--credential",
        &alice.to_string(),
    ]);
    let anon_stats = anon.stats();
    assert!(
        !anon_stats.keys().any(|k| k.starts_with("subscription ")),
        "{anon_stats:?}"
    );
    assert_eq!(anon_stats["dropped_denied"], 1);
    let mut keyed = TestClient::keyed(relay.addr, &alice);
    keyed.send(&[Frame::Subscribe {
        sub_id: 77,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Latest,
        channel: "private.b",
        group: None,
        origins: false,
        resume: udprelay::wire::ResumeVector::EMPTY,
    }]);
    keyed.barrier();
    let mine = keyed.stats();
    let rows: Vec<&String> = mine
        .keys()
        .filter(|k| k.starts_with("subscription "))
        .collect();
    assert!(!rows.is_empty(), "{mine:?}");
    assert!(
        rows.iter()
            .all(|r| r.contains(&format!("{}/77 ", keyed.socket.local_addr().unwrap()))),
        "only its own rows: {rows:?}"
    );
}

#[test]
fn a_keyed_client_over_its_quotas_is_held_to_them_and_another_key_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let anything = ["--publish", ">", "--subscribe", ">"];
    let quota = ["--messages-per-sec", "100", "--max-subscriptions", "2"];
    let greedy = new_key(&keys, "greedy", &[&anything[..], &quota[..]].concat());
    let healthy = new_key(&keys, "healthy", &anything);
    let admin = new_key(&keys, "admin", &[&anything[..], &["--admin"]].concat());
    let keys_arg = keys.to_str().unwrap().to_string();
    let relay = Relay::start_in(dir, &["--keys", &keys_arg, "--auth", "required"]);
    let limit_errors = |got: &[common::Got]| -> Vec<String> {
        got.iter()
            .filter_map(|g| match g {
                common::Got::Error(code, reason) if *code == ErrorCode::LIMIT_REACHED.0 => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .collect()
    };

    // Two addresses of the greedy key hold two subscriptions between them.
    let mut g1 = TestClient::keyed(relay.addr, &greedy);
    let mut g2 = TestClient::keyed(relay.addr, &greedy);
    g1.subscribe(1, "flood.echo");
    g2.subscribe(1, "flood.echo");
    g2.send(&[Frame::Subscribe {
        sub_id: 2,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "flood.other",
        group: None,
        origins: false,
        resume: udprelay::wire::ResumeVector::EMPTY,
    }]);
    assert_eq!(
        limit_errors(&g2.barrier()),
        ["this key holds its maximum number of subscriptions"]
    );
    // The healthy key is not held to the greedy one's quota.
    let mut h = TestClient::keyed(relay.addr, &healthy);
    for sub_id in 1..=3 {
        h.subscribe(sub_id, "calm.echo");
    }

    // The greedy key floods 3,000 messages; at most a second's worth plus
    // 100 a second from the first are stored, the rest dropped and
    // counted, and it is told why.
    let started = Instant::now();
    let payload = [b'x'; 32];
    for _ in 0..300 {
        let frames: Vec<Frame<'_>> = (0..10)
            .map(|_| Frame::Publish {
                channel: "flood.in",
                payload: &payload,
            })
            .collect();
        g1.send(&frames);
    }
    let got = g1.barrier();
    let elapsed = started.elapsed().as_secs_f64();
    let told = limit_errors(&got);
    assert!(
        told.contains(&"over this key's quota of 100 messages per second".to_string()),
        "{got:?}"
    );
    assert!(
        told.len() <= 1 + elapsed as usize,
        "told at most once a second: {told:?}"
    );

    // Meanwhile the healthy key publishes reliably, every message stored.
    let input: String = (0..1000).map(|i| format!("h{i}\n")).collect();
    let out = udpcat(
        &[
            "pub",
            &relay.addr_str(),
            "calm.in",
            "--reliable",
            "--credential",
            &healthy.to_string(),
        ],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stats = TestClient::keyed(relay.addr, &admin).stats();
    let greedy_stored = stats["messages_published"] - 1000;
    let dropped = stats["dropped_quota"];
    assert!(dropped > 0, "{stats:?}");
    assert!(greedy_stored + dropped <= 3000, "{stats:?}");
    let allowed = 100.0 + 100.0 * elapsed;
    assert!(
        greedy_stored as f64 <= allowed,
        "{greedy_stored} stored in {elapsed:.2} s: more than a second's worth and 100/s"
    );
}

#[test]
fn raw_ports_stay_plain_udp_beside_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let cred = new_key(&keys, "ops", &["--publish", ">", "--subscribe", ">"]).to_string();
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mapping = format!("metrics={}", listener.local_addr().unwrap());
    let keys_arg = keys.to_str().unwrap().to_string();
    let relay = Relay::start_in(
        dir,
        &[
            "--keys",
            &keys_arg,
            "--auth",
            "required",
            "--raw-in",
            "127.0.0.1:0=syslog",
            "--raw-out",
            &mapping,
        ],
    );
    // Plain datagrams at the raw-in port, as nc sends them, reach a keyed
    // subscriber (sealed on the way out, as everything to it is).
    let sub = Subscriber::start(&[
        &relay.addr_str(),
        "syslog",
        "--count",
        "2",
        "--credential",
        &cred,
    ]);
    send_like_nc(relay.raw_in[0], &["<13>hello from nc", "second datagram"]);
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "<13>hello from nc\nsecond datagram\n");
    // A keyed publisher's messages leave the raw-out port plain, as
    // operators' collectors expect.
    let out = udpcat(
        &["pub", &relay.addr_str(), "metrics", "--credential", &cred],
        b"cpu:42|g\nmem:7|g\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 2048];
    for want in [&b"cpu:42|g"[..], b"mem:7|g"] {
        let (n, from) = listener.recv_from(&mut buf).expect("raw-out datagram");
        assert_eq!(&buf[..n], want);
        assert_eq!(from, relay.addr);
    }
}

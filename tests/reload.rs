//! SIGHUP reads the configuration file again, with the real binaries:
//! while a reliable publisher and subscriber run, a new limit and a new
//! raw-out port take effect and the subscriber gets every message once; a
//! file that does not parse keeps the running configuration; a setting
//! that cannot change while running says so. The key file is read again:
//! a key kept keeps its subscriptions, a key that loses a permission or is
//! removed loses what needed it and its client is told. Under systemd the
//! relay says RELOADING=1 (with MONOTONIC_USEC) and READY=1 again.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Collects, on a thread of its own, `n` datagrams arriving at `socket`
/// (so that none is lost to a full buffer), or fewer if none comes for 2 s
/// after the first (or for the deadline before it).
fn collect(socket: &UdpSocket, n: usize) -> std::thread::JoinHandle<Vec<String>> {
    let socket = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        while got.len() < n {
            match socket.recv(&mut buf) {
                Ok(len) => got.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
                Err(_) => break,
            }
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
        }
        got
    })
}

fn wait_for_line(relay: &Relay, needle: &str, times: usize) {
    wait_until(
        &format!("the relay to log {needle:?} {times} time(s)"),
        || relay.stderr().matches(needle).count() >= times,
    );
}

#[test]
fn sighup_takes_a_new_limit_and_raw_out_port_while_reliable_clients_run() {
    let (first_out, second_out) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let write = |max_channels: u32, out: &UdpSocket| {
        let text = format!(
            "max-channels = {max_channels}\nraw-out = [\"orders={}\"]\n",
            out.local_addr().unwrap()
        );
        std::fs::write(&file, text).unwrap();
    };
    write(2, &first_out);
    let mut relay = Relay::start(&["--config", file.to_str().unwrap()]);
    let pid = relay.process.child().id();
    let sub = Subscriber::start(&[&relay.addr_str(), "orders", "--reliable", "--count", "2000"]);
    let (publisher, mut stdin) = reliable_publisher(&relay.addr_str(), "orders");
    let input: String = (0..2000).map(|i| format!("order-{i:04}\n")).collect();
    let (head, tail) = input.split_at(input.len() / 2);
    stdin.write_all(head.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Raw egress is plain UDP: a datagram lost on loopback is lost, so
    // what is checked is where they go (the relay counts every one sent).
    let before = collect(&first_out, 1000).join().unwrap();
    assert!(!before.is_empty(), "raw-out before the reload");
    // Two channels at most ("orders" and one more): a third is refused.
    let mut client = TestClient::new(relay.addr);
    client.publish("second", b"x");
    client.publish("third", b"x");
    assert_eq!(client.stats()["dropped_limit"], 1);
    write(10, &second_out);
    let after = collect(&second_out, 1000);
    signal(pid, "HUP");
    wait_for_line(&relay, "reloaded the configuration", 1);
    stdin.write_all(tail.as_bytes()).unwrap();
    drop(stdin);
    let out = publisher.output_deadline(DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout, stderr) = sub.finish();
    assert!(status.success(), "{stderr}");
    let want: Vec<&str> = input.lines().collect();
    let got: Vec<&str> = stdout.lines().collect();
    assert!(
        got == want,
        "the subscriber got {} of {}, once each, in order",
        got.len(),
        want.len()
    );
    let after = after.join().unwrap();
    let tail_lines: Vec<&str> = tail.lines().collect();
    assert!(
        !after.is_empty(),
        "raw-out to the new port after the reload"
    );
    assert!(
        after.iter().all(|m| tail_lines.contains(&m.trim_end())),
        "only messages after the reload went to the new port"
    );
    first_out.set_nonblocking(true).unwrap();
    assert!(
        first_out.recv(&mut [0; 64]).is_err(),
        "nothing more to the old port"
    );
    client.publish("third", b"x");
    let stats = client.stats();
    assert_eq!(
        stats["raw_forwarded"], 2000,
        "every message went to a raw-out port"
    );
    assert_eq!(
        stats["dropped_limit"], 1,
        "the new limit takes the third channel"
    );
    // A file that does not parse keeps what runs; the segment size cannot
    // change live.
    std::fs::write(&file, "max-channels = \"many\"\n").unwrap();
    signal(pid, "HUP");
    wait_for_line(&relay, "reload refused, the running configuration stays", 1);
    std::fs::write(&file, "segment-size = \"128M\"\n").unwrap();
    signal(pid, "HUP");
    wait_for_line(&relay, "segment-size cannot change while the relay runs", 1);
    client.publish("fourth", b"x");
    assert_eq!(client.stats()["dropped_limit"], 1);
}

#[test]
fn sighup_reads_the_key_file_again_and_what_it_no_longer_allows_ends_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let alice = new_key(
        &keys,
        "alice",
        &["--publish", "news.>", "--subscribe", "news.>"],
    );
    let bob = new_key(&keys, "bob", &["--subscribe", "news.>"]);
    let (alice, bob) = (alice.to_string(), bob.to_string());
    let original = std::fs::read_to_string(&keys).unwrap();
    let keys_arg = keys.to_str().unwrap().to_string();
    let mut relay = Relay::start_in(dir, &["--keys", &keys_arg, "--auth", "required"]);
    let pid = relay.process.child().id();
    let addr = relay.addr_str();
    let mut alice_sub = Subscriber::start(&[&addr, "news.eu", "--credential", &alice]);
    let alice_lines = alice_sub.stdout_lines();
    let mut bob_sub = Subscriber::start(&[&addr, "news.eu", "--credential", &bob]);
    let bob_lines = bob_sub.stdout_lines();
    let publish = |line: &str| {
        let out = udpcat(
            &[
                "pub",
                &addr,
                "news.eu",
                "--reliable",
                "--credential",
                &alice,
            ],
            format!("{line}\n").as_bytes(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish("one");
    for (who, lines) in [("alice", &alice_lines), ("bob", &bob_lines)] {
        let got = lines.recv_timeout(DEADLINE);
        assert_eq!(got.as_deref(), Ok("one"), "{who} before the reload");
    }
    // Bob may now subscribe only to sports.>; alice is as she was.
    let (head, bob_entry) = original.split_at(original.find("name = \"bob\"").unwrap());
    let narrowed = bob_entry.replace("subscribe = [\"news.>\"]", "subscribe = [\"sports.>\"]");
    assert_ne!(narrowed, bob_entry, "the key file names bob's permission");
    std::fs::write(&keys, format!("{head}{narrowed}")).unwrap();
    signal(pid, "HUP");
    wait_for_line(&relay, "reload: key file", 1);
    let (status, _, stderr) = bob_sub.finish();
    assert!(!status.success(), "bob's subscriber stops: {stderr}");
    assert!(
        stderr.contains("relay refused (denied)") && stderr.contains("news.eu"),
        "bob is told which permission went: {stderr}"
    );
    publish("two");
    let got = alice_lines.recv_timeout(DEADLINE);
    assert_eq!(
        got.as_deref(),
        Ok("two"),
        "alice's subscription outlived the reload"
    );
    // Alice's key removed: her session ends, and she is told.
    std::fs::write(&keys, format!("[[key]]\n{narrowed}")).unwrap();
    signal(pid, "HUP");
    wait_for_line(&relay, "reload: key file", 2);
    let (status, _, stderr) = alice_sub.finish();
    assert!(!status.success(), "alice's subscriber stops: {stderr}");
    assert!(
        stderr.contains("key \"alice\" was removed"),
        "alice is told why: {stderr}"
    );
    assert!(
        relay.stderr().contains("ended_subscriptions=1"),
        "the log says what the reload ended:\n{}",
        relay.stderr()
    );
}

#[test]
fn under_systemd_a_reload_says_reloading_then_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut cmd = Command::new(udprelay_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut relay = ChildGuard::spawn("udprelay", &mut cmd);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = socket
            .recv(&mut buf)
            .expect("a notification within the deadline");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    signal(relay.child().id(), "HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next(), "READY=1\n");
    signal(relay.child().id(), "TERM");
    assert_eq!(next(), "STOPPING=1\n");
    assert!(relay.wait_deadline(DEADLINE).success());
}

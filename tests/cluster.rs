//! End to end on a real NATS JetStream cluster: three `nats-server`s and
//! three relays on loopback, reliable publishers at one relay and reliable
//! subscribers at another, with servers and relays killed mid-run.
//! Skipped (saying so) where `nats-server` is not installed, unless
//! `UDPRELAY_REQUIRE_NATS` is set, as `.ci/run` does.

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::nats::{self, NatsCluster};
use common::*;

const MESSAGES: usize = 100_000;

/// What happens in the middle of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Midway {
    Nothing,
    KillNatsServer,
    KillRelayA,
}

/// A relay that is an edge of `cluster`.
fn edge(cluster: &NatsCluster) -> Relay {
    Relay::start(&["--cluster", &cluster.urls()])
}

/// A 3-node cluster and three relays that are edges of it; `None` (the
/// test is skipped) without `nats-server`.
fn three_edges() -> Option<(NatsCluster, Relay, Relay, Relay)> {
    if !nats::available() {
        return None;
    }
    let cluster = NatsCluster::start(3);
    let (a, b, c) = (edge(&cluster), edge(&cluster), edge(&cluster));
    Some((cluster, a, b, c))
}

/// Waits until `relay` consumes `udprelay.<channel>` from the cluster.
fn wait_following(relay: &Relay, channel: &str) {
    let line = format!("following subject=udprelay.{channel}");
    wait_until(&format!("the relay to follow {channel}"), || {
        relay.stderr().contains(&line)
    });
}

fn numbered(n: usize) -> String {
    (0..n).map(|i| format!("order-{i:06}\n")).collect()
}

/// A reliable subscriber at `relay` to "orders" for `n` messages, once the
/// relay follows the channel in the cluster; and its lines as they come.
fn reliable_orders_at(relay: &Relay, n: usize) -> (Subscriber, mpsc::Receiver<String>) {
    let mut sub = Subscriber::start(&[
        &relay.addr_str(),
        "orders",
        "--reliable",
        "--count",
        &n.to_string(),
    ]);
    let lines = sub.stdout_lines();
    wait_following(relay, "orders");
    (sub, lines)
}

/// Takes `lines` into `got` until it holds `n`; false if `deadline` passed
/// first (the subscriber ending early leaves it short).
fn receive_until(
    lines: &mpsc::Receiver<String>,
    deadline: std::time::Instant,
    got: &mut Vec<String>,
    n: usize,
) -> bool {
    while got.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    true
}

/// Panics, saying `what` and where, unless `got` is `input`'s lines: all,
/// once, in order.
fn assert_all_once_in_order(got: &[String], input: &str, what: &str) {
    let want: Vec<&str> = input.lines().collect();
    if got != want {
        let first_wrong = got.iter().zip(&want).position(|(g, w)| g != w);
        panic!(
            "{what}: C got {} messages for {}; first out of place at {first_wrong:?}",
            got.len(),
            want.len()
        );
    }
}

/// `udpcat pub ADDRS orders --reliable` (and `extra`), fed the first half
/// of `input` at once; its stdin (for the rest) and its stderr lines.
fn reliable_orders_publisher(
    addrs: &str,
    extra: &[&str],
    input: &str,
) -> (ChildGuard, std::process::ChildStdin, mpsc::Receiver<String>) {
    use std::io::Write;
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", addrs, "orders", "--reliable"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let mut stdin = publisher.child().stdin.take().unwrap();
    let said = line_reader(publisher.child().stderr.take().unwrap());
    let first = &input.as_bytes()[..input.len() / 2];
    stdin.write_all(first).unwrap();
    stdin.flush().unwrap();
    (publisher, stdin, said)
}

/// 100,000 messages published reliably at relay A reach a reliable
/// subscriber at relay C, all, once, in A's order, whatever `midway` does.
fn a_to_c(midway: Midway) {
    if !nats::available() {
        return;
    }
    let mut cluster = NatsCluster::start(3);
    // A knows only the server that is killed: it must find the others
    // from what that one told it.
    let mut a = match midway {
        Midway::KillNatsServer => Relay::start(&["--cluster", &cluster.url(0)]),
        _ => edge(&cluster),
    };
    let _b = edge(&cluster);
    let c = edge(&cluster);
    let (sub, lines) = reliable_orders_at(&c, MESSAGES);
    let listen = a.addr_str();
    let mut cmd = Command::new(udpcat_bin());
    cmd.args([
        "pub",
        &listen,
        "orders",
        "--reliable",
        "--reply-timeout",
        "30s",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let mut stdin = publisher.child().stdin.take().unwrap();
    let input = numbered(MESSAGES);
    let to_write = input.clone();
    let writer = thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(to_write.as_bytes());
    });
    let mut got: Vec<String> = Vec::with_capacity(MESSAGES);
    let deadline = std::time::Instant::now() + 3 * DEADLINE;
    let stuck = |got: &[String], a: &Relay| -> String {
        format!(
            "{midway:?}: C got {} of {MESSAGES}\nA: {}\n{}\nC: {}\n{}",
            got.len(),
            bridge_counters(a),
            tail(&a.stderr()),
            bridge_counters(&c),
            tail(&c.stderr())
        )
    };
    if !receive_until(&lines, deadline, &mut got, MESSAGES / 3) {
        panic!("{}", stuck(&got, &a));
    }
    match midway {
        Midway::Nothing => {}
        Midway::KillNatsServer => cluster.kill9(0),
        Midway::KillRelayA => {
            let dir = a.kill9();
            a = Relay::start_at(dir, &listen, &["--cluster", &cluster.urls()]);
        }
    }
    if !receive_until(&lines, deadline, &mut got, MESSAGES) {
        panic!("{}", stuck(&got, &a));
    }
    let out = publisher.output_deadline(DEADLINE);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{midway:?}: the publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _, stderr) = sub.finish();
    assert!(
        status.success(),
        "{midway:?}: the subscriber failed: {stderr}"
    );
    assert_all_once_in_order(&got, &input, &format!("{midway:?}"));
    drop(a);
}

/// The relay's bridge counters, on one line.
fn bridge_counters(relay: &Relay) -> String {
    let out = udpcat(&["stats", &relay.addr_str()], b"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("bridge_") || l.starts_with("replay_gaps"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn a_hundred_thousand_reliable_messages_cross_three_relays_once_in_order() {
    a_to_c(Midway::Nothing);
}

#[test]
fn a_nats_server_killed_mid_run_loses_and_doubles_nothing() {
    a_to_c(Midway::KillNatsServer);
}

#[test]
fn relay_a_killed_mid_run_and_restarted_loses_and_doubles_nothing() {
    a_to_c(Midway::KillRelayA);
}

/// The routing case on a real cluster: a reliable publisher given
/// three relays, one direct and two behind udpchaos (20 ms and 40 ms),
/// picks the direct one by `--pick nearest`; that relay is killed -9
/// mid-run; the publisher moves to the 20 ms one and goes on in the same
/// session, and a reliable subscriber at the third relay gets every
/// message once, in order: what the dead relay acknowledged was in
/// JetStream already (`--cluster-ack cluster`, the default), and what it
/// had stored but not acknowledged, sent again through the other relay,
/// JetStream drops by its session message id.
#[test]
fn a_reliable_publisher_picks_the_nearest_relay_and_moves_when_it_dies_losing_nothing() {
    use std::io::Write;
    const N: usize = 20_000;
    let Some((_cluster, a, b, c)) = three_edges() else {
        return;
    };
    let near = Chaos::start(b.addr, &["--delay", "20ms"]);
    let far = Chaos::start(c.addr, &["--delay", "40ms"]);
    let (sub, lines) = reliable_orders_at(&c, N);
    let list = format!("{},{},{}", far.addr_str(), a.addr_str(), near.addr_str());
    let input = numbered(N);
    let second = &input[input.len() / 2..];
    let (mut publisher, mut stdin, said) =
        reliable_orders_publisher(&list, &["--pick", "nearest"], &input);
    let deadline = std::time::Instant::now() + 3 * DEADLINE;
    let mut got: Vec<String> = Vec::with_capacity(N);
    let receive = |got: &mut Vec<String>, n: usize| {
        if !receive_until(&lines, deadline, got, n) || got.len() < n {
            panic!(
                "C got {} of {n}\nB: {}\n{}\nC: {}\n{}",
                got.len(),
                bridge_counters(&b),
                tail(&b.stderr()),
                bridge_counters(&c),
                tail(&c.stderr())
            );
        }
    };
    // A quarter reached C through A and the cluster: A is in use.
    receive(&mut got, N / 4);
    let a_addr = a.addr_str();
    let _a_dir = a.kill9();
    let killed = std::time::Instant::now();
    stdin.write_all(second.as_bytes()).unwrap();
    drop(stdin);
    // Its stderr, as it comes: when it moved.
    let mut stderr = Vec::new();
    let mut moved_after = None;
    while moved_after.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = said
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("udpcat never moved ({e:?}): {stderr:?}"));
        if line.contains("now using") {
            moved_after = Some(killed.elapsed());
        }
        stderr.push(line);
    }
    receive(&mut got, N);
    let status = publisher.wait_deadline(DEADLINE);
    let stderr = format!("{}\n{}", stderr.join("\n"), rest_of(&said));
    assert!(status.success(), "the publisher failed: {stderr}");
    assert!(
        stderr.contains(&format!("picked {a_addr} (nearest)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("stopped answering; now using {}", near.addr_str())),
        "the next nearest: {stderr}"
    );
    let (status, _, sub_stderr) = sub.finish();
    assert!(status.success(), "the subscriber failed: {sub_stderr}");
    assert_all_once_in_order(&got, &input, "after the move");
    // Measured, not asserted (a loaded machine may take longer): the issue
    // asks for under 2 s.
    eprintln!("moved to the next relay {moved_after:?} after the kill");
}

/// A reliable subscriber at C, given C and B, gets half of 20,000 messages
/// published reliably at A; C is killed -9; it moves to B (which had no
/// subscriber of the channel, so follows it for the resume from the time
/// the subscriber asks) and gets the rest: every message once, in order.
#[test]
fn a_reliable_subscriber_moves_to_another_relay_when_its_relay_dies_losing_and_repeating_nothing() {
    use std::io::Write;
    const N: usize = 20_000;
    let Some((_cluster, a, b, c)) = three_edges() else {
        return;
    };
    let list = format!("{},{}", c.addr_str(), b.addr_str());
    let mut sub = Subscriber::start(&[
        &list,
        "orders",
        "--reliable",
        "--pick",
        "first",
        "--count",
        &N.to_string(),
    ]);
    let lines = sub.stdout_lines();
    wait_following(&c, "orders");
    let input = numbered(N);
    let second = &input[input.len() / 2..];
    let (mut publisher, mut stdin, _) = reliable_orders_publisher(&a.addr_str(), &[], &input);
    let deadline = std::time::Instant::now() + 3 * DEADLINE;
    let mut got: Vec<String> = Vec::with_capacity(N);
    let receive = |got: &mut Vec<String>, n: usize| {
        if !receive_until(&lines, deadline, got, n) || got.len() < n {
            panic!(
                "the subscriber got {} of {n}\nB: {}\n{}",
                got.len(),
                bridge_counters(&b),
                tail(&b.stderr()),
            );
        }
    };
    receive(&mut got, N / 4);
    let _c_dir = c.kill9();
    stdin.write_all(second.as_bytes()).unwrap();
    drop(stdin);
    let said = sub.stderr_until("resumes at the new relay");
    assert!(
        said.contains(&format!("now using {}", b.addr_str())),
        "{said}"
    );
    receive(&mut got, N);
    let status = publisher.wait_deadline(DEADLINE);
    assert!(status.success(), "the publisher failed");
    let (status, _, sub_stderr) = sub.finish();
    assert!(
        status.success(),
        "the subscriber failed: {said}{sub_stderr}"
    );
    assert_all_once_in_order(&got, &input, "after the subscriber moved");
}

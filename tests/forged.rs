//! End to end: datagrams with a forged source address, sent from a raw
//! socket at the real `udprelay` in a victim's name (issue 10).
//!
//! The relay must not be a reflector: an address that has not shown it
//! receives there is sent at most as many bytes as arrived from it (the
//! bytes a victim receives ÷ the bytes forged in its name, at most 1). And a
//! datagram that only claims to come from a client must not end its
//! subscription, write into its publishing session, or acknowledge on its
//! behalf. Needs root for the raw socket, as CI runs.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::forge::{self, Attack, Forger, LivePublisher, Plan, Targets};
use common::tap::Tap;
use common::*;
use udprelay::wire::{self, Frame};

/// The channels of the amplification tests.
const TARGETS: Targets<'static> = Targets {
    live: "live",
    stored: "stored",
};

/// Each attack: 40 datagrams in 200 ms (below the relay's 1000 ERRORs a
/// second in all), then 2 s of counting what the victim still receives.
const PLAN: Plan = Plan {
    rounds: 40,
    every: Duration::from_millis(5),
    then: Duration::from_secs(2),
};

/// Messages stored on `stored`, of `STORED_SIZE` bytes: 2 MB.
const STORED_COUNT: usize = 2000;
/// Bytes of each stored message.
const STORED_SIZE: usize = 1000;

fn numbered(n: usize, prefix: &str) -> String {
    (0..n).map(|i| format!("{prefix}-{i:05}\n")).collect()
}

/// Publishes `input` (one message a line) to `channel` with `udpcat pub`
/// and fails the test unless every message went.
fn publish(relay: &Relay, channel: &str, input: &str, reliable: bool) {
    let addr = relay.addr_str();
    let mut args = vec!["pub", &addr, channel];
    if reliable {
        args.push("--reliable");
    }
    let out = udpcat(&args, input.as_bytes());
    assert!(
        out.status.success(),
        "udpcat pub to {channel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The payloads `channel` holds, one a line, as `udprelay log dump` prints
/// them.
fn stored(relay: &Relay, channel: &str) -> String {
    let dump = Command::new(udprelay_bin())
        .args(["log", "dump", channel, "--data-dir"])
        .arg(relay.data_dir())
        .output()
        .expect("run udprelay log dump");
    assert!(
        dump.status.success(),
        "log dump {channel}: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| format!("{}\n", l.split('\t').nth(2).unwrap_or_default()))
        .collect()
}

/// Whether `attack` asks for a replay of the stored channel.
fn replays(attack: Attack) -> bool {
    matches!(
        attack,
        Attack::SubscribeEarliest
            | Attack::SubscribeEarliestEight
            | Attack::SubscribeEarliestReliable
            | Attack::SubscribeEarliestReliableAcked
    )
}

/// Forges `attack` as [`PLAN`] says in a victim's name at a relay whose
/// `live` channel carries 400 KB/s and whose `stored` channel holds 2 MB,
/// and checks that the victim receives at most the bytes forged; then that a
/// real subscriber still gets what the attack asked for.
fn at_most_what_was_forged(attack: Attack) {
    let forger = Forger::new();
    let relay = Relay::start(&[]);
    let addr = relay.addr_str();
    let stored_line = format!("{}\n", "s".repeat(STORED_SIZE - 1));
    if replays(attack) {
        let input = stored_line.repeat(STORED_COUNT);
        publish(&relay, TARGETS.stored, &input, false);
    }
    let live = LivePublisher::start(relay.addr, TARGETS.live, 400, Duration::from_millis(1));
    let mut client = TestClient::new(relay.addr);
    let m = forge::measure(&forger, relay.addr, attack, TARGETS, PLAN, || {
        client.barrier();
    });
    eprintln!(
        "{}: {} B forged in {} datagrams, {} B received in {} datagrams: {:.2}x",
        attack.name(),
        m.forged_bytes,
        m.forged_datagrams,
        m.received.bytes,
        m.received.datagrams,
        m.factor()
    );
    assert!(
        m.received.bytes <= m.forged_bytes,
        "{}: the victim received {} bytes in {} datagrams for {} bytes forged in its name \
         in {} datagrams: {:.1}x, more than 1x",
        attack.name(),
        m.received.bytes,
        m.received.datagrams,
        m.forged_bytes,
        m.forged_datagrams,
        m.factor()
    );

    // What the attack asked for still works for a client that asks itself.
    match attack {
        Attack::SubscribeLive => {
            let sub = Subscriber::start(&[&addr, TARGETS.live, "--count", "10"]);
            let (status, _, stderr) = sub.finish();
            assert!(status.success(), "a live subscriber: {stderr}");
        }
        _ if replays(attack) => {
            let count = STORED_COUNT.to_string();
            let sub = Subscriber::start(&[
                &addr,
                TARGETS.stored,
                "--from",
                "earliest",
                "--reliable",
                "--count",
                &count,
            ]);
            let (status, stdout, stderr) = sub.finish();
            assert!(status.success(), "a replaying subscriber: {stderr}");
            assert!(
                stdout == stored_line.repeat(STORED_COUNT),
                "a replaying subscriber got {} of {STORED_COUNT} stored messages",
                stdout.lines().count()
            );
        }
        _ => {}
    }
    drop(live);
}

#[test]
fn a_forged_ping_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::Ping);
}

#[test]
fn a_forged_live_subscribe_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::SubscribeLive);
}

#[test]
fn a_forged_subscribe_from_earliest_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::SubscribeEarliest);
}

#[test]
fn eight_forged_subscribes_in_a_datagram_get_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::SubscribeEarliestEight);
}

#[test]
fn a_forged_reliable_subscribe_from_earliest_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::SubscribeEarliestReliable);
}

#[test]
fn a_forged_reliable_subscribe_kept_going_by_forged_acks_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::SubscribeEarliestReliableAcked);
}

#[test]
fn a_forged_stats_request_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::StatsRequest);
}

#[test]
fn three_hundred_forged_stats_requests_in_a_datagram_get_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::StatsRequests300);
}

#[test]
fn a_forged_malformed_datagram_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::Malformed);
}

#[test]
fn a_forged_datagram_of_another_version_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::BadVersion);
}

#[test]
fn a_forged_unsubscribe_of_an_unknown_id_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::UnknownUnsubscribe);
}

#[test]
fn a_forged_reliable_publish_gets_the_victim_no_more_than_was_forged() {
    at_most_what_was_forged(Attack::ReliablePublish);
}

#[test]
fn a_forged_unsubscribe_does_not_end_a_subscription() {
    let forger = Forger::new();
    // udpcat keeps its subscription alive every third of the lease and a
    // keepalive would bring a lost subscription back: with a 60 s lease the
    // first comes 20 s in, long after the subscriber below gives up.
    let relay = Relay::start(&["--lease", "60s"]);
    let tap = Tap::start(relay.addr);
    let sub = Subscriber::start(&[&tap.addr_str(), "news", "--count", "20", "--timeout", "10s"]);
    let sub_id = tap
        .wait_for("the subscriber's SUBSCRIBE", |s| !s.sub_ids.is_empty())
        .sub_ids[0];

    // The attacker knows the sub id (the worst case) and forges its end
    // from the address the relay knows the subscriber by.
    let unsubscribe = wire::encode_datagram(&[Frame::Unsubscribe { sub_id }]).unwrap();
    forger.send(tap.upstream, relay.addr, &unsubscribe);
    TestClient::new(relay.addr).barrier();

    let input = numbered(20, "news");
    publish(&relay, "news", &input, false);
    let (status, stdout, stderr) = sub.finish();
    assert!(
        status.success() && stdout == input,
        "after a forged UNSUBSCRIBE the subscriber received {} of the 20 messages \
         published to its channel ({status}): {stderr}",
        stdout.lines().count()
    );
}

#[test]
fn forged_reliable_publishes_in_a_victims_session_are_not_stored() {
    let forger = Forger::new();
    let relay = Relay::start(&[]);
    let tap = Tap::start(relay.addr);
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", &tap.addr_str(), "ledger", "--reliable"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub --reliable", &mut cmd);
    let mut stdin = publisher.child().stdin.take().unwrap();
    let input = numbered(100, "victim");
    let (first, rest) = input.split_at(input.len() / 2);
    stdin.write_all(first.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let seen = tap.wait_for("the relay acknowledge the first 50 messages", |s| {
        s.publish_acked >= 50 && !s.sessions.is_empty()
    });

    // The attacker knows the session id (the worst case) and writes the
    // session's next 30 sequence numbers from the publisher's address.
    let (session, next) = (seen.sessions[0], seen.next_seq);
    for seq in next..next + 30 {
        let payload = format!("attacker-{seq:05}");
        let forged = wire::encode_datagram(&[Frame::ReliablePublish {
            session,
            seq,
            acked_below: next,
            more: false,
            channel: "ledger",
            payload: payload.as_bytes(),
        }])
        .unwrap();
        forger.send(tap.upstream, relay.addr, &forged);
    }
    TestClient::new(relay.addr).barrier();

    stdin.write_all(rest.as_bytes()).unwrap();
    drop(stdin);
    let out = publisher.output_deadline(DEADLINE);
    assert!(
        out.status.success(),
        "the victim's reliable publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = stored(&relay, "ledger");
    let forged = held.lines().filter(|l| l.starts_with("attacker-")).count();
    let missing = input.lines().filter(|l| !held.contains(l)).count();
    assert!(
        held == input,
        "the channel holds {} messages, {forged} of them the attacker's, and misses {missing} \
         of the victim's 100",
        held.lines().count()
    );
}

#[test]
fn forged_acks_do_not_cost_a_reliable_subscriber_its_messages() {
    let forger = Forger::new();
    let relay = Relay::start(&[]);
    let input = numbered(2000, "m");
    publish(&relay, "acked", &input, true);

    // subscriber -> lossy path -> tap -> relay: the relay knows the
    // subscriber by the tap's address, which the attacker forges.
    let tap = Tap::start(relay.addr);
    let lossy = Chaos::start(
        tap.addr,
        &["--loss", "0.1", "--delay", "10ms", "--seed", "5"],
    );
    let sub = Subscriber::start(&[
        &lossy.addr_str(),
        "acked",
        "--reliable",
        "--from",
        "earliest",
        "--count",
        "2000",
        "--timeout",
        "12s",
        "-v",
    ]);
    let sub_id = tap
        .wait_for("the subscriber's SUBSCRIBE", |s| !s.sub_ids.is_empty())
        .sub_ids[0];

    // Every 2 ms, far faster than the path's round trip, an ACK of
    // everything the relay sent, as if from the subscriber.
    let ack = forge::ack_everything(sub_id);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (status, stdout, stderr) = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                forger.send(tap.upstream, relay.addr, &ack);
                // Pacing the attack, not waiting for anything to happen.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let finished = sub.finish();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        finished
    });
    assert!(
        status.success() && stdout == input,
        "with forged ACKs the reliable subscriber received {} of 2000 messages in order \
         ({status}): {stderr}",
        stdout.lines().count()
    );
}

#[test]
fn the_ipv4_header_checksum_is_rfc_1071s() {
    // Wikipedia's worked example ("Internet checksum", IPv4 header): a
    // header with its checksum field zeroed sums to the checksum 0xb861.
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(forge::ipv4_checksum(&header), 0xb861);
}

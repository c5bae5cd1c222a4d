//! The relay core at exact simulated times: no sockets, no sleeps.

use super::*;
use crate::wire::{ErrorCode, Frame, encode_datagram};

const ALICE: &str = "127.0.0.1:1001";
const BOB: &str = "127.0.0.1:1002";
const PUBLISHER: &str = "127.0.0.1:2000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn start() -> Now {
    Now {
        instant: Instant::now(),
        unix_nanos: 1_700_000_000_000_000_000,
    }
}

fn relay_with(f: impl FnOnce(&mut RelayConfig)) -> Relay {
    let mut config = RelayConfig::default();
    f(&mut config);
    Relay::new(&config)
}

fn relay() -> Relay {
    relay_with(|_| {})
}

fn send(relay: &mut Relay, now: Now, from: &str, frames: &[Frame<'_>]) {
    relay.handle_datagram(now, addr(from), &encode_datagram(frames).unwrap());
}

fn subscribe(relay: &mut Relay, now: Now, from: &str, sub_id: u32, channel: &str) {
    let frame = Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel,
    };
    send(relay, now, from, &[frame]);
}

fn publish(relay: &mut Relay, now: Now, channel: &str, payload: &[u8]) {
    send(
        relay,
        now,
        PUBLISHER,
        &[Frame::Publish { channel, payload }],
    );
}

/// What the relay sent, decoded: one string per frame, by destination.
#[derive(Debug, Default)]
struct Sent {
    datagrams: Vec<Transmit>,
}

impl Sent {
    fn collect(relay: &mut Relay) -> Sent {
        let mut datagrams = Vec::new();
        while let Some(t) = relay.poll_transmit() {
            datagrams.push(t);
        }
        Sent { datagrams }
    }

    fn frames_to(&self, to: &str) -> Vec<String> {
        let to = addr(to);
        let mut out = Vec::new();
        for t in self.datagrams.iter().filter(|t| t.destination == to) {
            for f in wire::decode_datagram(&t.payload).unwrap() {
                out.push(describe(&f.unwrap()));
            }
        }
        out
    }

    fn datagrams_to(&self, to: &str) -> usize {
        self.datagrams
            .iter()
            .filter(|t| t.destination == addr(to))
            .count()
    }
}

fn describe(f: &Frame<'_>) -> String {
    match f {
        Frame::Deliver {
            sub_id,
            offset,
            payload,
            ..
        } => format!(
            "deliver {sub_id} @{offset} {}",
            String::from_utf8_lossy(payload)
        ),
        Frame::Subscribed {
            sub_id,
            first_offset,
            next_offset,
            lease_ms,
        } => {
            format!("subscribed {sub_id} first={first_offset} next={next_offset} lease={lease_ms}")
        }
        Frame::Error { code, .. } => format!("error {}", code.name()),
        Frame::Pong { nonce } => format!("pong {nonce}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn publish_fans_out_to_every_subscriber_with_dense_offsets() {
    let mut r = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    subscribe(&mut r, t, BOB, 9, "news");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 1 first=0 next=0 lease=30000"]
    );
    for p in ["a", "b", "c"] {
        publish(&mut r, t, "news", p.as_bytes());
    }
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["deliver 1 @0 a", "deliver 1 @1 b", "deliver 1 @2 c"]
    );
    assert_eq!(
        sent.frames_to(BOB),
        ["deliver 9 @0 a", "deliver 9 @1 b", "deliver 9 @2 c"]
    );
    // Three deliveries to one subscriber between two polls share a datagram.
    assert_eq!(sent.datagrams_to(ALICE), 1);
    assert!(
        sent.frames_to(PUBLISHER).is_empty(),
        "publishing is not acknowledged"
    );
    assert_eq!(r.next_offset("news"), Some(3));
    assert_eq!(r.counters().messages_published, 3);
    assert_eq!(r.counters().messages_delivered, 6);
}

#[test]
fn channels_are_independent() {
    let mut r = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "a");
    subscribe(&mut r, t, BOB, 1, "b");
    Sent::collect(&mut r);
    publish(&mut r, t, "a", b"x");
    publish(&mut r, t, "b", b"y");
    publish(&mut r, t, "b", b"z");
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(ALICE), ["deliver 1 @0 x"]);
    assert_eq!(sent.frames_to(BOB), ["deliver 1 @0 y", "deliver 1 @1 z"]);
}

#[test]
fn a_late_subscriber_starts_at_the_next_offset() {
    let mut r = relay();
    let t = start();
    publish(&mut r, t, "news", b"old");
    subscribe(&mut r, t, ALICE, 1, "news");
    publish(&mut r, t, "news", b"new");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        [
            "subscribed 1 first=1 next=1 lease=30000",
            "deliver 1 @1 new"
        ]
    );
}

#[test]
fn earliest_without_stored_messages_is_answered_with_the_real_start() {
    let mut r = relay();
    let t = start();
    publish(&mut r, t, "news", b"0");
    publish(&mut r, t, "news", b"1");
    let frame = Frame::Subscribe {
        sub_id: 4,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "news",
    };
    send(&mut r, t, ALICE, &[frame]);
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 4 first=2 next=2 lease=30000"]
    );
}

#[test]
fn a_start_in_the_future_skips_earlier_messages() {
    let mut r = relay();
    let t = start();
    let frame = Frame::Subscribe {
        sub_id: 4,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Offset(2),
        channel: "news",
    };
    send(&mut r, t, ALICE, &[frame]);
    for p in ["0", "1", "2"] {
        publish(&mut r, t, "news", p.as_bytes());
    }
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 4 first=2 next=0 lease=30000", "deliver 4 @2 2"]
    );
}

#[test]
fn unsubscribed_client_receives_nothing_more() {
    let mut r = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    subscribe(&mut r, t, BOB, 1, "news");
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    publish(&mut r, t, "news", b"after");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 1 first=0 next=0 lease=30000"]
    );
    assert_eq!(sent.frames_to(BOB).last().unwrap(), "deliver 1 @0 after");
    assert_eq!(r.subscription_count(), 1);
    assert_eq!(r.counters().subscriptions_closed, 1);
}

#[test]
fn unsubscribing_an_unknown_id_is_an_error() {
    let mut r = relay();
    let t = start();
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 5 }]);
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(ALICE), ["error unknown-subscription"]);
    assert_eq!(r.counters().dropped_unknown_subscription, 1);
}

#[test]
fn lease_lapses_exactly_at_its_length_after_the_last_packet() {
    let lease = Duration::from_millis(500);
    let mut r = relay_with(|c| c.lease = lease);
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    assert_eq!(r.poll_timeout(), Some(t.instant + lease));

    // Any packet refreshes the lease: a ping at +300 ms moves expiry to +800 ms.
    let t300 = t.after(Duration::from_millis(300));
    send(&mut r, t300, ALICE, &[Frame::Ping { nonce: 1 }]);
    r.handle_timeout(t.instant + lease);
    assert_eq!(
        r.subscription_count(),
        1,
        "refreshed lease must not lapse at +500 ms"
    );
    assert_eq!(r.poll_timeout(), Some(t300.instant + lease));

    r.handle_timeout(t300.instant + lease - Duration::from_millis(1));
    assert_eq!(r.subscription_count(), 1, "alive 1 ms before expiry");
    r.handle_timeout(t300.instant + lease);
    assert_eq!(r.subscription_count(), 0, "gone at expiry");
    assert_eq!(r.counters().subscriptions_expired, 1);
    assert_eq!(r.poll_timeout(), None, "nothing left to wake up for");

    Sent::collect(&mut r);
    publish(&mut r, t300.after(lease), "news", b"late");
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

#[test]
fn resubscribing_is_idempotent_and_keeps_the_lease_alive() {
    let mut r = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    subscribe(&mut r, t.after(Duration::from_secs(20)), ALICE, 1, "news");
    assert_eq!(r.subscription_count(), 1);
    r.handle_timeout(t.instant + Duration::from_secs(45));
    assert_eq!(r.subscription_count(), 1);
    publish(&mut r, t, "news", b"x");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        frames.iter().filter(|f| f.starts_with("deliver")).count(),
        1
    );
}

#[test]
fn reliable_requests_are_refused_until_supported() {
    let mut r = relay();
    let t = start();
    let frame = Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Latest,
        channel: "news",
    };
    send(&mut r, t, ALICE, &[frame]);
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["error unsupported"]
    );
    assert_eq!(r.subscription_count(), 0);
}

#[test]
fn ping_is_answered_with_its_nonce() {
    let mut r = relay();
    send(&mut r, start(), ALICE, &[Frame::Ping { nonce: 77 }]);
    assert_eq!(Sent::collect(&mut r).frames_to(ALICE), ["pong 77"]);
}

#[test]
fn stats_reply_lists_the_counters() {
    let mut r = relay();
    let t = start();
    publish(&mut r, t, "news", b"x");
    send(&mut r, t, ALICE, &[Frame::StatsRequest]);
    let sent = Sent::collect(&mut r);
    let payload = &sent.datagrams[0].payload;
    let frame = wire::decode_datagram(payload)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let Frame::Stats { entries } = frame else {
        panic!("expected stats, got {frame:?}");
    };
    let stats: HashMap<&str, u64> = entries.iter().collect();
    assert_eq!(stats["messages_published"], 1);
    assert_eq!(stats["channels"], 1);
    assert_eq!(stats["datagrams_received"], 2);
}

#[test]
fn bad_input_is_counted_and_answered_only_when_it_speaks_the_protocol() {
    let mut r = relay();
    let t = start();
    r.handle_datagram(t, addr(ALICE), b"hello, not a relay datagram");
    assert_eq!(r.counters().dropped_not_protocol, 1);
    assert!(
        Sent::collect(&mut r).datagrams.is_empty(),
        "no reply to foreign traffic"
    );

    r.handle_datagram(t, addr(ALICE), b"UR\x02\x00\0\0\0\0");
    assert_eq!(r.counters().dropped_bad_version, 1);
    r.handle_datagram(t, addr(ALICE), b"UR\x01\x00\0\0\0\0\x01\x00\x05\x00\x00");
    assert_eq!(r.counters().dropped_malformed, 1);
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["error unsupported-version", "error malformed"]
    );

    // An ERROR sent to the relay is never answered: two relays must not loop.
    let err = Frame::Error {
        code: ErrorCode::MALFORMED,
        reason: "x",
    };
    send(&mut r, t, ALICE, &[err]);
    assert!(Sent::collect(&mut r).datagrams.is_empty());
    assert_eq!(r.counters().dropped_unexpected, 1);
}

#[test]
fn frames_before_a_bad_one_still_count() {
    let mut r = relay();
    let t = start();
    let mut dgram = encode_datagram(&[Frame::Ping { nonce: 1 }]).unwrap();
    dgram.extend_from_slice(&[0x7F, 0, 0, 0]);
    r.handle_datagram(t, addr(ALICE), &dgram);
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["pong 1", "error malformed"]
    );
}

#[test]
fn error_replies_are_rate_limited() {
    let mut r = relay_with(|c| c.error_replies_per_sec = 10);
    let t = start();
    for _ in 0..25 {
        r.handle_datagram(t, addr(ALICE), b"UR\x09\x00\0\0\0\0");
    }
    assert_eq!(r.counters().errors_sent, 10);
    assert_eq!(r.counters().errors_suppressed, 15);
    // 100 ms later, one more token (10 per second).
    let later = t.after(Duration::from_millis(100));
    r.handle_datagram(later, addr(ALICE), b"UR\x09\x00\0\0\0\0");
    r.handle_datagram(later, addr(ALICE), b"UR\x09\x00\0\0\0\0");
    assert_eq!(r.counters().errors_sent, 11);
    assert_eq!(r.counters().dropped_bad_version, 27);
}

#[test]
fn oversized_messages_are_refused() {
    let mut r = relay_with(|c| c.max_message_size = 10);
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    publish(&mut r, t, "news", &[b'x'; 11]);
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(PUBLISHER), ["error too-large"]);
    assert!(sent.frames_to(ALICE).is_empty());
    assert_eq!(
        r.next_offset("news"),
        Some(0),
        "a refused message takes no offset"
    );
}

#[test]
fn channel_and_subscription_limits_hold() {
    let mut r = relay_with(|c| {
        c.max_channels = 2;
        c.max_subscriptions_per_client = 1;
    });
    let t = start();
    publish(&mut r, t, "a", b"1");
    publish(&mut r, t, "b", b"1");
    publish(&mut r, t, "c", b"1");
    assert_eq!(r.channel_count(), 2);
    assert_eq!(r.next_offset("c"), None);
    subscribe(&mut r, t, ALICE, 1, "a");
    subscribe(&mut r, t, ALICE, 2, "b");
    assert_eq!(r.subscription_count(), 1);
    assert_eq!(r.counters().dropped_limit, 2);
}

#[test]
fn raw_ports_carry_plain_datagrams_in_and_out() {
    let egress = addr("127.0.0.1:9000");
    let mut r = relay_with(|c| {
        c.raw_in = vec![(addr("127.0.0.1:5514"), "syslog".into())];
        c.raw_out = vec![("syslog".into(), egress)];
    });
    let t = start();
    subscribe(&mut r, t, ALICE, 3, "syslog");
    Sent::collect(&mut r);
    r.handle_raw(t, 0, b"<13>plain line");
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(ALICE), ["deliver 3 @0 <13>plain line"]);
    let raw: Vec<_> = sent
        .datagrams
        .iter()
        .filter(|d| d.destination == egress)
        .collect();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].payload, b"<13>plain line");
    assert_eq!(r.counters().raw_received, 1);
    assert_eq!(r.counters().raw_forwarded, 1);
}

#[test]
fn large_deliveries_go_alone_and_small_ones_pack() {
    let mut r = relay_with(|c| c.datagram_size = 200);
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    publish(&mut r, t, "news", b"small");
    publish(&mut r, t, "news", &[b'L'; 1000]);
    publish(&mut r, t, "news", b"small");
    publish(&mut r, t, "news", b"small");
    let sent = Sent::collect(&mut r);
    let sizes: Vec<usize> = sent.datagrams.iter().map(|d| d.payload.len()).collect();
    // [small] [large alone] [small, small]: order preserved, packing resumed.
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    assert!(sizes[1] > 1000);
    let offsets: Vec<String> = sent.frames_to(ALICE);
    assert_eq!(offsets.len(), 4);
    assert!(offsets[1].starts_with("deliver 1 @1 LLL"));
    assert_eq!(offsets[3], "deliver 1 @3 small");
}

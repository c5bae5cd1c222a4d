//! The relay core at exact simulated times: no sockets, no sleeps.

use super::reassembly::{FRAGMENT_TIMEOUT, piece_cost, reassembly_cost};
use super::sessions::held_cost;
use super::*;
use crate::log::LogError;
use crate::wire::{DeliveryMode, ErrorCode, Frame, StartPosition, encode_datagram};
use std::time::Duration;

mod cluster;
mod groups;
mod wildcards;

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

/// A relay on a fresh temporary data directory (removed when dropped).
fn relay_with(f: impl FnOnce(&mut RelayConfig)) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    f(&mut config);
    (Relay::open(&config, start()).unwrap(), dir)
}

fn relay() -> (Relay, tempfile::TempDir) {
    relay_with(|_| {})
}

/// A datagram of `frames` from `from` led by a valid address token for it:
/// what a client sends once it has proven its address.
fn proven(relay: &mut Relay, now: Now, from: &str, frames: &[Frame<'_>]) -> Vec<u8> {
    let token = relay.tokens.issue(now.instant, now.unix_secs(), addr(from));
    let mut all = vec![Frame::Validate { token }];
    all.extend_from_slice(frames);
    encode_datagram(&all).unwrap()
}

fn send(relay: &mut Relay, now: Now, from: &str, frames: &[Frame<'_>]) {
    let datagram = proven(relay, now, from, frames);
    relay.handle_datagram(now, addr(from), &datagram);
}

/// `frames` from `from` with no token.
fn send_unproven(relay: &mut Relay, now: Now, from: &str, frames: &[Frame<'_>]) {
    relay.handle_datagram(now, addr(from), &encode_datagram(frames).unwrap());
}

/// An unreliable subscription to `channel` from its end.
pub(super) fn subscribe_frame(sub_id: u32, channel: &str) -> Frame<'_> {
    Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel,
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    }
}

fn subscribe(relay: &mut Relay, now: Now, from: &str, sub_id: u32, channel: &str) {
    send(relay, now, from, &[subscribe_frame(sub_id, channel)]);
}

/// A reliable subscription `sub_id` to "news" from `start`.
fn subscribe_reliable(relay: &mut Relay, now: Now, from: &str, sub_id: u32, start: StartPosition) {
    reliable_news(
        relay,
        now,
        from,
        sub_id,
        (start, false, wire::ResumeVector::EMPTY),
    );
}

/// A reliable subscription `sub_id` to "news" from `start`, asking for
/// origins or not, with `resume` (the vector of a `Resume` start).
fn reliable_news(
    relay: &mut Relay,
    now: Now,
    from: &str,
    sub_id: u32,
    (start, origins, resume): (StartPosition, bool, wire::ResumeVector<'_>),
) {
    let frame = Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Reliable,
        start,
        channel: "news",
        group: None,
        origins,
        resume,
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
            origin,
            ..
        } => {
            let from = match origin {
                None => String::new(),
                Some(o) => match o.source {
                    wire::Source::Relay(id) => format!(" [relay {id:x}#{}]", o.position),
                    wire::Source::Session(id) => format!(" [session {id:x}#{}]", o.position),
                },
            };
            format!(
                "deliver {sub_id} @{offset} {}{from}",
                String::from_utf8_lossy(payload)
            )
        }
        Frame::Subscribed {
            sub_id,
            first_offset,
            next_offset,
            lease_ms,
        } => {
            format!("subscribed {sub_id} first={first_offset} next={next_offset} lease={lease_ms}")
        }
        Frame::Matched {
            sub_id,
            channel_sub_id,
            first_offset,
            next_offset,
            channel,
        } => format!(
            "matched {sub_id} {channel} as {channel_sub_id} first={first_offset} next={next_offset}"
        ),
        Frame::Error { code, .. } => format!("error {}", code.name()),
        Frame::Pong { nonce, .. } => format!("pong {nonce}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn publish_fans_out_to_every_subscriber_with_dense_offsets() {
    let (mut r, _dir) = relay();
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
    let (mut r, _dir) = relay();
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
    let (mut r, _dir) = relay();
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

fn subscribe_from(relay: &mut Relay, now: Now, from: &str, sub_id: u32, start: StartPosition) {
    let frame = Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start,
        channel: "news",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(relay, now, from, &[frame]);
}

/// Runs every due timer until the relay has nothing left to do before `until`.
fn run_timers(relay: &mut Relay, mut now: Now, until: Now) -> Now {
    while let Some(at) = relay.poll_timeout() {
        if at > until.instant {
            break;
        }
        now = now.after(at.saturating_duration_since(now.instant));
        relay.handle_timeout(now);
    }
    now
}

fn delivered_offsets(frames: &[String]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| f.strip_prefix("deliver "))
        .map(|f| f.split(['@', ' ']).nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn earliest_replays_stored_messages_then_continues_live() {
    let (mut r, _dir) = relay();
    let t = start();
    publish(&mut r, t, "news", b"0");
    publish(&mut r, t, "news", b"1");
    subscribe_from(&mut r, t, ALICE, 4, StartPosition::Earliest);
    // Live messages published while it replays are read from the log later.
    publish(&mut r, t, "news", b"2");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 4 first=0 next=2 lease=30000"]
    );
    let t = run_timers(&mut r, t, t.after(Duration::from_millis(5)));
    publish(&mut r, t, "news", b"3");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        frames,
        [
            "deliver 4 @0 0",
            "deliver 4 @1 1",
            "deliver 4 @2 2",
            "deliver 4 @3 3"
        ]
    );
    assert_eq!(r.counters().messages_replayed, 3);
    assert_eq!(r.counters().messages_delivered, 1);
    assert_eq!(
        r.poll_timeout(),
        Some(t.instant + Duration::from_secs(30)),
        "replay done"
    );
}

#[test]
fn replay_is_paced_by_the_budget_and_stays_in_order() {
    // 1000 bytes/s is 1 byte per 1 ms tick: one message per tick.
    let (mut r, _dir) = relay_with(|c| c.replay_rate = 1000);
    let t = start();
    for i in 0..10 {
        publish(&mut r, t, "news", format!("{i}").as_bytes());
    }
    subscribe_from(&mut r, t, ALICE, 1, StartPosition::Offset(3));
    Sent::collect(&mut r);
    let mut offsets = Vec::new();
    let mut now = t;
    for tick in 0..7 {
        let at = r.poll_timeout().unwrap();
        assert_eq!(
            at,
            t.instant + Duration::from_millis(tick),
            "one tick per ms"
        );
        now = now.after(at.saturating_duration_since(now.instant));
        r.handle_timeout(now);
        let got = delivered_offsets(&Sent::collect(&mut r).frames_to(ALICE));
        assert_eq!(got.len(), 1, "tick {tick}: {got:?}");
        offsets.extend(got);
        publish(&mut r, now, "news", b"live");
    }
    assert_eq!(offsets, [3, 4, 5, 6, 7, 8, 9]);
    // Meanwhile 7 more were published; it keeps reading until it catches up.
    let now = run_timers(&mut r, now, now.after(Duration::from_millis(20)));
    let rest = delivered_offsets(&Sent::collect(&mut r).frames_to(ALICE));
    assert_eq!(rest, (10..17).collect::<Vec<_>>());
    publish(&mut r, now, "news", b"live");
    assert_eq!(
        delivered_offsets(&Sent::collect(&mut r).frames_to(ALICE)),
        [17]
    );
}

#[test]
fn offsets_continue_after_the_relay_reopens_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    let t = start();
    {
        let mut r = Relay::open(&config, t).unwrap();
        for p in ["a", "b", "c"] {
            publish(&mut r, t, "news", p.as_bytes());
        }
    }
    let mut r = Relay::open(&config, t).unwrap();
    assert_eq!(r.next_offset("news"), Some(3));
    subscribe_from(&mut r, t, ALICE, 1, StartPosition::Offset(1));
    publish(&mut r, t, "news", b"d");
    let t = run_timers(&mut r, t, t.after(Duration::from_millis(5)));
    let _ = t;
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        frames,
        [
            "subscribed 1 first=1 next=3 lease=30000",
            "deliver 1 @1 b",
            "deliver 1 @2 c",
            "deliver 1 @3 d"
        ]
    );
}

#[test]
fn a_start_before_retention_begins_at_the_first_kept_offset() {
    let (mut r, _dir) = relay_with(|c| {
        c.log.segment_size = 4096;
        c.log.retain_bytes = Some(2 * 4096);
        c.max_message_size = 1000;
    });
    let t = start();
    // 40-byte records, 101 to a 4 KiB segment: 400 fill four segments.
    for i in 0..400 {
        publish(&mut r, t, "news", format!("message {i:04}").as_bytes());
    }
    let t = run_timers(&mut r, t, t.after(Duration::from_secs(2)));
    assert!(r.counters().segments_deleted > 0);
    subscribe_from(&mut r, t, ALICE, 1, StartPosition::Offset(0));
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    let first: u64 = frames[0]
        .split("first=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first > 0, "{frames:?}");
    assert_eq!(r.counters().replay_gaps, 1);
    run_timers(&mut r, t, t.after(Duration::from_millis(50)));
    let offsets = delivered_offsets(&Sent::collect(&mut r).frames_to(ALICE));
    assert_eq!(offsets, (first..400).collect::<Vec<_>>());
}

#[test]
fn a_second_relay_cannot_open_the_same_data_directory() {
    let (r, dir) = relay();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    assert!(matches!(
        Relay::open(&config, start()),
        Err(OpenError::Log(LogError::Locked(_)))
    ));
    drop(r);
    assert!(
        Relay::open(&config, start()).is_ok(),
        "free again once the first is gone"
    );
}

#[test]
fn fsync_always_syncs_before_anything_is_sent() {
    let (mut r, _dir) = relay_with(|c| c.log.fsync = crate::log::FsyncMode::Always);
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    publish(&mut r, t, "news", b"x");
    publish(&mut r, t, "news", b"y");
    assert_eq!(r.counters().log_syncs, 0);
    let sent = Sent::collect(&mut r);
    assert_eq!(
        r.counters().log_syncs,
        1,
        "one sync for the batch, before sending"
    );
    assert_eq!(sent.frames_to(ALICE).len(), 2);
}

#[test]
fn fsync_interval_hands_syncs_to_the_driver_at_the_interval() {
    let every = Duration::from_millis(50);
    let (mut r, _dir) = relay_with(|c| c.log.fsync = crate::log::FsyncMode::Interval(every));
    let t = start();
    publish(&mut r, t, "news", b"x");
    Sent::collect(&mut r);
    assert!(r.poll_sync().is_none(), "nothing on the send path");
    assert_eq!(r.poll_timeout(), Some(t.instant + every));
    r.handle_timeout(t.after(every - Duration::from_millis(1)));
    assert!(r.poll_sync().is_none());
    r.handle_timeout(t.after(every));
    let request = r.poll_sync().expect("a sync is due");
    assert!(r.poll_sync().is_none());
    assert_eq!(
        r.poll_timeout(),
        None,
        "nothing dirty until the next append"
    );
    let durable = request.job.run().unwrap();
    assert_eq!(durable, 1, "offset 0 is on disk");
    r.handle_sync_done(request.channel, Ok(durable));
    assert_eq!(r.counters().log_syncs, 1);
}

#[test]
fn a_failed_sync_stops_the_channel() {
    let every = Duration::from_millis(50);
    let (mut r, _dir) = relay_with(|c| c.log.fsync = crate::log::FsyncMode::Interval(every));
    let t = start();
    publish(&mut r, t, "news", b"x");
    publish(&mut r, t, "other", b"x");
    r.handle_timeout(t.after(every));
    let request = r.poll_sync().unwrap();
    let failure = LogError::Io {
        path: "test".into(),
        source: std::io::Error::from_raw_os_error(5), // EIO
    };
    r.handle_sync_done(request.channel, Err(failure));
    Sent::collect(&mut r);
    publish(&mut r, t, "news", b"refused");
    publish(&mut r, t, "other", b"still fine");
    assert_eq!(
        Sent::collect(&mut r).frames_to(PUBLISHER),
        ["error unavailable"]
    );
    assert_eq!(r.counters().dropped_unavailable, 1);
    assert_eq!(r.counters().log_errors, 1);
    assert_eq!(r.failed_channels().len(), 1);
    assert_eq!(r.next_offset("other"), Some(2));
}

#[test]
fn a_start_in_the_future_skips_earlier_messages() {
    let (mut r, _dir) = relay();
    let t = start();
    let frame = Frame::Subscribe {
        sub_id: 4,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Offset(2),
        channel: "news",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
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
    let (mut r, _dir) = relay();
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
    let (mut r, _dir) = relay();
    let t = start();
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 5 }]);
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(ALICE), ["error unknown-subscription"]);
    assert_eq!(r.counters().dropped_unknown_subscription, 1);
}

#[test]
fn lease_lapses_exactly_at_its_length_after_the_last_packet() {
    let lease = Duration::from_millis(500);
    let (mut r, _dir) = relay_with(|c| c.lease = lease);
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    assert_eq!(r.poll_timeout(), Some(t.instant + lease));

    // Any packet refreshes the lease: a ping at +300 ms moves expiry to +800 ms.
    let t300 = t.after(Duration::from_millis(300));
    send(
        &mut r,
        t300,
        ALICE,
        &[Frame::Ping {
            nonce: 1,
            load: false,
        }],
    );
    r.handle_timeout(t.after(lease));
    assert_eq!(
        r.subscription_count(),
        1,
        "refreshed lease must not lapse at +500 ms"
    );
    assert_eq!(r.poll_timeout(), Some(t300.instant + lease));

    r.handle_timeout(t300.after(lease - Duration::from_millis(1)));
    assert_eq!(r.subscription_count(), 1, "alive 1 ms before expiry");
    r.handle_timeout(t300.after(lease));
    assert_eq!(r.subscription_count(), 0, "gone at expiry");
    assert_eq!(r.counters().subscriptions_expired, 1);
    assert_eq!(r.poll_timeout(), None, "nothing left to wake up for");

    Sent::collect(&mut r);
    publish(&mut r, t300.after(lease), "news", b"late");
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

#[test]
fn resubscribing_is_idempotent_and_keeps_the_lease_alive() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    subscribe(&mut r, t.after(Duration::from_secs(20)), ALICE, 1, "news");
    assert_eq!(r.subscription_count(), 1);
    r.handle_timeout(t.after(Duration::from_secs(45)));
    assert_eq!(r.subscription_count(), 1);
    publish(&mut r, t, "news", b"x");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        frames.iter().filter(|f| f.starts_with("deliver")).count(),
        1
    );
}

fn rpublish(relay: &mut Relay, now: Now, session: u64, seq: u64, payload: &[u8]) {
    let frame = Frame::ReliablePublish {
        session,
        seq,
        acked_below: 0,
        more: false,
        channel: "news",
        payload,
    };
    send(relay, now, PUBLISHER, &[frame]);
}

/// The publish acknowledgements the relay sent: (cumulative, ranges).
fn publish_acks(sent: &Sent) -> Vec<(u64, Vec<(u64, u64)>)> {
    let mut out = Vec::new();
    for t in &sent.datagrams {
        for f in wire::decode_datagram(&t.payload).unwrap().flatten() {
            if let Frame::Ack {
                kind: wire::AckKind::Publish,
                cumulative,
                ranges,
                ..
            } = f
            {
                out.push((cumulative, wire::ack_ranges(ranges).collect()));
            }
        }
    }
    out
}

#[test]
fn reliable_publish_appends_each_message_once_in_session_order() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    rpublish(&mut r, t, 7, 1, b"second");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        publish_acks(&sent),
        [(0, vec![(1, 2)])],
        "early: held, not appended"
    );
    assert!(sent.frames_to(ALICE).is_empty());
    rpublish(&mut r, t, 7, 0, b"first");
    rpublish(&mut r, t, 7, 1, b"second"); // a retransmission
    let sent = Sent::collect(&mut r);
    assert_eq!(publish_acks(&sent), [(2, vec![]), (2, vec![])]);
    assert_eq!(
        sent.frames_to(ALICE),
        ["deliver 1 @0 first", "deliver 1 @1 second"]
    );
    assert_eq!(r.counters().duplicates_dropped, 1);
    assert_eq!(r.next_offset("news"), Some(2));
}

#[test]
fn reliable_publish_under_interval_fsync_is_acked_after_the_sync() {
    let every = Duration::from_millis(10);
    let (mut r, _dir) = relay_with(|c| c.log.fsync = crate::log::FsyncMode::Interval(every));
    let t = start();
    rpublish(&mut r, t, 7, 0, b"a");
    let sent = Sent::collect(&mut r);
    assert_eq!(
        publish_acks(&sent),
        [(0, vec![(0, 1)])],
        "stored, not yet durable"
    );
    r.handle_timeout(t.after(every));
    let request = r.poll_sync().unwrap();
    let durable = request.job.run().unwrap();
    r.handle_sync_done(request.channel, Ok(durable));
    assert_eq!(publish_acks(&Sent::collect(&mut r)), [(1, vec![])]);
}

#[test]
fn interval_fsync_group_commits_what_a_reliable_publisher_waits_for() {
    // An interval this test never reaches: every sync here is a group commit.
    let every = Duration::from_secs(3600);
    let (mut r, _dir) = relay_with(|c| c.log.fsync = crate::log::FsyncMode::Interval(every));
    let t = start();
    rpublish(&mut r, t, 7, 0, b"a");
    Sent::collect(&mut r);
    let first = r
        .poll_sync()
        .expect("an awaited record is synced at once, not at the interval");
    assert!(r.poll_sync().is_none(), "one sync for what is dirty");
    rpublish(&mut r, t, 7, 1, b"b");
    rpublish(&mut r, t, 7, 2, b"c");
    assert_eq!(
        publish_acks(&Sent::collect(&mut r)),
        [(0, vec![(0, 2)]), (0, vec![(0, 3)])]
    );
    assert!(
        r.poll_sync().is_none(),
        "one sync of a channel at a time: the next waits for this one"
    );
    let durable = first.job.run().unwrap();
    assert_eq!(durable, 1);
    r.handle_sync_done(first.channel, Ok(durable));
    assert_eq!(
        publish_acks(&Sent::collect(&mut r)),
        [(1, vec![(1, 3)])],
        "acknowledged as far as that sync reached"
    );
    let second = r
        .poll_sync()
        .expect("the next sync covers what arrived while the first ran");
    assert!(r.poll_sync().is_none());
    let durable = second.job.run().unwrap();
    assert_eq!(durable, 3, "both later records in one sync");
    r.handle_sync_done(second.channel, Ok(durable));
    assert_eq!(publish_acks(&Sent::collect(&mut r)), [(3, vec![])]);
    // A plain publish is not waited for: it waits for the interval.
    publish(&mut r, t, "news", b"plain");
    Sent::collect(&mut r);
    assert!(r.poll_sync().is_none(), "nothing waits for a plain publish");
    assert_eq!(r.counters().log_syncs, 2);
}

#[test]
fn reliable_subscription_retransmits_from_the_log_until_acknowledged() {
    let (mut r, _dir) = relay();
    let t = start();
    for p in ["a", "b", "c"] {
        publish(&mut r, t, "news", p.as_bytes());
    }
    subscribe_reliable(&mut r, t, ALICE, 5, StartPosition::Offset(1));
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        [
            "subscribed 5 first=1 next=3 lease=30000",
            "deliver 5 @1 b",
            "deliver 5 @2 c"
        ]
    );
    // Offset 2 is acknowledged, 1 is not: 1 comes again, re-read from the log.
    let ranges = wire::encode_ack_ranges(&[(2, 3)]);
    let ack = Frame::Ack {
        kind: wire::AckKind::Subscription,
        id: 5,
        cumulative: 1,
        window: 100,
        ranges: &ranges,
    };
    send(&mut r, t.after(Duration::from_millis(10)), ALICE, &[ack]);
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
    // Up to the first timeout (the second, backed off, would forget the
    // selective acknowledgement in case the subscriber reneged).
    let timeouts = |r: &Relay| {
        r.channels
            .iter()
            .flat_map(|c| &c.subscribers)
            .filter_map(|s| s.arq.as_ref())
            .map(|a| a.stats().timeouts)
            .sum::<u64>()
    };
    let mut t2 = t;
    while timeouts(&r) == 0 {
        let at = r.poll_timeout().expect("the subscription's timers");
        t2 = Now { instant: at, ..t };
        r.handle_timeout(t2);
    }
    let again = Sent::collect(&mut r).frames_to(ALICE);
    assert!(again.contains(&"deliver 5 @1 b".to_string()), "{again:?}");
    assert!(
        !again.iter().any(|f| f.contains("@2")),
        "2 was acknowledged: {again:?}"
    );
    assert!(r.counters().reliable_retransmits >= 1);
    // Once everything is acknowledged, new messages go out as published.
    let ack = Frame::Ack {
        kind: wire::AckKind::Subscription,
        id: 5,
        cumulative: 3,
        window: 100,
        ranges: &[],
    };
    send(&mut r, t2, ALICE, &[ack]);
    publish(&mut r, t2, "news", b"d");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert!(frames.contains(&"deliver 5 @3 d".to_string()), "{frames:?}");
}

#[test]
fn acknowledgements_do_not_pile_up_timer_entries() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe_reliable(&mut r, t, ALICE, 5, StartPosition::Latest);
    // A thousand messages, each acknowledged: each acknowledgement moves
    // the subscription's deadline later.
    for i in 0..1000u64 {
        let now = t.after(Duration::from_micros(100 * i));
        publish(&mut r, now, "news", b"m");
        let ack = Frame::Ack {
            kind: wire::AckKind::Subscription,
            id: 5,
            cumulative: i + 1,
            window: 100,
            ranges: &[],
        };
        send(&mut r, now, ALICE, &[ack]);
    }
    assert!(
        r.subscriptions.timer_entries() <= 2,
        "{} timer entries for one subscription",
        r.subscriptions.timer_entries()
    );
    // The timer still works: an unacknowledged message is sent again, not
    // a millisecond before the subscription's deadline, and at it.
    let now = t.after(Duration::from_millis(100));
    publish(&mut r, now, "news", b"last");
    Sent::collect(&mut r);
    let deadline = r
        .channels
        .iter()
        .flat_map(|c| &c.subscribers)
        .find_map(|s| s.arq.as_ref()?.poll_timeout())
        .expect("the subscription's timer");
    // The relay may wake earlier (at a deadline an acknowledgement moved
    // later): then it sends nothing.
    let just_before = now.after(deadline - now.instant - Duration::from_millis(1));
    run_timers(&mut r, now, just_before);
    assert!(
        Sent::collect(&mut r).frames_to(ALICE).is_empty(),
        "nothing 1 ms early"
    );
    assert_eq!(r.poll_timeout(), Some(deadline));
    r.handle_timeout(now.after(deadline - now.instant));
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["deliver 5 @1000 last"]
    );
}

#[test]
fn a_silent_reliable_subscriber_is_declared_lost() {
    let (mut r, _dir) = relay_with(|c| c.lease = Duration::from_secs(3600));
    let t = start();
    publish(&mut r, t, "news", b"a");
    subscribe_reliable(&mut r, t, ALICE, 5, StartPosition::Earliest);
    run_timers(&mut r, t, t.after(Duration::from_secs(120)));
    assert_eq!(r.subscription_count(), 0);
    assert_eq!(r.counters().subscribers_lost, 1);
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(frames.last().unwrap(), "error unavailable");
    let later = t.after(Duration::from_secs(120));
    run_timers(&mut r, later, later.after(Duration::from_secs(60)));
    assert!(
        Sent::collect(&mut r).datagrams.is_empty(),
        "nothing more is sent"
    );
}

#[test]
fn ping_is_answered_with_its_nonce() {
    let (mut r, _dir) = relay();
    send(
        &mut r,
        start(),
        ALICE,
        &[Frame::Ping {
            nonce: 77,
            load: false,
        }],
    );
    assert_eq!(Sent::collect(&mut r).frames_to(ALICE), ["pong 77"]);
}

#[test]
fn stats_reply_lists_the_counters() {
    let (mut r, _dir) = relay();
    let t = start();
    publish(&mut r, t, "news", b"x");
    let request = Frame::StatsRequest {
        cursor: 0,
        padding: 4000,
    };
    send(&mut r, t, ALICE, &[request]);
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.datagrams.len(), 1);
    let payload = &sent.datagrams[0].payload;
    assert!(payload.len() <= wire::HEADER_LEN + request.encoded_len());
    let frame = wire::decode_datagram(payload)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let Frame::Stats {
        cursor: 0,
        next: None,
        entries,
    } = frame
    else {
        panic!("expected all stats on one page, got {frame:?}");
    };
    let stats: std::collections::HashMap<&str, u64> = entries.iter().collect();
    assert_eq!(stats["messages_published"], 1);
    assert_eq!(stats["channels"], 1);
    assert_eq!(stats["datagrams_received"], 2);
}

#[test]
fn bad_input_is_counted_and_answered_only_when_it_speaks_the_protocol() {
    let (mut r, _dir) = relay();
    let t = start();
    r.handle_datagram(t, addr(ALICE), b"hello, not a relay datagram");
    assert_eq!(r.counters().dropped_not_protocol, 1);
    assert!(
        Sent::collect(&mut r).datagrams.is_empty(),
        "no reply to foreign traffic"
    );

    // Too short to pay for an ERROR: counted, not answered.
    r.handle_datagram(t, addr(ALICE), b"UR\x02\x00\0\0\0\0");
    assert_eq!(r.counters().dropped_bad_version, 1);
    assert!(Sent::collect(&mut r).datagrams.is_empty());
    let mut bad_version = b"UR\x02\x00\0\0\0\0".to_vec();
    bad_version.resize(8 + 60, 0);
    r.handle_datagram(t, addr(ALICE), &bad_version);
    assert_eq!(r.counters().dropped_bad_version, 2);
    let mut malformed = proven(&mut r, t, ALICE, &[]);
    malformed.extend_from_slice(b"\x01\x00\x05\x00\x00");
    r.handle_datagram(t, addr(ALICE), &malformed);
    assert_eq!(r.counters().dropped_malformed, 1);
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["error unsupported-version", "error malformed"]
    );
    assert!(
        sent.datagrams[0].payload.len() <= bad_version.len(),
        "an unproven address gets no more than it sent"
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
    let (mut r, _dir) = relay();
    let t = start();
    let mut dgram = proven(
        &mut r,
        t,
        ALICE,
        &[Frame::Ping {
            nonce: 1,
            load: false,
        }],
    );
    dgram.extend_from_slice(&[0x7F, 0, 0, 0]);
    r.handle_datagram(t, addr(ALICE), &dgram);
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["pong 1", "error malformed"]
    );
}

#[test]
fn error_replies_are_rate_limited() {
    let (mut r, _dir) = relay_with(|c| c.error_replies_per_sec = 10);
    let t = start();
    // Padded: room for the answer.
    let mut bad_version = b"UR\x09\x00\0\0\0\0".to_vec();
    bad_version.resize(8 + 60, 0);
    for _ in 0..25 {
        r.handle_datagram(t, addr(ALICE), &bad_version);
    }
    assert_eq!(r.counters().errors_sent, 10);
    assert_eq!(r.counters().errors_suppressed, 15);
    // 100 ms later, one more token (10 per second).
    let later = t.after(Duration::from_millis(100));
    r.handle_datagram(later, addr(ALICE), &bad_version);
    r.handle_datagram(later, addr(ALICE), &bad_version);
    assert_eq!(r.counters().errors_sent, 11);
    assert_eq!(r.counters().dropped_bad_version, 27);
}

#[test]
fn stats_pages_share_the_reply_budget_and_unpadded_requests_get_none() {
    let (mut r, _dir) = relay_with(|c| c.error_replies_per_sec = 2);
    let t = start();
    let padded = Frame::StatsRequest {
        cursor: 0,
        padding: 1384,
    };
    for _ in 0..3 {
        send(&mut r, t, ALICE, &[padded]);
    }
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.datagrams.len(), 2, "two tokens, two pages");
    assert_eq!(r.counters().errors_suppressed, 1);
    // Unpadded, as earlier builds asked: no room for any answer, no token.
    send(
        &mut r,
        t.after(Duration::from_secs(1)),
        ALICE,
        &[Frame::StatsRequest {
            cursor: 0,
            padding: 0,
        }],
    );
    assert!(Sent::collect(&mut r).datagrams.is_empty());
    assert_eq!(r.counters().dropped_unsupported, 1);
    send(&mut r, t.after(Duration::from_secs(1)), ALICE, &[padded]);
    assert_eq!(Sent::collect(&mut r).datagrams.len(), 1);
}

#[test]
fn oversized_messages_are_refused() {
    let (mut r, _dir) = relay_with(|c| c.max_message_size = 10);
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
    let (mut r, _dir) = relay_with(|c| {
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
    let (mut r, _dir) = relay_with(|c| {
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
    let (mut r, _dir) = relay_with(|c| c.datagram_size = 200);
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

#[test]
fn unreliable_pieces_make_one_message_and_a_missing_piece_expires() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<&[u8]> = big.chunks(1300).collect();
    let piece = |msg_id, i: usize| Frame::Fragment {
        msg_id,
        index: i as u16,
        count: chunks.len() as u16,
        channel: "news",
        chunk: chunks[i],
    };
    for i in [2, 0, 3, 1] {
        send(&mut r, t, PUBLISHER, &[piece(9, i)]);
    }
    assert_eq!(
        r.next_offset("news"),
        Some(1),
        "all pieces in: one message stored"
    );
    // It fits one datagram on the way out, so it goes whole.
    let sent = Sent::collect(&mut r);
    let delivered: Vec<Vec<u8>> = sent
        .datagrams
        .iter()
        .filter(|d| d.destination == addr(ALICE))
        .flat_map(|d| wire::decode_datagram(&d.payload).unwrap().flatten())
        .filter_map(|f| match f {
            Frame::Deliver { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0] == big, "the message arrives as it was sent");

    // A message missing a piece is dropped after the timeout, and counted.
    send(&mut r, t, PUBLISHER, &[piece(10, 0)]);
    assert_eq!(r.poll_timeout(), Some(t.instant + FRAGMENT_TIMEOUT));
    r.handle_timeout(t.after(FRAGMENT_TIMEOUT));
    assert_eq!(r.counters().fragments_expired, 1);
    send(
        &mut r,
        t.after(FRAGMENT_TIMEOUT),
        PUBLISHER,
        &[piece(10, 1)],
    );
    assert_eq!(
        r.next_offset("news"),
        Some(1),
        "nothing stored from a broken message"
    );
}

#[test]
fn reliable_pieces_are_stored_as_one_message_and_acknowledged_only_then() {
    let (mut r, _dir) = relay();
    let t = start();
    let piece = |seq, more, payload: &'static [u8]| Frame::ReliablePublish {
        session: 3,
        seq,
        acked_below: 0,
        more,
        channel: "news",
        payload,
    };
    send(&mut r, t, PUBLISHER, &[piece(0, true, b"hello, ")]);
    let acks = publish_acks(&Sent::collect(&mut r));
    assert_eq!(
        acks,
        [(0, vec![(0, 1)])],
        "held, reported received, not acknowledged"
    );
    assert_eq!(r.next_offset("news"), Some(0), "nothing stored yet");
    send(&mut r, t, PUBLISHER, &[piece(1, false, b"world")]);
    assert_eq!(publish_acks(&Sent::collect(&mut r)), [(2, vec![])]);
    assert_eq!(r.next_offset("news"), Some(1));
    subscribe_from(&mut r, t, ALICE, 1, StartPosition::Earliest);
    run_timers(&mut r, t, t.after(Duration::from_millis(5)));
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert!(
        frames.contains(&"deliver 1 @0 hello, world".to_string()),
        "{frames:?}"
    );
}

#[test]
fn messages_larger_than_a_datagram_reach_subscribers_in_pieces() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    Sent::collect(&mut r);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let chunks: Vec<&[u8]> = big.chunks(60_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let frame = Frame::Fragment {
            msg_id: 1,
            index: i as u16,
            count: chunks.len() as u16,
            channel: "news",
            chunk,
        };
        send(&mut r, t, PUBLISHER, &[frame]);
    }
    let sent = Sent::collect(&mut r);
    let mut pieces = crate::client::Reassembler::default();
    let mut whole = None;
    let mut count = 0;
    for d in sent
        .datagrams
        .iter()
        .filter(|d| d.destination == addr(ALICE))
    {
        assert!(d.payload.len() <= 1400, "each piece fits the packing limit");
        for f in wire::decode_datagram(&d.payload).unwrap().flatten() {
            if let Frame::DeliverFragment {
                offset,
                total,
                at,
                chunk,
                ..
            } = f
            {
                count += 1;
                whole = whole.or(pieces.add(offset, total, at, chunk));
            }
        }
    }
    assert!(count > 100, "{count} pieces");
    assert!(
        whole.as_deref() == Some(&big[..]),
        "put back together exactly"
    );
}

/// The DELIVER_FRAGMENT pieces sent to `to`, as (byte position, length).
fn pieces_to(sent: &Sent, to: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for d in sent.datagrams.iter().filter(|d| d.destination == addr(to)) {
        for f in wire::decode_datagram(&d.payload).unwrap().flatten() {
            if let Frame::DeliverFragment { at, chunk, .. } = f {
                out.push((u64::from(at), chunk.len() as u64));
            }
        }
    }
    out
}

#[test]
fn a_reliable_subscriber_gets_again_only_the_pieces_it_lacks() {
    let (mut r, _dir) = relay();
    let t = start();
    // Larger than a datagram: it travels in pieces.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in big.chunks(50_000).enumerate() {
        let frame = Frame::Fragment {
            msg_id: 1,
            index: i as u16,
            count: 2,
            channel: "news",
            chunk,
        };
        send(&mut r, t, PUBLISHER, &[frame]);
    }
    subscribe_reliable(&mut r, t, ALICE, 5, StartPosition::Earliest);
    let first = pieces_to(&Sent::collect(&mut r), ALICE);
    assert!(first.len() >= 8, "{first:?}");
    // Pieces 2 and 5 were lost; the subscriber says what it holds.
    let have: Vec<(u64, u64)> = [(0, 2), (3, 5), (6, first.len())]
        .iter()
        .map(|&(a, b)| (first[a].0, first[b - 1].0 + first[b - 1].1))
        .collect();
    let ranges = wire::encode_ack_ranges(&have);
    let ack = Frame::Ack {
        kind: wire::AckKind::Pieces,
        id: 5,
        cumulative: 0,
        window: 0,
        ranges: &ranges,
    };
    send(&mut r, t.after(Duration::from_millis(5)), ALICE, &[ack]);
    run_timers(&mut r, t, t.after(Duration::from_millis(500)));
    let again = pieces_to(&Sent::collect(&mut r), ALICE);
    assert!(!again.is_empty(), "the message went out again");
    assert!(
        again.iter().all(|p| *p == first[2] || *p == first[5]),
        "only the lost pieces: {again:?} of {first:?}"
    );
    assert!(r.counters().pieces_not_resent >= first.len() as u64 - 2);
    // A forged pieces ACK for an offset not in flight is ignored.
    let ack = Frame::Ack {
        kind: wire::AckKind::Pieces,
        id: 5,
        cumulative: 99,
        window: 0,
        ranges: &ranges,
    };
    send(&mut r, t.after(Duration::from_millis(600)), ALICE, &[ack]);
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

#[test]
fn out_of_order_reliable_messages_are_held_within_a_budget() {
    let (mut r, _dir) = relay();
    let t = start();
    let payload = vec![7u8; 60_000];
    let frame = |seq| Frame::ReliablePublish {
        session: 5,
        seq,
        acked_below: 0,
        more: false,
        channel: "news",
        payload: &payload,
    };
    // Message 0 is missing: everything after it waits, up to the budget.
    let fits = (RelayConfig::default().session_memory / held_cost(payload.len())) as u64;
    for seq in 1..=fits + 10 {
        send(&mut r, t, PUBLISHER, &[frame(seq)]);
    }
    assert_eq!(
        r.counters().dropped_limit,
        10,
        "the ones past the budget are not taken"
    );
    assert!(r.publishing.memory.held <= r.publishing.memory.budget);
    Sent::collect(&mut r);
    send(&mut r, t, PUBLISHER, &[frame(0)]);
    assert_eq!(
        r.next_offset("news"),
        Some(fits + 1),
        "0 and all it held are stored, in order"
    );
    assert_eq!(r.publishing.memory.held, 0, "and the budget is free again");
}

#[test]
fn a_fragment_bomb_is_held_to_its_budget() {
    let (mut r, _dir) = relay_with(|c| c.reassembly_memory = 2 << 20);
    let t = start();
    // Each frame names a new message of 65,535 one-byte pieces: the piece
    // table alone would be 1 MiB a frame if it were not charged.
    for msg_id in 0..1000 {
        let frame = Frame::Fragment {
            msg_id,
            index: 0,
            count: u16::MAX,
            channel: "news",
            chunk: b"x",
        };
        send(&mut r, t, PUBLISHER, &[frame]);
        assert!(
            r.reassembly.charged() <= r.reassembly.budget(),
            "charged {} of {}",
            r.reassembly.charged(),
            r.reassembly.budget()
        );
    }
    let table = reassembly_cost("news", u16::MAX) + piece_cost(1);
    let held = (r.reassembly.budget() / table) as u64;
    assert_eq!(
        r.reassembly.len() as u64,
        held,
        "as many as the budget holds"
    );
    assert_eq!(r.counters().dropped_limit, 1000 - held, "the rest refused");
    assert_eq!(
        r.channel_count(),
        0,
        "no channel slot for unfinished messages"
    );
    // They expire, and the budget is whole again for honest senders.
    r.handle_timeout(t.after(FRAGMENT_TIMEOUT));
    assert_eq!(r.reassembly.charged(), 0);
    assert_eq!(r.counters().fragments_expired, held);
}

#[test]
fn an_empty_fragment_does_not_decode() {
    let frame = Frame::Fragment {
        msg_id: 1,
        index: 0,
        count: 2,
        channel: "news",
        chunk: b"",
    };
    let datagram = encode_datagram(&[frame]).unwrap();
    let (mut r, _dir) = relay();
    r.handle_datagram(start(), addr(PUBLISHER), &datagram);
    assert_eq!(r.counters().dropped_malformed, 1);
    assert!(r.reassembly.is_empty());
}

#[test]
fn a_channel_only_subscribed_to_is_forgotten_with_its_last_subscriber() {
    let (mut r, _dir) = relay_with(|c| {
        c.max_channels = 3;
        c.lease = Duration::from_secs(1);
    });
    let t = start();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        subscribe(&mut r, t, ALICE, i as u32, name);
    }
    assert_eq!(r.channel_count(), 3, "the fourth was refused");
    assert_eq!(r.counters().dropped_limit, 1);
    // An unsubscribe frees one slot at once; the lease frees the rest.
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 0 }]);
    assert_eq!(r.channel_count(), 2);
    r.handle_timeout(t.after(Duration::from_secs(1)));
    assert_eq!(r.channel_count(), 0);
    assert_eq!(r.counters().channels_forgotten, 3);
    // Real publishers get every slot back, and a reused slot is clean.
    Sent::collect(&mut r);
    let later = t.after(Duration::from_secs(2));
    for name in ["x", "y", "z"] {
        send(
            &mut r,
            later,
            PUBLISHER,
            &[Frame::Publish {
                channel: name,
                payload: name.as_bytes(),
            }],
        );
    }
    assert_eq!(r.channel_count(), 3);
    for name in ["x", "y", "z"] {
        assert_eq!(r.next_offset(name), Some(1), "{name} stored its message");
    }
    assert!(Sent::collect(&mut r).frames_to(PUBLISHER).is_empty());
}

#[test]
fn a_channel_held_by_a_reliable_session_keeps_its_slot() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    // Message 1 waits for message 0, naming "news" by its slot.
    let frame = |seq: u64, payload: &'static [u8]| Frame::ReliablePublish {
        session: 7,
        seq,
        acked_below: 0,
        more: false,
        channel: "news",
        payload,
    };
    send(&mut r, t, PUBLISHER, &[frame(1, b"second")]);
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    assert_eq!(r.channel_count(), 1, "the session still holds it");
    // Another channel must not take its slot meanwhile.
    publish(&mut r, t, "other", b"o");
    send(&mut r, t, PUBLISHER, &[frame(0, b"first")]);
    assert_eq!(r.next_offset("news"), Some(2));
    assert_eq!(r.next_offset("other"), Some(1));
}

#[test]
fn datagrams_from_the_relays_own_sockets_are_never_answered() {
    let (mut r, _dir) = relay();
    let own = addr("127.0.0.1:7070");
    r.set_own_addresses(
        vec![own, addr("0.0.0.0:5514")],
        vec!["10.0.0.7".parse().unwrap()],
    )
    .unwrap();
    let t = start();
    for from in [
        "127.0.0.1:7070",
        "127.0.0.5:5514",
        "10.0.0.7:5514",
        "[::ffff:127.0.0.1]:7070",
    ] {
        let frames = [
            Frame::Ping {
                nonce: 1,
                load: false,
            },
            Frame::Subscribe {
                sub_id: 1,
                mode: DeliveryMode::Unreliable,
                start: StartPosition::Latest,
                channel: "news",
                group: None,
                origins: false,
                resume: crate::wire::ResumeVector::EMPTY,
            },
        ];
        r.handle_datagram(t, addr(from), &encode_datagram(&frames).unwrap());
    }
    assert_eq!(r.counters().dropped_own_address, 4);
    assert_eq!(r.subscription_count(), 0);
    publish(&mut r, t, "news", b"m");
    assert!(
        Sent::collect(&mut r).datagrams.is_empty(),
        "nothing sent anywhere"
    );
    // Another port on those hosts is someone else.
    send(
        &mut r,
        t,
        "10.0.0.7:5515",
        &[Frame::Ping {
            nonce: 2,
            load: false,
        }],
    );
    assert_eq!(Sent::collect(&mut r).frames_to("10.0.0.7:5515"), ["pong 2"]);
}

#[test]
fn a_raw_egress_to_the_relays_own_socket_is_refused() {
    let (mut r, _dir) = relay_with(|c| c.raw_out = vec![("feed".into(), addr("127.0.0.1:5514"))]);
    let err = r
        .set_own_addresses(vec![addr("127.0.0.1:7070"), addr("127.0.0.1:5514")], vec![])
        .unwrap_err();
    assert_eq!(err.addr, addr("127.0.0.1:5514"));
}

#[test]
fn reliable_sessions_are_limited_across_all_clients() {
    let (mut r, _dir) = relay_with(|c| c.max_sessions = 2);
    let t = start();
    for (i, from) in ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"]
        .iter()
        .enumerate()
    {
        let frame = Frame::ReliablePublish {
            session: i as u64,
            seq: 0,
            acked_below: 0,
            more: false,
            channel: "news",
            payload: b"m",
        };
        send(&mut r, t, from, &[frame]);
    }
    assert_eq!(r.publishing.count, 2);
    assert_eq!(
        r.next_offset("news"),
        Some(2),
        "the third session was refused"
    );
    assert_eq!(
        Sent::collect(&mut r).frames_to("127.0.0.1:3003"),
        ["error limit-reached"]
    );
}

#[test]
fn pieces_of_an_incomplete_reliable_message_are_charged() {
    let (mut r, _dir) = relay_with(|c| {
        c.max_message_size = 4 << 20;
        c.session_memory = 1 << 20;
    });
    let t = start();
    let chunk = vec![1u8; 60_000];
    let piece = |seq| Frame::ReliablePublish {
        session: 1,
        seq,
        acked_below: 0,
        more: true,
        channel: "news",
        payload: &chunk,
    };
    // In order, but never finished: each piece stays held in `partial`.
    for seq in 0..30 {
        send(&mut r, t, PUBLISHER, &[piece(seq)]);
        assert!(r.publishing.memory.held <= r.publishing.memory.budget);
    }
    assert!(r.counters().dropped_limit > 0, "the budget refused pieces");
    assert_eq!(r.next_offset("news"), Some(0));
    send(&mut r, t, PUBLISHER, &[Frame::Unsubscribe { sub_id: 9 }]);
    r.handle_timeout(t.after(RelayConfig::default().lease));
    assert_eq!(r.publishing.memory.held, 0, "released with the session");
}

/// A reliable publish of `payload` as message `seq` of session 77.
fn reliable(seq: u64, payload: &[u8]) -> Frame<'_> {
    Frame::ReliablePublish {
        session: 77,
        seq,
        acked_below: 0,
        more: false,
        channel: "news",
        payload,
    }
}

#[test]
fn a_restarted_relay_does_not_store_a_retransmission_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    let t = start();
    let mut r = Relay::open(&config, t).unwrap();
    for seq in 0..3 {
        send(&mut r, t, PUBLISHER, &[reliable(seq, b"m")]);
    }
    // Killed before its acknowledgements left: nothing is synced or closed.
    drop(r);
    let mut r = Relay::open(&config, t).unwrap();
    // The publisher, which saw no acknowledgement, sends all three again,
    // then a fourth.
    for seq in 0..4 {
        send(&mut r, t, PUBLISHER, &[reliable(seq, b"m")]);
    }
    assert_eq!(r.next_offset("news"), Some(4), "three stored once, one new");
    assert_eq!(r.counters().duplicates_dropped, 3);
    let acks = Sent::collect(&mut r).frames_to(PUBLISHER);
    assert!(
        acks.last().unwrap().contains("cumulative: 4"),
        "all four acknowledged: {acks:?}"
    );
}

#[test]
fn sessions_are_remembered_across_segment_rolls_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    config.log.segment_size = 64 << 10;
    let t = start();
    let mut r = Relay::open(&config, t).unwrap();
    let payload = vec![5u8; 1000];
    send(&mut r, t, PUBLISHER, &[reliable(0, &payload)]);
    // Another client fills several segments after it.
    for _ in 0..300 {
        publish(&mut r, t, "news", &payload);
    }
    drop(r);
    let mut r = Relay::open(&config, t).unwrap();
    send(&mut r, t, PUBLISHER, &[reliable(0, &payload)]);
    assert_eq!(r.next_offset("news"), Some(301), "not stored again");
    // And without the snapshot, the marks are read from every segment.
    drop(r);
    let channel_dir = std::fs::read_dir(dir.path().join("channels"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(channel_dir.join(crate::log::sessions::SNAPSHOT_FILE)).unwrap();
    let mut r = Relay::open(&config, t).unwrap();
    send(&mut r, t, PUBLISHER, &[reliable(0, &payload)]);
    assert_eq!(r.next_offset("news"), Some(301));
}

#[test]
fn a_message_that_cannot_be_stored_is_never_acknowledged() {
    let (mut r, _dir) = relay_with(|c| c.max_message_size = 10);
    let t = start();
    send(&mut r, t, PUBLISHER, &[reliable(0, b"ok")]);
    let piece = |seq, more, payload| Frame::ReliablePublish {
        session: 77,
        seq,
        acked_below: 0,
        more,
        channel: "news",
        payload,
    };
    // Two pieces that make 12 bytes, then a message after them.
    send(&mut r, t, PUBLISHER, &[piece(1, true, b"123456")]);
    send(&mut r, t, PUBLISHER, &[piece(3, false, b"after")]);
    send(&mut r, t, PUBLISHER, &[piece(2, false, b"789012")]);
    assert_eq!(r.next_offset("news"), Some(1));
    let frames = Sent::collect(&mut r).frames_to(PUBLISHER);
    assert!(frames.iter().any(|f| f == "error too-large"), "{frames:?}");
    assert!(
        frames.last().unwrap().contains("cumulative: 1"),
        "acknowledged up to the refused message, no further: {frames:?}"
    );
    assert_eq!(r.publishing.memory.held, 0);
}

#[test]
fn the_same_session_id_from_another_address_is_another_session() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    let t = start();
    let mut r = Relay::open(&config, t).unwrap();
    for seq in 0..3 {
        send(&mut r, t, PUBLISHER, &[reliable(seq, b"first run")]);
    }
    // A second client (or a second run of one, on a new port) that numbers
    // its sessions the same way: its messages are its own, all stored.
    for seq in 0..3 {
        send(&mut r, t, "127.0.0.1:2001", &[reliable(seq, b"second run")]);
    }
    assert_eq!(r.next_offset("news"), Some(6));
    // And after a restart too.
    drop(r);
    let mut r = Relay::open(&config, t).unwrap();
    for seq in 0..2 {
        send(&mut r, t, "127.0.0.1:2002", &[reliable(seq, b"third")]);
    }
    assert_eq!(r.next_offset("news"), Some(8));
}

#[test]
fn a_restart_remembers_every_session_the_log_knows() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        max_sessions: 4,
        ..RelayConfig::default()
    };
    let t = start();
    let mut r = Relay::open(&config, t).unwrap();
    let client = |i: u16| format!("127.0.0.1:{}", 3000 + i);
    // 40 clients publish one message each, one after another, each session
    // ending with its lease: ten times what the relay remembers in memory.
    for i in 0..40 {
        send(&mut r, t, &client(i), &[reliable(0, b"m")]);
        send(&mut r, t, &client(i), &[Frame::Unsubscribe { sub_id: 0 }]);
        r.handle_timeout(t.after(RelayConfig::default().lease * (i as u32 + 1)));
    }
    assert_eq!(r.next_offset("news"), Some(40));
    drop(r);
    let mut r = Relay::open(&config, t).unwrap();
    for i in 0..40 {
        send(&mut r, t, &client(i), &[reliable(0, b"m")]);
        send(&mut r, t, &client(i), &[Frame::Unsubscribe { sub_id: 0 }]);
        r.handle_timeout(t.after(RelayConfig::default().lease * (i as u32 + 1)));
    }
    assert_eq!(
        r.next_offset("news"),
        Some(40),
        "no retransmission stored twice"
    );
}

#[test]
fn duplicates_and_pieces_past_the_window_take_no_channel_slot() {
    let (mut r, _dir) = relay_with(|c| c.max_channels = 2);
    let t = start();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        // Everything below 1000 is acknowledged: seq 0 is a duplicate.
        let dup = Frame::ReliablePublish {
            session: i as u64,
            seq: 0,
            acked_below: 1000,
            more: false,
            channel: name,
            payload: b"x",
        };
        let far = Frame::ReliablePublish {
            session: i as u64,
            seq: 1_000_000,
            acked_below: 1000,
            more: false,
            channel: name,
            payload: b"x",
        };
        send(&mut r, t, PUBLISHER, &[dup, far]);
    }
    assert_eq!(r.channel_count(), 0, "nothing was kept, so nothing held");
    publish(&mut r, t, "real", b"m");
    assert_eq!(r.next_offset("real"), Some(1));
}

/// Every datagram sent to `to`, with its size.
fn sizes_to(sent: &Sent, to: &str) -> Vec<usize> {
    let to = addr(to);
    (sent.datagrams.iter())
        .filter(|t| t.destination == to)
        .map(|t| t.payload.len())
        .collect()
}

/// The token of the ADDRESS_TOKEN frame sent to `to`.
fn token_sent_to(sent: &Sent, to: &str) -> Option<[u8; wire::TOKEN_LEN]> {
    let to = addr(to);
    (sent.datagrams.iter())
        .filter(|t| t.destination == to)
        .flat_map(|t| wire::decode_datagram(&t.payload).unwrap().flatten())
        .find_map(|f| match f {
            Frame::AddressToken { token } => Some(token),
            _ => None,
        })
}

#[test]
fn an_unproven_address_gets_a_token_no_larger_than_its_request_and_nothing_else() {
    let (mut r, _dir) = relay();
    let t = start();
    let subscribe = Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "headlines",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    publish(&mut r, t, "headlines", b"stored");
    send_unproven(&mut r, t, ALICE, &[subscribe]);
    let request = encode_datagram(&[subscribe]).unwrap().len();
    let sent = Sent::collect(&mut r);
    assert_eq!(
        r.subscription_count(),
        0,
        "no state for an unproven address"
    );
    assert_eq!(r.counters().dropped_unproven, 1);
    let token = token_sent_to(&sent, ALICE).expect("a token for the address");
    assert_eq!(sent.datagrams_to(ALICE), 1);
    assert!(sizes_to(&sent, ALICE)[0] <= request, "{sent:?}");

    // Echoed from the address it was sent to, it proves it.
    let mut datagram = vec![Frame::Validate { token }, subscribe];
    r.handle_datagram(t, addr(ALICE), &encode_datagram(&datagram).unwrap());
    assert_eq!(r.subscription_count(), 1);
    let sent = Sent::collect(&mut r);
    assert_eq!(
        sent.frames_to(ALICE),
        ["subscribed 1 first=0 next=1 lease=30000"]
    );

    // From another address the same token proves nothing.
    datagram[1] = Frame::Subscribe {
        sub_id: 2,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "headlines",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    r.handle_datagram(t, addr(BOB), &encode_datagram(&datagram).unwrap());
    assert_eq!(r.subscription_count(), 1);
    assert_eq!(r.counters().tokens_refused, 1);
    let sent = Sent::collect(&mut r);
    assert!(token_sent_to(&sent, BOB).is_some(), "a token of its own");
    assert!(
        sent.frames_to(BOB)
            .iter()
            .all(|f| !f.contains("subscribed"))
    );
}

#[test]
fn a_request_too_small_to_pay_for_a_token_is_not_answered_but_a_ping_is() {
    let (mut r, _dir) = relay();
    let t = start();
    // 8 + 4 + 15 + 1: smaller than the 32 bytes of a token's datagram.
    let tiny = Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "n",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    assert!(encode_datagram(&[tiny]).unwrap().len() < wire::HEADER_LEN + wire::VALIDATE_LEN);
    send_unproven(&mut r, t, ALICE, &[tiny]);
    assert!(Sent::collect(&mut r).datagrams.is_empty());
    assert_eq!(r.counters().dropped_reply_too_large, 1);
    // A ping's pong is the ping's size: no proof needed.
    send_unproven(
        &mut r,
        t,
        ALICE,
        &[Frame::Ping {
            nonce: 4,
            load: false,
        }],
    );
    let sent = Sent::collect(&mut r);
    assert_eq!(sent.frames_to(ALICE), ["pong 4"]);
    assert_eq!(
        sizes_to(&sent, ALICE),
        [encode_datagram(&[Frame::Ping {
            nonce: 4,
            load: false
        }])
        .unwrap()
        .len()]
    );
}

#[test]
fn forged_frames_from_a_subscribers_address_change_nothing() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    subscribe_reliable(&mut r, t, BOB, 2, StartPosition::Latest);
    rpublish(&mut r, t, 7, 0, b"first");
    Sent::collect(&mut r);
    let stored = r.next_offset("news");
    // Someone else claims ALICE's and BOB's addresses, without their tokens.
    send_unproven(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    let ack = Frame::Ack {
        kind: wire::AckKind::Subscription,
        id: 2,
        cumulative: 1_000,
        window: 100,
        ranges: &[],
    };
    send_unproven(&mut r, t, BOB, &[ack]);
    let injected = Frame::ReliablePublish {
        session: 7,
        seq: 1,
        acked_below: 0,
        more: false,
        channel: "news",
        payload: b"injected",
    };
    send_unproven(&mut r, t, PUBLISHER, &[injected]);
    assert_eq!(r.counters().dropped_unproven, 3);
    assert_eq!(r.next_offset("news"), stored, "nothing stored");
    assert_eq!(r.subscription_count(), 2, "nobody unsubscribed");
    // The reliable subscriber still has offset 0 outstanding: the forged ACK
    // did not acknowledge it, so the relay sends it again.
    let mut now = t;
    let mut again = Vec::new();
    while again.is_empty() {
        now = Now {
            instant: r.poll_timeout().expect("the reliable subscription's timer"),
            ..t
        };
        r.handle_timeout(now);
        again = Sent::collect(&mut r).frames_to(BOB);
    }
    assert!(
        again.contains(&"deliver 2 @0 first".to_string()),
        "{again:?}"
    );
    publish(&mut r, now, "news", b"second");
    assert!(
        Sent::collect(&mut r)
            .frames_to(ALICE)
            .contains(&"deliver 1 @1 second".to_string())
    );
}

#[test]
fn unproven_datagrams_do_not_keep_a_lease_alive() {
    let (mut r, _dir) = relay();
    let t = start();
    subscribe(&mut r, t, ALICE, 1, "news");
    let lease = RelayConfig::default().lease;
    // Pings from ALICE's address (anyone may send them) all through the lease.
    for ms in (0..lease.as_millis() as u64).step_by(1000) {
        send_unproven(
            &mut r,
            t.after(Duration::from_millis(ms)),
            ALICE,
            &[Frame::Ping {
                nonce: 1,
                load: false,
            }],
        );
    }
    r.handle_timeout(t.after(lease));
    assert_eq!(
        r.subscription_count(),
        0,
        "the lease ran from the last proven datagram"
    );
}

#[test]
fn an_old_token_still_works_and_brings_a_fresh_one() {
    let (mut r, _dir) = relay();
    let t = start();
    let old = r.tokens.issue(t.instant, t.unix_secs(), addr(ALICE));
    let later = t.after(validation::REFRESH_AFTER);
    let ping = Frame::Ping {
        nonce: 1,
        load: false,
    };
    let datagram = encode_datagram(&[Frame::Validate { token: old }, ping]).unwrap();
    r.handle_datagram(later, addr(ALICE), &datagram);
    let sent = Sent::collect(&mut r);
    let fresh = token_sent_to(&sent, ALICE).expect("a fresh token");
    assert_ne!(fresh, old);
    assert_eq!(r.counters().tokens_refused, 0);
    // Past its lifetime the old one is refused; the fresh one is not.
    let much_later = t.after(validation::LIFETIME);
    r.handle_datagram(much_later, addr(ALICE), &datagram);
    assert_eq!(r.counters().tokens_refused, 1);
    let datagram = encode_datagram(&[Frame::Validate { token: fresh }, ping]).unwrap();
    r.handle_datagram(much_later, addr(ALICE), &datagram);
    assert_eq!(r.counters().tokens_refused, 1);
}

#[test]
fn datagrams_from_addresses_no_host_sends_from_are_never_answered() {
    let (mut r, _dir) = relay();
    let t = start();
    let ping = encode_datagram(&[Frame::Ping {
        nonce: 1,
        load: false,
    }])
    .unwrap();
    for from in [
        "127.0.0.1:0",
        "0.0.0.0:5000",
        "[::]:5000",
        "255.255.255.255:5000",
        "224.0.0.1:5000",
        "[ff02::1]:5000",
        "[::ffff:255.255.255.255]:5000",
        "[::ffff:0.0.0.0]:5000",
    ] {
        r.handle_datagram(t, addr(from), &ping);
    }
    assert_eq!(r.counters().dropped_bad_source, 8);
    assert!(Sent::collect(&mut r).datagrams.is_empty());
    // An ordinary address is answered.
    r.handle_datagram(t, addr(ALICE), &ping);
    assert_eq!(Sent::collect(&mut r).frames_to(ALICE), ["pong 1"]);
}

/// A relay replaying 10 KB per tick to each client address, with 300
/// messages of 1,000 bytes stored on "news".
fn three_hundred_kilobytes_at_ten_per_tick() -> (Relay, tempfile::TempDir, Now) {
    let (mut r, dir) = relay_with(|c| c.replay_rate = 10_000_000);
    let t = start();
    for _ in 0..300 {
        publish(&mut r, t, "news", &[b'm'; 1000]);
    }
    Sent::collect(&mut r);
    (r, dir, t)
}

#[test]
fn a_ping_that_asks_gets_the_load_in_a_pong_no_larger_than_itself() {
    let (mut r, _dir) = relay();
    let t = start();
    r.set_load(417);
    let ping = Frame::Ping {
        nonce: 9,
        load: true,
    };
    send_unproven(&mut r, t, ALICE, &[ping]);
    let sent = Sent::collect(&mut r);
    let pong = wire::decode_datagram(&sent.datagrams[0].payload)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        pong,
        Frame::Pong {
            nonce: 9,
            load: Some(417)
        }
    );
    assert_eq!(
        sizes_to(&sent, ALICE),
        [encode_datagram(&[ping]).unwrap().len()]
    );
    // A plain ping gets a plain pong.
    send_unproven(
        &mut r,
        t,
        ALICE,
        &[Frame::Ping {
            nonce: 10,
            load: false,
        }],
    );
    assert_eq!(Sent::collect(&mut r).frames_to(ALICE), ["pong 10"]);
}

#[test]
fn replay_is_a_quota_per_client_not_per_subscription() {
    let (mut r, _dir, t) = three_hundred_kilobytes_at_ten_per_tick();
    let earliest = |sub_id| Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "news",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    // ALICE opens twenty replays of the whole channel, BOB one.
    for sub_id in 1..=20 {
        send(&mut r, t, ALICE, &[earliest(sub_id)]);
    }
    send(&mut r, t, BOB, &[earliest(1)]);
    Sent::collect(&mut r);
    let delivered = |sent: &Sent, to: &str| {
        sent.frames_to(to)
            .iter()
            .filter(|f| f.starts_with("deliver"))
            .count()
    };
    let (mut alice, mut bob) = (0, 0);
    let mut now = t;
    for _ in 0..5 {
        r.handle_timeout(now);
        let sent = Sent::collect(&mut r);
        alice += delivered(&sent, ALICE);
        bob += delivered(&sent, BOB);
        now = now.after(Duration::from_millis(1));
    }
    // Five ticks of 10 KB: about ten 1,000-byte messages (and their frame
    // headers) each, one over at most where a turn ends mid-message.
    assert!(
        (45..=60).contains(&bob),
        "bob got {bob} messages in 5 ticks"
    );
    assert!(
        alice <= bob + 5,
        "twenty replays got alice {alice} messages, one got bob {bob}"
    );
}

#[test]
fn one_strangers_flood_does_not_spend_the_tokens_of_others() {
    let (mut r, _dir) = relay();
    let t = start();
    let hello = crate::client::AddressProof::hello();
    // A thousand hellos from one remote address (any port).
    for port in 0..1000u16 {
        r.handle_datagram(t, addr(&format!("10.0.0.1:{}", 1000 + port)), &hello);
    }
    let flooded = Sent::collect(&mut r).datagrams.len();
    assert!(
        (1..=50).contains(&flooded),
        "{flooded} tokens for one flooding source"
    );
    // Another stranger still gets its token at once.
    r.handle_datagram(t, addr("10.0.0.2:4000"), &hello);
    assert!(token_sent_to(&Sent::collect(&mut r), "10.0.0.2:4000").is_some());
}

#[test]
fn answers_that_fill_two_datagrams_count_both_headers() {
    // Found by the relay fuzz target: 120 PINGs (1,448 bytes) were answered
    // with 1,440 bytes of PONGs in two datagrams, 1,456 with the headers.
    let (mut r, _dir) = relay();
    let t = start();
    let pings: Vec<Frame<'_>> = (0..120)
        .map(|nonce| Frame::Ping { nonce, load: false })
        .collect();
    let request = encode_datagram(&pings).unwrap();
    send_unproven(&mut r, t, "10.0.0.9:4000", &pings);
    let sent = Sent::collect(&mut r);
    let answered: usize = sizes_to(&sent, "10.0.0.9:4000").iter().sum();
    assert!(
        answered <= request.len(),
        "{answered} bytes for a {}-byte request",
        request.len()
    );
    assert!(
        sent.frames_to("10.0.0.9:4000").len() >= 110,
        "most pings answered"
    );
    assert_eq!(
        r.counters().dropped_reply_too_large,
        120 - sent.frames_to("10.0.0.9:4000").len() as u64
    );
}

#[test]
fn reliable_replays_share_their_clients_replay_quota_too() {
    // Both clients acknowledge everything they get at once, so only the
    // quota holds them back.
    let (mut r, _dir, t) = three_hundred_kilobytes_at_ten_per_tick();
    // ALICE opens twenty reliable replays of the whole channel, BOB one.
    for sub_id in 1..=20 {
        subscribe_reliable(&mut r, t, ALICE, sub_id, StartPosition::Earliest);
    }
    subscribe_reliable(&mut r, t, BOB, 1, StartPosition::Earliest);
    let (mut alice, mut bob) = (0, 0);
    let mut now = t;
    let mut sent = Sent::collect(&mut r);
    for _ in 0..5 {
        for (who, count) in [(ALICE, &mut alice), (BOB, &mut bob)] {
            let mut highest: std::collections::HashMap<u32, u64> = Default::default();
            for f in sent.frames_to(who) {
                if let Some(rest) = f.strip_prefix("deliver ") {
                    let mut words = rest.split(' ');
                    let sub_id: u32 = words.next().unwrap().parse().unwrap();
                    let offset: u64 = words.next().unwrap()[1..].parse().unwrap();
                    *count += 1;
                    let h = highest.entry(sub_id).or_default();
                    *h = (*h).max(offset + 1);
                }
            }
            for (sub_id, cumulative) in highest {
                let ack = Frame::Ack {
                    kind: wire::AckKind::Subscription,
                    id: u64::from(sub_id),
                    cumulative,
                    window: 10_000,
                    ranges: &[],
                };
                send(&mut r, now, who, &[ack]);
            }
        }
        now = now.after(Duration::from_millis(1));
        r.handle_timeout(now);
        sent = Sent::collect(&mut r);
    }
    // About ten 1,000-byte messages a tick each, whatever the number of
    // subscriptions (the first tick's share went at subscribe time).
    assert!(
        (40..=70).contains(&bob),
        "bob got {bob} messages in 5 ticks"
    );
    assert!(
        alice <= bob + 10,
        "twenty reliable replays got alice {alice} messages, one got bob {bob}"
    );
    // Caught up, a reliable subscription is live again: not held back.
    let (mut r, _dir) = relay_with(|c| c.replay_rate = 1000);
    subscribe_reliable(&mut r, t, BOB, 1, StartPosition::Latest);
    Sent::collect(&mut r);
    for _ in 0..5 {
        publish(&mut r, t, "news", &[b'm'; 1000]);
    }
    let live = Sent::collect(&mut r).frames_to(BOB);
    assert_eq!(live.iter().filter(|f| f.starts_with("deliver")).count(), 5);
}

//! The relay's side of a cluster, with no NATS: what goes up, what comes
//! down, once each.

use super::*;
use crate::relay::cluster::WINDOW;
use crate::relay::{Origin, Source};

const A: u64 = 0xa;
const C: u64 = 0xc;

fn clustered(id: u64) -> (Relay, tempfile::TempDir) {
    let (mut r, dir) = relay();
    r.enable_cluster(start(), id, &[]);
    (r, dir)
}

/// Reports every message handed out as `outcome`; returns their offsets.
fn bridge_all(r: &mut Relay, now: Now, outcome: Bridged) -> Vec<u64> {
    let out = r.poll_outgoing();
    for o in &out {
        r.handle_bridged(now, o.receipt(), outcome);
    }
    out.iter().map(|o| o.offset).collect()
}

#[test]
fn messages_go_up_once_each_and_copies_never_go_up_again() {
    let (mut a, _da) = clustered(A);
    let (mut c, _dc) = clustered(C);
    let t = start();
    for p in ["x", "y", "z"] {
        publish(&mut a, t, "news", p.as_bytes());
    }
    let out = a.poll_outgoing();
    let got: Vec<(u64, &[u8])> = out.iter().map(|o| (o.offset, &o.payload[..])).collect();
    assert_eq!(got, [(0, &b"x"[..]), (1, b"y"), (2, b"z")]);
    assert!(a.poll_outgoing().is_empty(), "each is handed out once");
    assert_eq!(a.bridged(), None, "nothing stored in the cluster yet");
    for o in &out {
        a.handle_bridged(t, o.receipt(), Bridged::Stored);
    }
    assert_eq!(a.bridged(), Some(vec![("news".to_string(), 3)]));
    // At C: a subscriber gets A's messages, each once, whatever the cluster
    // sends twice.
    subscribe(&mut c, t, ALICE, 1, "news");
    Sent::collect(&mut c);
    for o in out.iter().chain(&out) {
        c.handle_remote(t, "news", o.origin, false, &o.payload);
    }
    let frames = Sent::collect(&mut c).frames_to(ALICE);
    assert_eq!(
        frames,
        ["deliver 1 @0 x", "deliver 1 @1 y", "deliver 1 @2 z"]
    );
    assert_eq!(c.counters().bridge_received, 3);
    assert_eq!(c.counters().bridge_duplicates, 3);
    assert_eq!(
        c.handle_remote(t, "news", from_relay(C, 9, Some(9)), false, b"mine"),
        Remote::Duplicate
    );
    // C's own message goes up; the copies do not.
    publish(&mut c, t, "news", b"from c");
    let up = c.poll_outgoing();
    assert_eq!(up.len(), 1);
    assert_eq!((up[0].offset, up[0].covers_from), (3, 0));
    c.handle_bridged(t, up[0].receipt(), Bridged::Stored);
    assert_eq!(c.bridged(), Some(vec![("news".to_string(), 4)]));
}

#[test]
fn what_the_cluster_did_not_store_goes_again_after_a_pause() {
    let (mut a, _d) = clustered(A);
    let t = start();
    for i in 0..5 {
        publish(&mut a, t, "news", format!("m{i}").as_bytes());
    }
    let out = a.poll_outgoing();
    for o in &out {
        let outcome = if o.offset == 1 {
            Bridged::Failed
        } else {
            Bridged::Stored
        };
        a.handle_bridged(t, o.receipt(), outcome);
    }
    assert_eq!(a.bridged(), Some(vec![("news".to_string(), 1)]));
    assert!(a.poll_outgoing().is_empty(), "it waits");
    let later = run_timers(&mut a, t, t.after(Duration::from_secs(2)));
    assert_eq!(bridge_all(&mut a, later, Bridged::Stored), [1, 2, 3, 4]);
    assert_eq!(a.bridged(), Some(vec![("news".to_string(), 5)]));
    assert_eq!(a.counters().bridge_failed, 1);
    // A message the cluster never takes (too large) does not hold the rest.
    publish(&mut a, later, "news", b"huge");
    publish(&mut a, later, "news", b"small");
    let out = a.poll_outgoing();
    a.handle_bridged(later, out[0].receipt(), Bridged::Refused);
    a.handle_bridged(later, out[1].receipt(), Bridged::Stored);
    assert_eq!(a.bridged(), Some(vec![("news".to_string(), 7)]));
    assert_eq!(a.counters().bridge_skipped, 1);
}

/// A data directory and a configuration on it, to open a relay on again.
fn on_disk() -> (tempfile::TempDir, RelayConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    (dir, config)
}

#[test]
fn at_most_a_window_is_out_and_a_restart_resends_from_what_was_stored() {
    let (_dir, config) = on_disk();
    let t = start();
    let mut a = Relay::open(&config, t).unwrap();
    let (id, _) = a.join_cluster(t).unwrap();
    for i in 0..WINDOW + 200 {
        publish(&mut a, t, "news", format!("m{i}").as_bytes());
    }
    let mut out = Vec::new();
    loop {
        let more = a.poll_outgoing();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    assert_eq!(out.len(), WINDOW, "a window, not the whole backlog");
    for o in &out[..100] {
        a.handle_bridged(t, o.receipt(), Bridged::Stored);
    }
    assert_eq!(a.poll_outgoing().len(), 100, "room for as many as reported");
    assert!(a.save_bridged().unwrap());
    drop(a);
    let mut a = Relay::open(&config, t).unwrap();
    assert_eq!(
        a.join_cluster(t).unwrap().0,
        id,
        "the same id on every start"
    );
    let again = a.poll_outgoing();
    assert_eq!(again.first().map(|o| o.offset), Some(100));
}

/// A message of relay `relay` at `offset`, its previous one below `prior`.
fn from_relay(relay: u64, offset: u64, prior: Option<u64>) -> Origin {
    Origin {
        source: Source::Relay(relay),
        position: offset,
        prior_below: prior,
    }
}

/// Feeds `c` remote messages of relays (channel, source, offset, past a
/// gap), each right after the offset before it, and checks what became of
/// each.
fn feed(c: &mut Relay, t: Now, cases: &[(&str, u64, u64, bool, Remote)]) {
    for &(channel, source, offset, past_a_gap, want) in cases {
        let origin = from_relay(source, offset, Some(offset));
        let got = c.handle_remote(t, channel, origin, past_a_gap, b"m");
        assert_eq!(got, want, "{channel} {source:x}:{offset}");
    }
}

#[test]
fn a_message_ahead_of_its_source_waits_and_a_restart_remembers_each_source() {
    // Far from A's start, so its first is not waited for.
    const FAR: u64 = 1 << 20;
    let (dir, config) = on_disk();
    let t = start();
    let mut c = Relay::open(&config, t).unwrap();
    c.enable_cluster(t, C, &[]);
    feed(
        &mut c,
        t,
        &[
            ("news", A, FAR + 7, false, Remote::Appended),
            ("news", A, FAR + 9, false, Remote::Ahead),
        ],
    );
    assert_eq!(c.next_offset("news"), Some(1), "not stored");
    feed(
        &mut c,
        t,
        &[
            ("news", A, FAR + 8, false, Remote::Appended),
            ("news", A, FAR + 9, false, Remote::Appended),
            ("news", 0xb, 0, false, Remote::Appended),
            ("a pattern.>", A, FAR, false, Remote::Duplicate),
        ],
    );
    drop(c);
    let mut c = Relay::open(&config, t).unwrap();
    c.enable_cluster(t, C, &[]);
    feed(
        &mut c,
        t,
        &[
            ("news", A, FAR + 9, false, Remote::Duplicate),
            ("news", 0xb, 0, false, Remote::Duplicate),
            ("news", A, FAR + 10, false, Remote::Appended),
            // Given up for lost, what is missing is a gap.
            ("news", A, FAR + 20, true, Remote::Appended),
        ],
    );
    assert_eq!(c.counters().replay_gaps, 1);
    assert_eq!(c.next_offset("news"), Some(6));
    drop(dir);
}

#[test]
fn the_relay_follows_the_channels_and_patterns_its_clients_subscribe_to() {
    let (mut c, _d) = clustered(C);
    let t = start();
    subscribe(&mut c, t, ALICE, 1, "news");
    subscribe(&mut c, t, ALICE, 2, "not a subject");
    subscribe(&mut c, t, BOB, 3, "sensors.>");
    let t = run_timers(&mut c, t, t.after(Duration::from_millis(200)));
    let mut asked: Vec<Interest> = std::iter::from_fn(|| c.poll_interest()).collect();
    asked.sort_by_key(|i| format!("{i:?}"));
    assert_eq!(
        asked,
        [
            Interest::Follow {
                name: "news".into(),
                since: None
            },
            Interest::Follow {
                name: "sensors.>".into(),
                since: None
            }
        ]
    );
    send(&mut c, t, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    run_timers(&mut c, t, t.after(Duration::from_millis(200)));
    let asked: Vec<Interest> = std::iter::from_fn(|| c.poll_interest()).collect();
    assert_eq!(asked, [Interest::Unfollow("news".into())]);
}

#[test]
fn copies_between_own_messages_do_not_hold_back_how_far_it_is_bridged() {
    let (mut c, _d) = clustered(C);
    let t = start();
    publish(&mut c, t, "news", b"own 0");
    let first = c.poll_outgoing();
    assert_eq!(first.len(), 1);
    // A copy lands while 0 is out, and is scanned past.
    assert_eq!(
        c.handle_remote(t, "news", from_relay(A, 0, Some(0)), false, b"copy 1"),
        Remote::Appended
    );
    assert!(c.poll_outgoing().is_empty(), "a copy does not go up");
    c.handle_bridged(t, first[0].receipt(), Bridged::Stored);
    assert_eq!(c.bridged(), Some(vec![("news".to_string(), 2)]));
    publish(&mut c, t, "news", b"own 2");
    assert_eq!(bridge_all(&mut c, t, Bridged::Stored), [2]);
    assert_eq!(c.bridged(), Some(vec![("news".to_string(), 3)]));
}

#[test]
fn under_interval_fsync_only_what_is_on_disk_goes_up() {
    let (mut a, _d) =
        relay_with(|c| c.log.fsync = crate::log::FsyncMode::Interval(Duration::from_millis(10)));
    let t = start();
    a.enable_cluster(t, A, &[]);
    publish(&mut a, t, "news", b"m");
    assert!(a.poll_outgoing().is_empty(), "not synced yet");
    let later = run_timers(&mut a, t, t.after(Duration::from_millis(50)));
    let request = a.poll_sync().expect("a sync is due");
    let durable = request.job.run().unwrap();
    a.handle_sync_done(request.channel, Ok(durable));
    assert_eq!(bridge_all(&mut a, later, Bridged::Stored), [0]);
}

#[test]
fn clients_subscribing_to_many_channels_get_at_most_the_followed_limit_of_consumers() {
    use crate::relay::cluster::MAX_FOLLOWED;
    let (mut c, _d) = clustered(C);
    let t = start();
    // Two addresses, a new channel name for each subscription: each name
    // followed would be a durable consumer in JetStream.
    for i in 0..MAX_FOLLOWED + 100 {
        let from = if i % 2 == 0 { ALICE } else { BOB };
        subscribe(&mut c, t, from, i as u32, &format!("c{i}"));
    }
    assert_eq!(c.subscription_count(), MAX_FOLLOWED + 100);
    let t = run_timers(&mut c, t, t.after(Duration::from_millis(200)));
    let follows = std::iter::from_fn(|| c.poll_interest()).count();
    assert_eq!(follows, MAX_FOLLOWED, "no more consumers than the limit");
    // Those followed stay followed while the others still want in.
    run_timers(&mut c, t, t.after(Duration::from_millis(200)));
    assert_eq!(c.poll_interest(), None);
}

/// Piece `seq` of session `session` on "news" from PUBLISHER, the message
/// continuing in the next if `more`, everything below `acked_below`
/// acknowledged to it.
fn rpiece(
    r: &mut Relay,
    t: Now,
    session: u64,
    (seq, acked_below, more): (u64, u64, bool),
    p: &[u8],
) {
    let frame = Frame::ReliablePublish {
        session,
        seq,
        acked_below,
        more,
        channel: "news",
        payload: p,
    };
    send(r, t, PUBLISHER, &[frame]);
}

fn session_at(session: u64, seq: u64, prior: Option<u64>) -> Origin {
    Origin {
        source: Source::Session(session),
        position: seq,
        prior_below: prior,
    }
}

#[test]
fn a_reliable_session_goes_up_in_its_own_numbering_and_is_acknowledged_once_stored_there() {
    let (mut a, _d) = clustered(A);
    let t = start();
    rpiece(&mut a, t, 7, (0, 0, false), b"a");
    publish(&mut a, t, "news", b"plain");
    rpiece(&mut a, t, 7, (1, 0, false), b"b");
    rpiece(&mut a, t, 7, (2, 0, true), b"c1");
    rpiece(&mut a, t, 7, (3, 0, false), b"c2");
    let acks = publish_acks(&Sent::collect(&mut a));
    assert!(
        acks.iter().all(|(cumulative, _)| *cumulative == 0),
        "stored here, not yet in the cluster: {acks:?}"
    );
    assert_eq!(
        acks.last().unwrap().1,
        [(0, 4)],
        "received: not to be resent"
    );
    let out = a.poll_outgoing();
    let origins: Vec<(u64, Origin)> = out.iter().map(|o| (o.offset, o.origin)).collect();
    assert_eq!(
        origins,
        [
            (0, session_at(7, 0, None)),
            (1, from_relay(A, 1, Some(0))),
            (2, session_at(7, 1, Some(1))),
            (3, session_at(7, 3, Some(2))),
        ],
        "a message in two pieces is numbered by its last and follows the one before"
    );
    for o in &out[..2] {
        a.handle_bridged(t, o.receipt(), Bridged::Stored);
    }
    assert_eq!(publish_acks(&Sent::collect(&mut a))[0].0, 1);
    for o in &out[2..] {
        a.handle_bridged(t, o.receipt(), Bridged::Stored);
    }
    assert_eq!(publish_acks(&Sent::collect(&mut a))[0].0, 4);
    // Acknowledged as soon as stored here, if asked to.
    let (mut local, _d) = relay_with(|c| c.cluster_ack = crate::config::ClusterAck::Local);
    local.enable_cluster(t, A, &[]);
    rpiece(&mut local, t, 7, (0, 0, false), b"a");
    assert_eq!(publish_acks(&Sent::collect(&mut local)), [(1, vec![])]);
}

#[test]
fn a_publisher_that_moves_here_goes_on_in_its_session_and_nothing_is_stored_twice() {
    let (mut b, _d) = clustered(0xb);
    let t = start();
    subscribe(&mut b, t, ALICE, 1, "news");
    let copy = |b: &mut Relay, seq: u64| {
        let origin = session_at(7, seq, Some(seq));
        b.handle_remote(t, "news", origin, false, b"via a")
    };
    // What the publisher stored through A came here through the cluster.
    for seq in 0..3 {
        assert_eq!(copy(&mut b, seq), Remote::Appended);
    }
    assert_eq!(copy(&mut b, 2), Remote::Duplicate);
    assert_eq!(copy(&mut b, 9), Remote::Ahead);
    Sent::collect(&mut b);
    // A died with 1 and 2 unacknowledged: the publisher sends them here.
    rpiece(&mut b, t, 7, (1, 1, false), b"b");
    rpiece(&mut b, t, 7, (2, 1, false), b"c");
    rpiece(&mut b, t, 7, (3, 1, false), b"d");
    let sent = Sent::collect(&mut b);
    assert_eq!(sent.frames_to(ALICE), ["deliver 1 @3 d"], "each once");
    assert_eq!(b.next_offset("news"), Some(4));
    let up = b.poll_outgoing();
    let origins: Vec<Origin> = up.iter().map(|o| o.origin).collect();
    assert_eq!(origins.len(), 1, "copies never go up: {origins:?}");
    assert_eq!(
        (origins[0].source, origins[0].position),
        (Source::Session(7), 3)
    );
    b.handle_bridged(t, up[0].receipt(), Bridged::Stored);
    assert_eq!(publish_acks(&Sent::collect(&mut b)), [(4, vec![])]);
    // A's copy of 3, stored before it died, comes after: it is here.
    assert_eq!(copy(&mut b, 3), Remote::Duplicate);
    // And a session this relay never saw starts after what came of it.
    let other = session_at(8, 0, Some(0));
    assert_eq!(
        b.handle_remote(t, "news", other, false, b"x"),
        Remote::Appended
    );
    rpiece(&mut b, t, 8, (0, 0, false), b"x");
    assert_eq!(b.next_offset("news"), Some(5), "not stored twice");
}

#[test]
fn a_relay_numbers_its_own_messages_past_the_copies_between_them() {
    let (mut a, _da) = clustered(A);
    let (mut c, _dc) = clustered(C);
    let t = start();
    publish(&mut a, t, "news", b"own 0");
    let from_b = from_relay(0xb, 0, Some(0));
    assert_eq!(
        a.handle_remote(t, "news", from_b, false, b"copy"),
        Remote::Appended
    );
    publish(&mut a, t, "news", b"own 2");
    publish(&mut a, t, "news", b"own 3");
    let out = a.poll_outgoing();
    let origins: Vec<Origin> = out.iter().map(|o| o.origin).collect();
    assert_eq!(
        origins,
        [
            from_relay(A, 0, Some(0)),
            from_relay(A, 2, Some(1)),
            from_relay(A, 3, Some(3))
        ]
    );
    // At C, 2 follows 0 directly; 3 waits for 2.
    let (zero, two, three) = (&out[0], &out[1], &out[2]);
    let mut take = |o: &Outgoing| c.handle_remote(t, "news", o.origin, false, &o.payload);
    assert_eq!(take(zero), Remote::Appended);
    assert_eq!(take(three), Remote::Ahead);
    assert_eq!(take(two), Remote::Appended);
    assert_eq!(take(three), Remote::Appended);
    // Not stored, 2 goes again; after the jump it does not know what it
    // follows, and C takes it if it is new.
    a.handle_bridged(t, zero.receipt(), Bridged::Stored);
    a.handle_bridged(t, two.receipt(), Bridged::Failed);
    a.handle_bridged(t, three.receipt(), Bridged::Stored);
    let later = run_timers(&mut a, t, t.after(Duration::from_secs(2)));
    let again = a.poll_outgoing();
    let origins: Vec<Origin> = again.iter().map(|o| o.origin).collect();
    assert_eq!(origins, [from_relay(A, 2, None), from_relay(A, 3, Some(3))]);
    assert_eq!(
        c.handle_remote(later, "news", again[0].origin, false, b"own 2"),
        Remote::Duplicate
    );
}

#[test]
fn after_a_restart_a_session_message_still_says_what_it_follows() {
    let (_dir, config) = on_disk();
    let t = start();
    let mut a = Relay::open(&config, t).unwrap();
    a.join_cluster(t).unwrap();
    for seq in 0..3 {
        rpiece(&mut a, t, 7, (seq, 0, false), b"m");
    }
    let out = a.poll_outgoing();
    a.handle_bridged(t, out[0].receipt(), Bridged::Stored);
    assert!(a.save_bridged().unwrap());
    drop(a);
    let mut a = Relay::open(&config, t).unwrap();
    a.join_cluster(t).unwrap();
    let origins: Vec<Origin> = a.poll_outgoing().iter().map(|o| o.origin).collect();
    // What offset 1 follows is read from the marked record before it.
    assert_eq!(
        origins,
        [session_at(7, 1, Some(1)), session_at(7, 2, Some(2))]
    );
}

#[test]
fn a_reliable_publisher_to_a_channel_that_stays_here_is_acknowledged_without_the_cluster() {
    let (mut a, _d) = clustered(A);
    let t = start();
    let frame = Frame::ReliablePublish {
        session: 7,
        seq: 0,
        acked_below: 0,
        more: false,
        channel: "not a subject",
        payload: b"m",
    };
    send(&mut a, t, PUBLISHER, &[frame]);
    assert_eq!(publish_acks(&Sent::collect(&mut a))[0].0, 0);
    assert!(a.poll_outgoing().is_empty(), "kept here only");
    assert_eq!(publish_acks(&Sent::collect(&mut a)), [(1, vec![])]);
}

#[test]
fn a_new_sources_message_that_says_earlier_ones_exist_waits_for_them_a_while() {
    let (mut a, _da) = clustered(A);
    let (mut c, _dc) = clustered(C);
    let t = start();
    rpiece(&mut a, t, 7, (0, 0, false), b"0");
    rpiece(&mut a, t, 7, (1, 0, false), b"1");
    let out = a.poll_outgoing();
    // The cluster lost 0 and stored 1: C gets 1 first.
    a.handle_bridged(t, out[0].receipt(), Bridged::Failed);
    a.handle_bridged(t, out[1].receipt(), Bridged::Stored);
    assert_eq!(
        c.handle_remote(t, "news", out[1].origin, false, b"1"),
        Remote::Unsure
    );
    let later = run_timers(&mut a, t, t.after(Duration::from_secs(2)));
    let again = a.poll_outgoing();
    assert_eq!(
        c.handle_remote(later, "news", again[0].origin, false, b"0"),
        Remote::Appended
    );
    assert_eq!(
        c.handle_remote(later, "news", out[1].origin, false, b"1"),
        Remote::Appended
    );
    // Waited for long enough, it goes in: this relay began after them.
    let late = session_at(8, 500, Some(500));
    assert_eq!(
        c.handle_remote(later, "news", late, false, b"x"),
        Remote::Unsure
    );
    assert_eq!(
        c.handle_remote(later, "news", late, true, b"x"),
        Remote::Appended
    );
    assert_eq!(c.counters().replay_gaps, 0, "not a gap: never seen");
    // Far from its source's start, nothing is waited for.
    let old = session_at(9, 1 << 40, Some(1 << 40));
    assert_eq!(
        c.handle_remote(later, "news", old, false, b"y"),
        Remote::Appended
    );
}

#[test]
fn copies_on_their_way_still_go_in_after_the_publisher_moved_here() {
    let (mut c, _d) = clustered(C);
    let t = start();
    let copy = |c: &mut Relay, seq: u64| {
        let origin = session_at(7, seq, Some(seq));
        c.handle_remote(t, "news", origin, false, b"via a")
    };
    for seq in 0..3 {
        assert_eq!(copy(&mut c, seq), Remote::Appended);
    }
    // A stored 3 and 4 in the cluster and acknowledged them; the publisher
    // moves here and sends 5 before the copies of 3 and 4 come.
    rpiece(&mut c, t, 7, (5, 5, false), b"five");
    assert_eq!(c.next_offset("news"), Some(4));
    assert_eq!(copy(&mut c, 3), Remote::Appended);
    assert_eq!(copy(&mut c, 4), Remote::Appended);
    assert_eq!(copy(&mut c, 5), Remote::Duplicate, "stored here");
    assert_eq!(copy(&mut c, 6), Remote::Appended, "follows 5");
    assert_eq!(c.next_offset("news"), Some(7));
}

#[test]
fn a_copy_on_one_channel_does_not_acknowledge_what_the_session_left_on_another() {
    let (mut b, _d) = clustered(0xb);
    let t = start();
    let copy = session_at(7, 3, None);
    assert_eq!(
        b.handle_remote(t, "news", copy, false, b"3"),
        Remote::Appended
    );
    let piece = |seq, channel| Frame::ReliablePublish {
        session: 7,
        seq,
        acked_below: 1,
        more: false,
        channel,
        payload: b"m",
    };
    // The datagram with 1 was lost: 3 opens the session.
    send(&mut b, t, PUBLISHER, &[piece(3, "news")]);
    send(
        &mut b,
        t,
        PUBLISHER,
        &[piece(1, "other"), piece(2, "other")],
    );
    assert_eq!(b.next_offset("other"), Some(2), "1 and 2 stored");
    assert_eq!(b.next_offset("news"), Some(1), "3 not twice");
}

#[test]
fn past_the_sessions_a_chain_remembers_only_the_oldest_are_forgotten() {
    use crate::relay::cluster::CHAIN_SESSIONS;
    let (mut a, _d) = clustered(A);
    let t = start();
    let sessions = CHAIN_SESSIONS as u64 + 76;
    let mut known = 0;
    for seq in 0..2 {
        for s in 0..sessions {
            let from = format!("127.0.0.2:{}", 1000 + s);
            let frame = Frame::ReliablePublish {
                session: s,
                seq,
                acked_below: 0,
                more: false,
                channel: "news",
                payload: b"m",
            };
            send(&mut a, t, &from, &[frame]);
            for o in a.poll_outgoing() {
                known += usize::from(seq == 1 && o.origin.prior_below.is_some());
                a.handle_bridged(t, o.receipt(), Bridged::Stored);
            }
        }
    }
    // Each new one forgets one other; clearing all would know none.
    assert!(known >= CHAIN_SESSIONS - 2 * 76, "{known} of {sessions}");
}

#[test]
fn copies_from_the_relay_a_publisher_used_between_two_stints_here_still_go_in() {
    let (mut c, _d) = clustered(C);
    let t = start();
    for seq in 0..3 {
        rpiece(&mut c, t, 7, (seq, 0, false), b"here");
    }
    // It moved to B (which stored 3 and 4), and back, from a new socket.
    for seq in 5..10 {
        let frame = Frame::ReliablePublish {
            session: 7,
            seq,
            acked_below: 5,
            more: false,
            channel: "news",
            payload: b"again",
        };
        send(&mut c, t, "127.0.0.1:2001", &[frame]);
    }
    assert_eq!(c.next_offset("news"), Some(8));
    for seq in 3..5 {
        let copy = session_at(7, seq, Some(seq));
        assert_eq!(
            c.handle_remote(t, "news", copy, false, b"via b"),
            Remote::Appended,
            "copy {seq}"
        );
    }
    for seq in [1, 6] {
        let copy = session_at(7, seq, Some(seq));
        assert_eq!(
            c.handle_remote(t, "news", copy, false, b"via b"),
            Remote::Duplicate,
            "{seq} was stored here"
        );
    }
}

#[test]
fn what_a_session_makes_a_clustered_relay_remember_is_bounded_and_goes_with_it() {
    let (mut a, _d) = clustered(A);
    let t = start();
    // One session naming ever more channels: each it stores to is a stint
    // the channel remembers, at most the session's channel limit.
    for seq in 0..80u64 {
        let channel = format!("c{seq}");
        let frame = Frame::ReliablePublish {
            session: 7,
            seq,
            acked_below: 0,
            more: false,
            channel: &channel,
            payload: b"m",
        };
        send(&mut a, t, PUBLISHER, &[frame]);
    }
    let remembered = |a: &Relay| {
        (a.channels.iter())
            .filter(|c| c.sessions_here.contains_key(&7))
            .count()
    };
    assert_eq!(remembered(&a), 64, "the session's channel limit");
    assert_eq!(a.next_offset("c64"), None, "refused past it");
    // Its peer gone (the lease lapsed), nothing of it is remembered.
    run_timers(&mut a, t, t.after(Duration::from_secs(120)));
    assert_eq!(remembered(&a), 0);
}

/// A reliable subscription `sub_id` of `from` to "news" that asks for
/// origins and starts at `start`, resuming after `vector` when it is
/// [`StartPosition::Resume`].
fn subscribe_with_origins(
    r: &mut Relay,
    t: Now,
    from: &str,
    sub_id: u32,
    start: StartPosition,
    vector: &[wire::Origin],
) {
    let bytes = wire::ResumeVector::encode(vector);
    let resume = wire::ResumeVector::new(&bytes).unwrap();
    reliable_news(r, t, from, sub_id, (start, true, resume));
}

fn held(source: Source, position: u64) -> wire::Origin {
    wire::Origin { source, position }
}

/// B's "news": copies of relay A's 0..4 and session 7's 0..4, taking turns,
/// with B's own message after each pair: offsets A0 S0 B2 A1 S1 B5 ...
fn interleaved(b: &mut Relay, t: Now) {
    for i in 0..4 {
        let a = b.handle_remote(t, "news", from_relay(A, i, Some(i)), false, b"a");
        let s = b.handle_remote(t, "news", session_at(7, i, Some(i)), false, b"s");
        assert_eq!((a, s), (Remote::Appended, Remote::Appended));
        publish(b, t, "news", b"b");
    }
}

const B: u64 = 0xb;

#[test]
fn a_subscriber_that_asks_is_told_where_each_message_came_from() {
    let (mut b, _d) = clustered(B);
    let t = start();
    interleaved(&mut b, t);
    subscribe_with_origins(&mut b, t, ALICE, 1, StartPosition::Earliest, &[]);
    subscribe_reliable(&mut b, t, BOB, 2, StartPosition::Earliest);
    let sent = Sent::collect(&mut b);
    let to_alice = sent.frames_to(ALICE);
    assert_eq!(
        to_alice[1..4],
        [
            "deliver 1 @0 a [relay a#0]",
            "deliver 1 @1 s [session 7#0]",
            "deliver 1 @2 b [relay b#2]"
        ],
        "{to_alice:?}"
    );
    let to_bob = sent.frames_to(BOB);
    assert_eq!(to_bob[1], "deliver 2 @0 a", "only when asked: {to_bob:?}");
}

#[test]
fn a_resuming_subscriber_starts_at_the_first_message_it_lacks() {
    let (mut b, _d) = clustered(B);
    let t = start();
    interleaved(&mut b, t);
    // Offsets: A0 S0 B2 | A1 S1 B5 | A2 S2 B8 | A3 S3 B11.
    let later = t.after(Duration::from_secs(1)).unix_nanos;
    let cases: [(&[wire::Origin], u64, u64); 7] = [
        // Holds A to 1 and S to 2, wants nothing else stored so late.
        (
            &[held(Source::Relay(A), 1), held(Source::Session(7), 2)],
            later,
            6,
        ),
        // Holds both to their ends: nothing it lacks.
        (
            &[held(Source::Relay(A), 3), held(Source::Session(7), 3)],
            later,
            12,
        ),
        // B's own messages count by offset: it holds B's up to 5.
        (
            &[
                held(Source::Relay(A), 3),
                held(Source::Session(7), 3),
                held(Source::Relay(B), 5),
            ],
            later,
            8,
        ),
        // A source it never heard of: from the first stored at `since`,
        // which is when all were.
        (&[held(Source::Relay(A), 3)], t.unix_nanos, 0),
        // Nothing held, nothing wanted from before now: at the head.
        (&[], later, 12),
        // Positions past anything stored (a hostile client's) hold all;
        // `since` 0 wants everything of any other source.
        (
            &[
                held(Source::Relay(B), u64::MAX),
                held(Source::Relay(A), u64::MAX),
                held(Source::Session(7), u64::MAX),
            ],
            0,
            0,
        ),
        (
            &[
                held(Source::Relay(B), u64::MAX),
                held(Source::Relay(A), u64::MAX),
                held(Source::Session(7), u64::MAX),
            ],
            later,
            12,
        ),
    ];
    for (i, (vector, since, first)) in cases.into_iter().enumerate() {
        let at = t.after(Duration::from_secs(i as u64));
        let from = format!("127.0.0.{}:4000", 10 + i);
        subscribe_with_origins(
            &mut b,
            at,
            &from,
            1,
            StartPosition::Resume { since },
            vector,
        );
        let frames = Sent::collect(&mut b).frames_to(&from);
        assert_eq!(
            frames[0],
            format!("subscribed 1 first={first} next=12 lease=30000"),
            "case {i}: {frames:?}"
        );
    }
}

/// Makes `b` relay B of a cluster with `n` copies of relay A's messages
/// of `len` bytes stored at `t`; a second later, and a resume from then.
fn copies_of_a(b: &mut Relay, t: Now, n: u64, len: usize) -> (Now, StartPosition) {
    b.enable_cluster(t, B, &[]);
    for i in 0..n {
        let o = from_relay(A, i, Some(i));
        assert_eq!(
            b.handle_remote(t, "news", o, false, &vec![b'a'; len]),
            Remote::Appended
        );
    }
    let later = t.after(Duration::from_secs(1));
    let since = later.unix_nanos;
    (later, StartPosition::Resume { since })
}

#[test]
fn a_resume_walks_back_across_segments_and_a_keepalive_does_not_walk_again() {
    let (mut b, _d) = relay_with(|c| c.log.segment_size = 4096);
    let t = start();
    let (later, resume) = copies_of_a(&mut b, t, 200, 64);
    let vector = [held(Source::Relay(A), 9)];
    subscribe_with_origins(&mut b, later, ALICE, 1, resume, &vector);
    let frames = Sent::collect(&mut b).frames_to(ALICE);
    assert_eq!(frames[0], "subscribed 1 first=10 next=200 lease=30000");
    assert_eq!(
        frames[1],
        format!("deliver 1 @10 {} [relay a#10]", "a".repeat(64))
    );
    // Sent again (its answer lost), it is the same subscription.
    for _ in 0..3 {
        subscribe_with_origins(&mut b, later, ALICE, 1, resume, &vector);
        let again = Sent::collect(&mut b).frames_to(ALICE);
        assert!(again[0].starts_with("subscribed 1 first=10 "), "{again:?}");
    }
}

#[test]
fn resumes_from_one_source_are_limited_and_outside_a_cluster_start_at_the_head() {
    let (mut b, _d) = clustered(B);
    let t = start();
    interleaved(&mut b, t);
    let resume = StartPosition::Resume { since: 0 };
    // (Loopback is not limited: every local client shares it.)
    let remote = "192.0.2.7:4000";
    for sub_id in 1..=5 {
        subscribe_with_origins(&mut b, t, remote, sub_id, resume, &[]);
    }
    let frames = Sent::collect(&mut b).frames_to(remote);
    let answers: Vec<String> = (frames.into_iter())
        .filter(|f| f.starts_with("subscribed") || f.starts_with("error"))
        .collect();
    let mut want: Vec<String> = (1..=4)
        .map(|i| format!("subscribed {i} first=0 next=12 lease=30000"))
        .collect();
    want.push("error limit-reached".into());
    assert_eq!(answers, want);
    let (mut alone, _d) = relay();
    publish(&mut alone, t, "news", b"x");
    subscribe_with_origins(&mut alone, t, ALICE, 1, resume, &[]);
    let frames = Sent::collect(&mut alone).frames_to(ALICE);
    assert_eq!(frames, ["subscribed 1 first=1 next=1 lease=30000"]);
}

#[test]
fn a_channel_first_followed_for_a_resume_is_followed_from_its_since() {
    let (mut b, _d) = clustered(B);
    let t = start();
    let since = t.unix_nanos - 10;
    subscribe_with_origins(&mut b, t, ALICE, 1, StartPosition::Resume { since }, &[]);
    let later = run_timers(&mut b, t, t.after(Duration::from_secs(1)));
    let asked: Vec<Interest> = std::iter::from_fn(|| b.poll_interest()).collect();
    assert_eq!(
        asked,
        [Interest::Follow {
            name: "news".into(),
            since: Some(since)
        }]
    );
    // A copy that comes later is sent with its origin.
    b.handle_remote(later, "news", from_relay(A, 0, Some(0)), false, b"late");
    let frames = Sent::collect(&mut b).frames_to(ALICE);
    assert!(
        frames.contains(&"deliver 1 @0 late [relay a#0]".to_string()),
        "{frames:?}"
    );
}

/// Carries datagrams between `sub` (at ALICE) and relay `r` at `t` until
/// neither has anything to send; returns the payloads it handed over.
fn exchange(sub: &mut crate::client::ReliableSubscription, r: &mut Relay, t: Now) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let mut moved = false;
        while let Some(d) = sub.poll_transmit(t.instant) {
            r.handle_datagram(t, addr(ALICE), &d);
            moved = true;
        }
        while let Some(tx) = r.poll_transmit() {
            if tx.destination == addr(ALICE) {
                sub.handle_datagram(t.instant, &tx.payload, |e| {
                    if let crate::client::SubscriptionEvent::Message { payload, .. } = e {
                        got.push(String::from_utf8_lossy(payload).into_owned());
                    }
                });
            }
            moved = true;
        }
        if !moved {
            return got;
        }
    }
}

fn origins_subscriber(t: Now) -> crate::client::ReliableSubscription {
    let config = crate::reliable::ArqConfig::default();
    crate::client::ReliableSubscription::new(1, "news", StartPosition::Earliest, config, t.instant)
        .unwrap()
        .with_origins(0)
}

#[test]
fn copies_stored_after_a_publisher_moved_here_reach_a_subscriber_that_moved_here_too() {
    let (mut c, _dc) = clustered(C);
    let (mut b, _db) = clustered(B);
    let t = start();
    let copy = |r: &mut Relay, seq: u64| {
        let payload = format!("s{seq}");
        r.handle_remote(
            t,
            "news",
            session_at(7, seq, Some(seq)),
            false,
            payload.as_bytes(),
        )
    };
    let mut sub = origins_subscriber(t);
    for seq in 0..3 {
        copy(&mut c, seq);
    }
    assert_eq!(exchange(&mut sub, &mut c, t), ["s0", "s1", "s2"]);
    // C dies; the subscriber and the publisher both move to B. The
    // publisher goes on at 5; the copies of 3 and 4 come after.
    assert!(sub.moved(t.instant));
    assert!(exchange(&mut sub, &mut b, t).is_empty());
    rpiece(&mut b, t, 7, (5, 5, false), b"s5");
    for seq in 0..5 {
        assert_eq!(copy(&mut b, seq), Remote::Appended, "copy {seq}");
    }
    let got = exchange(&mut sub, &mut b, t);
    assert_eq!(got, ["s5", "s3", "s4"], "each it lacked, once");
}

#[test]
fn a_busy_channel_resumes_from_the_time_not_from_its_oldest_message() {
    let (mut b, _d) = relay_with(|c| c.max_message_size = 2048);
    let t = start();
    let n = 70_000;
    // Holds all of A; wants nothing else stored before a second later: 70
    // MB lie between it and the head, more than one walk reads.
    let (later, resume) = copies_of_a(&mut b, t, n, 1000);
    subscribe_with_origins(
        &mut b,
        later,
        ALICE,
        1,
        resume,
        &[held(Source::Relay(A), n - 1)],
    );
    let frames = Sent::collect(&mut b).frames_to(ALICE);
    assert_eq!(
        frames[0],
        format!("subscribed 1 first={n} next={n} lease=30000")
    );
}

#[test]
fn a_resume_on_a_channel_followed_already_leaves_no_start_time_behind() {
    let (mut b, _d) = clustered(B);
    let t = start();
    subscribe(&mut b, t, BOB, 9, "news");
    let t1 = run_timers(&mut b, t, t.after(Duration::from_secs(1)));
    let asked: Vec<Interest> = std::iter::from_fn(|| b.poll_interest()).collect();
    assert_eq!(
        asked,
        [Interest::Follow {
            name: "news".into(),
            since: None
        }]
    );
    let resume = StartPosition::Resume {
        since: t.unix_nanos - 5,
    };
    subscribe_with_origins(&mut b, t1, ALICE, 1, resume, &[]);
    // Both go; later a subscriber comes back: followed from now.
    send(&mut b, t1, BOB, &[Frame::Unsubscribe { sub_id: 9 }]);
    send(&mut b, t1, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    let t2 = run_timers(&mut b, t1, t1.after(Duration::from_secs(1)));
    let asked: Vec<Interest> = std::iter::from_fn(|| b.poll_interest()).collect();
    assert_eq!(asked, [Interest::Unfollow("news".into())]);
    subscribe(&mut b, t2, BOB, 9, "news");
    run_timers(&mut b, t2, t2.after(Duration::from_secs(1)));
    let asked: Vec<Interest> = std::iter::from_fn(|| b.poll_interest()).collect();
    assert_eq!(
        asked,
        [Interest::Follow {
            name: "news".into(),
            since: None
        }]
    );
}

#[test]
fn a_message_with_its_origin_too_large_for_one_datagram_goes_in_pieces() {
    let (mut b, _d) = relay_with(|c| c.max_message_size = 1 << 20);
    let t = start();
    b.enable_cluster(t, B, &[]);
    // As large as a DELIVER without an origin can be.
    let len = wire::MAX_DATAGRAM - wire::HEADER_LEN - wire::DELIVER_OVERHEAD;
    subscribe_with_origins(&mut b, t, ALICE, 1, StartPosition::Latest, &[]);
    Sent::collect(&mut b);
    let o = from_relay(A, 0, Some(0));
    assert_eq!(
        b.handle_remote(t, "news", o, false, &vec![b'x'; len]),
        Remote::Appended
    );
    let sent = Sent::collect(&mut b);
    let to_alice: Vec<&Transmit> = (sent.datagrams.iter())
        .filter(|d| d.destination == addr(ALICE))
        .collect();
    assert!(to_alice.len() > 1, "in pieces");
    for d in to_alice {
        assert!(d.payload.len() <= wire::MAX_DATAGRAM);
        for frame in wire::decode_datagram(&d.payload).unwrap() {
            assert!(matches!(
                frame.unwrap(),
                Frame::DeliverFragment {
                    origin: Some(_),
                    ..
                }
            ));
        }
    }
}

#[test]
fn a_sessions_message_is_told_by_its_session_at_the_relay_it_was_published_at() {
    let (mut a, _d) = clustered(A);
    let t = start();
    subscribe_with_origins(&mut a, t, ALICE, 1, StartPosition::Latest, &[]);
    publish(&mut a, t, "news", b"plain");
    rpiece(&mut a, t, 7, (0, 0, true), b"he");
    rpiece(&mut a, t, 7, (1, 0, false), b"llo");
    let frames = Sent::collect(&mut a).frames_to(ALICE);
    let mut delivered: Vec<&String> = frames.iter().filter(|f| f.starts_with("deliver")).collect();
    // (Thin-stream redundancy sends the first again beside the second.)
    delivered.sort();
    delivered.dedup();
    assert_eq!(
        delivered,
        [
            "deliver 1 @0 plain [relay a#0]",
            "deliver 1 @1 hello [session 7#1]"
        ]
    );
}

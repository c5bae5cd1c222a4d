//! The relay's side of a cluster, with no NATS: what goes up, what comes
//! down, once each.

use super::*;
use crate::relay::cluster::WINDOW;

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
        c.handle_remote(t, "news", A, (o.offset, false), &o.payload);
    }
    let frames = Sent::collect(&mut c).frames_to(ALICE);
    assert_eq!(
        frames,
        ["deliver 1 @0 x", "deliver 1 @1 y", "deliver 1 @2 z"]
    );
    assert_eq!(c.counters().bridge_received, 3);
    assert_eq!(c.counters().bridge_duplicates, 3);
    assert_eq!(
        c.handle_remote(t, "news", C, (9, false), b"mine"),
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

/// Feeds `c` remote messages (channel, source, offset, past a gap) and
/// checks what became of each.
fn feed(c: &mut Relay, t: Now, cases: &[(&str, u64, u64, bool, Remote)]) {
    for &(channel, source, offset, past_a_gap, want) in cases {
        let got = c.handle_remote(t, channel, source, (offset, past_a_gap), b"m");
        assert_eq!(got, want, "{channel} {source:x}:{offset}");
    }
}

#[test]
fn a_message_ahead_of_its_source_waits_and_a_restart_remembers_each_source() {
    let (dir, config) = on_disk();
    let t = start();
    let mut c = Relay::open(&config, t).unwrap();
    c.enable_cluster(t, C, &[]);
    feed(
        &mut c,
        t,
        &[
            ("news", A, 7, false, Remote::Appended),
            ("news", A, 9, false, Remote::Ahead),
        ],
    );
    assert_eq!(c.next_offset("news"), Some(1), "not stored");
    feed(
        &mut c,
        t,
        &[
            ("news", A, 8, false, Remote::Appended),
            ("news", A, 9, false, Remote::Appended),
            ("news", 0xb, 0, false, Remote::Appended),
            ("a pattern.>", A, 0, false, Remote::Duplicate),
        ],
    );
    drop(c);
    let mut c = Relay::open(&config, t).unwrap();
    c.enable_cluster(t, C, &[]);
    feed(
        &mut c,
        t,
        &[
            ("news", A, 9, false, Remote::Duplicate),
            ("news", 0xb, 0, false, Remote::Duplicate),
            ("news", A, 10, false, Remote::Appended),
            // Given up for lost, what is missing is a gap.
            ("news", A, 20, true, Remote::Appended),
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
            Interest::Follow("news".into()),
            Interest::Follow("sensors.>".into())
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
        c.handle_remote(t, "news", A, (0, false), b"copy 1"),
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

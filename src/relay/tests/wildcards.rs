//! Wildcard subscriptions through the relay core: which channels a pattern
//! follows, under which ids, from where, and what ends them.

use super::*;

/// Wildcard subscription `sub_id` of ALICE to `pattern`, from the latest.
fn wildcard(relay: &mut Relay, now: Now, sub_id: u32, pattern: &str) {
    wildcard_from(
        relay,
        now,
        sub_id,
        DeliveryMode::Unreliable,
        StartPosition::Latest,
        pattern,
    );
}

fn wildcard_from(
    relay: &mut Relay,
    now: Now,
    sub_id: u32,
    mode: DeliveryMode,
    start: StartPosition,
    channel: &str,
) {
    let frame = Frame::Subscribe {
        sub_id,
        mode,
        start,
        channel,
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(relay, now, ALICE, &[frame]);
}

/// The MATCHED frames among `frames`: channel name to the relay's id.
fn matched(frames: &[String]) -> Vec<(String, u32)> {
    frames
        .iter()
        .filter_map(|f| {
            let mut words = f.strip_prefix("matched ")?.split(' ');
            let _wildcard = words.next()?;
            let channel = words.next()?.to_string();
            let id = words.nth(1)?.parse().ok()?;
            Some((channel, id))
        })
        .collect()
}

#[test]
fn a_pattern_follows_the_channels_it_matches_now_and_later_each_under_its_own_id() {
    let (mut r, _dir) = relay();
    let t = start();
    publish(&mut r, t, "sensors.a", b"a0");
    publish(&mut r, t, "sensors.a", b"a1");
    publish(&mut r, t, "sensors", b"not one token more");
    publish(&mut r, t, "sensors.a.deep", b"two tokens more");
    publish(&mut r, t, "other.a", b"elsewhere");
    Sent::collect(&mut r);
    wildcard_from(
        &mut r,
        t,
        5,
        DeliveryMode::Unreliable,
        StartPosition::Earliest,
        "sensors.*",
    );
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(frames[0], "subscribed 5 first=0 next=0 lease=30000");
    let ids = matched(&frames);
    assert_eq!(ids.len(), 1, "only sensors.a matches sensors.*: {frames:?}");
    let (name, a) = &ids[0];
    assert_eq!(name, "sensors.a");
    assert!(*a >= wire::RELAY_SUB_IDS, "the relay's id {a}");
    assert_eq!(
        frames[1],
        format!("matched 5 sensors.a as {a} first=0 next=2")
    );

    // From earliest: what it holds is replayed under the channel's id.
    r.handle_timeout(t.after(Duration::from_millis(1)));
    let replayed = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        replayed,
        [format!("deliver {a} @0 a0"), format!("deliver {a} @1 a1")]
    );

    // A channel created later joins from its first message, live.
    publish(&mut r, t, "sensors.b", b"b0");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    let ids = matched(&frames);
    assert_eq!(ids.len(), 1, "{frames:?}");
    let (name, b) = &ids[0];
    assert_eq!(name, "sensors.b");
    assert_ne!(a, b);
    assert_eq!(frames[1], format!("deliver {b} @0 b0"));
    publish(&mut r, t, "sensors.a", b"a2");
    publish(&mut r, t, "sensors.c.d", b"no");
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        [format!("deliver {a} @2 a2")]
    );
    assert_eq!(r.subscription_count(), 2, "one per channel followed");
}

#[test]
fn a_rest_pattern_matches_one_or_more_tokens_and_not_its_prefix() {
    let (mut r, _dir) = relay();
    let t = start();
    wildcard(&mut r, t, 1, "sensors.>");
    Sent::collect(&mut r);
    for name in ["sensors", "sensors.a", "sensors.a.b", "sensorsx.a"] {
        publish(&mut r, t, name, name.as_bytes());
    }
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    let names: Vec<String> = matched(&frames).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["sensors.a", "sensors.a.b"]);
    let delivered: Vec<&String> = frames.iter().filter(|f| f.starts_with("deliver")).collect();
    assert_eq!(delivered.len(), 2, "{frames:?}");
}

#[test]
fn a_reliable_pattern_is_a_reliable_subscription_per_channel_with_its_own_offsets() {
    let (mut r, _dir) = relay();
    let t = start();
    for i in 0..3 {
        publish(&mut r, t, "orders.eu", format!("eu{i}").as_bytes());
    }
    Sent::collect(&mut r);
    wildcard_from(
        &mut r,
        t,
        2,
        DeliveryMode::Reliable,
        StartPosition::Earliest,
        "orders.*",
    );
    publish(&mut r, t, "orders.us", b"us0");
    let mut frames = Sent::collect(&mut r).frames_to(ALICE);
    r.handle_timeout(t.after(Duration::from_millis(1)));
    frames.extend(Sent::collect(&mut r).frames_to(ALICE));
    let ids = matched(&frames);
    let id = |name: &str| ids.iter().find(|(n, _)| n == name).unwrap().1;
    let (eu, us) = (id("orders.eu"), id("orders.us"));
    for (sub, offset, payload) in [(eu, 0, "eu0"), (eu, 2, "eu2"), (us, 0, "us0")] {
        let want = format!("deliver {sub} @{offset} {payload}");
        assert!(frames.contains(&want), "{want} in {frames:?}");
    }
    // Unacknowledged, a channel's messages are sent again under its id;
    // acknowledged, not.
    let ack = Frame::Ack {
        kind: wire::AckKind::Subscription,
        id: u64::from(eu),
        cumulative: 3,
        window: 100,
        ranges: &[],
    };
    send(&mut r, t, ALICE, &[ack]);
    Sent::collect(&mut r);
    r.handle_timeout(t.after(Duration::from_secs(2)));
    let again = Sent::collect(&mut r).frames_to(ALICE);
    assert!(again.contains(&format!("deliver {us} @0 us0")), "{again:?}");
    assert!(
        !again
            .iter()
            .any(|f| f.starts_with(&format!("deliver {eu} "))),
        "{again:?}"
    );
}

#[test]
fn a_keepalive_tells_every_channel_again_and_unsubscribe_ends_them_all() {
    let (mut r, _dir) = relay();
    let t = start();
    publish(&mut r, t, "a.x", b"1");
    publish(&mut r, t, "a.y", b"1");
    Sent::collect(&mut r);
    wildcard(&mut r, t, 3, "a.*");
    let first = matched(&Sent::collect(&mut r).frames_to(ALICE));
    assert_eq!(first.len(), 2);
    // Told at most once a second: a keepalive right after says no more.
    wildcard(&mut r, t, 3, "a.*");
    assert!(matched(&Sent::collect(&mut r).frames_to(ALICE)).is_empty());
    let t = t.after(Duration::from_secs(1));
    wildcard(&mut r, t, 3, "a.*");
    let again = matched(&Sent::collect(&mut r).frames_to(ALICE));
    let sorted = |mut v: Vec<(String, u32)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(again),
        sorted(first.clone()),
        "the same ids, told again"
    );
    assert_eq!(r.subscription_count(), 2);
    assert_eq!(
        r.counters().subscriptions_opened,
        3,
        "the wildcard and its two"
    );

    // A client may end one channel alone; the keepalive does not bring it back.
    let (_, x) = first.iter().find(|(n, _)| n == "a.x").unwrap();
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: *x }]);
    let t = t.after(Duration::from_secs(1));
    wildcard(&mut r, t, 3, "a.*");
    let kept: Vec<String> = matched(&Sent::collect(&mut r).frames_to(ALICE))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(kept, ["a.y"]);

    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 3 }]);
    assert_eq!(r.subscription_count(), 0);
    Sent::collect(&mut r);
    publish(&mut r, t, "a.y", b"after");
    publish(&mut r, t, "a.z", b"new");
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

#[test]
fn a_pattern_holding_no_channel_keeps_a_lease_and_lapses_with_it() {
    let lease = Duration::from_millis(500);
    let (mut r, _dir) = relay_with(|c| c.lease = lease);
    let t = start();
    wildcard(&mut r, t, 1, "x.>");
    assert_eq!(r.poll_timeout(), Some(t.instant + lease));
    r.handle_timeout(t.after(lease));
    Sent::collect(&mut r);
    publish(&mut r, t.after(lease), "x.y", b"late");
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

#[test]
fn channels_a_pattern_follows_count_against_the_clients_subscriptions() {
    let (mut r, _dir) = relay_with(|c| c.max_subscriptions_per_client = 2);
    let t = start();
    for name in ["m.a", "m.b", "m.c"] {
        publish(&mut r, t, name, b"1");
    }
    Sent::collect(&mut r);
    // The pattern is one of the two, and follows one channel.
    wildcard(&mut r, t, 1, "m.*");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(matched(&frames).len(), 1, "{frames:?}");
    assert!(
        frames.contains(&"error limit-reached".to_string()),
        "{frames:?}"
    );
    assert_eq!(r.subscription_count(), 1);
    // A second pattern finds no room at all.
    wildcard(&mut r, t, 2, "m.>");
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        ["error limit-reached"]
    );
}

#[test]
fn a_pattern_cannot_be_published_to_nor_be_malformed() {
    let (mut r, _dir) = relay();
    let t = start();
    send(
        &mut r,
        t,
        ALICE,
        &[Frame::Publish {
            channel: "a.*",
            payload: b"x",
        }],
    );
    send(
        &mut r,
        t,
        ALICE,
        &[Frame::Publish {
            channel: ">",
            payload: b"x",
        }],
    );
    wildcard(&mut r, t, 1, "a.>.b");
    assert_eq!(
        Sent::collect(&mut r).frames_to(ALICE),
        [
            "error bad-channel",
            "error bad-channel",
            "error bad-channel"
        ]
    );
    assert_eq!(r.counters().messages_published, 0);
    assert_eq!(r.subscription_count(), 0);
    assert_eq!(r.channels.count(), 0, "nothing was created");
}

#[test]
fn a_source_opens_a_few_wildcard_subscriptions_a_second_and_keepalives_are_free() {
    let (mut r, _dir) = relay();
    let t = start();
    let stranger = "10.1.2.3:4000";
    let pattern = |sub_id| Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "x.>",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    for sub_id in 1..=40 {
        send(&mut r, t, stranger, &[pattern(sub_id)]);
    }
    let frames = Sent::collect(&mut r).frames_to(stranger);
    let opened = frames
        .iter()
        .filter(|f| f.starts_with("subscribed"))
        .count();
    assert_eq!(opened, 2, "opened in one instant");
    assert_eq!(
        frames
            .iter()
            .filter(|f| *f == "error limit-reached")
            .count(),
        40 - opened
    );
    // Keepalives of those open are answered whatever the rate.
    for _ in 0..50 {
        send(&mut r, t, stranger, &[pattern(1)]);
    }
    let frames = Sent::collect(&mut r).frames_to(stranger);
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.starts_with("subscribed 1 "))
            .count(),
        50
    );
    // A second later the source may open more.
    send(
        &mut r,
        t.after(Duration::from_secs(1)),
        stranger,
        &[pattern(99)],
    );
    assert!(Sent::collect(&mut r).frames_to(stranger)[0].starts_with("subscribed 99"));
}

#[test]
fn a_plain_subscription_of_a_patterns_id_replaces_it() {
    let (mut r, _dir) = relay();
    let t = start();
    publish(&mut r, t, "a.x", b"1");
    wildcard(&mut r, t, 7, "a.*");
    assert_eq!(r.subscription_count(), 1);
    subscribe(&mut r, t, ALICE, 7, "news");
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 7 }]);
    assert_eq!(r.subscription_count(), 0, "neither is left");
    Sent::collect(&mut r);
    publish(&mut r, t, "a.y", b"new channel");
    assert!(Sent::collect(&mut r).frames_to(ALICE).is_empty());
}

//! Queue groups through the relay core: a channel's messages shared by the
//! members of a group, each message to one of them.

use super::*;

#[test]
fn a_queue_groups_members_share_a_channels_messages_each_once() {
    let (mut r, _dir) = relay();
    let t = start();
    let members = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"];
    let join = |r: &mut Relay, now: Now, from: &str, group: &'static str| {
        let frame = Frame::Subscribe {
            sub_id: 1,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "jobs",
            group: Some(group),
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        };
        send(r, now, from, &[frame]);
    };
    for m in members {
        join(&mut r, t, m, "workers");
    }
    // One more group of one, and a plain subscriber: each gets everything.
    join(&mut r, t, BOB, "audit");
    subscribe(&mut r, t, ALICE, 1, "jobs");
    Sent::collect(&mut r);
    let mut now = t;
    for i in 0..30 {
        now = now.after(Duration::from_millis(10));
        publish(&mut r, now, "jobs", format!("job{i}").as_bytes());
    }
    let sent = Sent::collect(&mut r);
    let delivered = |to: &str| -> Vec<String> {
        sent.frames_to(to)
            .into_iter()
            .filter(|f| f.starts_with("deliver"))
            .collect()
    };
    let mut all: Vec<String> = members.iter().flat_map(|m| delivered(m)).collect();
    for m in members {
        let n = delivered(m).len();
        assert!((8..=12).contains(&n), "{m} got {n} of 30: shared by load");
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "each message to one member, none twice");
    assert_eq!(delivered(BOB).len(), 30);
    assert_eq!(delivered(ALICE).len(), 30);
    // A member that leaves: the others take its share.
    send(&mut r, now, members[0], &[Frame::Unsubscribe { sub_id: 1 }]);
    for i in 0..10 {
        now = now.after(Duration::from_millis(10));
        publish(&mut r, now, "jobs", format!("more{i}").as_bytes());
    }
    let sent = Sent::collect(&mut r);
    let n: Vec<usize> = members
        .iter()
        .map(|m| {
            sent.frames_to(m)
                .iter()
                .filter(|f| f.starts_with("deliver"))
                .count()
        })
        .collect();
    assert_eq!(n[0], 0);
    assert_eq!(n[1] + n[2], 10);
    // A member's keepalive may name any start (a client that asks from
    // the next offset it expects): it stays a member.
    let keepalive = Frame::Subscribe {
        sub_id: 1,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Offset(5),
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(&mut r, now, members[1], &[keepalive]);
    assert!(Sent::collect(&mut r).frames_to(members[1])[0].starts_with("subscribed 1"));
    // A reliable member of a plain group, and a member that starts in the
    // past, are refused.
    let reliable = Frame::Subscribe {
        sub_id: 2,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Latest,
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    let earliest = Frame::Subscribe {
        sub_id: 3,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(&mut r, now, "127.0.0.1:3009", &[reliable, earliest]);
    assert_eq!(
        Sent::collect(&mut r).frames_to("127.0.0.1:3009"),
        ["error unsupported", "error unsupported"]
    );
}

/// A reliable member of group "workers" of "jobs", as `sub_id`.
fn join_reliable(r: &mut Relay, now: Now, from: &str, sub_id: u32) {
    let frame = Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Latest,
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(r, now, from, &[frame]);
}

/// Acknowledges everything below `cumulative` of subscription `sub_id`.
fn ack(r: &mut Relay, now: Now, from: &str, sub_id: u32, cumulative: u64) {
    let frame = Frame::Ack {
        kind: wire::AckKind::Subscription,
        id: u64::from(sub_id),
        cumulative,
        window: 4096,
        ranges: &[],
    };
    send(r, now, from, &[frame]);
}

/// The (member offset, payload) of each delivery in `frames`.
fn deliveries(frames: &[String]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| f.strip_prefix("deliver "))
        .map(|f| {
            let mut parts = f.splitn(3, ' ');
            let _sub_id = parts.next();
            let offset = parts.next().unwrap()[1..].parse().unwrap();
            (offset, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn reliable_members_share_every_message_once_and_the_slow_one_gets_fewest() {
    let (mut r, _dir) = relay();
    let t = start();
    let members = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"];
    for m in members {
        join_reliable(&mut r, t, m, 4);
    }
    let sent = Sent::collect(&mut r);
    for m in members {
        assert_eq!(
            sent.frames_to(m),
            ["subscribed 4 first=0 next=0 lease=30000"],
            "a member's offsets are its own, from 0"
        );
    }
    // Two members acknowledge at once; the third only every tenth message.
    let mut got: Vec<Vec<(u64, String)>> = vec![Vec::new(); 3];
    let mut now = t;
    for i in 0..300 {
        now = now.after(Duration::from_millis(1));
        publish(&mut r, now, "jobs", format!("job{i}").as_bytes());
        let sent = Sent::collect(&mut r);
        for (k, m) in members.iter().enumerate() {
            got[k].extend(deliveries(&sent.frames_to(m)));
            if k < 2 || i % 10 == 9 {
                ack(&mut r, now, m, 4, got[k].len() as u64);
            }
        }
    }
    for (k, m) in members.iter().enumerate() {
        let offsets: Vec<u64> = got[k].iter().map(|(o, _)| *o).collect();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "{m}: its own offsets, without holes");
    }
    let mut all: Vec<&str> = got.iter().flatten().map(|(_, p)| p.as_str()).collect();
    assert_eq!(all.len(), 300, "every message to one member");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 300, "none twice");
    let n: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        n[2] < n[0] && n[2] < n[1],
        "the member slow to acknowledge got the fewest: {n:?}"
    );
    assert_eq!(r.counters().group_redeliveries, 0);
}

#[test]
fn what_a_member_leaves_unacknowledged_goes_to_another_and_nothing_acknowledged_does() {
    let (mut r, _dir) = relay();
    let t = start();
    let (a, b) = ("127.0.0.1:3001", "127.0.0.1:3002");
    join_reliable(&mut r, t, a, 1);
    join_reliable(&mut r, t, b, 2);
    Sent::collect(&mut r);
    let mut now = t;
    for i in 0..20 {
        now = now.after(Duration::from_millis(1));
        publish(&mut r, now, "jobs", format!("job{i:02}").as_bytes());
    }
    let sent = Sent::collect(&mut r);
    let (to_a, to_b) = (
        deliveries(&sent.frames_to(a)),
        deliveries(&sent.frames_to(b)),
    );
    assert_eq!(to_a.len() + to_b.len(), 20);
    assert!(to_a.len() >= 4, "both had messages: {} to a", to_a.len());
    // a acknowledges its first two and then goes; b acknowledges all.
    ack(&mut r, now, a, 1, 2);
    ack(&mut r, now, b, 2, to_b.len() as u64);
    Sent::collect(&mut r);
    send(&mut r, now, a, &[Frame::Unsubscribe { sub_id: 1 }]);
    let again = deliveries(&Sent::collect(&mut r).frames_to(b));
    let left: Vec<String> = to_a[2..].iter().map(|(_, p)| p.clone()).collect();
    let given: Vec<String> = again.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(given, left, "b gets what a left unacknowledged, in order");
    let offsets: Vec<u64> = again.iter().map(|(o, _)| *o).collect();
    let from = to_b.len() as u64;
    assert_eq!(
        offsets,
        (from..from + left.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(r.counters().group_redeliveries, left.len() as u64);
    // A member whose lease lapses: the same. c joins; b goes silent.
    let c = "127.0.0.1:3003";
    ack(&mut r, now, b, 2, from + left.len() as u64);
    join_reliable(&mut r, now, c, 3);
    Sent::collect(&mut r);
    for i in 0..6 {
        now = now.after(Duration::from_millis(1));
        publish(&mut r, now, "jobs", format!("late{i}").as_bytes());
    }
    let sent = Sent::collect(&mut r);
    let (to_b, to_c) = (
        deliveries(&sent.frames_to(b)),
        deliveries(&sent.frames_to(c)),
    );
    assert!(!to_b.is_empty() && !to_c.is_empty(), "{to_b:?} {to_c:?}");
    let mut c_has: Vec<String> = to_c.iter().map(|(_, p)| p.clone()).collect();
    // c keeps its lease and acknowledges; b says nothing more.
    let mut until = now;
    for _ in 0..40 {
        until = until.after(Duration::from_secs(1));
        join_reliable(&mut r, until, c, 3);
        until = run_timers(&mut r, until, until);
        let sent = Sent::collect(&mut r);
        for (_, p) in deliveries(&sent.frames_to(c)) {
            if !c_has.contains(&p) {
                c_has.push(p);
            }
        }
        ack(&mut r, until, c, 3, c_has.len() as u64);
    }
    c_has.sort();
    let expected: Vec<String> = (0..6).map(|i| format!("late{i}")).collect();
    assert_eq!(c_has, expected, "b's share went to c once b's lease lapsed");
    let redelivered = r.counters().group_redeliveries;
    assert_eq!(redelivered, (left.len() + to_b.len()) as u64);
    assert_eq!(r.counters().subscriptions_expired, 1, "b's lease lapsed");
}

#[test]
fn a_group_is_reliable_or_plain_not_both() {
    let (mut r, _dir) = relay();
    let t = start();
    join_reliable(&mut r, t, ALICE, 1);
    let plain = Frame::Subscribe {
        sub_id: 2,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(&mut r, t, BOB, &[plain]);
    let frames = Sent::collect(&mut r).frames_to(BOB);
    assert_eq!(frames, ["error unsupported"]);
    assert_eq!(r.subscription_count(), 1);
    // Once its last member goes, the name is free again.
    send(&mut r, t, ALICE, &[Frame::Unsubscribe { sub_id: 1 }]);
    send(&mut r, t, BOB, &[plain]);
    let frames = Sent::collect(&mut r).frames_to(BOB);
    assert_eq!(frames, ["subscribed 2 first=0 next=0 lease=30000"]);
}

#[test]
fn a_member_taken_back_goes_on_from_where_its_receiver_is() {
    let (mut r, _dir) = relay();
    let t = start();
    let frame = Frame::Subscribe {
        sub_id: 4,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Offset(5),
        channel: "jobs",
        group: Some("workers"),
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    send(&mut r, t, ALICE, &[frame]);
    publish(&mut r, t, "jobs", b"next");
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(
        frames,
        [
            "subscribed 4 first=5 next=5 lease=30000",
            "deliver 4 @5 next"
        ]
    );
    // Its keepalive, numbered on, changes nothing.
    send(&mut r, t, ALICE, &[frame]);
    let frames = Sent::collect(&mut r).frames_to(ALICE);
    assert_eq!(frames, ["subscribed 4 first=5 next=6 lease=30000"]);
}

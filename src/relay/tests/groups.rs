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
    };
    send(&mut r, now, members[1], &[keepalive]);
    assert!(Sent::collect(&mut r).frames_to(members[1])[0].starts_with("subscribed 1"));
    // Reliable groups and members that start in the past are refused.
    let reliable = Frame::Subscribe {
        sub_id: 2,
        mode: DeliveryMode::Reliable,
        start: StartPosition::Latest,
        channel: "jobs",
        group: Some("workers"),
    };
    let earliest = Frame::Subscribe {
        sub_id: 3,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Earliest,
        channel: "jobs",
        group: Some("workers"),
    };
    send(&mut r, now, "127.0.0.1:3009", &[reliable, earliest]);
    assert_eq!(
        Sent::collect(&mut r).frames_to("127.0.0.1:3009"),
        ["error unsupported", "error unsupported"]
    );
}

//! A key file read again while clients hold sessions, subscriptions and
//! publishing sessions under it ([`Relay::rekey`]): what a kept key holds
//! goes on, what a removed or changed key or a withdrawn permission held
//! ends, its client told with an ERROR it can open.

use std::net::SocketAddr;

use super::quota_tests::{
    Client, EVERYTHING, Keyed, error, key_entry, relay_with_keys, subscribed,
};
use super::tests::subscribe_frame;
use crate::auth::KeyFile;
use crate::config::RelayConfig;
use crate::wire::{ErrorCode, Frame};

/// Keys 1 (`greedy`) and 2 (`other`), both allowed everything, and raw-in
/// port 0 feeding channel `news.a`, port 1 `news.b`.
fn keyed() -> Keyed {
    let config = RelayConfig {
        raw_in: vec![
            (SocketAddr::from(([127, 0, 0, 1], 0)), "news.a".into()),
            (SocketAddr::from(([127, 0, 0, 1], 0)), "news.b".into()),
        ],
        ..RelayConfig::default()
    };
    relay_with_keys(&both(EVERYTHING), config)
}

/// The key file with `greedy`'s permissions `greedy`, `other` unchanged.
fn both(greedy: &str) -> String {
    key_entry("greedy", 1, 5, greedy) + &key_entry("other", 2, 6, EVERYTHING)
}

fn rekey(k: &mut Keyed, text: &str) -> super::reload::Revoked {
    k.relay
        .rekey(k.now, KeyFile::parse(text).unwrap(), true, 1000)
}

fn subscribe(c: &mut Client, k: &mut Keyed, sub_id: u32, channel: &str) -> Vec<Frame<'static>> {
    c.frames(k, &[subscribe_frame(sub_id, channel)])
}

/// Feeds `payload` to raw-in port `port`; the subscription ids it was
/// delivered to, all at `c`.
fn feed(k: &mut Keyed, c: &mut Client, port: usize, payload: &[u8]) -> Vec<u32> {
    k.relay.handle_raw(k.now, port, payload);
    (c.receive(k).iter())
        .filter_map(|f| match f {
            Frame::Deliver {
                sub_id, payload: p, ..
            } if *p == payload => Some(*sub_id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_key_kept_as_it_was_keeps_its_sessions_and_subscriptions() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    assert!(subscribed(&subscribe(&mut a, &mut k, 1, "news.a")));
    // The same keys in another order, and a new one.
    let text = key_entry("new", 3, 7, EVERYTHING) + &both(EVERYTHING);
    assert_eq!(rekey(&mut k, &text), super::reload::Revoked::default());
    assert!(a.receive(&mut k).is_empty(), "nothing to say");
    assert_eq!(feed(&mut k, &mut a, 0, b"still here"), [1]);
    // Its session still works both ways.
    assert!(subscribed(&subscribe(&mut a, &mut k, 2, "news.b")));
    assert_eq!(k.relay.counters().revoked, 0);
}

#[test]
fn a_key_removed_or_changed_ends_its_sessions_with_an_error_they_can_open() {
    let mut k = keyed();
    let (greedy, other) = (k.greedy.clone(), k.other.clone());
    let mut a = Client::connect(&mut k, &greedy, 7001);
    let mut b = Client::connect(&mut k, &other, 7002);
    assert!(subscribed(&subscribe(&mut a, &mut k, 1, "news.a")));
    assert!(subscribed(&subscribe(&mut b, &mut k, 1, "news.a")));
    // `greedy` removed; `other` gets a new secret under the same id.
    let text = key_entry("other", 2, 9, EVERYTHING);
    let revoked = rekey(&mut k, &text);
    assert_eq!(revoked.keyed_sessions, 2);
    let mut told = Vec::new();
    let mut plain = Vec::new();
    while let Some(t) = k.relay.poll_transmit() {
        let c = if t.destination == a.addr {
            &mut a
        } else {
            &mut b
        };
        let opened = c
            .sealed
            .open(&t.payload, &mut plain)
            .expect("sealed for it");
        let frames: Vec<_> = crate::wire::decode_datagram(opened).unwrap().collect();
        let reason = match frames.as_slice() {
            [Ok(Frame::Error { code, reason })] => (*code, reason.to_string()),
            other => panic!("one ERROR, not {other:?}"),
        };
        told.push((t.destination, reason));
    }
    told.sort_by_key(|(to, _)| *to);
    assert_eq!(
        told,
        [
            (
                a.addr,
                (
                    ErrorCode::DENIED,
                    "key \"greedy\" was removed from the relay's key file or changed".into()
                )
            ),
            (
                b.addr,
                (
                    ErrorCode::DENIED,
                    "key \"other\" was removed from the relay's key file or changed".into()
                )
            ),
        ]
    );
    // What they held went with them; what they send now opens nothing.
    assert_eq!(k.relay.subscription_count(), 0);
    let before = k.relay.counters().dropped_forged;
    assert!(subscribe(&mut a, &mut k, 2, "news.a").is_empty());
    assert_eq!(k.relay.counters().dropped_forged, before + 1);
    assert_eq!(k.relay.counters().revoked, 2);
}

#[test]
fn a_withdrawn_subscribe_permission_ends_that_subscription_only() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    assert!(subscribed(&subscribe(&mut a, &mut k, 1, "news.a")));
    assert!(subscribed(&subscribe(&mut a, &mut k, 2, "news.b")));
    let revoked = rekey(&mut k, &both("publish = [\">\"]\nsubscribe = [\"news.b\"]"));
    assert_eq!(revoked.subscriptions, 1);
    assert_eq!(revoked.keyed_sessions, 0);
    let told = a.receive(&mut k);
    let (code, reason) = error(&told).expect("an ERROR");
    assert_eq!(code, ErrorCode::DENIED);
    assert!(reason.contains("news.a"), "names the channel: {reason}");
    assert_eq!(feed(&mut k, &mut a, 0, b"a"), [0u32; 0]);
    assert_eq!(feed(&mut k, &mut a, 1, b"b"), [2]);
    // A new request is judged by the new permissions too.
    let refused = subscribe(&mut a, &mut k, 3, "news.a");
    assert!(!subscribed(&refused));
    assert_eq!(error(&refused).map(|e| e.0), Some(ErrorCode::DENIED));
}

#[test]
fn a_wildcard_loses_the_channels_now_denied_and_keeps_the_rest() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    // Both channels exist, then the pattern follows them.
    k.relay.handle_raw(k.now, 0, b"first a");
    k.relay.handle_raw(k.now, 1, b"first b");
    assert!(subscribed(&subscribe(&mut a, &mut k, 9, "news.>")));
    let followed = |frames: &[Frame<'_>]| frames.iter().any(|f| matches!(f, Frame::Deliver { .. }));
    assert!(!followed(&a.receive(&mut k)));
    assert_eq!(feed(&mut k, &mut a, 0, b"a").len(), 1);
    assert_eq!(feed(&mut k, &mut a, 1, b"b").len(), 1);
    let text = both("publish = [\">\"]\nsubscribe = [\"news.>\"]\ndeny-subscribe = [\"news.b\"]");
    let revoked = rekey(&mut k, &text);
    assert_eq!(
        revoked,
        super::reload::Revoked::default(),
        "the pattern stays"
    );
    assert!(
        a.receive(&mut k).is_empty(),
        "a channel left out is not an error"
    );
    assert_eq!(feed(&mut k, &mut a, 0, b"a2").len(), 1);
    assert!(feed(&mut k, &mut a, 1, b"b2").is_empty());
    // A pattern no longer allowed at all ends, with an ERROR.
    let revoked = rekey(
        &mut k,
        &both("publish = [\">\"]\nsubscribe = [\"sports.>\"]"),
    );
    assert_eq!(revoked.subscriptions, 1);
    assert_eq!(
        error(&a.receive(&mut k)).map(|e| e.0),
        Some(ErrorCode::DENIED)
    );
    assert!(feed(&mut k, &mut a, 0, b"a3").is_empty());
    assert_eq!(k.relay.subscription_count(), 0);
}

#[test]
fn a_withdrawn_publish_permission_ends_the_reliable_session_that_used_it() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    let publish = |a: &mut Client, k: &mut Keyed, seq: u64, channel: &str| {
        let piece = Frame::ReliablePublish {
            session: 4,
            seq,
            acked_below: 0,
            more: false,
            channel,
            payload: b"order",
        };
        a.frames(k, &[piece])
    };
    let acked = |frames: &[Frame<'_>]| {
        frames
            .iter()
            .any(|f| matches!(f, Frame::Ack { id: 4, cumulative, .. } if *cumulative > 0))
    };
    assert!(acked(&publish(&mut a, &mut k, 0, "orders")));
    let revoked = rekey(
        &mut k,
        &both("publish = [\"metrics.>\"]\nsubscribe = [\">\"]"),
    );
    assert_eq!(revoked.publishing_sessions, 1);
    let told = a.receive(&mut k);
    let (code, reason) = error(&told).expect("an ERROR");
    assert_eq!(code, ErrorCode::DENIED);
    assert!(reason.contains("orders"), "names the channel: {reason}");
    // The next message of the session is judged again, and refused.
    let refused = publish(&mut a, &mut k, 1, "orders");
    assert!(!acked(&refused));
    assert_eq!(error(&refused).map(|e| e.0), Some(ErrorCode::DENIED));
}

#[test]
fn required_becoming_optional_and_back_judges_plain_clients() {
    let mut k = keyed();
    let text = both(EVERYTHING) + "[anonymous]\nsubscribe = [\"news.a\"]\n";
    k.relay
        .rekey(k.now, KeyFile::parse(&text).unwrap(), false, 1000);
    // A plain client now may subscribe to news.a.
    let addr = SocketAddr::from(([127, 0, 0, 1], 7009));
    let mut proof = crate::client::AddressProof::new();
    let plain = |k: &mut Keyed, proof: &mut crate::client::AddressProof, d: Vec<u8>| {
        k.relay.handle_datagram(k.now, addr, &proof.stamp(d));
        let mut frames = Vec::new();
        while let Some(t) = k.relay.poll_transmit() {
            assert_eq!(t.destination, addr);
            let d: &'static [u8] = Box::leak(t.payload.to_vec().into_boxed_slice());
            proof.handle_datagram(k.now.instant, d);
            frames.extend(crate::wire::decode_datagram(d).unwrap().map(Result::unwrap));
        }
        frames
    };
    plain(&mut k, &mut proof, crate::client::AddressProof::hello());
    assert!(proof.is_proven());
    let request = subscribe_frame(1, "news.a");
    let d = crate::wire::encode_datagram(&[request]).unwrap();
    assert!(subscribed(&plain(&mut k, &mut proof, d)));
    // Keys required again: the plain subscription ends, and it is told.
    let revoked = k
        .relay
        .rekey(k.now, KeyFile::parse(&text).unwrap(), true, 1000);
    assert_eq!(revoked.subscriptions, 1);
    let told: Vec<_> = std::iter::from_fn(|| k.relay.poll_transmit()).collect();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].destination, addr);
    let frames: Vec<_> = crate::wire::decode_datagram(&told[0].payload)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Error {
                code: ErrorCode::DENIED,
                ..
            }]
        ),
        "{frames:?}"
    );
    assert_eq!(k.relay.subscription_count(), 0);
}

#[test]
fn a_lowered_max_auth_sessions_refuses_new_sessions() {
    let mut k = keyed();
    let (greedy, other) = (k.greedy.clone(), k.other.clone());
    let _a = Client::connect(&mut k, &greedy, 7001);
    let _b = Client::connect(&mut k, &other, 7002);
    let _c = Client::connect(&mut k, &greedy, 7003);
    // `other` removed (frees its slot), at most 1 session from now on.
    let text = key_entry("greedy", 1, 5, EVERYTHING);
    let r = k
        .relay
        .rekey(k.now, KeyFile::parse(&text).unwrap(), true, 1);
    assert_eq!(r.keyed_sessions, 1);
    while k.relay.poll_transmit().is_some() {}
    // Two live, the maximum 1: a third must be refused.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Client::connect(&mut k, &greedy, 7004);
    }))
    .is_ok();
    assert!(
        !opened,
        "a new session opened with 2 live and --max-auth-sessions 1"
    );
}

#[test]
fn a_kept_keys_rate_is_not_refilled_by_a_reload() {
    let text = key_entry(
        "greedy",
        1,
        5,
        &format!("{EVERYTHING}\nmessages-per-sec = 2"),
    ) + &key_entry("other", 2, 6, EVERYTHING);
    let mut k = relay_with_keys(&text, RelayConfig::default());
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    let publish = Frame::Publish {
        channel: "x",
        payload: b"p",
    };
    for _ in 0..5 {
        a.frames(&mut k, &[publish]);
    }
    assert_eq!(k.relay.next_offset("x"), Some(2));
    // The same file again, at the same instant.
    k.relay
        .rekey(k.now, KeyFile::parse(&text).unwrap(), true, 1000);
    for _ in 0..5 {
        a.frames(&mut k, &[publish]);
    }
    assert_eq!(
        k.relay.next_offset("x"),
        Some(2),
        "a reload gave the key a fresh burst"
    );
}

#[test]
fn a_wildcard_follows_a_channel_a_reload_allows_again() {
    let mut k = keyed();
    let deny = both("publish = [\">\"]\nsubscribe = [\"news.>\"]\ndeny-subscribe = [\"news.b\"]");
    rekey(&mut k, &deny);
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    k.relay.handle_raw(k.now, 0, b"first a");
    k.relay.handle_raw(k.now, 1, b"first b");
    assert!(subscribed(&subscribe(&mut a, &mut k, 9, "news.>")));
    a.receive(&mut k);
    assert!(feed(&mut k, &mut a, 1, b"b").is_empty());
    rekey(&mut k, &both(EVERYTHING));
    k.now = k.now.after(std::time::Duration::from_secs(2));
    subscribe(&mut a, &mut k, 9, "news.>"); // a keepalive, past RETELL_EVERY
    a.receive(&mut k);
    assert_eq!(
        feed(&mut k, &mut a, 1, b"b2").len(),
        1,
        "news.b allowed now, not followed"
    );
}

#[test]
fn what_was_queued_for_an_ending_session_is_not_sent_in_the_clear() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    assert!(subscribed(&subscribe(&mut a, &mut k, 1, "news.a")));
    // A delivery queued, not yet polled, when the reload comes.
    k.relay.handle_raw(k.now, 0, b"secret payload");
    let text = key_entry("other", 2, 6, EVERYTHING);
    rekey(&mut k, &text);
    let mut plain = Vec::new();
    while let Some(t) = k.relay.poll_transmit() {
        assert_eq!(t.destination, a.addr);
        let sealed = a.sealed.open(&t.payload, &mut plain).is_ok();
        assert!(
            sealed,
            "sent in the clear: {:?}",
            crate::wire::decode_datagram(&t.payload).map(|f| f.collect::<Vec<_>>())
        );
    }
}

/// The relay's id for the channel wildcard `sub_id` follows, from MATCHED.
fn matched(frames: &[Frame<'_>], name: &str) -> u32 {
    frames
        .iter()
        .find_map(|f| match f {
            Frame::Matched {
                channel_sub_id,
                channel,
                ..
            } if *channel == name => Some(*channel_sub_id),
            _ => None,
        })
        .expect("MATCHED")
}

#[test]
fn a_subscription_under_a_wildcards_id_is_judged_again() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    k.relay.handle_raw(k.now, 0, b"first a");
    let answer = subscribe(&mut a, &mut k, 9, "news.>");
    let r = matched(&answer, "news.a");
    // The client takes the relay's id for a channel of its own choosing.
    assert!(subscribed(&subscribe(&mut a, &mut k, r, "secret.x")));
    let text = both("publish = [\">\"]\nsubscribe = [\"news.>\"]");
    let revoked = rekey(&mut k, &text);
    assert_eq!(revoked.subscriptions, 1, "secret.x is no longer allowed");
}

#[test]
fn a_subscription_under_a_wildcards_id_survives_a_channel_the_wildcard_loses() {
    let mut k = keyed();
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    k.relay.handle_raw(k.now, 1, b"first b");
    let answer = subscribe(&mut a, &mut k, 9, "news.>");
    let r = matched(&answer, "news.b");
    assert!(subscribed(&subscribe(&mut a, &mut k, r, "news.a")));
    let text = both("publish = [\">\"]\nsubscribe = [\">\"]\ndeny-subscribe = [\"news.b\"]");
    rekey(&mut k, &text);
    a.receive(&mut k);
    // The client's own subscription under that id goes on (the wildcard
    // follows news.a too, under an id of its own, as it would have at the
    // channel's first message).
    let got = feed(&mut k, &mut a, 0, b"a");
    assert!(got.contains(&r), "news.a is still allowed: {got:?}");
}

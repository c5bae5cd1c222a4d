//! Per-key quotas against a hostile keyed client: each test opens real
//! sessions (the client's handshake and sealing) from several addresses
//! under one key and checks that what the key may hold or send is what
//! its entry in the key file says, across all of them, and that another
//! key is not held back.

use std::net::SocketAddr;
use std::time::Duration;

use super::tests::subscribe_frame;
use super::{Now, Relay};
use crate::auth::{Credential, KeyFile, SECRET_LEN, Secret};
use crate::client::{AddressProof, Handshake, Secured};
use crate::config::{AuthMode, RelayConfig};
use crate::wire::{self, DeliveryMode, ErrorCode, Frame, StartPosition};

const UNIX: u64 = 1_700_000_000;

/// A relay whose key `greedy` (id 1) has `quota` (lines of its table) and
/// key `other` (id 2) has none; both may publish and subscribe anywhere.
pub(super) struct Keyed {
    _dir: tempfile::TempDir,
    pub(super) relay: Relay,
    pub(super) greedy: Credential,
    pub(super) other: Credential,
    pub(super) now: Now,
}

/// A `[[key]]` table: `name`, `id`, a secret of 32 bytes `secret`, and
/// `rest` (permissions, quota lines).
pub(super) fn key_entry(name: &str, id: u32, secret: u8, rest: &str) -> String {
    let secret = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        Secret::from_bytes([secret; SECRET_LEN]).expose(),
    );
    format!("[[key]]\nname = \"{name}\"\nid = {id}\nsecret = \"{secret}\"\n{rest}\n\n")
}

/// Permission lines that allow everything.
pub(super) const EVERYTHING: &str = "publish = [\">\"]\nsubscribe = [\">\"]";

fn relay(quota: &str, config: RelayConfig) -> Keyed {
    let text = key_entry("greedy", 1, 5, &format!("{EVERYTHING}\n{quota}"))
        + &key_entry("other", 2, 6, EVERYTHING);
    relay_with_keys(&text, config)
}

/// A relay under the key file `text`, which has keys 1 (`greedy`) and 2
/// (`other`); keys are required.
pub(super) fn relay_with_keys(text: &str, config: RelayConfig) -> Keyed {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, text).unwrap();
    let file = KeyFile::parse(text).unwrap();
    let config = RelayConfig {
        data_dir: dir.path().join("data"),
        keys: Some(keys),
        auth: AuthMode::Required,
        ..config
    };
    let now = Now {
        instant: std::time::Instant::now(),
        unix_nanos: UNIX * 1_000_000_000,
    };
    Keyed {
        relay: Relay::open(&config, now).unwrap(),
        greedy: file.key(1).unwrap().credential(),
        other: file.key(2).unwrap().credential(),
        now,
        _dir: dir,
    }
}

/// A keyed client at one address, with a session and a proven address.
pub(super) struct Client {
    pub(super) addr: SocketAddr,
    pub(super) sealed: Secured,
    proof: AddressProof,
}

impl Client {
    /// Handshakes from `port`, then proves the address inside the session.
    pub(super) fn connect(k: &mut Keyed, credential: &Credential, port: u16) -> Client {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut hs = Handshake::new(credential, UNIX).unwrap();
        let mut sealed = None;
        for _ in 0..4 {
            let d = hs.poll_transmit(k.now.instant).expect("a handshake is due");
            k.relay.handle_datagram(k.now, addr, &d);
            while let Some(t) = k.relay.poll_transmit() {
                if let Some(done) = hs.handle_datagram(k.now.instant, &t.payload) {
                    sealed = Some(done.expect("the relay's answer verifies"));
                }
            }
            if sealed.is_some() {
                break;
            }
        }
        let mut c = Client {
            addr,
            sealed: sealed.expect("a session within four sends"),
            proof: AddressProof::new(),
        };
        c.send(k, AddressProof::hello());
        assert!(c.proof.is_proven(), "the sealed hello got a token");
        c
    }

    /// Seals and sends one datagram (stamped with the token once there is
    /// one); returns the frames of every answer, opened.
    pub(super) fn send(&mut self, k: &mut Keyed, plain: Vec<u8>) -> Vec<Frame<'static>> {
        let d = self.sealed.seal(&self.proof.stamp(plain)).unwrap();
        k.relay.handle_datagram(k.now, self.addr, &d);
        self.receive(k)
    }

    /// Every datagram the relay has ready, all for this client, opened:
    /// their frames.
    pub(super) fn receive(&mut self, k: &mut Keyed) -> Vec<Frame<'static>> {
        let mut frames = Vec::new();
        let mut plain = Vec::new();
        while let Some(t) = k.relay.poll_transmit() {
            assert_eq!(t.destination, self.addr, "answers go to the sender only");
            let opened = self.sealed.open(&t.payload, &mut plain).unwrap().to_vec();
            self.proof.handle_datagram(k.now.instant, &opened);
            let opened: &'static [u8] = Box::leak(opened.into_boxed_slice());
            frames.extend(wire::decode_datagram(opened).unwrap().map(Result::unwrap));
        }
        frames
    }

    pub(super) fn frames(&mut self, k: &mut Keyed, frames: &[Frame<'_>]) -> Vec<Frame<'static>> {
        self.send(k, wire::encode_datagram(frames).unwrap())
    }

    pub(super) fn subscribe(&mut self, k: &mut Keyed, sub_id: u32) -> Vec<Frame<'static>> {
        self.frames(k, &[subscribe_frame(sub_id, "news")])
    }
}

/// The reason of the one ERROR among `frames`, with its code.
pub(super) fn error(frames: &[Frame<'_>]) -> Option<(ErrorCode, String)> {
    let mut errors = frames.iter().filter_map(|f| match f {
        Frame::Error { code, reason } => Some((*code, reason.to_string())),
        _ => None,
    });
    let first = errors.next();
    assert!(errors.next().is_none(), "one ERROR at most: {frames:?}");
    first
}

pub(super) fn subscribed(frames: &[Frame<'_>]) -> bool {
    frames.iter().any(|f| matches!(f, Frame::Subscribed { .. }))
}

#[test]
fn a_keys_subscriptions_are_counted_across_all_its_addresses() {
    let mut k = relay("max-subscriptions = 3", RelayConfig::default());
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7001);
    let mut b = Client::connect(&mut k, &greedy, 7002);
    assert!(subscribed(&a.subscribe(&mut k, 1)));
    assert!(subscribed(&a.subscribe(&mut k, 2)));
    assert!(subscribed(&b.subscribe(&mut k, 1)));
    let refused = b.subscribe(&mut k, 2);
    assert!(!subscribed(&refused), "a fourth subscription of the key");
    assert_eq!(
        error(&refused),
        Some((
            ErrorCode::LIMIT_REACHED,
            "this key holds its maximum number of subscriptions".into()
        ))
    );
    // A keepalive of one it holds is still answered.
    assert!(subscribed(&b.subscribe(&mut k, 1)));
    // Another key is not held back by this one's quota.
    let other = k.other.clone();
    let mut c = Client::connect(&mut k, &other, 7003);
    for sub_id in 1..=5 {
        assert!(subscribed(&c.subscribe(&mut k, sub_id)));
    }
    // What one address lets go, another of the key may take.
    let unsubscribed = a.frames(&mut k, &[Frame::Unsubscribe { sub_id: 1 }]);
    assert_eq!(error(&unsubscribed), None);
    assert!(subscribed(&b.subscribe(&mut k, 2)));
    assert!(!subscribed(&a.subscribe(&mut k, 3)));
    // A session that ends gives back all its address held.
    let ended = k.relay.remove_peer(b.addr);
    assert_eq!(ended, 2);
    assert!(subscribed(&a.subscribe(&mut k, 3)));
    assert!(subscribed(&a.subscribe(&mut k, 4)));
    assert!(!subscribed(&a.subscribe(&mut k, 5)));
}

#[test]
fn a_keys_wildcard_subscriptions_count_as_its_subscriptions() {
    let mut k = relay("max-subscriptions = 2", RelayConfig::default());
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7011);
    let mut b = Client::connect(&mut k, &greedy, 7012);
    let pattern = |sub_id| Frame::Subscribe {
        sub_id,
        mode: DeliveryMode::Unreliable,
        start: StartPosition::Latest,
        channel: "x.>",
        group: None,
        origins: false,
        resume: crate::wire::ResumeVector::EMPTY,
    };
    assert!(subscribed(&a.frames(&mut k, &[pattern(1)])));
    assert!(subscribed(&b.subscribe(&mut k, 1)));
    let refused = b.frames(&mut k, &[pattern(2)]);
    assert!(!subscribed(&refused), "a third subscription of the key");
    assert_eq!(
        error(&refused),
        Some((
            ErrorCode::LIMIT_REACHED,
            "this key holds its maximum number of subscriptions".into()
        ))
    );
    // Ending the pattern gives its place back.
    assert_eq!(
        error(&a.frames(&mut k, &[Frame::Unsubscribe { sub_id: 1 }])),
        None
    );
    assert!(subscribed(&b.frames(&mut k, &[pattern(2)])));
}

#[test]
fn a_keys_reliable_sessions_are_counted_across_all_its_addresses() {
    let mut k = relay("max-sessions = 2", RelayConfig::default());
    let greedy = k.greedy.clone();
    let mut clients: Vec<Client> = (0..3)
        .map(|i| Client::connect(&mut k, &greedy, 7100 + i))
        .collect();
    let publish = |c: &mut Client, k: &mut Keyed, session: u64| {
        let piece = Frame::ReliablePublish {
            session,
            seq: 0,
            acked_below: 0,
            more: false,
            channel: "orders",
            payload: b"one",
        };
        c.frames(k, &[piece])
    };
    let acked = |frames: &[Frame<'_>]| frames.iter().any(|f| matches!(f, Frame::Ack { .. }));
    assert!(acked(&publish(&mut clients[0], &mut k, 1)));
    assert!(acked(&publish(&mut clients[1], &mut k, 1)));
    let refused = publish(&mut clients[2], &mut k, 1);
    assert!(!acked(&refused));
    assert_eq!(
        error(&refused),
        Some((
            ErrorCode::LIMIT_REACHED,
            "this key holds its maximum number of sessions".into()
        ))
    );
    assert_eq!(
        k.relay.next_offset("orders"),
        Some(2),
        "the third not stored"
    );
    // A piece of a session the key holds is still taken.
    assert!(acked(&publish(&mut clients[0], &mut k, 1)));
    let other = k.other.clone();
    let mut c = Client::connect(&mut k, &other, 7200);
    assert!(acked(&publish(&mut c, &mut k, 1)));
    assert!(acked(&publish(&mut c, &mut k, 2)));
    assert!(acked(&publish(&mut c, &mut k, 3)));
}

#[test]
fn a_key_over_its_rate_is_dropped_counted_and_told_once_a_second() {
    let mut k = relay("messages-per-sec = 50", RelayConfig::default());
    let (greedy, other) = (k.greedy.clone(), k.other.clone());
    let mut a = Client::connect(&mut k, &greedy, 7301);
    let mut b = Client::connect(&mut k, &greedy, 7302);
    let mut c = Client::connect(&mut k, &other, 7303);
    let publish = |ch: &'static str| Frame::Publish {
        channel: ch,
        payload: b"m",
    };
    let mut errors = Vec::new();
    for i in 0..200 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        errors.extend(error(&client.frames(&mut k, &[publish("greedy")])));
        assert_eq!(error(&c.frames(&mut k, &[publish("other")])), None);
    }
    assert_eq!(
        k.relay.next_offset("greedy"),
        Some(50),
        "one second's worth across both addresses"
    );
    assert_eq!(
        k.relay.next_offset("other"),
        Some(200),
        "the other key is not held back"
    );
    assert_eq!(k.relay.counters().dropped_quota, 150);
    assert_eq!(
        errors,
        vec![(
            ErrorCode::LIMIT_REACHED,
            "over this key's quota of 50 messages per second".to_string()
        )],
        "told once, not once per message"
    );
    // 100 ms later, 5 more fit.
    k.now = k.now.after(Duration::from_millis(100));
    for _ in 0..20 {
        a.frames(&mut k, &[publish("greedy")]);
    }
    assert_eq!(k.relay.next_offset("greedy"), Some(55));
}

#[test]
fn a_keys_bytes_per_second_count_payload_across_frames() {
    let mut k = relay("bytes-per-sec = 1000", RelayConfig::default());
    let greedy = k.greedy.clone();
    let mut a = Client::connect(&mut k, &greedy, 7401);
    let payload = [7u8; 300];
    let publish = Frame::Publish {
        channel: "bulk",
        payload: &payload,
    };
    // Four frames in one datagram: three fit in 1000 bytes.
    let answer = a.frames(&mut k, &[publish; 4]);
    assert_eq!(k.relay.next_offset("bulk"), Some(3));
    assert_eq!(
        error(&answer).map(|e| e.1),
        Some("over this key's quota of 1000 bytes per second".into())
    );
}

#[test]
fn a_keys_reassembly_bytes_are_its_own_and_an_address_gets_a_share() {
    // The key may hold 20 KB in pieces; an address without a quota of its
    // own an eighth of the 1 MB budget (128 KB).
    let config = RelayConfig {
        reassembly_memory: 1 << 20,
        max_message_size: 64 << 10,
        ..RelayConfig::default()
    };
    let mut k = relay("reassembly-bytes = 20000", config);
    let (greedy, other) = (k.greedy.clone(), k.other.clone());
    let mut a = Client::connect(&mut k, &greedy, 7501);
    let mut b = Client::connect(&mut k, &greedy, 7502);
    let chunk = [1u8; 1000];
    let first_piece = |msg_id| Frame::Fragment {
        msg_id,
        index: 0,
        count: 2,
        channel: "big",
        chunk: &chunk,
    };
    let held = |k: &mut Keyed, c: &mut Client, from: u32, n: u32| {
        let before = k.relay.counters().dropped_limit;
        for msg_id in from..from + n {
            c.frames(k, &[first_piece(msg_id)]);
        }
        n as u64 - (k.relay.counters().dropped_limit - before)
    };
    // About 1.3 KB a message: 15 fit in the key's 20 KB, from either address.
    assert_eq!(
        held(&mut k, &mut a, 0, 10) + held(&mut k, &mut b, 0, 10),
        15
    );
    // The other key has no quota of its own: its address's share.
    let mut c = Client::connect(&mut k, &other, 7503);
    let by_address = held(&mut k, &mut c, 0, 200);
    assert!(
        (90..110).contains(&by_address),
        "an eighth of 1 MB is about 98 messages, got {by_address}"
    );
    // Even a last piece is charged before it is stored: the full key gets
    // no more in, whichever message it would complete.
    let last = Frame::Fragment {
        msg_id: 0,
        index: 1,
        count: 2,
        channel: "big",
        chunk: &chunk,
    };
    a.frames(&mut k, &[last]);
    assert_eq!(k.relay.next_offset("big"), None);
    // Once they time out, what the key held is its own again.
    k.now = k.now.after(super::reassembly::FRAGMENT_TIMEOUT);
    k.relay.handle_timeout(k.now);
    assert_eq!(held(&mut k, &mut b, 100, 20), 15);
}

//! The client's side of a keyed session: the handshake, then every datagram
//! sealed on the way out and opened on the way in.
//!
//! The handshake takes the address token first, as everything stateful
//! does: the HANDSHAKE frame goes out alone; a relay that finds it verifies
//! (the client holds the credential's secret) but the address unproven
//! answers with an ADDRESS_TOKEN; the frame goes again behind the token, and
//! the relay answers with the session and Noise's second message. Two round
//! trips, then none: every datagram is sealed with [`Secured::seal`] and
//! every one from the relay opened with [`Secured::open`], which refuses
//! anything not sealed by the relay for this session (so nobody on the path
//! can slip a plain datagram in).

use std::time::{Duration, Instant};

use thiserror::Error;

use super::AddressProof;
use crate::auth::{Credential, Initiator, Sealer, SessionError, Side};
use crate::wire::{self, Frame};

/// How long to wait for an answer to a handshake before sending it again.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(250);

/// Why a keyed session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecureError {
    /// The credential's expiry has passed; the relay would refuse it.
    #[error("credential for key {id} expired at {expires} (unix seconds); ask for a new one")]
    Expired {
        /// The key id.
        id: u32,
        /// When it expired, unix seconds.
        expires: u64,
    },
    /// The handshake could not be made or the relay's answer did not verify.
    #[error("{0}")]
    Session(#[from] SessionError),
}

/// The handshake in progress, until the relay answers.
#[derive(Debug)]
pub struct Handshake {
    initiator: Option<Initiator>,
    proof: AddressProof,
    next_send: Option<Instant>,
}

impl Handshake {
    /// A handshake for `credential`, refused at once if it has expired by
    /// `now_unix` (seconds); the first datagram is due at once.
    pub fn new(credential: &Credential, now_unix: u64) -> Result<Handshake, SecureError> {
        if credential.expires != 0 && credential.expires <= now_unix {
            return Err(SecureError::Expired {
                id: credential.id,
                expires: credential.expires,
            });
        }
        Ok(Handshake {
            initiator: Some(Initiator::new(credential)?),
            proof: AddressProof::new(),
            next_send: None,
        })
    }

    /// The HANDSHAKE datagram, if one is due at `now` (behind the address
    /// token once the relay sent one).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let initiator = self.initiator.as_ref()?;
        if self.next_send.is_some_and(|at| now < at) {
            return None;
        }
        self.next_send = Some(now + HANDSHAKE_RETRY);
        let frame = Frame::Handshake {
            key_id: initiator.key_id(),
            expires: initiator.expires(),
            message: *initiator.message(),
        };
        let datagram = wire::encode_datagram(&[frame]).ok()?;
        Some(self.proof.stamp(datagram))
    }

    /// When the handshake is next sent again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.initiator.as_ref()?;
        Some(self.next_send.unwrap_or_else(Instant::now))
    }

    /// Reads a datagram from the relay: a token makes the next send due at
    /// once; the reply finishes the handshake. Anything else is ignored.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
    ) -> Option<Result<Secured, SecureError>> {
        let was_proven = self.proof.is_proven();
        let again = self.proof.handle_datagram(now, datagram);
        if again || (!was_proven && self.proof.is_proven()) {
            // A (new) token: the HANDSHAKE goes again at once, behind it.
            self.next_send = Some(now);
        }
        let reply = wire::frame_bodies(datagram).find_map(|(kind, body)| {
            if kind != wire::FrameType::HandshakeReply as u8 {
                return None;
            }
            let session = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
            let message: [u8; wire::NOISE_MESSAGE_LEN] = body.get(4..)?.try_into().ok()?;
            Some((session, message))
        })?;
        let initiator = self.initiator.take()?;
        Some(match initiator.finish(&reply.1) {
            Ok(keys) => Ok(Secured {
                sealer: Sealer::new(Side::Client, reply.0, &keys),
            }),
            Err(e) => Err(e.into()),
        })
    }
}

/// An open keyed session: seals what the client sends, opens what the
/// relay sends.
#[derive(Debug)]
pub struct Secured {
    sealer: Sealer,
}

impl Secured {
    /// The session id the relay gave.
    pub fn session(&self) -> u32 {
        self.sealer.session()
    }

    /// `plain` (a datagram as the other client pieces make them) sealed.
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, SessionError> {
        let mut out = Vec::with_capacity(plain.len() + wire::SEAL_OVERHEAD);
        self.sealer.seal(plain, &mut out)?;
        Ok(out)
    }

    /// Appends `plain` sealed to `out`.
    pub fn seal_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.sealer.seal(plain, out)
    }

    /// Opens a datagram from the relay into `out` as a plain one, for the
    /// other client pieces; refuses anything not sealed for this session,
    /// changed, or seen before.
    pub fn open<'o>(
        &mut self,
        sealed: &[u8],
        out: &'o mut Vec<u8>,
    ) -> Result<&'o [u8], SessionError> {
        self.sealer.open(sealed, out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::auth::{KeyFile, SECRET_LEN, Secret};
    use crate::config::{AuthMode, RelayConfig};
    use crate::relay::{MAX_SESSIONS_PER_KEY, Now, Relay};
    use crate::wire::{DeliveryMode, ErrorCode, StartPosition};

    const UNIX: u64 = 1_700_000_000;

    /// A relay with one key (id 1, may publish and subscribe to `ok.>`),
    /// anonymous clients allowed to publish to `anon.>`.
    fn relay(mode: AuthMode) -> (tempfile::TempDir, Relay, Credential, Now) {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::from_bytes([3; SECRET_LEN]);
        let text = format!(
            "[anonymous]\npublish = [\"anon.>\"]\n\n[[key]]\nname = \"k\"\nid = 1\nsecret = \"{}\"\npublish = [\"ok.>\"]\nsubscribe = [\"ok.>\"]\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret.expose())
        );
        let keys = dir.path().join("keys.toml");
        std::fs::write(&keys, &text).unwrap();
        let file = KeyFile::parse(&text).unwrap();
        let credential = file.key(1).unwrap().credential();
        let config = RelayConfig {
            data_dir: dir.path().join("data"),
            keys: Some(keys),
            auth: mode,
            ..RelayConfig::default()
        };
        let now = Now {
            instant: Instant::now(),
            unix_nanos: UNIX * 1_000_000_000,
        };
        let relay = Relay::open(&config, now).unwrap();
        (dir, relay, credential, now)
    }

    fn me() -> SocketAddr {
        "127.0.0.1:6000".parse().unwrap()
    }

    /// Runs the handshake to the end; every datagram the relay sends on
    /// the way is checked to be no larger than what asked for it.
    fn connect(relay: &mut Relay, now: Now, credential: &Credential) -> Secured {
        let mut hs = Handshake::new(credential, UNIX).unwrap();
        for _ in 0..4 {
            let d = hs.poll_transmit(now.instant).expect("a handshake is due");
            relay.handle_datagram(now, me(), &d);
            while let Some(t) = relay.poll_transmit() {
                assert_eq!(t.destination, me());
                assert!(t.payload.len() <= d.len(), "never more than was sent");
                if let Some(done) = hs.handle_datagram(now.instant, &t.payload) {
                    return done.expect("the relay's answer verifies");
                }
            }
        }
        panic!("no handshake reply after four sends");
    }

    fn sent(relay: &mut Relay) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| relay.poll_transmit())
            .map(|t| t.payload.to_vec())
            .collect()
    }

    fn datagram(frames: &[Frame<'_>]) -> Vec<u8> {
        wire::encode_datagram(frames).unwrap()
    }

    #[test]
    fn a_keyed_client_publishes_and_subscribes_sealed() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Required);
        let mut s = connect(&mut relay, now, &credential);
        assert_eq!(relay.counters().handshakes, 1);
        // The subscription needs a token: the inner hello gets one, sealed.
        let hello = s.seal(&AddressProof::hello()).unwrap();
        relay.handle_datagram(now, me(), &hello);
        let mut proof = AddressProof::new();
        let mut plain = Vec::new();
        for d in sent(&mut relay) {
            assert!(crate::auth::is_sealed(&d), "sealed once there is a session");
            proof.handle_datagram(now.instant, s.open(&d, &mut plain).unwrap());
        }
        assert!(proof.is_proven());
        let subscribe = Frame::Subscribe {
            sub_id: 9,
            mode: DeliveryMode::Unreliable,
            start: StartPosition::Latest,
            channel: "ok.news",
            group: None,
            origins: false,
            resume: crate::wire::ResumeVector::EMPTY,
        };
        let d = s.seal(&proof.stamp(datagram(&[subscribe]))).unwrap();
        relay.handle_datagram(now, me(), &d);
        let answers = sent(&mut relay);
        assert_eq!(answers.len(), 1);
        let opened = s.open(&answers[0], &mut plain).unwrap().to_vec();
        assert!(matches!(
            wire::decode_datagram(&opened).unwrap().next(),
            Some(Ok(Frame::Subscribed { sub_id: 9, .. }))
        ));
        let publish = Frame::Publish {
            channel: "ok.news",
            payload: b"secret payload",
        };
        let d = s.seal(&datagram(&[publish])).unwrap();
        relay.handle_datagram(now, me(), &d);
        assert_eq!(relay.next_offset("ok.news"), Some(1));
        let deliveries = sent(&mut relay);
        assert_eq!(deliveries.len(), 1);
        assert!(
            !deliveries[0].windows(6).any(|w| w == b"secret"),
            "the delivery is not in the clear"
        );
        let opened = s.open(&deliveries[0], &mut plain).unwrap().to_vec();
        assert!(matches!(
            wire::decode_datagram(&opened).unwrap().next(),
            Some(Ok(Frame::Deliver {
                payload: b"secret payload",
                ..
            }))
        ));
        // The same sealed datagram again is dropped and stores nothing.
        relay.handle_datagram(now, me(), &d);
        assert_eq!(relay.next_offset("ok.news"), Some(1));
        assert_eq!(relay.counters().dropped_replayed, 1);
        assert!(sent(&mut relay).is_empty());
    }

    #[test]
    fn under_auth_required_plain_datagrams_get_nothing() {
        let (_dir, mut relay, _, now) = relay(AuthMode::Required);
        let plain = [
            AddressProof::hello(),
            datagram(&[Frame::Ping {
                nonce: 1,
                load: false,
            }]),
            datagram(&[Frame::Publish {
                channel: "anon.x",
                payload: b"p",
            }]),
            datagram(&[Frame::StatsRequest {
                cursor: 0,
                padding: 600,
            }]),
            vec![b'U', b'R', 1, 0, 0, 0, 0, 0, 0xEE],
        ];
        for d in &plain {
            relay.handle_datagram(now, me(), d);
        }
        assert!(sent(&mut relay).is_empty(), "no answer at all");
        assert_eq!(relay.next_offset("anon.x"), None, "nothing stored");
        assert_eq!(relay.counters().dropped_unauthenticated, 5);
    }

    #[test]
    fn under_auth_optional_anonymous_clients_have_the_anonymous_permissions() {
        let (_dir, mut relay, _, now) = relay(AuthMode::Optional);
        let publish = |channel| {
            datagram(&[Frame::Publish {
                channel,
                payload: b"p",
            }])
        };
        relay.handle_datagram(now, me(), &publish("anon.x"));
        relay.handle_datagram(now, me(), &publish("ok.x"));
        assert_eq!(relay.next_offset("anon.x"), Some(1));
        assert_eq!(relay.next_offset("ok.x"), None);
        assert_eq!(relay.counters().dropped_denied, 1);
        assert!(
            sent(&mut relay).is_empty(),
            "an anonymous denial is not answered"
        );
    }

    #[test]
    fn a_keyed_clients_permission_is_never_lent_to_an_anonymous_one() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Optional);
        let mut s = connect(&mut relay, now, &credential);
        let publish = datagram(&[Frame::Publish {
            channel: "ok.x",
            payload: b"p",
        }]);
        relay.handle_datagram(now, me(), &s.seal(&publish).unwrap());
        assert_eq!(relay.next_offset("ok.x"), Some(1));
        // The same channel right after, from a plain client: its own
        // (anonymous) permissions decide, not the last answer.
        let stranger: SocketAddr = "127.0.0.1:6002".parse().unwrap();
        relay.handle_datagram(now, stranger, &publish);
        assert_eq!(relay.next_offset("ok.x"), Some(1));
        assert_eq!(relay.counters().dropped_denied, 1);
    }

    #[test]
    fn the_sessions_address_in_its_ipv4_mapped_form_is_still_answered_sealed() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Optional);
        let _s = connect(&mut relay, now, &credential);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:6000".parse().unwrap();
        // Large enough to pay for a sealed answer, sent unproven.
        let padding = Frame::Publish {
            channel: "anon.x",
            payload: &[0; 100],
        };
        relay.handle_datagram(
            now,
            mapped,
            &datagram(&[
                padding,
                Frame::Ping {
                    nonce: 3,
                    load: false,
                },
            ]),
        );
        let answers = sent(&mut relay);
        assert_eq!(answers.len(), 1);
        assert!(crate::auth::is_sealed(&answers[0]), "not in the clear");
    }

    #[test]
    fn handshakes_beyond_the_session_table_are_refused_unanswered() {
        // The whole table (2 slots), then one key's share of a larger one.
        for (max, tries, want) in [(2, 4, 2), (1100, 1100, MAX_SESSIONS_PER_KEY)] {
            assert_eq!(open_sessions(max, tries), want);
        }
    }

    /// Handshakes with one key from `tries` addresses at a relay holding
    /// `max` sessions; how many opened (the rest got no answer).
    fn open_sessions(max: usize, tries: u16) -> usize {
        let (dir, _, credential, now) = relay(AuthMode::Required);
        let config = RelayConfig {
            data_dir: dir.path().join("data2"),
            keys: Some(dir.path().join("keys.toml")),
            auth: AuthMode::Required,
            max_auth_sessions: max,
            ..RelayConfig::default()
        };
        let mut relay = Relay::open(&config, now).unwrap();
        let mut opened = 0;
        for i in 0..tries {
            // A millisecond apart: the relay's token rate is not what is tested.
            let now = now.after(Duration::from_millis(u64::from(i)));
            let from: SocketAddr = ([127, 0, 0, 1], 7000 + i).into();
            let mut hs = Handshake::new(&credential, UNIX).unwrap();
            for _ in 0..2 {
                let d = hs.poll_transmit(now.instant).unwrap();
                relay.handle_datagram(now, from, &d);
                for t in std::iter::from_fn(|| relay.poll_transmit()) {
                    assert!(t.payload.len() <= d.len(), "never more than was sent");
                    if let Some(done) = hs.handle_datagram(now.instant, &t.payload) {
                        done.unwrap();
                        opened += 1;
                    }
                }
            }
        }
        assert_eq!(relay.counters().handshakes, opened as u64);
        assert_eq!(
            relay.counters().handshakes_refused,
            u64::from(tries) - opened as u64
        );
        opened
    }

    #[test]
    fn a_denied_request_tells_the_keyed_client_which_permission_is_missing() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Required);
        let mut s = connect(&mut relay, now, &credential);
        let publish = Frame::Publish {
            channel: "anon.x",
            payload: b"p",
        };
        relay.handle_datagram(now, me(), &s.seal(&datagram(&[publish])).unwrap());
        assert_eq!(relay.next_offset("anon.x"), None);
        let answers = sent(&mut relay);
        let mut plain = Vec::new();
        let opened = s.open(&answers[0], &mut plain).unwrap().to_vec();
        match wire::decode_datagram(&opened).unwrap().next() {
            Some(Ok(Frame::Error { code, reason })) => {
                assert_eq!(code, ErrorCode::DENIED);
                assert_eq!(reason, "no permission to publish to channel \"anon.x\"");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn an_expired_credential_or_a_wrong_secret_gets_no_session() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Required);
        let file_key = Secret::from_bytes([3; SECRET_LEN]);
        let expired = Credential {
            id: 1,
            expires: UNIX - 1,
            secret: crate::auth::derive_secret(&file_key, "k", UNIX - 1),
        };
        assert!(matches!(
            Handshake::new(&expired, UNIX),
            Err(SecureError::Expired { .. })
        ));
        let wrong = Credential {
            secret: Secret::from_bytes([4; SECRET_LEN]),
            ..credential.clone()
        };
        // Built as if the clock were earlier, so the relay is the one to refuse.
        for c in [&expired, &wrong] {
            let mut hs = Handshake::new(c, 0).unwrap();
            for i in 0..3 {
                let d = hs.poll_transmit(now.instant + HANDSHAKE_RETRY * i).unwrap();
                relay.handle_datagram(now, me(), &d);
                assert!(
                    sent(&mut relay).is_empty(),
                    "no answer to a refused handshake"
                );
            }
        }
        assert_eq!(relay.counters().handshakes, 0);
        assert_eq!(relay.counters().handshakes_refused, 6);
        // A time-limited credential still valid works.
        let later = Credential {
            id: 1,
            expires: UNIX + 60,
            secret: crate::auth::derive_secret(&file_key, "k", UNIX + 60),
        };
        connect(&mut relay, now, &later);
        assert_eq!(relay.counters().handshakes, 1);
    }

    #[test]
    fn a_captured_first_message_replayed_from_elsewhere_opens_nothing() {
        let (_dir, mut relay, credential, now) = relay(AuthMode::Required);
        let mut hs = Handshake::new(&credential, UNIX).unwrap();
        let first = hs.poll_transmit(now.instant).unwrap();
        relay.handle_datagram(now, me(), &first);
        for t in sent(&mut relay) {
            assert!(hs.handle_datagram(now.instant, &t.clone()).is_none());
        }
        let proven = hs.poll_transmit(now.instant).unwrap();
        relay.handle_datagram(now, me(), &proven);
        assert_eq!(relay.counters().handshakes, 1);
        let reply = sent(&mut relay);
        // Sent again from the same address (its reply was lost): the same
        // reply; the attacker at another address with its own token gets
        // nothing.
        relay.handle_datagram(now, me(), &proven);
        assert_eq!(sent(&mut relay), reply);
        let attacker: SocketAddr = "127.0.0.1:6001".parse().unwrap();
        let mut theirs = AddressProof::new();
        relay.handle_datagram(now, attacker, &AddressProof::hello());
        // (Under --auth required a plain hello gets no token: the attacker
        // replays the victim's handshake unproven, which verifies.)
        assert!(sent(&mut relay).is_empty());
        relay.handle_datagram(now, attacker, &first);
        for t in std::iter::from_fn(|| relay.poll_transmit()) {
            theirs.handle_datagram(now.instant, &t.payload);
        }
        assert!(theirs.is_proven());
        let frames = &first[wire::HEADER_LEN..];
        let mut replay = theirs.stamp(first[..wire::HEADER_LEN].to_vec());
        replay.extend_from_slice(frames);
        relay.handle_datagram(now, attacker, &replay);
        assert!(sent(&mut relay).is_empty());
        assert_eq!(relay.counters().handshakes, 1);
        assert_eq!(relay.counters().handshakes_refused, 1);
        // The victim's session still works.
        let mut s = hs.handle_datagram(now.instant, &reply[0]).unwrap().unwrap();
        let ping = s
            .seal(&datagram(&[Frame::Ping {
                nonce: 5,
                load: false,
            }]))
            .unwrap();
        relay.handle_datagram(now, me(), &ping);
        assert_eq!(sent(&mut relay).len(), 1);
    }
}

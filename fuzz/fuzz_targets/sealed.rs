//! Drives a relay core with a key file: the harness opens one keyed
//! session (a real handshake) for the client at source 0, then feeds the
//! relay plain datagrams, datagrams it seals with that session (from
//! source 0 or, as if forged, from another), captured sealed datagrams
//! again with a byte changed or not, and time steps. It checks:
//!
//! - nothing panics, and handle_timeout does not leave its deadline due;
//! - everything sent to the session's address, but the handshake reply,
//!   is sealed and opens under the client's keys, and decodes;
//! - everything sent anywhere else decodes as a plain datagram, and is no
//!   more bytes in all than that address sent (none of them ever proves
//!   its address: the fuzzer never sees the relay's tokens);
//! - under `--auth required`, nothing at all is sent anywhere else, and
//!   nothing is stored unless a sealed datagram from the session's address
//!   asked for it.
//!
//! Input: a settings byte (bit 0: `--auth required`), then steps, each a
//! control byte `c`:
//!
//! ```text
//!   c >> 6 = 0  PLAIN   len u16 LE, bytes   from source c & 7, as is
//!   c >> 6 = 1  SEALED  len u16 LE, frame bytes: the harness puts a
//!                       plain header in front and seals it with the
//!                       session; from source c & 7 (0 is the client)
//!   c >> 6 = 2  AGAIN   at u8: the (c & 7)-th last sealed datagram again
//!                       from source 0, byte `at` flipped unless at = 0
//!   c >> 6 = 3  ADVANCE b u8: time moves on b*b*10 ms (up to 650 s)
//! ```

#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use udprelay::auth::{Credential, Secret};
use udprelay::client::{AddressProof, Handshake, Secured};
use udprelay::config::{AuthMode, RelayConfig};
use udprelay::relay::{Now, Relay};
use udprelay::wire::{self, HEADER_LEN};
use udprelay_fuzz::relay_input::source;
use udprelay_fuzz::scratch_dir;

const SECRET: [u8; 32] = [0x42; 32];
const UNIX: u64 = 1_700_000_000;
const MAX_TIMEOUT_ROUNDS: usize = 1000;
/// Source 5 of relay_input's table: the relay's own address.
const OWN: u8 = 5;

fuzz_target!(|data: &[u8]| {
    let Some((&settings, mut rest)) = data.split_first() else {
        return;
    };
    let mut run = Run::new(settings & 1 != 0);
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        match c >> 6 {
            0 | 1 => {
                let (bytes, tail) = take_len(rest);
                rest = tail;
                if c >> 6 == 0 {
                    run.plain(source(c & 7), bytes);
                } else {
                    run.sealed(source(c & 7), bytes);
                }
            }
            2 => {
                let Some((&at, tail)) = rest.split_first() else {
                    return;
                };
                rest = tail;
                run.again(usize::from(c & 7), usize::from(at));
            }
            _ => {
                let Some((&b, tail)) = rest.split_first() else {
                    return;
                };
                rest = tail;
                run.advance(u64::from(b) * u64::from(b) * 10);
            }
        }
    }
    run.drain();
});

/// A u16 LE length and that many bytes (what is left if fewer).
fn take_len(data: &[u8]) -> (&[u8], &[u8]) {
    let len = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => return (&[], &[]),
    };
    let data = &data[2..];
    data.split_at(len.min(data.len()))
}

struct Run {
    relay: Relay,
    now: Now,
    required: bool,
    client: SocketAddr,
    secured: Secured,
    /// The sealed datagrams the harness made, newest last.
    sealed_sent: Vec<Vec<u8>>,
    /// Bytes each other address sent, and was sent.
    received: HashMap<SocketAddr, u64>,
    sent: HashMap<SocketAddr, u64>,
    /// A sealed datagram from the client's address was handed over.
    client_sealed: bool,
    opened: Vec<u8>,
}

impl Run {
    fn new(required: bool) -> Run {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = Now {
            instant: *START.get_or_init(Instant::now),
            unix_nanos: UNIX * 1_000_000_000,
        };
        let dir = scratch_dir("sealed");
        let keys = dir.join("keys.toml");
        let secret = base64::engine::general_purpose::STANDARD.encode(SECRET);
        std::fs::write(
            &keys,
            format!(
                "[anonymous]\npublish = [\"a.>\"]\nsubscribe = [\"a.>\"]\n\n[[key]]\nname = \"k\"\nid = 1\nsecret = \"{secret}\"\npublish = [\"k.>\"]\nsubscribe = [\"k.>\"]\n"
            ),
        )
        .expect("the key file can be written");
        let config = RelayConfig {
            listen: source(OWN),
            data_dir: dir.join("data"),
            keys: Some(keys),
            auth: if required {
                AuthMode::Required
            } else {
                AuthMode::Optional
            },
            max_auth_sessions: 4,
            max_channels: 4,
            max_subscriptions: 6,
            max_subscriptions_per_client: 3,
            max_message_size: 4096,
            lease: Duration::from_secs(2),
            ..RelayConfig::default()
        };
        let mut relay = Relay::open(&config, now).expect("a keyed relay opens");
        relay
            .set_own_addresses(vec![config.listen], Vec::new())
            .expect("no raw egress");
        let client = source(0);
        let credential = Credential {
            id: 1,
            expires: 0,
            secret: Secret::from_bytes(SECRET),
        };
        let mut hs = Handshake::new(&credential, UNIX).expect("a handshake starts");
        let mut secured = None;
        // Two rounds: a token for the unproven handshake, then the session.
        for _ in 0..2 {
            let Some(d) = hs.poll_transmit(now.instant) else {
                break;
            };
            relay.handle_datagram(now, client, &d);
            while let Some(t) = relay.poll_transmit() {
                if let Some(done) = hs.handle_datagram(now.instant, &t.payload) {
                    secured = Some(done.expect("the relay's reply verifies"));
                }
            }
        }
        let mut secured = secured.expect("the harness's handshake completes");
        // The client's own proof, so its later sealed frames may lean on it.
        let hello = secured.seal(&AddressProof::hello()).expect("seals");
        relay.handle_datagram(now, client, &hello);
        while relay.poll_transmit().is_some() {}
        Run {
            relay,
            now,
            required,
            client,
            secured,
            sealed_sent: Vec::new(),
            received: HashMap::new(),
            sent: HashMap::new(),
            client_sealed: false,
            opened: Vec::new(),
        }
    }

    fn plain(&mut self, from: SocketAddr, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(wire::MAX_DATAGRAM)];
        self.hand(from, bytes);
    }

    fn sealed(&mut self, from: SocketAddr, frames: &[u8]) {
        let mut plain = wire::encode_datagram(&[]).expect("an empty datagram encodes");
        plain.extend_from_slice(&frames[..frames.len().min(wire::MAX_DATAGRAM - 64)]);
        let Ok(sealed) = self.secured.seal(&plain) else {
            return;
        };
        self.sealed_sent.push(sealed.clone());
        self.hand(from, &sealed);
    }

    fn again(&mut self, back: usize, at: usize) {
        let Some(d) = self.sealed_sent.iter().rev().nth(back) else {
            return;
        };
        let mut d = d.clone();
        if at != 0 {
            let i = at % d.len();
            d[i] ^= 0x01;
        }
        self.hand(self.client, &d);
    }

    fn hand(&mut self, from: SocketAddr, bytes: &[u8]) {
        let peer = canonical(from);
        if peer == self.client {
            self.client_sealed |= udprelay::auth::is_sealed(bytes);
        } else {
            *self.received.entry(peer).or_default() += bytes.len() as u64;
        }
        let published = self.relay.counters().messages_published;
        self.relay.handle_datagram(self.now, from, bytes);
        if self.required && peer != self.client {
            assert_eq!(
                self.relay.counters().messages_published,
                published,
                "a datagram from {from}, which holds no session, stored something under --auth required"
            );
        }
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now.after(Duration::from_millis(ms));
        for _ in 0..MAX_TIMEOUT_ROUNDS {
            match self.relay.poll_timeout() {
                Some(due) if due <= self.now.instant => self.relay.handle_timeout(self.now),
                _ => {
                    self.drain();
                    return;
                }
            }
        }
        panic!("handle_timeout left a deadline due {MAX_TIMEOUT_ROUNDS} times at one time");
    }

    fn drain(&mut self) {
        while let Some(t) = self.relay.poll_transmit() {
            let to = canonical(t.destination);
            assert_ne!(to, source(OWN), "the relay sent to its own address");
            assert!(
                t.payload.len() <= wire::MAX_DATAGRAM,
                "larger than UDP allows"
            );
            let plain: &[u8] = if to == self.client && udprelay::auth::is_sealed(&t.payload) {
                self.secured
                    .open(&t.payload, &mut self.opened)
                    .unwrap_or_else(|e| {
                        panic!("the relay sealed for the client what it cannot open: {e}")
                    })
            } else if to == self.client {
                // Only the handshake reply goes unsealed to a session's
                // address, and only while it has a session: after the
                // session ended, plain answers are allowed again.
                let first = t.payload.get(HEADER_LEN).copied();
                assert!(
                    first == Some(wire::FrameType::HandshakeReply as u8)
                        || self.relay.counters().auth_sessions_ended > 0,
                    "the relay sent the session's address a plain datagram: {:?}",
                    &t.payload[..t.payload.len().min(40)]
                );
                &t.payload
            } else {
                assert!(
                    !self.required,
                    "under --auth required the relay answered {to}, which holds no session"
                );
                *self.sent.entry(to).or_default() += t.payload.len() as u64;
                let received = self.received.get(&to).copied().unwrap_or_default();
                assert!(
                    self.sent[&to] <= received,
                    "the relay sent {to} more than it sent, never proven"
                );
                &t.payload
            };
            for frame in wire::decode_datagram(plain)
                .unwrap_or_else(|e| panic!("the relay sent {to} a datagram that fails: {e}"))
            {
                if let Err(e) = frame {
                    panic!("the relay sent {to} a frame that fails: {e}");
                }
            }
        }
        if self.required && !self.client_sealed {
            assert_eq!(self.relay.counters().messages_published, 0);
        }
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

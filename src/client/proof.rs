//! The client's side of address validation: getting a token from the relay
//! and putting it in front of every datagram that needs one.
//!
//! A relay serves subscriptions, reliable sessions and STATS only to an
//! address that proved it receives there (see docs/PROTOCOL.md, "Address
//! validation"). The proof costs one round trip at the start: a hello (a
//! VALIDATE frame of zeros, as large as the token that answers it), then
//! every datagram carries the token in a VALIDATE frame. The relay hands out
//! a fresh token before the old one expires, and a new one when it no
//! longer takes the old (after a restart); either replaces the one held.

use std::time::{Duration, Instant};

use crate::wire::{self, Frame, FrameType, HEADER_LEN, TOKEN_LEN};

/// How long to wait for a token before asking again.
pub const HELLO_RETRY: Duration = Duration::from_millis(250);

/// The token a client holds for its address, and the hello that gets one.
#[derive(Debug, Clone, Default)]
pub struct AddressProof {
    /// The last token the relay sent, once it sent one.
    token: Option<[u8; TOKEN_LEN]>,
    /// When the next hello is due, while there is no token.
    next_hello: Option<Instant>,
    /// When a token last came alone, a sign that what was sent was refused.
    refused_at: Option<Instant>,
}

impl AddressProof {
    /// No token yet; the first hello is due at once.
    pub fn new() -> AddressProof {
        AddressProof::default()
    }

    /// True once the relay has sent a token.
    pub fn is_proven(&self) -> bool {
        self.token.is_some()
    }

    /// The hello datagram: a VALIDATE frame with an all-zero token, which
    /// no relay accepts, so it answers with a token of the same size.
    pub fn hello() -> Vec<u8> {
        let frame = Frame::Validate {
            token: [0; TOKEN_LEN],
        };
        wire::encode_datagram(&[frame]).unwrap_or_default()
    }

    /// The hello, if there is no token and one is due at `now`.
    pub fn poll_hello(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.token.is_some() || self.next_hello.is_some_and(|at| now < at) {
            return None;
        }
        self.next_hello = Some(now + HELLO_RETRY);
        Some(Self::hello())
    }

    /// When the next hello is due, while there is no token.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.token {
            Some(_) => None,
            None => Some(self.next_hello.unwrap_or_else(Instant::now)),
        }
    }

    /// Takes the token out of a datagram from the relay, if it carries one.
    /// True if the caller should send again what it last sent: the token
    /// came alone, as it does when the relay refused the last token (after a
    /// restart), at most once per [`HELLO_RETRY`]. A token that comes with
    /// answers replaces an ageing one and needs nothing sent again.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
        // Frame headers only: this runs on every datagram a subscriber
        // gets, and the token is rare among deliveries.
        let (mut got, mut others) = (false, false);
        for (kind, body) in wire::frame_bodies(datagram) {
            match <[u8; TOKEN_LEN]>::try_from(body) {
                Ok(token) if kind == FrameType::AddressToken as u8 => {
                    self.token = Some(token);
                    self.next_hello = None;
                    got = true;
                }
                _ => others = true,
            }
        }
        if !got || others || self.refused_at.is_some_and(|at| now < at + HELLO_RETRY) {
            return false;
        }
        self.refused_at = Some(now);
        true
    }

    /// `frames` as one datagram with the token in front; `None` if there
    /// are no frames (or they do not encode).
    pub fn stamp_frames(&self, frames: &[Frame<'_>]) -> Option<Vec<u8>> {
        if frames.is_empty() {
            return None;
        }
        wire::encode_datagram(frames).ok().map(|d| self.stamp(d))
    }

    /// `datagram` with the token's VALIDATE frame in front of its frames;
    /// unchanged while there is no token.
    pub fn stamp(&self, mut datagram: Vec<u8>) -> Vec<u8> {
        let Some(token) = self.token else {
            return datagram;
        };
        if datagram.len() < HEADER_LEN {
            return datagram;
        }
        // Exactly VALIDATE_LEN bytes: encoded on the stack, not in a Vec
        // per datagram.
        let mut frame = [0u8; wire::VALIDATE_LEN];
        if (Frame::Validate { token })
            .encode(&mut &mut frame[..])
            .is_ok()
        {
            datagram.splice(HEADER_LEN..HEADER_LEN, frame);
        }
        datagram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::relay::{Now, Relay};

    #[test]
    fn a_hello_gets_a_token_that_the_relay_takes() {
        let dir = tempfile::tempdir().unwrap();
        let config = RelayConfig {
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        let t = Instant::now();
        let now = Now {
            instant: t,
            unix_nanos: 1_700_000_000_000_000_000,
        };
        let mut relay = Relay::open(&config, now).unwrap();
        let me = "127.0.0.1:5000".parse().unwrap();
        let mut proof = AddressProof::new();
        let hello = proof.poll_hello(t).expect("a hello at once");
        assert!(proof.poll_hello(t).is_none(), "not again before the retry");
        assert_eq!(proof.poll_timeout(), Some(t + HELLO_RETRY));
        relay.handle_datagram(now, me, &hello);
        let answer = relay.poll_transmit().expect("a token");
        assert!(
            answer.payload.len() <= hello.len(),
            "no larger than the hello"
        );
        assert!(proof.handle_datagram(t, &answer.payload));
        assert!(proof.is_proven());
        assert_eq!(proof.poll_timeout(), None);
        assert!(proof.poll_hello(t + HELLO_RETRY).is_none());

        // Stamped, a STATS request is served; unstamped it is not.
        let stats = Frame::StatsRequest {
            cursor: 0,
            padding: 600,
        };
        let request = wire::encode_datagram(&[stats]).unwrap();
        relay.handle_datagram(now, me, &request);
        let refused = relay.poll_transmit().expect("a token, not stats");
        assert!(
            !proof.handle_datagram(t, &refused.payload),
            "resent once per retry at most"
        );
        relay.handle_datagram(now, me, &proof.stamp(request));
        let page = relay.poll_transmit().expect("a stats page");
        let mut frames = wire::decode_datagram(&page.payload).unwrap();
        assert!(matches!(frames.next(), Some(Ok(Frame::Stats { .. }))));
    }
}

//! Sans-IO client pieces: a publisher that packs messages into datagrams, and
//! a subscription that asks, keeps itself alive and turns datagrams into
//! events. `udpcat` and the tests put sockets around them.
//!
//! Like the relay core, nothing here owns a socket or reads a clock: time is an
//! argument, datagrams go in and out as bytes.

use std::time::{Duration, Instant};

use thiserror::Error;

mod reliable;
pub use reliable::{ReliablePublisher, ReliableSubscription};

use crate::wire::{
    self, DatagramBuilder, DeliveryMode, ErrorCode, Frame, HEADER_LEN, MAX_DATAGRAM, StartPosition,
    WireError,
};

/// How often an unanswered subscribe is sent again.
pub const SUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

/// Why a client request could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    /// The channel name breaks the naming rules.
    #[error("invalid channel name {0:?}: 1 to 255 bytes of UTF-8, no control characters")]
    BadChannel(String),
    /// The message cannot be carried in one datagram.
    #[error("message of {size} bytes is larger than the {max} bytes one datagram carries")]
    TooLarge {
        /// The message's size.
        size: usize,
        /// The largest size that fits.
        max: usize,
    },
}

/// Packs publish frames for one channel into datagrams of at most a given size.
#[derive(Debug)]
pub struct Publisher {
    channel: String,
    builder: DatagramBuilder,
}

impl Publisher {
    /// A publisher for `channel` that fills datagrams up to `datagram_size`
    /// bytes (a message too large for that still goes, alone).
    pub fn new(channel: &str, datagram_size: usize) -> Result<Publisher, ClientError> {
        wire::validate_channel(channel.as_bytes())
            .map_err(|_| ClientError::BadChannel(channel.to_string()))?;
        Ok(Publisher {
            channel: channel.to_string(),
            builder: DatagramBuilder::new(datagram_size),
        })
    }

    /// The largest message this publisher can send in one datagram.
    pub fn max_message_size(&self) -> usize {
        MAX_DATAGRAM - HEADER_LEN - wire::FRAME_HEADER_LEN - 1 - self.channel.len()
    }

    /// Adds a message. Returns the datagrams that closed to make room for it
    /// (zero, one, or two when the message itself had to go alone).
    pub fn push(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let max = self.max_message_size();
        if payload.len() > max {
            return Err(ClientError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        let frame = Frame::Publish {
            channel: &self.channel,
            payload,
        };
        let mut done = Vec::new();
        if self.builder.push(&frame) == Err(WireError::TooLarge) {
            if !self.builder.is_empty() {
                done.push(self.builder.finish());
            }
            if self.builder.push(&frame).is_err() {
                let mut alone = DatagramBuilder::new(MAX_DATAGRAM);
                alone.push(&frame).map_err(|_| ClientError::TooLarge {
                    size: payload.len(),
                    max,
                })?;
                done.push(alone.finish());
            }
        }
        Ok(done)
    }

    /// The datagram being filled, if it holds any message.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.builder.is_empty()).then(|| self.builder.finish())
    }
}

/// What a subscription saw in a datagram from the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionEvent<'a> {
    /// The relay accepted the subscription (sent once, on the first answer).
    Subscribed {
        /// Offset of the first message the relay will send.
        first_offset: u64,
        /// Offset the channel's next message will get.
        next_offset: u64,
    },
    /// A message of the channel.
    Message {
        /// Its offset.
        offset: u64,
        /// When the relay stored it (ns since the Unix epoch).
        timestamp: u64,
        /// Its bytes.
        payload: &'a [u8],
    },
    /// The relay refused something.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why.
        reason: &'a str,
    },
}

/// One subscription's client side: sends the subscribe until answered, then
/// keeps the lease alive by subscribing again (idempotent at the relay) every
/// third of the lease, from the next offset it expects, so a relay that
/// restarted picks the subscription up where it was.
#[derive(Debug)]
pub struct Subscription {
    sub_id: u32,
    channel: String,
    start: StartPosition,
    /// Offset after the last message seen, once one was.
    next_expected: Option<u64>,
    /// Lease the relay granted; `None` until the first answer.
    lease: Option<Duration>,
    /// When the next subscribe (retry or keepalive) is due.
    next_send: Instant,
}

impl Subscription {
    /// A subscription that will send its first request at `now`.
    pub fn new(
        sub_id: u32,
        channel: &str,
        start: StartPosition,
        now: Instant,
    ) -> Result<Subscription, ClientError> {
        wire::validate_channel(channel.as_bytes())
            .map_err(|_| ClientError::BadChannel(channel.to_string()))?;
        Ok(Subscription {
            sub_id,
            channel: channel.to_string(),
            start,
            next_expected: None,
            lease: None,
            next_send: now,
        })
    }

    /// True once the relay has answered.
    pub fn is_active(&self) -> bool {
        self.lease.is_some()
    }

    /// When [`Subscription::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        self.next_send
    }

    /// The subscribe datagram, if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_send {
            return None;
        }
        let interval = self.lease.map_or(SUBSCRIBE_RETRY, |l| l / 3);
        self.next_send = now + interval;
        let start = self.next_expected.map_or(self.start, StartPosition::Offset);
        let frame = Frame::Subscribe {
            sub_id: self.sub_id,
            mode: DeliveryMode::Unreliable,
            start,
            channel: &self.channel,
        };
        wire::encode_datagram(&[frame]).ok()
    }

    /// The datagram that ends the subscription.
    pub fn unsubscribe(&self) -> Vec<u8> {
        let frame = Frame::Unsubscribe {
            sub_id: self.sub_id,
        };
        wire::encode_datagram(&[frame]).unwrap_or_default()
    }

    /// Reads a datagram from the relay and reports what it holds for this
    /// subscription. Returns false if the datagram did not decode.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        datagram: &'a [u8],
        mut on_event: impl FnMut(SubscriptionEvent<'a>),
    ) -> bool {
        let Ok(frames) = wire::decode_datagram(datagram) else {
            return false;
        };
        for frame in frames {
            let Ok(frame) = frame else { return false };
            match frame {
                Frame::Subscribed {
                    sub_id,
                    first_offset,
                    next_offset,
                    lease_ms,
                } if sub_id == self.sub_id => {
                    let lease = Duration::from_millis(u64::from(lease_ms).max(30));
                    if self.lease.is_none() {
                        self.next_send = now + lease / 3;
                        on_event(SubscriptionEvent::Subscribed {
                            first_offset,
                            next_offset,
                        });
                    }
                    self.lease = Some(lease);
                }
                Frame::Deliver {
                    sub_id,
                    offset,
                    timestamp,
                    payload,
                } if sub_id == self.sub_id => {
                    self.next_expected = Some(offset + 1);
                    on_event(SubscriptionEvent::Message {
                        offset,
                        timestamp,
                        payload,
                    });
                }
                Frame::Error { code, reason } => {
                    on_event(SubscriptionEvent::Error { code, reason })
                }
                _ => {}
            }
        }
        true
    }
}

/// A message as one JSON object: channel, offset, timestamp and the payload
/// as text, or as `payload_hex` when it is not UTF-8. The format of
/// `udpcat sub --format json` and `udprelay log dump --format json`.
pub fn message_json(
    channel: &str,
    offset: u64,
    timestamp: u64,
    payload: &[u8],
) -> serde_json::Value {
    let mut obj = serde_json::json!({
        "channel": channel,
        "offset": offset,
        "timestamp": timestamp,
    });
    match std::str::from_utf8(payload) {
        Ok(text) => obj["payload"] = text.into(),
        Err(_) => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            obj["payload_hex"] = hex.into();
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::relay::{Now, Relay};

    #[test]
    fn publisher_packs_until_full_and_sends_big_messages_alone() {
        let mut p = Publisher::new("news", 100).unwrap();
        let mut datagrams = Vec::new();
        for _ in 0..5 {
            datagrams.extend(p.push(&[b'x'; 30]).unwrap());
        }
        // 8 header + 2 * (4 + 1 + 4 + 30) = 86 bytes per datagram: two fit.
        assert_eq!(datagrams.len(), 2);
        datagrams.extend(p.push(&[b'y'; 500]).unwrap());
        assert_eq!(
            datagrams.len(),
            4,
            "the open datagram closes, the big one goes alone"
        );
        assert!(p.flush().is_none());
        assert!(matches!(
            p.push(&vec![0; MAX_DATAGRAM]),
            Err(ClientError::TooLarge { .. })
        ));
        assert!(Publisher::new("bad\nname", 100).is_err());
    }

    #[test]
    fn subscription_retries_until_answered_then_keeps_alive() {
        let t = Instant::now();
        let mut s = Subscription::new(5, "news", StartPosition::Latest, t).unwrap();
        assert!(s.poll_transmit(t).is_some());
        assert!(
            s.poll_transmit(t + SUBSCRIBE_RETRY - Duration::from_millis(1))
                .is_none()
        );
        let retry = s
            .poll_transmit(t + SUBSCRIBE_RETRY)
            .expect("retry after 250 ms");

        // Let a real relay core answer it.
        let dir = tempfile::tempdir().unwrap();
        let now = Now {
            instant: t,
            unix_nanos: 0,
        };
        let config = RelayConfig {
            lease: Duration::from_secs(3),
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        let mut relay = Relay::open(&config, now).unwrap();
        let me = "127.0.0.1:4000".parse().unwrap();
        relay.handle_datagram(now, me, &retry);
        let publish = wire::encode_datagram(&[Frame::Publish {
            channel: "news",
            payload: b"hi",
        }])
        .unwrap();
        relay.handle_datagram(now, "127.0.0.1:5000".parse().unwrap(), &publish);
        let mut events = Vec::new();
        let answered = t + Duration::from_millis(260);
        while let Some(tx) = relay.poll_transmit() {
            s.handle_datagram(answered, &tx.payload, |e| events.push(format!("{e:?}")));
        }
        assert_eq!(
            events,
            [
                "Subscribed { first_offset: 0, next_offset: 0 }",
                "Message { offset: 0, timestamp: 0, payload: [104, 105] }"
            ]
        );
        assert!(s.is_active());
        // Keepalive at a third of the 3 s lease, asking from the next offset.
        assert_eq!(s.poll_timeout(), answered + Duration::from_secs(1));
        let keepalive = s.poll_transmit(answered + Duration::from_secs(1)).unwrap();
        let frame = wire::decode_datagram(&keepalive)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                frame,
                Frame::Subscribe {
                    start: StartPosition::Offset(1),
                    ..
                }
            ),
            "{frame:?}"
        );
    }
}

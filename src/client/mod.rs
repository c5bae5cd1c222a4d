//! Sans-IO client pieces: a publisher that packs messages into datagrams, and
//! a subscription that asks, keeps itself alive and turns datagrams into
//! events. `udpcat` and the tests put sockets around them.
//!
//! Like the relay core, nothing here owns a socket or reads a clock: time is an
//! argument, datagrams go in and out as bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

mod ping;
mod reliable;
mod stats;
pub use ping::{PING_RETRY, PingOutcome, Pinger};
pub use reliable::{ReliablePublisher, ReliableSubscription};
pub use stats::{MAX_STATS_ENTRIES, MIN_STATS_REQUEST, STATS_RETRY, StatsError, StatsPager};

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

/// Checks a channel name before anything is sent with it.
fn check_channel(channel: &str) -> Result<(), ClientError> {
    wire::validate_channel(channel.as_bytes())
        .map(|_| ())
        .map_err(|_| ClientError::BadChannel(channel.to_string()))
}

/// Packs publish frames for one channel into datagrams of at most a given size.
#[derive(Debug)]
pub struct Publisher {
    channel: String,
    builder: DatagramBuilder,
    /// Id of the next message sent in pieces.
    next_msg_id: u32,
}

impl Publisher {
    /// A publisher for `channel` that fills datagrams up to `datagram_size`
    /// bytes (a message too large for that still goes, alone).
    pub fn new(channel: &str, datagram_size: usize) -> Result<Publisher, ClientError> {
        check_channel(channel)?;
        Ok(Publisher {
            channel: channel.to_string(),
            builder: DatagramBuilder::new(datagram_size),
            next_msg_id: 0,
        })
    }

    /// The largest message this publisher can send in one datagram; larger
    /// ones go in pieces.
    pub fn max_message_size(&self) -> usize {
        MAX_DATAGRAM - HEADER_LEN - wire::FRAME_HEADER_LEN - 1 - self.channel.len()
    }

    /// Adds a message. Returns the datagrams that closed to make room for it
    /// (zero, one, or two when the message itself had to go alone), or, for
    /// a message larger than one datagram, its pieces (FRAGMENT frames, each
    /// a datagram of its own).
    pub fn push(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        if payload.len() > self.max_message_size() {
            return self.push_in_pieces(payload);
        }
        let max = self.max_message_size();
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

    fn push_in_pieces(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
        let piece = self
            .builder_limit()
            .saturating_sub(HEADER_LEN + 4 + 9 + self.channel.len());
        let piece = piece.max(256);
        let count = payload.len().div_ceil(piece);
        let Ok(count) = u16::try_from(count) else {
            return Err(ClientError::TooLarge {
                size: payload.len(),
                max: piece * usize::from(u16::MAX),
            });
        };
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        let mut done: Vec<Vec<u8>> = self.flush().into_iter().collect();
        for (index, chunk) in payload.chunks(piece).enumerate() {
            let frame = Frame::Fragment {
                msg_id,
                index: index as u16,
                count,
                channel: &self.channel,
                chunk,
            };
            let datagram = wire::encode_datagram(&[frame]).map_err(|_| ClientError::TooLarge {
                size: payload.len(),
                max: piece,
            })?;
            done.push(datagram);
        }
        Ok(done)
    }

    fn builder_limit(&self) -> usize {
        self.builder.len() + self.builder.remaining()
    }

    /// The datagram being filled, if it holds any message.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.builder.is_empty()).then(|| self.builder.finish())
    }
}

/// Largest message a client puts together from pieces: a relay's pieces
/// announcing more are ignored, so a bad relay cannot make it allocate
/// without bound.
pub const MAX_REASSEMBLED: usize = 64 << 20;

/// Large messages arriving in pieces (DELIVER_FRAGMENT), by offset. Holds at
/// most [`MAX_REASSEMBLED`] bytes at once: an unreliable message whose pieces
/// stop coming is evicted by newer ones.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: VecDeque<PartialMessage>,
}

/// A message some of whose pieces arrived.
#[derive(Debug)]
struct PartialMessage {
    offset: u64,
    total: usize,
    bytes: Vec<u8>,
    /// `[start, end)` of every piece in, so a duplicate is not counted twice
    /// and the sender can be told what arrived.
    pieces: Vec<(u32, u32)>,
    /// Bytes in so far.
    received: usize,
}

impl Reassembler {
    /// Adds a piece; returns the whole message once every byte is in.
    pub fn add(&mut self, offset: u64, total: u32, at: u32, chunk: &[u8]) -> Option<Vec<u8>> {
        let total = total as usize;
        let end = at as usize + chunk.len();
        if total > MAX_REASSEMBLED || end > total || chunk.is_empty() {
            return None;
        }
        let i = match self.partial.iter().position(|p| p.offset == offset) {
            Some(i) => i,
            None => {
                let held: usize = self.partial.iter().map(|p| p.total).sum();
                let mut room = MAX_REASSEMBLED.saturating_sub(held);
                while room < total {
                    let Some(evicted) = self.partial.pop_front() else {
                        break;
                    };
                    room += evicted.total;
                }
                self.partial.push_back(PartialMessage {
                    offset,
                    total,
                    bytes: vec![0; total],
                    pieces: Vec::new(),
                    received: 0,
                });
                self.partial.len() - 1
            }
        };
        let p = &mut self.partial[i];
        if p.total != total || p.pieces.iter().any(|&(start, _)| start == at) {
            return None;
        }
        p.bytes[at as usize..end].copy_from_slice(chunk);
        p.pieces.push((at, end as u32));
        p.received += chunk.len();
        if p.received < total {
            return None;
        }
        self.partial.remove(i).map(|p| p.bytes)
    }

    /// True if no message is held in part.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// The offsets of the messages held in part, lowest first.
    pub fn offsets(&self) -> Vec<u64> {
        let mut offsets: Vec<u64> = self.partial.iter().map(|p| p.offset).collect();
        offsets.sort_unstable();
        offsets
    }

    /// The byte ranges of message `offset` that arrived, merged and in
    /// order, at most `max` of them (the lowest); `None` if none of its
    /// pieces is held.
    pub fn received(&self, offset: u64, max: usize) -> Option<Vec<(u64, u64)>> {
        let p = self.partial.iter().find(|p| p.offset == offset)?;
        let mut pieces = p.pieces.clone();
        pieces.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (start, end) in pieces {
            let (start, end) = (u64::from(start), u64::from(end));
            if let Some(last) = ranges.last_mut()
                && start <= last.1
            {
                last.1 = last.1.max(end);
            } else if ranges.len() == max {
                break;
            } else {
                ranges.push((start, end));
            }
        }
        Some(ranges)
    }
}

/// What a datagram from the relay holds for one subscription, as both kinds
/// of subscription read it.
pub(crate) enum FromRelay<'a> {
    /// The relay accepted the subscription.
    Subscribed {
        first_offset: u64,
        next_offset: u64,
        lease: Duration,
    },
    /// A message, whole (put back together if it came in pieces), or empty
    /// for a piece of an offset below `received_below`.
    Message {
        offset: u64,
        timestamp: u64,
        payload: std::borrow::Cow<'a, [u8]>,
    },
    /// A refusal.
    Error { code: ErrorCode, reason: &'a str },
}

/// Reads the frames of `datagram` meant for subscription `sub_id`, joining
/// the pieces of large messages in `pieces`. Pieces of offsets below
/// `received_below` (retransmissions of what is already whole) are not
/// collected again but reported as an empty message. Returns false if the
/// datagram did not decode.
pub(crate) fn read_from_relay<'a>(
    datagram: &'a [u8],
    sub_id: u32,
    pieces: &mut Reassembler,
    received_below: u64,
    mut on: impl FnMut(FromRelay<'a>),
) -> bool {
    let Ok(frames) = wire::decode_datagram(datagram) else {
        return false;
    };
    for frame in frames {
        let Ok(frame) = frame else { return false };
        match frame {
            Frame::Subscribed {
                sub_id: s,
                first_offset,
                next_offset,
                lease_ms,
            } if s == sub_id => on(FromRelay::Subscribed {
                first_offset,
                next_offset,
                lease: Duration::from_millis(u64::from(lease_ms).max(30)),
            }),
            Frame::Deliver {
                sub_id: s,
                offset,
                timestamp,
                payload,
            } if s == sub_id => on(FromRelay::Message {
                offset,
                timestamp,
                payload: payload.into(),
            }),
            Frame::DeliverFragment {
                sub_id: s,
                offset,
                timestamp,
                total,
                at,
                chunk,
            } if s == sub_id => {
                let payload = if offset < received_below {
                    Some(Vec::new())
                } else {
                    pieces.add(offset, total, at, chunk)
                };
                if let Some(payload) = payload {
                    on(FromRelay::Message {
                        offset,
                        timestamp,
                        payload: payload.into(),
                    });
                }
            }
            Frame::Error { code, reason } => on(FromRelay::Error { code, reason }),
            _ => {}
        }
    }
    true
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
    /// Large messages arriving in pieces.
    pieces: Reassembler,
}

impl Subscription {
    /// A subscription that will send its first request at `now`.
    pub fn new(
        sub_id: u32,
        channel: &str,
        start: StartPosition,
        now: Instant,
    ) -> Result<Subscription, ClientError> {
        check_channel(channel)?;
        Ok(Subscription {
            sub_id,
            channel: channel.to_string(),
            start,
            next_expected: None,
            lease: None,
            next_send: now,
            pieces: Reassembler::default(),
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
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_event: impl FnMut(SubscriptionEvent<'_>),
    ) -> bool {
        let (sub_id, pieces) = (self.sub_id, &mut self.pieces);
        read_from_relay(datagram, sub_id, pieces, 0, |item| match item {
            FromRelay::Subscribed {
                first_offset,
                next_offset,
                lease,
            } => {
                if self.lease.is_none() {
                    self.next_send = now + lease / 3;
                    on_event(SubscriptionEvent::Subscribed {
                        first_offset,
                        next_offset,
                    });
                }
                self.lease = Some(lease);
            }
            FromRelay::Message {
                offset,
                timestamp,
                payload,
            } => {
                self.next_expected = Some(offset + 1);
                on_event(SubscriptionEvent::Message {
                    offset,
                    timestamp,
                    payload: &payload,
                });
            }
            FromRelay::Error { code, reason } => {
                on_event(SubscriptionEvent::Error { code, reason })
            }
        })
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
        // Larger than a datagram: pieces, each a datagram of its own.
        let pieces = p.push(&vec![7; MAX_DATAGRAM]).unwrap();
        assert_eq!(pieces.len(), MAX_DATAGRAM.div_ceil(256));
        for (i, d) in pieces.iter().enumerate() {
            let frame = wire::decode_datagram(d).unwrap().next().unwrap().unwrap();
            assert!(
                matches!(frame, Frame::Fragment { index, count, .. } if usize::from(index) == i && usize::from(count) == pieces.len()),
                "{frame:?}"
            );
        }
        assert!(matches!(
            p.push(&vec![0; 256 * 65_536]),
            Err(ClientError::TooLarge { .. })
        ));
        assert!(Publisher::new("bad\nname", 100).is_err());
    }

    #[test]
    fn reassembler_joins_pieces_in_any_order_once() {
        let mut r = Reassembler::default();
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let pieces: Vec<(u32, &[u8])> = msg
            .chunks(300)
            .enumerate()
            .map(|(i, c)| (i as u32 * 300, c))
            .collect();
        assert!(r.add(5, 1000, pieces[3].0, pieces[3].1).is_none());
        assert!(r.add(5, 1000, pieces[0].0, pieces[0].1).is_none());
        assert!(
            r.add(5, 1000, pieces[0].0, pieces[0].1).is_none(),
            "a duplicate piece"
        );
        assert!(r.add(5, 1000, pieces[2].0, pieces[2].1).is_none());
        // What it holds, merged: [0, 300) and [600, 1000).
        assert_eq!(r.offsets(), [5]);
        assert_eq!(r.received(5, 32), Some(vec![(0, 300), (600, 1000)]));
        assert_eq!(r.received(5, 1), Some(vec![(0, 300)]), "the lowest first");
        assert_eq!(r.received(4, 32), None);
        assert_eq!(r.add(5, 1000, pieces[1].0, pieces[1].1), Some(msg));
        assert!(r.offsets().is_empty(), "a whole message is no longer held");
        // Hostile sizes are ignored.
        assert!(r.add(6, u32::MAX, 0, b"x").is_none());
        assert!(r.add(6, 10, 8, b"xyz").is_none());
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

//! A wildcard subscription's client side: one SUBSCRIBE to a pattern
//! (`sensors.>`), and then the channels the relay says it matches (MATCHED),
//! each delivered under the relay's id for it with offsets of its own: plain,
//! or reliable with a receiver (acknowledgements, order, no duplicates) per
//! channel.
//!
//! Deliveries under an id not told yet (its MATCHED was lost) are dropped
//! and ask for a keepalive soon, whose answer tells every channel again; in
//! reliable mode the relay sends them again once acknowledged under the id.

use std::time::{Duration, Instant};

use super::{AddressProof, ClientError, Reassembler, SUBSCRIBE_RETRY, each_frame};
use crate::reliable::{ArqConfig, MAX_ACK_RANGES, Receiver, ReceiverStats};
use crate::subject::Pattern;
use crate::wire::{self, AckKind, DeliveryMode, ErrorCode, Frame, RELAY_SUB_IDS, StartPosition};

/// Bytes of acknowledgements one datagram carries at most (of channels that
/// need one); the others go in the next, sent at once.
const ACK_BYTES_PER_DATAGRAM: usize = 1200;

/// The most an ACK frame of a channel takes: header, fixed part, ranges.
const MAX_ACK_BYTES: usize = wire::FRAME_HEADER_LEN + 21 + 16 * MAX_ACK_RANGES;

/// Channels followed at most: the relay's default per-client limit.
const MAX_FOLLOWED: usize = 4096;

/// What a wildcard subscription saw in a datagram from the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildcardEvent<'a> {
    /// The relay accepted the subscription (once, on the first answer).
    Subscribed,
    /// The pattern matches `channel`, followed from `first_offset` (once
    /// per channel).
    Matched {
        /// The channel.
        channel: &'a str,
        /// Offset of the first message of it that will be sent.
        first_offset: u64,
        /// Offset its next published message will get.
        next_offset: u64,
    },
    /// A message of one of the channels.
    Message {
        /// Its channel.
        channel: &'a str,
        /// Its offset in the channel.
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

/// One channel the pattern matched.
#[derive(Debug)]
struct Followed {
    /// The relay's id for it.
    id: u32,
    channel: String,
    /// Large messages arriving in pieces.
    pieces: Reassembler,
    /// Reliable mode: order, duplicates and acknowledgements.
    receiver: Option<Receiver<(u64, Vec<u8>)>>,
}

/// A wildcard subscription: sends the subscribe until answered, keeps it
/// alive every third of the lease, and reads the channels it follows.
#[derive(Debug)]
pub struct WildcardSubscription {
    sub_id: u32,
    pattern: String,
    mode: DeliveryMode,
    start: StartPosition,
    config: ArqConfig,
    /// Lease the relay granted; `None` until the first answer.
    lease: Option<Duration>,
    /// When the next subscribe (retry or keepalive) is due.
    next_subscribe: Instant,
    followed: Vec<Followed>,
    /// The address token sent with every datagram.
    proof: AddressProof,
}

impl WildcardSubscription {
    /// A subscription `sub_id` (below [`RELAY_SUB_IDS`]) to `pattern`, in
    /// `mode`, reading the channels that exist from `start`; its first
    /// request goes at `now`.
    pub fn new(
        mode: DeliveryMode,
        sub_id: u32,
        pattern: &str,
        start: StartPosition,
        now: Instant,
    ) -> Result<WildcardSubscription, ClientError> {
        if Pattern::parse(pattern).is_err() || sub_id >= RELAY_SUB_IDS {
            return Err(ClientError::BadChannel(pattern.to_string()));
        }
        Ok(WildcardSubscription {
            sub_id,
            pattern: pattern.to_string(),
            mode,
            start,
            config: ArqConfig::default(),
            lease: None,
            next_subscribe: now,
            followed: Vec::new(),
            proof: AddressProof::new(),
        })
    }

    /// True once the relay has answered.
    pub fn is_active(&self) -> bool {
        self.lease.is_some()
    }

    /// True if its channels are delivered reliably.
    pub fn is_reliable(&self) -> bool {
        self.mode == DeliveryMode::Reliable
    }

    /// The channels followed so far.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.followed.iter().map(|f| f.channel.as_str())
    }

    /// The receive side's counters, summed over the channels (reliable
    /// mode; zero otherwise).
    pub fn stats(&self) -> ReceiverStats {
        let mut sum = ReceiverStats::default();
        for r in self.followed.iter().filter_map(|f| f.receiver.as_ref()) {
            let s = r.stats();
            sum.received += s.received;
            sum.duplicates += s.duplicates;
            sum.out_of_order += s.out_of_order;
        }
        sum
    }

    /// When [`WildcardSubscription::poll_transmit`] next has something to
    /// send.
    pub fn poll_timeout(&self) -> Instant {
        if let Some(hello) = self.proof.poll_timeout() {
            return hello;
        }
        (self.followed.iter())
            .filter_map(|f| f.receiver.as_ref()?.poll_timeout())
            .fold(self.next_subscribe, Instant::min)
    }

    /// The datagram due at `now`, if any: acknowledgements of the channels
    /// that owe one, and the subscribe (retry or keepalive).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.proof.is_proven() {
            return self.proof.poll_hello(now);
        }
        let mut acks = Vec::new();
        let mut bytes = 0;
        for f in &mut self.followed {
            if bytes + MAX_ACK_BYTES > ACK_BYTES_PER_DATAGRAM && bytes > 0 {
                break;
            }
            if let Some(ack) = f.receiver.as_mut().and_then(|r| r.poll_ack(now)) {
                let ranges = wire::encode_ack_ranges(&ack.ranges);
                bytes += wire::FRAME_HEADER_LEN + 21 + ranges.len();
                acks.push((f.id, ack.cumulative, ack.window, ranges));
            }
        }
        let mut frames: Vec<Frame<'_>> = (acks.iter())
            .map(|(id, cumulative, window, ranges)| Frame::Ack {
                kind: AckKind::Subscription,
                id: u64::from(*id),
                cumulative: *cumulative,
                window: *window,
                ranges,
            })
            .collect();
        if now >= self.next_subscribe {
            self.next_subscribe = now + self.lease.map_or(SUBSCRIBE_RETRY, |l| l / 3);
            frames.push(Frame::Subscribe {
                sub_id: self.sub_id,
                mode: self.mode,
                start: self.start,
                channel: &self.pattern,
                group: None,
                origins: false,
                resume: wire::ResumeVector::EMPTY,
            });
        }
        self.proof.stamp_frames(&frames)
    }

    /// Reads a datagram from the relay, reporting the subscription, each
    /// channel it follows, each message (per channel in order, in reliable
    /// mode) and errors.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_event: impl FnMut(WildcardEvent<'_>),
    ) {
        if self.proof.handle_datagram(now, datagram) {
            self.next_subscribe = now;
        }
        let (sub_id, mode, config) = (self.sub_id, self.mode, self.config);
        let mut unknown = false;
        each_frame(datagram, |frame| match frame {
            Frame::Subscribed {
                sub_id: s,
                lease_ms,
                ..
            } if s == sub_id => {
                let lease = Duration::from_millis(u64::from(lease_ms).max(30));
                if self.lease.is_none() {
                    self.next_subscribe = now + lease / 3;
                    on_event(WildcardEvent::Subscribed);
                }
                self.lease = Some(lease);
            }
            Frame::Matched {
                sub_id: s,
                channel_sub_id,
                first_offset,
                next_offset,
                channel,
            } if s == sub_id => {
                match self.followed.iter().position(|f| f.id == channel_sub_id) {
                    // Told again by a keepalive.
                    Some(i) if self.followed[i].channel == channel => return,
                    // The id names another channel now (the relay restarted
                    // and numbered its channels afresh): that one is gone.
                    Some(i) => {
                        self.followed.swap_remove(i);
                    }
                    None if self.followed.len() >= MAX_FOLLOWED => return,
                    None => {}
                }
                self.followed.push(Followed {
                    id: channel_sub_id,
                    channel: channel.to_string(),
                    pieces: Reassembler::default(),
                    receiver: (mode == DeliveryMode::Reliable)
                        .then(|| Receiver::new(config, first_offset)),
                });
                on_event(WildcardEvent::Matched {
                    channel,
                    first_offset,
                    next_offset,
                });
            }
            Frame::Deliver {
                sub_id: s,
                offset,
                timestamp,
                payload,
                ..
            } => match self.followed.iter_mut().find(|f| f.id == s) {
                Some(f) => take(f, now, offset, timestamp, payload, &mut on_event),
                None => unknown |= s >= RELAY_SUB_IDS,
            },
            Frame::DeliverFragment {
                sub_id: s,
                offset,
                timestamp,
                total,
                at,
                chunk,
                ..
            } => match self.followed.iter_mut().find(|f| f.id == s) {
                Some(f) => {
                    let below = f.receiver.as_ref().map_or(0, |r| r.cumulative());
                    if offset < below {
                        // Sent again, already whole: acknowledged again.
                        take(f, now, offset, timestamp, &[], &mut on_event);
                    } else if let Some(whole) = f.pieces.add(offset, total, at, chunk) {
                        take(f, now, offset, timestamp, &whole, &mut on_event);
                    }
                }
                None => unknown |= s >= RELAY_SUB_IDS,
            },
            Frame::Error { code, reason } => on_event(WildcardEvent::Error { code, reason }),
            _ => {}
        });
        if unknown {
            // A MATCHED went missing: the keepalive's answer tells them all.
            self.next_subscribe = self.next_subscribe.min(now + SUBSCRIBE_RETRY);
        }
        for f in &mut self.followed {
            let Some(r) = f.receiver.as_mut() else {
                continue;
            };
            while let Some((offset, (timestamp, payload))) = r.pop() {
                on_event(WildcardEvent::Message {
                    channel: &f.channel,
                    offset,
                    timestamp,
                    payload: &payload,
                });
            }
        }
    }

    /// The relay is another one now (the client failed over): a token is
    /// asked of it, then the pattern is sent again at once. Its channels are
    /// told afresh under that relay's ids.
    pub fn moved(&mut self, now: Instant) {
        self.proof = AddressProof::new();
        self.next_subscribe = now;
        self.followed.clear();
        self.start = StartPosition::Latest;
        self.lease = None;
    }

    /// The datagram that ends the subscription and every channel's.
    pub fn unsubscribe(&self) -> Vec<u8> {
        let frame = Frame::Unsubscribe {
            sub_id: self.sub_id,
        };
        self.proof
            .stamp(wire::encode_datagram(&[frame]).unwrap_or_default())
    }
}

/// A message of channel `f`: handed over now (plain), or to its receiver,
/// which hands it over in order (reliable).
fn take(
    f: &mut Followed,
    now: Instant,
    offset: u64,
    timestamp: u64,
    payload: &[u8],
    on_event: &mut impl FnMut(WildcardEvent<'_>),
) {
    match f.receiver.as_mut() {
        Some(r) => {
            r.on_data(offset, (timestamp, payload.to_vec()), now);
        }
        None => on_event(WildcardEvent::Message {
            channel: &f.channel,
            offset,
            timestamp,
            payload,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::relay::{Now, Relay};

    const ME: &str = "127.0.0.1:4000";
    const PUBLISHER: &str = "127.0.0.1:5000";

    struct Link {
        relay: Relay,
        _dir: tempfile::TempDir,
        now: Now,
        /// Messages reported: (channel, offset, payload).
        got: Vec<(String, u64, Vec<u8>)>,
        matched: Vec<String>,
    }

    fn link() -> Link {
        let dir = tempfile::tempdir().unwrap();
        let now = Now {
            instant: Instant::now(),
            unix_nanos: 0,
        };
        let config = RelayConfig {
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        Link {
            relay: Relay::open(&config, now).unwrap(),
            _dir: dir,
            now,
            got: Vec::new(),
            matched: Vec::new(),
        }
    }

    impl Link {
        fn publish(&mut self, channel: &str, payload: &[u8]) {
            let d = wire::encode_datagram(&[Frame::Publish { channel, payload }]).unwrap();
            (self.relay).handle_datagram(self.now, PUBLISHER.parse().unwrap(), &d);
        }

        /// Carries datagrams both ways until neither side has one, dropping
        /// those from the relay that `lose` picks.
        fn exchange(
            &mut self,
            sub: &mut WildcardSubscription,
            mut lose: impl FnMut(&[u8]) -> bool,
        ) {
            loop {
                let mut moved = false;
                while let Some(d) = sub.poll_transmit(self.now.instant) {
                    (self.relay).handle_datagram(self.now, ME.parse().unwrap(), &d);
                    moved = true;
                }
                while let Some(t) = self.relay.poll_transmit() {
                    moved = true;
                    if t.destination.to_string() != ME || lose(&t.payload) {
                        continue;
                    }
                    let (got, matched) = (&mut self.got, &mut self.matched);
                    sub.handle_datagram(self.now.instant, &t.payload, |e| match e {
                        WildcardEvent::Message {
                            channel,
                            offset,
                            payload,
                            ..
                        } => got.push((channel.to_string(), offset, payload.to_vec())),
                        WildcardEvent::Matched { channel, .. } => matched.push(channel.to_string()),
                        _ => {}
                    });
                }
                if !moved {
                    return;
                }
            }
        }

        /// Moves time on by `by` and runs both sides' timers.
        fn wait(&mut self, by: Duration) {
            self.now = self.now.after(by);
            self.relay.handle_timeout(self.now);
        }
    }

    fn has_matched(datagram: &[u8]) -> bool {
        wire::frame_bodies(datagram).any(|(kind, _)| kind == wire::FrameType::Matched as u8)
    }

    fn delivered(mode: DeliveryMode) -> (Link, Vec<(String, u64, Vec<u8>)>) {
        let mut l = link();
        l.publish("s.a", b"a0");
        l.publish("s.a", b"a1");
        l.publish("other", b"no");
        let mut sub =
            WildcardSubscription::new(mode, 1, "s.*", StartPosition::Earliest, l.now.instant)
                .unwrap();
        l.exchange(&mut sub, |_| false);
        l.wait(Duration::from_millis(1));
        l.exchange(&mut sub, |_| false);
        // The datagram telling s.b (with its first message) is lost.
        l.publish("s.b", b"b0");
        let mut lost = false;
        l.exchange(&mut sub, |d| {
            let first = !lost && has_matched(d);
            lost |= first;
            first
        });
        assert!(lost, "s.b was told");
        assert_eq!(l.matched, ["s.a"]);
        // Its next message, under an id not known: the keepalive comes soon.
        l.publish("s.b", b"b1");
        l.exchange(&mut sub, |_| false);
        assert!(sub.poll_timeout() <= l.now.instant + SUBSCRIBE_RETRY);
        // Told again by a keepalive once the relay's retelling allows (a
        // second), at the latest the regular one at a third of the lease.
        for _ in 0..50 {
            l.wait(SUBSCRIBE_RETRY);
            l.exchange(&mut sub, |_| false);
        }
        assert_eq!(l.matched, ["s.a", "s.b"]);
        l.publish("s.b", b"b2");
        l.exchange(&mut sub, |_| false);
        // The delayed acknowledgements go out.
        l.wait(Duration::from_millis(50));
        l.exchange(&mut sub, |_| false);
        let got = l.got.clone();
        (l, got)
    }

    fn message(channel: &str, offset: u64, payload: &[u8]) -> (String, u64, Vec<u8>) {
        (channel.to_string(), offset, payload.to_vec())
    }

    #[test]
    fn an_id_told_again_for_another_channel_names_that_one_from_then_on() {
        // A relay that restarted numbers its channels afresh.
        let t = Instant::now();
        let mut sub =
            WildcardSubscription::new(DeliveryMode::Unreliable, 1, "s.*", StartPosition::Latest, t)
                .unwrap();
        let matched = |channel| {
            wire::encode_datagram(&[Frame::Matched {
                sub_id: 1,
                channel_sub_id: RELAY_SUB_IDS,
                first_offset: 0,
                next_offset: 0,
                channel,
            }])
            .unwrap()
        };
        let deliver = wire::encode_datagram(&[Frame::Deliver {
            sub_id: RELAY_SUB_IDS,
            offset: 0,
            timestamp: 0,
            payload: b"x",
            origin: None,
        }])
        .unwrap();
        let mut got = Vec::new();
        for d in [matched("s.b"), matched("s.b"), matched("s.a"), deliver] {
            sub.handle_datagram(t, &d, |e| got.push(format!("{e:?}")));
        }
        assert_eq!(sub.channels().collect::<Vec<_>>(), ["s.a"]);
        assert_eq!(got.len(), 3, "told once each, then the message: {got:?}");
        assert!(got[2].contains("channel: \"s.a\""), "{got:?}");
    }

    #[test]
    fn plain_the_channels_told_are_read_and_a_lost_matched_costs_what_came_before_it() {
        let (_, got) = delivered(DeliveryMode::Unreliable);
        assert_eq!(
            got,
            [
                message("s.a", 0, b"a0"),
                message("s.a", 1, b"a1"),
                message("s.b", 2, b"b2"),
            ]
        );
    }

    #[test]
    fn reliable_each_channel_arrives_whole_in_order_once_even_after_a_lost_matched() {
        let (mut l, got) = delivered(DeliveryMode::Reliable);
        assert_eq!(
            &got[..2],
            [message("s.a", 0, b"a0"), message("s.a", 1, b"a1")]
        );
        assert_eq!(
            &got[2..],
            [
                message("s.b", 0, b"b0"),
                message("s.b", 1, b"b1"),
                message("s.b", 2, b"b2")
            ]
        );
        // Acknowledged under each channel's id: nothing is sent again.
        let retransmits = l.relay.counters().reliable_retransmits;
        l.wait(Duration::from_secs(5));
        let mut resent = 0;
        while let Some(t) = l.relay.poll_transmit() {
            resent += wire::frame_bodies(&t.payload)
                .filter(|&(kind, _)| kind == wire::FrameType::Deliver as u8)
                .count();
        }
        assert_eq!(resent, 0);
        assert_eq!(l.relay.counters().reliable_retransmits, retransmits);
    }
}

//! Subscriptions' client side: how a datagram from the relay is read for
//! one subscription, the plain subscription, and [`AnySubscription`], either
//! kind behind one interface.

use std::time::{Duration, Instant};

use super::{
    AddressProof, ClientError, Reassembler, ReliableSubscription, check_channel, each_frame,
};
use crate::reliable::ArqConfig;
use crate::wire::{self, DeliveryMode, ErrorCode, Frame, StartPosition};

/// How often an unanswered subscribe is sent again.
pub const SUBSCRIBE_RETRY: Duration = Duration::from_millis(250);

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
        origin: Option<wire::Origin>,
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
    each_frame(datagram, |frame| match frame {
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
            origin,
            payload,
        } if s == sub_id => on(FromRelay::Message {
            offset,
            timestamp,
            origin,
            payload: payload.into(),
        }),
        Frame::DeliverFragment {
            sub_id: s,
            offset,
            timestamp,
            origin,
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
                    origin,
                    payload: payload.into(),
                });
            }
        }
        Frame::Error { code, reason } => on(FromRelay::Error { code, reason }),
        _ => {}
    })
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
    /// The address token sent with every request.
    proof: AddressProof,
    /// The queue group it joins, if any.
    group: Option<String>,
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
            proof: AddressProof::new(),
            group: None,
        })
    }

    /// Makes it a member of queue group `group` of its channel: the
    /// group's members share the channel's messages, each to one of them
    /// (the group is named as a channel is).
    pub fn join(mut self, group: &str) -> Result<Subscription, ClientError> {
        check_channel(group)?;
        self.group = Some(group.to_string());
        Ok(self)
    }

    /// True once the relay has answered.
    pub fn is_active(&self) -> bool {
        self.lease.is_some()
    }

    /// When [`Subscription::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        self.proof.poll_timeout().unwrap_or(self.next_send)
    }

    /// The subscribe datagram (or, first, the hello that gets the address
    /// token), if one is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if !self.proof.is_proven() {
            return self.proof.poll_hello(now);
        }
        if now < self.next_send {
            return None;
        }
        let interval = self.lease.map_or(SUBSCRIBE_RETRY, |l| l / 3);
        self.next_send = now + interval;
        // A group member is live only: its keepalive asks for no offset.
        let start = match self.group {
            Some(_) => StartPosition::Latest,
            None => self.next_expected.map_or(self.start, StartPosition::Offset),
        };
        let frame = Frame::Subscribe {
            sub_id: self.sub_id,
            mode: DeliveryMode::Unreliable,
            start,
            channel: &self.channel,
            group: self.group.as_deref(),
            origins: false,
            resume: wire::ResumeVector::EMPTY,
        };
        wire::encode_datagram(&[frame])
            .ok()
            .map(|d| self.proof.stamp(d))
    }

    /// The relay is another one now (the client failed over): a token is
    /// asked of it, then the subscription is sent again at once, from that
    /// relay's head (each relay has offsets of its own).
    pub fn moved(&mut self, now: Instant) {
        self.proof = AddressProof::new();
        self.next_send = now;
        self.next_expected = None;
        self.start = StartPosition::Latest;
        self.lease = None;
    }

    /// The datagram that ends the subscription.
    pub fn unsubscribe(&self) -> Vec<u8> {
        let frame = Frame::Unsubscribe {
            sub_id: self.sub_id,
        };
        self.proof
            .stamp(wire::encode_datagram(&[frame]).unwrap_or_default())
    }

    /// Reads a datagram from the relay and reports what it holds for this
    /// subscription. Returns false if the datagram did not decode.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on_event: impl FnMut(SubscriptionEvent<'_>),
    ) -> bool {
        if self.proof.handle_datagram(now, datagram) {
            self.next_send = now;
        }
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
                ..
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

/// Either kind of subscription behind one interface, for a receive loop
/// that serves both (`udpcat sub` with or without `--reliable`).
#[derive(Debug)]
pub enum AnySubscription {
    /// Best effort.
    Plain(Subscription),
    /// Acknowledged, in order, exactly once.
    Reliable(Box<ReliableSubscription>),
}

impl AnySubscription {
    /// A subscription of the kind `mode` names, sending its first request at
    /// `now`.
    pub fn new(
        mode: DeliveryMode,
        sub_id: u32,
        channel: &str,
        start: StartPosition,
        now: Instant,
    ) -> Result<AnySubscription, ClientError> {
        Ok(match mode {
            DeliveryMode::Unreliable => {
                AnySubscription::Plain(Subscription::new(sub_id, channel, start, now)?)
            }
            DeliveryMode::Reliable => AnySubscription::Reliable(Box::new(
                ReliableSubscription::new(sub_id, channel, start, ArqConfig::default(), now)?,
            )),
        })
    }

    /// Makes it a member of queue group `group` of its channel (see
    /// [`Subscription::join`] and [`ReliableSubscription::join`]).
    pub fn join(self, group: &str) -> Result<AnySubscription, ClientError> {
        Ok(match self {
            AnySubscription::Plain(s) => AnySubscription::Plain(s.join(group)?),
            AnySubscription::Reliable(s) => AnySubscription::Reliable(Box::new(s.join(group)?)),
        })
    }

    /// True once the relay has answered.
    pub fn is_active(&self) -> bool {
        match self {
            AnySubscription::Plain(s) => s.is_active(),
            AnySubscription::Reliable(s) => s.is_active(),
        }
    }

    /// When [`AnySubscription::poll_transmit`] next has something to send.
    pub fn poll_timeout(&self) -> Instant {
        match self {
            AnySubscription::Plain(s) => s.poll_timeout(),
            AnySubscription::Reliable(s) => s.poll_timeout(),
        }
    }

    /// The datagram due at `now`, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self {
            AnySubscription::Plain(s) => s.poll_transmit(now),
            AnySubscription::Reliable(s) => s.poll_transmit(now),
        }
    }

    /// Reads a datagram from the relay, reporting what it holds for this
    /// subscription (a reliable one: messages in order, each once).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        on_event: impl FnMut(SubscriptionEvent<'_>),
    ) {
        match self {
            AnySubscription::Plain(s) => {
                s.handle_datagram(now, datagram, on_event);
            }
            AnySubscription::Reliable(s) => s.handle_datagram(now, datagram, on_event),
        }
    }

    /// The relay is another one now: see [`Subscription::moved`] and
    /// [`ReliableSubscription::moved`]. True if it resumes after what it
    /// holds of each source (a reliable one with origins), false if it
    /// starts at the new relay's head.
    pub fn moved(&mut self, now: Instant) -> bool {
        match self {
            AnySubscription::Plain(s) => {
                s.moved(now);
                false
            }
            AnySubscription::Reliable(s) => s.moved(now),
        }
    }

    /// A reliable one asks for origins, to resume exactly where it moves
    /// (see [`ReliableSubscription::with_origins`]); a plain one is as it
    /// was.
    pub fn with_origins(self, floor: u64) -> AnySubscription {
        match self {
            AnySubscription::Reliable(s) => {
                AnySubscription::Reliable(Box::new(s.with_origins(floor)))
            }
            plain => plain,
        }
    }

    /// The datagram that ends the subscription.
    pub fn unsubscribe(&self) -> Vec<u8> {
        match self {
            AnySubscription::Plain(s) => s.unsubscribe(),
            AnySubscription::Reliable(s) => s.unsubscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayConfig;
    use crate::relay::{Now, Relay};

    #[test]
    fn subscription_retries_until_answered_then_keeps_alive() {
        let t = Instant::now();
        let mut s = Subscription::new(5, "news", StartPosition::Latest, t).unwrap();
        assert_eq!(s.poll_transmit(t), Some(AddressProof::hello()));
        s.handle_datagram(t, &super::super::token_datagram(), |_| {});
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
        // The token above was not this relay's: it answers with its own,
        // and the subscription sends again at once.
        relay.handle_datagram(now, me, &retry);
        let token = relay.poll_transmit().expect("a token").payload;
        s.handle_datagram(t + SUBSCRIBE_RETRY, &token, |_| {});
        let retry = s.poll_transmit(t + SUBSCRIBE_RETRY).expect("sent again");
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
        let frame = super::super::after_token(&keepalive)[0];
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

    /// Carries datagrams between `sub` (at 127.0.0.1:4000) and `relay` at
    /// `now` until neither has anything to send; returns the messages `sub`
    /// reported and the delivery mode of each subscribe it sent.
    fn exchange(
        sub: &mut AnySubscription,
        relay: &mut Relay,
        now: Now,
    ) -> (Vec<(u64, Vec<u8>)>, Vec<DeliveryMode>) {
        let me = "127.0.0.1:4000".parse().unwrap();
        let (mut messages, mut modes) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some(d) = sub.poll_transmit(now.instant) {
                for frame in wire::decode_datagram(&d).unwrap().flatten() {
                    if let Frame::Subscribe { mode, .. } = frame {
                        modes.push(mode);
                    }
                }
                relay.handle_datagram(now, me, &d);
                moved = true;
            }
            while let Some(tx) = relay.poll_transmit() {
                sub.handle_datagram(now.instant, &tx.payload, |e| {
                    if let SubscriptionEvent::Message {
                        offset, payload, ..
                    } = e
                    {
                        messages.push((offset, payload.to_vec()));
                    }
                });
                moved = true;
            }
            if !moved {
                return (messages, modes);
            }
        }
    }

    #[test]
    fn any_subscription_of_either_mode_subscribes_so_and_receives() {
        for mode in [DeliveryMode::Unreliable, DeliveryMode::Reliable] {
            let t = Instant::now();
            let now = Now {
                instant: t,
                unix_nanos: 0,
            };
            let dir = tempfile::tempdir().unwrap();
            let config = RelayConfig {
                data_dir: dir.path().to_path_buf(),
                ..RelayConfig::default()
            };
            let mut relay = Relay::open(&config, now).unwrap();
            let publisher = "127.0.0.1:5000".parse().unwrap();
            let publish = |payload: &[u8]| {
                wire::encode_datagram(&[Frame::Publish {
                    channel: "news",
                    payload,
                }])
                .unwrap()
            };
            relay.handle_datagram(now, publisher, &publish(b"before"));
            let mut sub = AnySubscription::new(mode, 3, "news", StartPosition::Latest, t).unwrap();
            assert!(!sub.is_active());
            let (messages, modes) = exchange(&mut sub, &mut relay, now);
            assert!(sub.is_active(), "{mode:?}");
            assert_eq!(modes, [mode], "one subscribe, of its own mode");
            assert!(messages.is_empty(), "{mode:?} from latest: {messages:?}");
            relay.handle_datagram(now, publisher, &publish(b"live"));
            let (messages, _) = exchange(&mut sub, &mut relay, now);
            assert_eq!(messages, [(1, b"live".to_vec())], "{mode:?}");
            // Plain: nothing until the keepalive, a third of the lease later;
            // reliable: the delayed acknowledgement comes first.
            let due = match mode {
                DeliveryMode::Unreliable => t + config.lease / 3,
                DeliveryMode::Reliable => t + ArqConfig::default().delayed_ack,
            };
            assert_eq!(sub.poll_timeout(), due, "{mode:?}");
            let unsubscribe = sub.unsubscribe();
            relay.handle_datagram(now, "127.0.0.1:4000".parse().unwrap(), &unsubscribe);
            relay.handle_datagram(now, publisher, &publish(b"after"));
            let (messages, _) = exchange(&mut sub, &mut relay, now);
            assert!(messages.is_empty(), "{mode:?} unsubscribed: {messages:?}");
        }
    }

    #[test]
    fn a_reliable_subscriber_with_origins_moves_between_clustered_relays_missing_and_repeating_nothing()
     {
        use crate::relay::{Origin, Remote, Source};
        let t = Instant::now();
        let now = Now {
            instant: t,
            unix_nanos: 1_700_000_000_000_000_000,
        };
        let relay = |id: u64| {
            let dir = tempfile::tempdir().unwrap();
            let config = RelayConfig {
                data_dir: dir.path().to_path_buf(),
                ..RelayConfig::default()
            };
            let mut relay = Relay::open(&config, now).unwrap();
            relay.enable_cluster(now, id, &[]);
            (relay, dir)
        };
        let ((mut b, _db), (mut c, _dc)) = (relay(0xb), relay(0xc));
        // Relay A's messages and session 7's, as the cluster brings them.
        let copy = |r: &mut Relay, (source, n): (Source, u64)| {
            let origin = Origin {
                source,
                position: n,
                prior_below: Some(n),
            };
            let name = match source {
                Source::Relay(_) => format!("a{n}"),
                Source::Session(_) => format!("s{n}"),
            };
            assert_eq!(
                r.handle_remote(now, "news", origin, false, name.as_bytes()),
                Remote::Appended
            );
        };
        let (a, s) = (Source::Relay(0xa), Source::Session(7));
        let mut sub = AnySubscription::Reliable(Box::new(
            ReliableSubscription::new(3, "news", StartPosition::Latest, ArqConfig::default(), t)
                .unwrap()
                .with_origins(0),
        ));
        exchange(&mut sub, &mut c, now);
        assert!(sub.is_active());
        // Both relays get the first six of each, in different orders.
        for n in 0..6 {
            copy(&mut c, (a, n));
            copy(&mut c, (s, n));
        }
        for n in 0..6 {
            copy(&mut b, (s, n));
        }
        for n in 0..6 {
            copy(&mut b, (a, n));
        }
        let (first, _) = exchange(&mut sub, &mut c, now);
        assert_eq!(first.len(), 12);
        // C gets two more of A's and dies; B has all of both.
        copy(&mut c, (a, 6));
        copy(&mut c, (a, 7));
        let (more, _) = exchange(&mut sub, &mut c, now);
        assert_eq!(more.len(), 2);
        for n in 6..10 {
            copy(&mut b, (a, n));
            copy(&mut b, (s, n));
        }
        sub.moved(t);
        let AnySubscription::Reliable(r) = &sub else {
            unreachable!()
        };
        assert!(
            r.positions()
                .is_some_and(|p| p.is_exact() && p.sources() == 2)
        );
        let (after, _) = exchange(&mut sub, &mut b, now);
        let got: Vec<String> = (after.iter())
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
            .collect();
        let mut want: Vec<String> = (6..10).map(|n| format!("s{n}")).collect();
        want.extend(["a8", "a9"].map(String::from));
        let mut sorted = got.clone();
        sorted.sort();
        want.sort();
        assert_eq!(sorted, want, "each message it lacked, once: {got:?}");
        let s_order: Vec<&String> = got.iter().filter(|p| p.starts_with('s')).collect();
        assert_eq!(s_order, ["s6", "s7", "s8", "s9"], "in its source's order");
    }
}

//! `udpcat sub`'s subscription: one channel (plain or reliable) or a
//! pattern's channels, behind one interface for the receive loop.

use std::time::Instant;

use udprelay::client::{
    AnySubscription, ClientError, SubscriptionEvent, WildcardEvent, WildcardSubscription,
};
use udprelay::reliable::ReceiverStats;
use udprelay::wire::{DeliveryMode, ErrorCode, StartPosition};

/// What the subscription saw, for the loop to print.
pub enum Event<'a> {
    /// The relay accepted it; for one channel, from this offset.
    Subscribed {
        first_offset: Option<u64>,
        next_offset: Option<u64>,
    },
    /// A pattern's new channel, from this offset.
    Matched { channel: &'a str, first_offset: u64 },
    /// A message.
    Message {
        channel: &'a str,
        offset: u64,
        timestamp: u64,
        payload: &'a [u8],
    },
    /// A refusal.
    Error { code: ErrorCode, reason: &'a str },
}

/// One channel, or a pattern.
pub enum Either {
    One(AnySubscription, String),
    Pattern(WildcardSubscription),
}

impl Either {
    /// A member of queue group `group` of `channel` (plain or reliable, as
    /// `mode` says), sending its first request at `now`.
    pub fn member(
        mode: DeliveryMode,
        sub_id: u32,
        channel: &str,
        group: &str,
        now: Instant,
    ) -> Result<Either, ClientError> {
        let sub = AnySubscription::new(mode, sub_id, channel, StartPosition::Latest, now)?;
        Ok(Either::One(sub.join(group)?, channel.to_string()))
    }

    /// A subscription to `channel` (a pattern if it has a `*` or `>`
    /// token), sending its first request at `now`.
    pub fn new(
        mode: DeliveryMode,
        sub_id: u32,
        channel: &str,
        start: StartPosition,
        now: Instant,
    ) -> Result<Either, ClientError> {
        Ok(match udprelay::subject::is_pattern(channel) {
            true => Either::Pattern(WildcardSubscription::new(
                mode, sub_id, channel, start, now,
            )?),
            false => Either::One(
                AnySubscription::new(mode, sub_id, channel, start, now)?,
                channel.to_string(),
            ),
        })
    }

    pub fn is_active(&self) -> bool {
        match self {
            Either::One(s, _) => s.is_active(),
            Either::Pattern(s) => s.is_active(),
        }
    }

    pub fn poll_timeout(&self) -> Instant {
        match self {
            Either::One(s, _) => s.poll_timeout(),
            Either::Pattern(s) => s.poll_timeout(),
        }
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self {
            Either::One(s, _) => s.poll_transmit(now),
            Either::Pattern(s) => s.poll_transmit(now),
        }
    }

    /// The relay is another one now (the client failed over). True if the
    /// subscription resumes after what it received of each source, false
    /// if it starts at the new relay's head.
    pub fn moved(&mut self, now: Instant) -> bool {
        match self {
            Either::One(s, _) => s.moved(now),
            Either::Pattern(s) => {
                s.moved(now);
                false
            }
        }
    }

    /// A reliable subscription to one channel asks for each message's
    /// origin, so that it can resume exactly at another relay; `floor`: what
    /// was stored before it is not wanted should it move before a message
    /// came.
    pub fn with_origins(self, floor: u64) -> Either {
        match self {
            Either::One(s, channel) => Either::One(s.with_origins(floor), channel),
            pattern => pattern,
        }
    }

    pub fn unsubscribe(&self) -> Vec<u8> {
        match self {
            Either::One(s, _) => s.unsubscribe(),
            Either::Pattern(s) => s.unsubscribe(),
        }
    }

    /// The reliable receive side's counters, if reliable.
    pub fn reliable_stats(&self) -> Option<ReceiverStats> {
        match self {
            Either::One(AnySubscription::Reliable(r), _) => Some(r.stats()),
            Either::One(AnySubscription::Plain(_), _) => None,
            Either::Pattern(s) => s.is_reliable().then(|| s.stats()),
        }
    }

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        mut on: impl FnMut(Event<'_>),
    ) {
        match self {
            Either::One(s, channel) => s.handle_datagram(now, datagram, |e| match e {
                SubscriptionEvent::Subscribed {
                    first_offset,
                    next_offset,
                } => on(Event::Subscribed {
                    first_offset: Some(first_offset),
                    next_offset: Some(next_offset),
                }),
                SubscriptionEvent::Message {
                    offset,
                    timestamp,
                    payload,
                } => on(Event::Message {
                    channel,
                    offset,
                    timestamp,
                    payload,
                }),
                SubscriptionEvent::Error { code, reason } => on(Event::Error { code, reason }),
            }),
            Either::Pattern(s) => s.handle_datagram(now, datagram, |e| match e {
                WildcardEvent::Subscribed => on(Event::Subscribed {
                    first_offset: None,
                    next_offset: None,
                }),
                WildcardEvent::Matched {
                    channel,
                    first_offset,
                    ..
                } => on(Event::Matched {
                    channel,
                    first_offset,
                }),
                WildcardEvent::Message {
                    channel,
                    offset,
                    timestamp,
                    payload,
                } => on(Event::Message {
                    channel,
                    offset,
                    timestamp,
                    payload,
                }),
                WildcardEvent::Error { code, reason } => on(Event::Error { code, reason }),
            }),
        }
    }
}

//! Sans-IO client pieces, each a state machine that `udpcat`, udpbench and
//! the tests put sockets around: publishers, subscriptions, the ping client
//! and the STATS client.
//!
//! Like the relay core, nothing here owns a socket or reads a clock: time is
//! an argument, datagrams go in and out as bytes, and each piece says when it
//! next needs to be called (`poll_timeout`).
//!
//! - `publisher`: [`Publisher`], messages packed into datagrams.
//! - `paced`: [`PacedPublisher`], plain publishing paced by ping round trips.
//! - `reliable`: [`ReliablePublisher`] and [`ReliableSubscription`].
//! - `resume`: [`Positions`], what a reliable subscriber holds of each
//!   source, to move to another relay of a cluster without loss or duplicate.
//! - `subscription`: [`Subscription`], [`AnySubscription`] and the reading of
//!   a relay's datagrams for one subscription.
//! - `wildcard`: [`WildcardSubscription`], a subscription to a pattern and
//!   the channels the relay says it matches, each with its own offsets.
//! - `reassembly`: [`Reassembler`], large messages from their pieces.
//! - `ping`: [`Pinger`], round trips measured from the answered send.
//! - `route`: [`Picker`] and [`Routes`], which of several relays to use, by round trip
//!   and by the load each reports.
//! - `stats`: [`StatsPager`], the relay's counters page by page.
//! - `proof`: [`AddressProof`], the address token that subscriptions,
//!   reliable publishers and the STATS client get in one round trip and
//!   send at the head of their datagrams.
//! - `secure`: [`Handshake`] and [`Secured`], a keyed session: the
//!   handshake, then every datagram sealed and opened.

use thiserror::Error;

mod paced;
mod ping;
mod proof;
mod publisher;
mod reassembly;
mod reliable;
mod resume;
mod route;
mod secure;
mod stats;
mod subscription;
mod wildcard;
pub use paced::{PING_EVERY, PacedPublisher};
pub use ping::{PING_RETRY, PingOutcome, Pinger};
pub use proof::{AddressProof, HELLO_RETRY};
pub use publisher::Publisher;
pub use reassembly::{MAX_REASSEMBLED, Reassembler};
pub use reliable::{ReliablePublisher, ReliableSubscription};
pub use resume::{MAX_SOURCES_KEPT, Positions, RESUME_MARGIN};
pub use route::{Candidate, Pick, Picker, REPROBE_EVERY, RTT_GAIN, Route, Routes};
pub use secure::{HANDSHAKE_RETRY, Handshake, SecureError, Secured};
pub use stats::{MAX_STATS_ENTRIES, MIN_STATS_REQUEST, STATS_RETRY, StatsError, StatsPager};
pub use subscription::{AnySubscription, SUBSCRIBE_RETRY, Subscription, SubscriptionEvent};
pub(crate) use subscription::{FromRelay, read_from_relay};
pub use wildcard::{WildcardEvent, WildcardSubscription};

use crate::wire::{self, Frame};

/// Calls `on` for each frame of a datagram from the relay, in order, up to
/// the first that does not decode; false if the datagram or a frame did not
/// decode (the frames before it were still handed over).
fn each_frame<'a>(datagram: &'a [u8], mut on: impl FnMut(Frame<'a>)) -> bool {
    let Ok(frames) = wire::decode_datagram(datagram) else {
        return false;
    };
    for frame in frames {
        let Ok(frame) = frame else { return false };
        on(frame);
    }
    true
}

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

/// A message as one JSON object: channel, offset, timestamp and the payload
/// as text, or as `payload_hex` when it is not UTF-8. The format of
/// `udpcat sub --format json` and `udprelay log dump --format json`. Only
/// with the `cli` feature: the library itself does not depend on serde_json.
#[cfg(feature = "cli")]
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

/// A datagram from a relay that holds an address token and nothing else:
/// for the clients' tests, which answer their hellos with it.
#[cfg(test)]
pub(crate) fn token_datagram() -> Vec<u8> {
    let token = [7; wire::TOKEN_LEN];
    wire::encode_datagram(&[Frame::AddressToken { token }]).unwrap()
}

/// The frames of a client's datagram after the VALIDATE frame it starts
/// with, for the clients' tests.
#[cfg(test)]
pub(crate) fn after_token(datagram: &[u8]) -> Vec<Frame<'_>> {
    let mut frames: Vec<Frame<'_>> = wire::decode_datagram(datagram).unwrap().flatten().collect();
    assert!(
        matches!(frames.first(), Some(Frame::Validate { .. })),
        "no token in front: {frames:?}"
    );
    frames.remove(0);
    frames
}

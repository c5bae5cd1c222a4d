//! Sans-IO ARQ: the send side and the receive side of one reliable stream of
//! sequence numbers, with no sockets, no clock and no payloads.
//!
//! A [`Sender`] decides *when* sequence numbers go out and come back: the
//! in-flight window, cumulative and selective acknowledgements, the
//! retransmission timeout of RFC 6298 (with Karn's rule and exponential
//! backoff), fast retransmit when three later messages were acknowledged
//! before one, a tail-loss probe so the last message of a burst does not wait
//! a whole RTO, a congestion window with pacing, and the receiver's
//! flow-control window. Its owner keeps (or can re-read) the payloads: a
//! client keeps a copy, the relay re-reads its log.
//!
//! A [`Receiver`] suppresses duplicates, puts messages back in order and says
//! when to acknowledge (at once on a gap or a duplicate, otherwise after two
//! messages or the delayed-ack time).
//!
//! # Layout
//!
//! Split by state, as quinn-proto is; the files form a tree:
//!
//! - `config`: [`ArqConfig`] and [`MAX_ACK_RANGES`], used by all the others.
//! - `rtt`: the RTT estimate, RTO with backoff, probe timeout (Karn's rule).
//! - `congestion`: the congestion window and the per-round loss rate.
//! - `pacing`: the pacing schedule.
//! - `runs`: the runs of sequence numbers known selectively acknowledged,
//!   so an acknowledgement costs what it newly covers.
//! - `sender`: the conductor of the send side, using the four above; they
//!   use nothing of it.
//! - `receiver`: the receive side, on its own.

mod config;
mod congestion;
mod pacing;
mod receiver;
mod rtt;
mod runs;
mod sender;

pub use config::{ArqConfig, MAX_ACK_RANGES};
pub use receiver::{Ack, Arrival, Receiver, ReceiverStats};
pub use sender::{Sender, SenderStats};

#[cfg(test)]
mod tests;

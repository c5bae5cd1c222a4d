//! udprelay: a UDP datagram relay with a reliability layer and a memory-mapped
//! message log.
//!
//! Clients publish datagrams to named channels; the relay gives every message
//! the channel's next offset and delivers it to the channel's subscribers.
//! See `README.md` for how to run it and `docs/PROTOCOL.md` for the wire format.
//!
//! # Layout
//!
//! The protocol logic is sans-IO: it owns no sockets and reads no clock. Data
//! and the current time go in; datagrams to send and the next deadline come
//! out. Only [`driver`] touches sockets, timers and signals. Dependencies point
//! one way: `wire` → `relay`/`client` → `driver` → binaries.
//!
//! - [`wire`]: the datagram header and frames; pure encode/decode on byte slices.
//! - [`relay`]: the sans-IO relay core: channels, offsets, subscriptions as
//!   leases, fan-out, raw ingest and egress, counters.
//! - [`client`]: sans-IO client pieces used by `udpcat` and the tests:
//!   batching publisher, subscriber state with keepalive.
//! - [`driver`]: the mio event loop around a [`relay::Relay`]: sockets,
//!   send queue, deadlines, SIGINT/SIGTERM.
//! - [`config`]: validated relay configuration and the duration parser shared
//!   by the binaries.
//! - [`rng`]: the seeded generator used wherever randomness is needed.
//!
//! Binaries: `udprelay` (src/bin) runs the driver; `udpcat` (tools/) publishes,
//! subscribes, pings and reads counters.

pub mod client;
pub mod config;
pub mod driver;
pub mod log;
pub mod relay;
pub mod rng;
pub mod wire;

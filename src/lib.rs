#![warn(missing_docs)]
//! udprelay: a UDP datagram relay with a reliability layer and a memory-mapped
//! message log.
//!
//! Clients publish datagrams to named channels; the relay appends every
//! message to the channel's log, which gives it the channel's next offset, and
//! delivers it to the channel's subscribers, who may also start in the past.
//! See `README.md` for how to run it and `docs/PROTOCOL.md` for the wire format.
//!
//! # Layout
//!
//! The protocol logic is sans-IO: it owns no sockets and reads no clock. Data
//! and the current time go in; datagrams to send and the next deadline come
//! out. Only [`driver`] touches sockets, timers and signals. Dependencies point
//! one way: `wire` → `reliable` → `relay`/`client` → `driver` → binaries;
//! `log` and `config` depend on nothing above them.
//!
//! - [`wire`]: the datagram header and frames; pure encode/decode on byte slices.
//! - [`subject`]: NATS subject syntax over channel names: [`subject::Pattern`]
//!   (`*` one token, `>` one or more) and matching. Depends only on the
//!   channel name rule in `wire`.
//! - [`auth`]: keys, credentials and permissions: the TOML key file, the
//!   `udprelay1:` credential string and time-limited credentials derived
//!   from a master key, constant-time [`auth::Secret`]s, and publish/subscribe
//!   checks over subject patterns; and the keyed session: the Noise NNpsk0
//!   handshake (`snow`), datagrams sealed with AES-256-GCM (`ring`),
//!   the RFC 6479 replay window. Reads no clock and no socket.
//! - [`relay`]: the relay core: a conductor over the channel table,
//!   subscriptions (limits, replay queue, reliable timers), the table of
//!   reliable publishing sessions, reassembly of pieces, delivery (fan-out,
//!   replay, reliable sends), peers and leases, durability and retention,
//!   address validation (tokens, and what an unproven address may be
//!   sent), keyed sessions (`relay::secure`: handshakes answered, datagrams
//!   opened and sealed, permissions), queue groups (`relay::groups`), the
//!   core's side of a cluster (`relay::cluster`: what goes up to NATS
//!   JetStream, what this relay follows, other relays' messages appended
//!   once each; `relay::resume`: origins, and where a reliable subscriber
//!   that moved here starts), draining before a shutdown (`relay::drain`),
//!   a new configuration while running (`relay::reload`), replies and
//!   counters, one file each. No sockets, no
//!   clock: its only I/O is its channels' logs.
//! - [`reliable`]: the sans-IO ARQ over sequence numbers only, split by
//!   state: the RTT estimator (RTO, backoff, Karn), the congestion window,
//!   the pacer, the runs known selectively acknowledged, the sender that
//!   conducts them (sequence space, RACK loss
//!   detection, tail-loss probe, flow window, bundling; its timers in one
//!   [`timer::TimerTable`]) and the receiver (reordering, duplicate
//!   suppression, delayed acknowledgements).
//! - [`time`]: [`time::Now`], the time the cores are handed (monotonic and
//!   wall clock); only [`driver::now`] reads the real clocks.
//! - [`timer`]: where the cores' deadlines live: [`timer::TimerTable`] for a
//!   fixed set of named timers, [`timer::DeadlineQueue`] for one deadline per
//!   key (sessions, subscriptions, leases). Depends on nothing.
//! - [`client`]: sans-IO client pieces used by `udpcat` and the tests, a
//!   file each:
//!   - `client::publisher`: messages packed into datagrams, large ones in pieces.
//!   - `client::paced`: plain publishing paced by ping round trips until the
//!     relay has handled everything.
//!   - `client::reliable`: the reliable publishing session and subscription.
//!   - `client::resume`: what a reliable subscriber holds of each source, to
//!     move between relays of a cluster without loss or duplicate.
//!   - `client::subscription`: the plain subscription with keepalive, and
//!     `AnySubscription`, either kind behind one interface.
//!   - `client::reassembly`: large messages put back together, bounded.
//!   - `client::ping`: the ping client, each round trip from its own send.
//!   - `client::stats`: the STATS client, paging with padded requests.
//!   - `client::proof`: the address token, got with one hello and sent in
//!     front of every datagram that needs it.
//!   - `client::secure`: the keyed session: the handshake, then every
//!     datagram sealed and opened.
//! - [`sim`]: the seeded network simulator that drives the cores in
//!   simulated time.
//! - [`log`]: the message log: per-channel memory-mapped segment files,
//!   checksummed records, recovery, retention, sync, and the read-only
//!   inspection behind `udprelay log`. Knows nothing of the network.
//! - [`driver`]: the mio event loop around a [`relay::Relay`]: sockets,
//!   send queue, deadlines, the background sync thread, signals (SIGTERM
//!   drains, SIGHUP reloads, what systemd is told); `driver::metrics`
//!   (feature `metrics`) is the thread that serves `--metrics`;
//!   [`driver::batch`] sends and receives many datagrams per system call
//!   (recvmmsg/sendmmsg, UDP GSO/GRO), also for udpbench; `driver::bridge`
//!   (feature `cluster`) is the thread that runs the NATS client
//!   (`async-nats` on a current-thread tokio runtime) for `--cluster`.
//! - [`config`]: validated relay configuration and the duration parser shared
//!   by the binaries.
//! - [`rng`]: the seeded generator used wherever randomness is needed.
//!
//! Binaries: `udprelay` (src/bin) runs the driver; `udpcat` (tools/) publishes,
//! subscribes, pings and reads counters; `udpchaos` (tools/) is the
//! impairment proxy.

pub mod auth;
pub mod client;
pub mod config;
pub mod driver;
pub mod log;
pub mod relay;
pub mod reliable;
pub mod rng;
pub mod sim;
pub mod subject;
pub mod time;
pub mod timer;
pub mod wire;

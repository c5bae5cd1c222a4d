//! udpchaos's command line (also read by the man page and completion
//! generator, tools/gen_docs.rs).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use udprelay::config::{parse_duration, parse_size};

/// Impairment proxy: loss, duplication, reordering, delay, jitter and a rate
/// cap, applied to both directions of every flow between clients and an
/// upstream UDP endpoint.
#[derive(Debug, Parser)]
#[command(name = "udpchaos", version)]
pub(crate) struct Args {
    /// Address clients send to (port 0 picks a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7171", value_parser = udprelay::config::parse_addr)]
    pub(crate) listen: SocketAddr,
    /// Where datagrams are forwarded, like a relay at 127.0.0.1:7070 (a host name is resolved).
    #[arg(long, value_parser = udprelay::config::parse_addr)]
    pub(crate) upstream: SocketAddr,
    /// Probability that a datagram is lost, 0 to 1, each direction.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub(crate) loss: f64,
    /// Probability that a datagram arrives twice.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub(crate) dup: f64,
    /// Probability that a datagram is held back one extra delay, so later ones overtake it.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    pub(crate) reorder: f64,
    /// One-way delay added to every datagram (e.g. 20ms).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub(crate) delay: Duration,
    /// Extra random delay, uniform between 0 and this.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub(crate) jitter: Duration,
    /// Keep each flow's datagrams in order: jitter then holds back the ones
    /// behind a delayed datagram instead of letting them overtake it [default: off].
    #[arg(long)]
    pub(crate) in_order: bool,
    /// Bytes per second each sender may put through (e.g. 1M) [default: no cap].
    #[arg(long, value_parser = parse_size)]
    pub(crate) rate: Option<u64>,
    /// Seed of the impairment decisions; the same seed and traffic give the same fate [default: random, printed].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// A client silent for this long loses its upstream socket.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) idle: Duration,
}

/// A probability, 0 to 1.
pub(crate) fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 1"))
    }
}

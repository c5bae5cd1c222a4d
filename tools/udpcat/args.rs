//! udpcat's command line: every flag, with what it does and its default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use udprelay::client::Pick;
use udprelay::config::parse_duration;
use udprelay::reliable::ArqConfig;
use udprelay::wire::StartPosition;

use super::timestamps::Timestamps;

/// netcat for udprelay: publish, subscribe, ping, stats.
#[derive(Debug, Parser)]
#[command(name = "udpcat", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages to a channel: each stdin line (or file line) is one message.
    Pub {
        /// Relay address, like 127.0.0.1:7070, or several: A,B,C (see --pick).
        addr: String,
        /// Channel name.
        channel: String,
        /// Send the lines of this file, as --file does; `-` is stdin [default: none, read stdin].
        #[arg(value_name = "FILE", conflicts_with_all = ["file", "message"])]
        input: Option<PathBuf>,
        /// Send this one message instead of reading stdin [default: none, read stdin].
        #[arg(long, conflicts_with = "file")]
        message: Option<String>,
        /// Send the lines of this file instead of reading stdin; `-` is stdin
        /// (a file named `-` is `./-`) [default: none, read stdin].
        #[arg(long)]
        file: Option<PathBuf>,
        /// Send the input this many times.
        #[arg(short, long, default_value_t = 1)]
        count: u64,
        /// Send all of the input (stdin or --file) as one message, bytes as
        /// they are, instead of one message per line. Messages larger than a
        /// datagram travel in pieces (up to the relay's --max-message-size)
        /// [default: off].
        #[arg(long, conflicts_with = "message")]
        whole: bool,
        /// Pack messages into datagrams of up to this many bytes.
        #[arg(long, default_value_t = 1400)]
        datagram_size: usize,
        /// How long to wait for the relay to answer before giving up; with
        /// --reliable, the longest silence while messages wait for their
        /// acknowledgement (a relay restarting within it is ridden through).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        #[command(flatten)]
        key: KeyArgs,
        /// Print a summary on stderr when done [default: off].
        #[arg(short, long)]
        verbose: bool,
        /// No notes on stderr (which of several relays was picked); warnings
        /// and errors still show [default: off].
        #[arg(short, long, conflicts_with = "verbose")]
        quiet: bool,
        /// Guaranteed delivery: every message is retransmitted until the relay
        /// acknowledges it (once it is in the log); exit 0 only if all were
        /// [default: off].
        #[arg(long)]
        reliable: bool,
        /// With --reliable: while at most this many messages are unacknowledged, a datagram with room carries them again beside new ones, so a lost datagram is repaired by the next (costs bytes, not datagrams; 0 turns it off).
        #[arg(long, default_value_t = ArqConfig::default().bundle_limit)]
        bundle_limit: u32,
    },
    /// Subscribe to a channel (or a pattern's channels) and print each message.
    Sub {
        /// Relay address, like 127.0.0.1:7070, or several: A,B,C (see --pick).
        addr: String,
        /// Channel name, or a pattern: `*` is one token, a last `>` one or
        /// more (e.g. sensors.>), each channel it matches followed.
        channel: String,
        /// Output: `line` (payload and a newline), `raw` (payload bytes only) or
        /// `json` (one object per line: channel, offset, timestamp, payload).
        #[arg(short, long, value_enum, default_value_t = Format::Line)]
        format: Format,
        /// Show each message's stored time (when the relay took it) before
        /// its payload, a tab between. With --format json the `timestamp` key
        /// (nanoseconds) is always there and rfc3339 adds
        /// `timestamp_rfc3339`; --format raw takes none.
        #[arg(long, value_enum, value_name = "HOW", default_value_t = Timestamps::None)]
        timestamps: Timestamps,
        /// Exit 0 after this many messages [default: none, run until --timeout or interrupted].
        #[arg(short, long)]
        count: Option<u64>,
        /// Stop after this long (exit 1 if --count messages had not arrived by then)
        /// [default: none, run until --count or interrupted].
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Where to start: `latest` (new messages only), `earliest`, or an offset.
        #[arg(long, default_value = "latest", value_parser = parse_start)]
        from: StartPosition,
        /// With --from past the channel's last message, wait for that offset instead of starting at the next message [default: off].
        #[arg(long)]
        wait: bool,
        /// How long to wait for the relay to accept the subscription.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        #[command(flatten)]
        key: KeyArgs,
        /// Guaranteed delivery: acknowledged, retransmitted, in offset order,
        /// each message exactly once; resume with --from the next offset
        /// [default: off].
        #[arg(long)]
        reliable: bool,
        /// Join this queue group of the channel: the members of a group (on
        /// any number of hosts) share its messages from the latest on, each
        /// to the least loaded of them. With --reliable, every message is
        /// acknowledged by one member, a message a member leaves without
        /// acknowledging goes to another, and the offsets shown are the
        /// member's own (0, 1, 2...) [default: none, every message].
        #[arg(long, value_name = "NAME", conflicts_with = "from")]
        group: Option<String>,
        /// With --reliable: print the receive counters (in order,
        /// duplicates, out of order) on stderr when done [default: off].
        #[arg(short, long)]
        verbose: bool,
        /// No notes on stderr (the relay picked, where the subscription
        /// starts, each channel a pattern follows); warnings and errors
        /// still show, and stdout is the messages either way [default: off].
        #[arg(short, long, conflicts_with = "verbose")]
        quiet: bool,
    },
    /// Measure the round trip to the relay.
    Ping {
        /// Relay address, like 127.0.0.1:7070, or several: A,B,C (see --pick).
        addr: String,
        /// Number of pings; 0 pings until Ctrl-C. Either way it ends with the totals: pings, answered, loss, and the round trip's min/avg/max.
        #[arg(short, long, default_value_t = 3)]
        count: u32,
        /// Time between pings.
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        interval: Duration,
        /// How long to wait for each pong.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        #[command(flatten)]
        key: KeyArgs,
        /// Only the totals: no line for each pong, no note of the relay
        /// picked; errors still show [default: off].
        #[arg(short, long)]
        quiet: bool,
        /// The totals as one JSON object on stdout, and nothing else there
        /// (no line for each pong), at the end or on Ctrl-C: relay, sent,
        /// received, loss_percent, rtt_min_us, rtt_avg_us, rtt_max_us (the
        /// round trips in microseconds, null if none was answered)
        /// [default: off, text as ping(8) prints it].
        #[arg(long)]
        json: bool,
    },
    /// Print the relay's counters, one `name value` per line.
    Stats {
        /// Relay address, like 127.0.0.1:7070, or several: A,B,C (see --pick).
        addr: String,
        /// How long to wait for each page of the answer.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        #[command(flatten)]
        key: KeyArgs,
        /// Pad each request to this many bytes: the relay answers with at
        /// most as many, so this is the page size.
        #[arg(long, default_value_t = 1400)]
        datagram_size: usize,
        /// One JSON object of every counter (`{"name": value, ...}`) instead of `name value` lines [default: off].
        #[arg(long)]
        json: bool,
    },
}

/// Which relay (ADDR may list several) and the credential that makes a
/// session with one that has keys.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// With several relays in ADDR (A,B,C): how to pick one. `nearest`: the
    /// lowest round trip of pings; `least-loaded`: the lowest load each
    /// reports; `first`: the first that answers; `two-choices`: two at random
    /// among those within 1.5x the best round trip, the less loaded of them.
    #[arg(long, value_name = "HOW", default_value = "two-choices")]
    pub pick: Pick,
    /// Credential (udprelay1:ID:EXPIRES:SECRET, from `udprelay key new` or
    /// `key derive`): handshake first, then every datagram sealed
    /// (authenticated and encrypted). Visible in `ps`: prefer
    /// --credential-file [default: none, plain datagrams].
    #[arg(long, value_name = "STRING", conflicts_with = "credential_file")]
    pub credential: Option<String>,
    /// Read the credential from this file (its first line) [default: none, plain
    /// datagrams].
    #[arg(long, value_name = "FILE")]
    pub credential_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Line,
    Raw,
    Json,
}

pub fn parse_start(s: &str) -> Result<StartPosition, String> {
    match s {
        "latest" => Ok(StartPosition::Latest),
        "earliest" => Ok(StartPosition::Earliest),
        n => n
            .parse()
            .map(StartPosition::Offset)
            .map_err(|_| format!("expected latest, earliest or an offset, got {n:?}")),
    }
}

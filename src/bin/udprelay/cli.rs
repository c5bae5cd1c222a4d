//! udprelay's command line (also read by the man page and completion
//! generator, tools/gen_docs.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use udprelay::config::{self, AuthMode, RelayConfig};
use udprelay::log::FsyncMode;
use udprelay::reliable::ArqConfig;
use udprelay::subject::Pattern;

use super::timestamps::Timestamps;

/// A UDP datagram relay: clients publish to named channels, the relay stores
/// every message in the channel's log and delivers it to the subscribers.
#[derive(Debug, Parser)]
#[command(name = "udprelay", version, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Inspect a data directory (read-only; works beside a running relay).
    #[command(subcommand)]
    Log(LogCommand),
    /// Manage a key file: add keys, hand out time-limited credentials, list keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check a configuration file, or print an example of one.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Read FILE as `udprelay --config FILE` would, and print the settings in
    /// effect (every key); an unknown key or a bad value is one line naming
    /// it, and exit status 1.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Print a configuration file with every key commented out at its
    /// default (what dist/udprelay.toml holds).
    Example,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Add a key with a new random secret and the next id to the key file
    /// (created with mode 0600 if missing; what is there is kept as written).
    /// Prints a summary to stderr and the client's credential as the last
    /// line of stdout.
    New {
        /// The key's name, unique in the file.
        name: String,
        /// The key file (TOML).
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
        /// A channel pattern the key may publish to, in NATS syntax: `*` is
        /// one token, a last `>` one or more, e.g. sensors.> (repeatable) [default: none].
        #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
        publish: Vec<String>,
        /// A channel pattern the key may subscribe to (repeatable) [default: none].
        #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
        subscribe: Vec<String>,
        /// A channel pattern the key may not publish to, whatever --publish allows (repeatable) [default: none].
        #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
        deny_publish: Vec<String>,
        /// A channel pattern the key may not subscribe to, whatever --subscribe allows (repeatable) [default: none].
        #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
        deny_subscribe: Vec<String>,
        /// The key may see other clients' streams in STATS [default: off].
        #[arg(long)]
        admin: bool,
        /// Most messages per second the key may publish, across all its
        /// sessions (a burst of one second's worth) [default: no limit of its own].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        messages_per_sec: Option<u64>,
        /// Most payload bytes per second the key may publish (e.g. 10M) [default: no limit of its own].
        #[arg(long, value_name = "SIZE", value_parser = parse_quota_size)]
        bytes_per_sec: Option<u64>,
        /// Most subscriptions the key may hold across its sessions [default: no limit of its own].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_subscriptions: Option<u64>,
        /// Most reliable publishing sessions the key may hold [default: no limit of its own].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_sessions: Option<u64>,
        /// Most bytes the key may have held for unreliable messages arriving
        /// in pieces (e.g. 8M) [default: an eighth of --reassembly-memory per address].
        #[arg(long, value_name = "SIZE", value_parser = parse_quota_size)]
        reassembly_bytes: Option<u64>,
    },
    /// Print a credential derived from key NAME that is refused once DUR has
    /// passed; the relay needs no change to accept it. Summary to stderr, the
    /// credential as the last line of stdout.
    Derive {
        /// The master key's name.
        name: String,
        /// The key file (TOML).
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
        /// How long from now the credential is valid, at least 1s (e.g. 1h, 30d).
        #[arg(long, value_name = "DUR", value_parser = config::parse_duration)]
        expires: Duration,
    },
    /// List the keys: names, ids and permissions (never secrets).
    Ls {
        /// The key file (TOML).
        #[arg(long, value_name = "FILE")]
        keys: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// List channels: offset range, messages, segments, bytes.
    Ls {
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
        /// One JSON object a channel (channel, first, next, messages, segments, bytes) instead of the table [default: off].
        #[arg(long)]
        json: bool,
    },
    /// Print a channel's stored messages.
    Dump {
        /// The channel.
        channel: String,
        /// First offset to print (or the oldest stored, if later).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most messages to print [default: all].
        #[arg(short, long)]
        count: Option<u64>,
        /// `line`: offset, timestamp (see --timestamps) and payload,
        /// tab-separated; `json`: one object per line (channel, offset,
        /// timestamp, payload).
        #[arg(short, long, value_enum, default_value_t = DumpFormat::Line)]
        format: DumpFormat,
        /// How the line shows each message's stored time (when the relay
        /// took it), between offset and payload; `none` leaves the column
        /// out. With --format json the `timestamp` key (nanoseconds) is
        /// always there and rfc3339 adds `timestamp_rfc3339`.
        #[arg(long, value_enum, value_name = "HOW", default_value_t = Timestamps::UnixNs)]
        timestamps: Timestamps,
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
    },
    /// Check every record's checksum and sequence; exits 1 if anything is damaged.
    Verify {
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
        /// One JSON object: records checked and each problem (channel, path, position, reason) [default: off].
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DumpFormat {
    Line,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Read settings from FILE (TOML): each key is one of the flags below by its name (`data-dir = "/var/lib/udprelay"`, `raw-out = ["feed=127.0.0.1:9000"]` for a repeatable one, `allow-anonymous = true` for a switch); a flag on the command line overrides the file [default: none].
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address of the protocol socket (port 0 picks a free port, printed at start). An address other than loopback needs a key file (--keys) or --allow-anonymous.
    #[arg(long, default_value = "127.0.0.1:7070", value_parser = config::parse_addr)]
    pub(crate) listen: SocketAddr,
    /// Listen on an address other than loopback with no key file: anyone who can reach the port may publish to and read every channel [default: off].
    #[arg(long)]
    pub(crate) allow_anonymous: bool,
    /// Key file (TOML; `udprelay key new` makes one): clients holding a credential for one of its keys handshake, their datagrams are sealed (authenticated and encrypted), and each key may do what its permissions say [default: none, every client may do everything].
    #[arg(long, value_name = "FILE")]
    pub(crate) keys: Option<PathBuf>,
    /// With --keys: `optional` also serves clients without a credential, with the key file's [anonymous] permissions; `required` answers nothing but a handshake from them.
    #[arg(long, default_value = "optional", value_parser = clap::value_parser!(AuthMode))]
    pub(crate) auth: AuthMode,
    /// Most keyed sessions at once (each client with a credential holds one), at most 65535.
    #[arg(long, default_value_t = RelayConfig::default().max_auth_sessions)]
    pub(crate) max_auth_sessions: usize,
    /// Directory for the message log (created if missing; one relay at a time).
    #[arg(long, default_value = "./udprelay-data")]
    pub(crate) data_dir: PathBuf,
    /// When stored messages are forced to disk: `none` (page cache: survives a
    /// crash of the relay, not of the machine), `interval=MS` (by a background
    /// thread: what a reliable publisher or the cluster waits for at once, one
    /// sync per channel covering all that arrived while the last ran; the rest
    /// within MS milliseconds) or `always` (before anything depending on them
    /// is sent).
    #[arg(long, default_value = "none", value_parser = clap::value_parser!(FsyncMode))]
    pub(crate) fsync: FsyncMode,
    /// Largest segment file of a channel's log (e.g. 64M); new channels start at 64K and double.
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    pub(crate) segment_size: u64,
    /// Keep at most this many bytes per channel, deleting whole oldest segments [default: unlimited].
    #[arg(long, value_parser = config::parse_size)]
    pub(crate) retain_bytes: Option<u64>,
    /// Delete whole oldest segments whose newest message is older than this (e.g. 7d) [default: unlimited].
    #[arg(long, value_parser = config::parse_duration)]
    pub(crate) retain_age: Option<Duration>,
    /// Serve CHANNEL even though its log is corrupt in the middle, dropping every record from the first damaged one (repeatable) [default: none, a corrupt channel is refused].
    #[arg(long, value_name = "CHANNEL")]
    pub(crate) truncate_corrupt: Vec<String>,
    /// Bytes per second of replay (subscriptions that start in the past) one client address gets, however many replays it opens.
    #[arg(long, default_value = "256M", value_parser = config::parse_size)]
    pub(crate) replay_rate: u64,
    /// Make this relay an edge of the NATS JetStream cluster at these servers (nats://HOST:PORT, comma-separated): every message stored here is published to the stream UDPRELAY (subject udprelay.CHANNEL), and messages published at other relays reach this relay's subscribers [default: none, a relay on its own].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub(crate) cluster: Vec<String>,
    /// With --cluster, when a reliable publisher's message is acknowledged: `cluster` once JetStream stored it (a publisher that moves to another relay after this one died loses nothing), `local` once this relay stored it (sooner; until bridged it lives only in this relay's log).
    #[arg(long, value_name = "WHEN", default_value = "cluster")]
    pub(crate) cluster_ack: config::ClusterAck,
    /// After each datagram, keep polling the sockets without sleeping for this long (e.g. 200us): lower latency for CPU time; 0 sleeps at once.
    #[arg(long, default_value = "0ms", value_parser = config::parse_duration)]
    pub(crate) busy_poll: Duration,
    /// How long a subscription lives without hearing from its subscriber (e.g. 500ms, 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub(crate) lease: Duration,
    /// Thin-stream redundancy of reliable subscriptions: while at most this many messages are unacknowledged, a datagram with room carries them again beside new ones, so a lost datagram is repaired by the next (costs bytes, not datagrams; 0 turns it off).
    #[arg(long, default_value_t = ArqConfig::default().bundle_limit)]
    pub(crate) bundle_limit: u32,
    /// Largest message accepted, in bytes; larger than a datagram travels in pieces (at most 64 MiB).
    #[arg(long, default_value_t = config::DEFAULT_MAX_MESSAGE)]
    pub(crate) max_message_size: usize,
    /// Size up to which messages for one subscriber are packed into one datagram, in bytes.
    #[arg(long, default_value_t = 1400)]
    pub(crate) datagram_size: usize,
    /// Most channels; publishing to a new channel beyond it is refused.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_channels: usize,
    /// Most subscriptions across all clients.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) max_subscriptions: usize,
    /// Most subscriptions one client address may hold.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_subscriptions_per_client: usize,
    /// Most reliable publishing sessions across all clients; a new one beyond it is refused.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) max_sessions: usize,
    /// Most memory held for unreliable messages still arriving in pieces, across all clients (pieces beyond it are dropped and counted).
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    pub(crate) reassembly_memory: u64,
    /// Most memory held for reliable publishers' out-of-order and incomplete messages, across all clients.
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    pub(crate) session_memory: u64,
    /// Plain-UDP ingest: every datagram arriving at ADDR becomes one message of CHANNEL (repeatable) [default: none].
    #[arg(long = "raw-in", value_name = "ADDR=CHANNEL", value_parser = config::parse_raw_in)]
    pub(crate) raw_in: Vec<(SocketAddr, String)>,
    /// Plain-UDP egress: every message of CHANNEL is sent as a plain datagram to ADDR (repeatable) [default: none].
    #[arg(long = "raw-out", value_name = "CHANNEL=ADDR", value_parser = config::parse_raw_out)]
    pub(crate) raw_out: Vec<(String, SocketAddr)>,
    /// Serve Prometheus metrics at http://ADDR/metrics (and `ok` at /healthz) from a thread of its own; port 0 picks a free one, printed at start. Anyone who reaches it sees the counters and the busiest channels' names: keep it on loopback or a private network [default: none].
    #[arg(long, value_name = "ADDR", value_parser = config::parse_addr)]
    pub(crate) metrics: Option<SocketAddr>,
    /// On SIGTERM, how long to go on for the subscriptions and sessions there are (taking no new ones: reliable publishers finish, reliable subscribers catch up) before stopping; a second SIGTERM, or SIGINT, stops at once; 0 stops at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = config::parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// How log lines are written: `text` for people, `json` for log shippers (one object a line: timestamp, level, target, message and fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace (logs go to stderr).
    #[arg(long, default_value = "info")]
    pub(crate) log_level: tracing::Level,
}

/// Checks a `--publish`-style pattern when the flag is parsed.
pub(crate) fn parse_pattern(s: &str) -> std::result::Result<String, String> {
    Pattern::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A quota in bytes: a size (`8M`), at least one.
pub(crate) fn parse_quota_size(s: &str) -> std::result::Result<u64, String> {
    match config::parse_size(s) {
        Ok(0) => Err("must be at least 1 (leave the flag out for no limit)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

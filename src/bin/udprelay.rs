//! `udprelay`: the relay daemon, `udprelay log` to inspect its data
//! directory and `udprelay key` to manage a key file. Parses flags, builds the
//! configuration, runs the driver until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use udprelay::auth::{KeyFile, NewKey, Quota};
use udprelay::client::message_json;
use udprelay::config::{self, AuthMode, RelayConfig};
use udprelay::driver::Driver;
use udprelay::log::{FsyncMode, LogConfig, inspect};
use udprelay::reliable::ArqConfig;
use udprelay::subject::Pattern;

#[path = "udprelay/config_file.rs"]
mod config_file;

/// A UDP datagram relay: clients publish to named channels, the relay stores
/// every message in the channel's log and delivers it to the subscribers.
#[derive(Debug, Parser)]
#[command(name = "udprelay", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
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
enum ConfigCommand {
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
enum KeyCommand {
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
enum LogCommand {
    /// List channels: offset range, messages, segments, bytes.
    Ls {
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
    },
    /// Print a channel's stored messages.
    Dump {
        /// The channel.
        channel: String,
        /// First offset to print (or the oldest stored, if later).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most messages to print [default: all].
        #[arg(long)]
        count: Option<u64>,
        /// `line`: offset, timestamp and payload, tab-separated; `json`: one
        /// object per line (channel, offset, timestamp, payload).
        #[arg(long, value_enum, default_value_t = DumpFormat::Line)]
        format: DumpFormat,
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
    },
    /// Check every record's checksum and sequence; exits 1 if anything is damaged.
    Verify {
        /// The data directory.
        #[arg(long, default_value = "./udprelay-data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DumpFormat {
    Line,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Read settings from FILE (TOML): each key is one of the flags below by its name (`data-dir = "/var/lib/udprelay"`, `raw-out = ["feed=127.0.0.1:9000"]` for a repeatable one, `allow-anonymous = true` for a switch); a flag on the command line overrides the file [default: none].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the protocol socket (port 0 picks a free port, printed at start). An address other than loopback needs a key file (--keys) or --allow-anonymous.
    #[arg(long, default_value = "127.0.0.1:7070", value_parser = config::parse_addr)]
    listen: SocketAddr,
    /// Listen on an address other than loopback with no key file: anyone who can reach the port may publish to and read every channel [default: off].
    #[arg(long)]
    allow_anonymous: bool,
    /// Key file (TOML; `udprelay key new` makes one): clients holding a credential for one of its keys handshake, their datagrams are sealed (authenticated and encrypted), and each key may do what its permissions say [default: none, every client may do everything].
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// With --keys: `optional` also serves clients without a credential, with the key file's [anonymous] permissions; `required` answers nothing but a handshake from them.
    #[arg(long, default_value = "optional", value_parser = clap::value_parser!(AuthMode))]
    auth: AuthMode,
    /// Most keyed sessions at once (each client with a credential holds one), at most 65535.
    #[arg(long, default_value_t = RelayConfig::default().max_auth_sessions)]
    max_auth_sessions: usize,
    /// Directory for the message log (created if missing; one relay at a time).
    #[arg(long, default_value = "./udprelay-data")]
    data_dir: PathBuf,
    /// When stored messages are forced to disk: `none` (page cache: survives a
    /// crash of the relay, not of the machine), `interval=MS` (in groups every
    /// MS milliseconds) or `always` (before anything depending on them is sent).
    #[arg(long, default_value = "none", value_parser = clap::value_parser!(FsyncMode))]
    fsync: FsyncMode,
    /// Largest segment file of a channel's log (e.g. 64M); new channels start at 64K and double.
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    segment_size: u64,
    /// Keep at most this many bytes per channel, deleting whole oldest segments [default: unlimited].
    #[arg(long, value_parser = config::parse_size)]
    retain_bytes: Option<u64>,
    /// Delete whole oldest segments whose newest message is older than this (e.g. 7d) [default: unlimited].
    #[arg(long, value_parser = config::parse_duration)]
    retain_age: Option<Duration>,
    /// Serve CHANNEL even though its log is corrupt in the middle, dropping every record from the first damaged one (repeatable) [default: none, a corrupt channel is refused].
    #[arg(long, value_name = "CHANNEL")]
    truncate_corrupt: Vec<String>,
    /// Bytes per second of replay (subscriptions that start in the past) one client address gets, however many replays it opens.
    #[arg(long, default_value = "32000000", value_parser = config::parse_size)]
    replay_rate: u64,
    /// Make this relay an edge of the NATS JetStream cluster at these servers (nats://HOST:PORT, comma-separated): every message stored here is published to the stream UDPRELAY (subject udprelay.CHANNEL), and messages published at other relays reach this relay's subscribers [default: none, a relay on its own].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// With --cluster, when a reliable publisher's message is acknowledged: `cluster` once JetStream stored it (a publisher that moves to another relay after this one died loses nothing), `local` once this relay stored it (sooner; until bridged it lives only in this relay's log).
    #[arg(long, value_name = "WHEN", default_value = "cluster")]
    cluster_ack: config::ClusterAck,
    /// After each datagram, keep polling the sockets without sleeping for this long (e.g. 200us): lower latency for CPU time; 0 sleeps at once.
    #[arg(long, default_value = "0ms", value_parser = config::parse_duration)]
    busy_poll: Duration,
    /// How long a subscription lives without hearing from its subscriber (e.g. 500ms, 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    lease: Duration,
    /// Thin-stream redundancy of reliable subscriptions: while at most this many messages are unacknowledged, a datagram with room carries them again beside new ones, so a lost datagram is repaired by the next (costs bytes, not datagrams; 0 turns it off).
    #[arg(long, default_value_t = ArqConfig::default().bundle_limit)]
    bundle_limit: u32,
    /// Largest message accepted, in bytes; larger than a datagram travels in pieces (at most 64 MiB).
    #[arg(long, default_value_t = config::DEFAULT_MAX_MESSAGE)]
    max_message_size: usize,
    /// Size up to which messages for one subscriber are packed into one datagram, in bytes.
    #[arg(long, default_value_t = 1400)]
    datagram_size: usize,
    /// Most channels; publishing to a new channel beyond it is refused.
    #[arg(long, default_value_t = 10_000)]
    max_channels: usize,
    /// Most subscriptions across all clients.
    #[arg(long, default_value_t = 100_000)]
    max_subscriptions: usize,
    /// Most subscriptions one client address may hold.
    #[arg(long, default_value_t = 4096)]
    max_subscriptions_per_client: usize,
    /// Most reliable publishing sessions across all clients; a new one beyond it is refused.
    #[arg(long, default_value_t = 100_000)]
    max_sessions: usize,
    /// Most memory held for unreliable messages still arriving in pieces, across all clients (pieces beyond it are dropped and counted).
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    reassembly_memory: u64,
    /// Most memory held for reliable publishers' out-of-order and incomplete messages, across all clients.
    #[arg(long, default_value = "64M", value_parser = config::parse_size)]
    session_memory: u64,
    /// Plain-UDP ingest: every datagram arriving at ADDR becomes one message of CHANNEL (repeatable) [default: none].
    #[arg(long = "raw-in", value_name = "ADDR=CHANNEL", value_parser = config::parse_raw_in)]
    raw_in: Vec<(SocketAddr, String)>,
    /// Plain-UDP egress: every message of CHANNEL is sent as a plain datagram to ADDR (repeatable) [default: none].
    #[arg(long = "raw-out", value_name = "CHANNEL=ADDR", value_parser = config::parse_raw_out)]
    raw_out: Vec<(String, SocketAddr)>,
    /// Serve Prometheus metrics at http://ADDR/metrics (and `ok` at /healthz) from a thread of its own; port 0 picks a free one, printed at start. Anyone who reaches it sees the counters and the busiest channels' names: keep it on loopback or a private network [default: none].
    #[arg(long, value_name = "ADDR", value_parser = config::parse_addr)]
    metrics: Option<SocketAddr>,
    /// On SIGTERM, how long to go on for the subscriptions and sessions there are (taking no new ones: reliable publishers finish, reliable subscribers catch up) before stopping; a second SIGTERM, or SIGINT, stops at once; 0 stops at once.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = config::parse_duration)]
    drain_timeout: Duration,
    /// How log lines are written: `text` for people, `json` for log shippers (one object a line: timestamp, level, target, message and fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace (logs go to stderr).
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let cli = match config_file::with_file(std::env::args_os().skip(1).collect()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_error) => clap_error.exit(),
            Err(e) => {
                eprintln!("udprelay: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let result = match cli.command {
        Some(Command::Log(cmd)) => log_command(cmd),
        Some(Command::Key(cmd)) => key_command(cmd),
        Some(Command::Config(cmd)) => config_command(cmd),
        None => run(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("udprelay: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(args: RunArgs) -> Result<ExitCode> {
    // The NATS client says every reconnect attempt at info: during an
    // outage that is a line a second; the bridge says what matters.
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{},async_nats=warn",
        args.log_level.as_str().to_ascii_lowercase()
    ));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object a line (timestamp, level, target, fields), for
        // log shippers.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let config = relay_config(args)?;
    let mut driver = Driver::bind(&config)?;
    // SIGHUP makes the configuration again from the same flags and the
    // file as it is then.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    driver.set_reloader(Box::new(move || {
        let cli = config_file::with_file(argv.clone()).map_err(|e| one_line(&*e))?;
        relay_config(cli.run).map_err(|e| e.to_string())
    }));
    // These lines are the relay's contract with scripts and tests: they name
    // the real ports when 0 was asked for. Whoever started the relay may
    // stop reading its output after the line it wanted: a closed stdout is
    // not a reason to stop relaying (println! would panic on it).
    let mut out = std::io::stdout().lock();
    if let Some(addr) = driver.metrics_addr() {
        let _ = writeln!(out, "metrics on http://{addr}/metrics");
    }
    let _ = writeln!(out, "udprelay listening on {}", driver.local_addr()?);
    if let Some(keys) = &config.keys {
        let mode = match config.auth {
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        };
        let _ = writeln!(out, "keys from {} (auth {mode})", keys.display());
    }
    for (addr, (_, channel)) in driver.raw_in_addrs()?.iter().zip(&config.raw_in) {
        let _ = writeln!(out, "raw-in {addr} -> channel {channel}");
    }
    for (channel, addr) in &config.raw_out {
        let _ = writeln!(out, "raw-out channel {channel} -> {addr}");
    }
    let _ = out.flush();
    drop(out);
    // Sockets bound, logs recovered: under systemd (Type=notify), ready.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("systemd notify: {e}");
    }
    driver.run()?;
    let relay = driver.relay();
    let counters = relay
        .counters()
        .entries(relay.channel_count(), relay.subscription_count());
    let summary: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!("stopped: {}", summary.join(" "));
    Ok(ExitCode::SUCCESS)
}

/// An error in one line (clap's own messages run to several).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let text = match e.downcast_ref::<clap::Error>() {
        Some(clap_error) => clap_error.render().to_string(),
        None => e.to_string(),
    };
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_string()
}

/// The relay's configuration from its flags (and file).
fn relay_config(args: RunArgs) -> Result<RelayConfig> {
    Ok(RelayConfig {
        listen: args.listen,
        allow_anonymous: args.allow_anonymous,
        keys: args.keys,
        auth: args.auth,
        max_auth_sessions: args.max_auth_sessions,
        data_dir: args.data_dir,
        lease: args.lease,
        max_message_size: args.max_message_size,
        datagram_size: args.datagram_size,
        max_channels: args.max_channels,
        max_subscriptions: args.max_subscriptions,
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        max_sessions: args.max_sessions,
        reassembly_memory: usize::try_from(args.reassembly_memory)?,
        session_memory: usize::try_from(args.session_memory)?,
        raw_in: args.raw_in,
        raw_out: args.raw_out,
        log: LogConfig {
            segment_size: usize::try_from(args.segment_size)?,
            fsync: args.fsync,
            retain_bytes: args.retain_bytes,
            retain_age: args.retain_age,
        },
        truncate_corrupt: args.truncate_corrupt,
        replay_rate: args.replay_rate,
        busy_poll: args.busy_poll,
        cluster: args.cluster,
        cluster_ack: args.cluster_ack,
        metrics: args.metrics,
        drain_timeout: args.drain_timeout,
        arq: ArqConfig {
            bundle_limit: args.bundle_limit,
            ..ArqConfig::default()
        },
        ..RelayConfig::default()
    })
}

fn config_command(cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { file } => {
            let tokens = config_file::read(&file, None)?;
            let argv = std::iter::once("udprelay".into()).chain(tokens);
            let matches = <Cli as clap::CommandFactory>::command().try_get_matches_from(argv)?;
            let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
            relay_config(cli.run)?.validate()?;
            print!("{}", config_file::effective(&matches));
        }
        ConfigCommand::Example => print!("{}", config_file::example()),
    }
    Ok(ExitCode::SUCCESS)
}

fn require_dir(dir: &Path) -> Result<()> {
    if dir.join("channels").is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a udprelay data directory", dir.display()).into())
    }
}

fn log_command(cmd: LogCommand) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        LogCommand::Ls { data_dir } => {
            require_dir(&data_dir)?;
            writeln!(
                out,
                "{:<24} {:>12} {:>12} {:>12} {:>8} {:>14}",
                "CHANNEL", "FIRST", "NEXT", "MESSAGES", "SEGMENTS", "BYTES"
            )?;
            for c in inspect::list(&data_dir)? {
                writeln!(
                    out,
                    "{:<24} {:>12} {:>12} {:>12} {:>8} {:>14}",
                    c.name,
                    c.first_offset,
                    c.next_offset,
                    c.next_offset - c.first_offset,
                    c.segments,
                    c.bytes
                )?;
            }
        }
        LogCommand::Dump {
            channel,
            from,
            count,
            format,
            data_dir,
        } => {
            require_dir(&data_dir)?;
            let mut write_err = None;
            inspect::dump(
                &data_dir,
                &channel,
                from,
                count.unwrap_or(u64::MAX),
                &mut |r| {
                    if write_err.is_some() {
                        return;
                    }
                    let result = match format {
                        DumpFormat::Line => writeln!(
                            out,
                            "{}\t{}\t{}",
                            r.offset,
                            r.timestamp,
                            String::from_utf8_lossy(r.payload)
                        ),
                        DumpFormat::Json => writeln!(
                            out,
                            "{}",
                            message_json(&channel, r.offset, r.timestamp, r.payload)
                        ),
                    };
                    if let Err(e) = result {
                        write_err = Some(e);
                    }
                },
            )?;
            match write_err {
                Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Some(e) => return Err(e.into()),
                None => {}
            }
        }
        LogCommand::Verify { data_dir } => {
            require_dir(&data_dir)?;
            let (problems, checked) = inspect::verify(&data_dir)?;
            for p in &problems {
                writeln!(
                    out,
                    "{}: {}: byte {}: {}",
                    p.channel,
                    p.path.display(),
                    p.position,
                    p.reason
                )?;
            }
            writeln!(
                out,
                "checked {checked} records: {} problem(s)",
                problems.len()
            )?;
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks a `--publish`-style pattern when the flag is parsed.
fn parse_pattern(s: &str) -> std::result::Result<String, String> {
    Pattern::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A quota in bytes: a size (`8M`), at least one.
fn parse_quota_size(s: &str) -> std::result::Result<u64, String> {
    match config::parse_size(s) {
        Ok(0) => Err("must be at least 1 (leave the flag out for no limit)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A key's quotas for `key ls` and summaries: comma-separated, `-` for none.
fn quota_list(q: &Quota) -> String {
    let parts: Vec<String> = [
        q.messages_per_sec.map(|n| format!("{n} msg/s")),
        q.bytes_per_sec.map(|n| format!("{n} B/s")),
        q.max_subscriptions.map(|n| format!("{n} subscriptions")),
        q.max_sessions.map(|n| format!("{n} sessions")),
        q.reassembly_bytes.map(|n| format!("{n} B reassembly")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// Patterns for `key ls` and summaries: comma-separated, `-` for none.
fn pattern_list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "-".to_string();
    }
    let list: Vec<&str> = patterns.iter().map(Pattern::as_str).collect();
    list.join(",")
}

fn key_command(cmd: KeyCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        KeyCommand::New {
            name,
            keys,
            publish,
            subscribe,
            deny_publish,
            deny_subscribe,
            admin,
            messages_per_sec,
            bytes_per_sec,
            max_subscriptions,
            max_sessions,
            reassembly_bytes,
        } => {
            let created = !keys.exists();
            let new = NewKey {
                name,
                publish,
                subscribe,
                deny_publish,
                deny_subscribe,
                admin,
                quota: Quota {
                    messages_per_sec,
                    bytes_per_sec,
                    max_subscriptions,
                    max_sessions,
                    reassembly_bytes,
                },
            };
            let (file, id) = KeyFile::add_key(&keys, &new)?;
            let key = file.key(id).ok_or("the new key is missing")?;
            let p = key.permissions();
            let what = if created {
                format!(
                    "created {} (mode 0600) with key {:?} (id {id})",
                    keys.display(),
                    key.name()
                )
            } else {
                format!("added key {:?} (id {id}) to {}", key.name(), keys.display())
            };
            eprintln!(
                "{what}: publish {}, subscribe {}, deny-publish {}, deny-subscribe {}, admin {}, quota {}",
                pattern_list(&p.publish),
                pattern_list(&p.subscribe),
                pattern_list(&p.deny_publish),
                pattern_list(&p.deny_subscribe),
                if p.admin { "yes" } else { "no" },
                quota_list(key.quota()),
            );
            writeln!(out, "{}", key.credential())?;
        }
        KeyCommand::Derive {
            name,
            keys,
            expires,
        } => {
            if expires < Duration::from_secs(1) {
                return Err("--expires must be at least 1s".into());
            }
            let file = KeyFile::load(&keys)?;
            let key = file
                .named(&name)
                .ok_or_else(|| format!("{}: no key named {name:?}", keys.display()))?;
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
            let until = now
                .as_secs()
                .checked_add(expires.as_secs())
                .ok_or("--expires is too far in the future")?;
            eprintln!(
                "credential from key {:?} (id {}), valid for {} s, refused from unix time {until} on",
                key.name(),
                key.id(),
                expires.as_secs()
            );
            writeln!(out, "{}", key.derive(until))?;
        }
        KeyCommand::Ls { keys } => {
            let file = KeyFile::load(&keys)?;
            let header = [
                "NAME",
                "ID",
                "ADMIN",
                "PUBLISH",
                "SUBSCRIBE",
                "DENY-PUBLISH",
                "DENY-SUBSCRIBE",
                "QUOTA",
            ]
            .map(String::from);
            let mut rows = vec![header];
            for key in file.keys() {
                let p = key.permissions();
                rows.push([
                    key.name().to_string(),
                    key.id().to_string(),
                    if p.admin { "yes" } else { "no" }.to_string(),
                    pattern_list(&p.publish),
                    pattern_list(&p.subscribe),
                    pattern_list(&p.deny_publish),
                    pattern_list(&p.deny_subscribe),
                    quota_list(key.quota()),
                ]);
            }
            let a = file.anonymous();
            rows.push([
                "(anonymous)".to_string(),
                "-".to_string(),
                "no".to_string(),
                pattern_list(&a.publish),
                pattern_list(&a.subscribe),
                pattern_list(&a.deny_publish),
                pattern_list(&a.deny_subscribe),
                "-".to_string(),
            ]);
            let mut widths = [0; 8];
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                writeln!(out, "{}", cells.join("  ").trim_end())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

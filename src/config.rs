//! Validated relay configuration, and the duration syntax shared by the
//! binaries' flags (`250ms`, `30s`, `5m`, `1h`, `30d`).
//!
//! This module owns the meaning of every setting and its default. It depends
//! only on the log's settings type, so the core and the driver can both take
//! it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::log::LogConfig;
use crate::reliable::ArqConfig;

/// Default largest message: larger than a datagram, so messages travel in
/// pieces and are reassembled before they are stored.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// The most `--max-message-size` may be.
pub const MAX_MESSAGE_LIMIT: usize = 64 << 20;

/// Why a configuration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration string did not parse.
    #[error(
        "invalid duration {0:?}: expected a number with a unit, like 250ms, 30s, 5m, 1h or 30d"
    )]
    BadDuration(String),
    /// A `--raw-in` or `--raw-out` mapping did not parse.
    #[error("invalid mapping {0:?}: {1}")]
    BadMapping(String, &'static str),
    /// A setting is outside its allowed range.
    #[error("{0}")]
    OutOfRange(String),
    /// The relay would serve anyone on the network and was not told to.
    #[error(
        "refusing to listen on {0}: without a key file anyone who can reach it reads and \
         writes every channel; give --keys FILE (see `udprelay key new`), listen on \
         loopback, or pass --allow-anonymous to run an open relay"
    )]
    OpenRelay(SocketAddr),
    /// `--auth required` with no key file: no client could ever be served.
    #[error(
        "--auth required needs a key file (--keys FILE): without one no client can authenticate"
    )]
    AuthWithoutKeys,
}

/// Most keyed sessions a relay can hold: session ids carry a 16-bit slot.
pub const MAX_AUTH_SESSIONS: usize = 65_535;

/// Whether a relay with a key file serves clients without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Clients without a key are served with the key file's anonymous
    /// permissions (none unless it grants some).
    #[default]
    Optional,
    /// Only sealed datagrams of keyed sessions are served; anything else
    /// gets no answer at all, only a counter (the handshake excepted).
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthMode, String> {
        match s {
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            _ => Err(format!("expected `optional` or `required`, got {s:?}")),
        }
    }
}

/// Everything the relay needs to run. Built by the `udprelay` binary from its
/// flags; tests build it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Address of the protocol socket.
    pub listen: SocketAddr,
    /// Serve clients without a key on an address other than loopback. Off,
    /// the relay refuses to listen there: with no key file anyone who can
    /// reach the port reads and writes every channel.
    pub allow_anonymous: bool,
    /// The key file (TOML, see `auth::KeyFile`), read at start; `None`
    /// serves every client without a key, with every permission.
    pub keys: Option<PathBuf>,
    /// With a key file: whether clients without a key are served (with the
    /// file's anonymous permissions) or dropped unanswered.
    pub auth: AuthMode,
    /// Most keyed sessions at once, across all keys.
    pub max_auth_sessions: usize,
    /// Directory for the relay's data.
    pub data_dir: PathBuf,
    /// How long a subscription lives without hearing from its subscriber.
    pub lease: Duration,
    /// Largest message payload accepted, in bytes.
    pub max_message_size: usize,
    /// Size up to which the relay packs frames for one destination into one
    /// datagram. A single larger frame still goes alone.
    pub datagram_size: usize,
    /// Most channels the relay will hold; publishing to a new channel past it
    /// is refused.
    pub max_channels: usize,
    /// Most subscriptions across all clients.
    pub max_subscriptions: usize,
    /// Most subscriptions one client address may hold.
    pub max_subscriptions_per_client: usize,
    /// Most error replies per second; the rest are counted and not sent, so a
    /// flood of bad datagrams cannot turn the relay into an amplifier.
    pub error_replies_per_sec: u32,
    /// Plain-UDP ingest: every datagram arriving at the address is one message
    /// of the channel.
    pub raw_in: Vec<(SocketAddr, String)>,
    /// Plain-UDP egress: every message of the channel is sent as-is to the
    /// address.
    pub raw_out: Vec<(String, SocketAddr)>,
    /// Most datagrams waiting for a full socket to drain before new ones are
    /// dropped (and counted).
    pub send_queue_limit: usize,
    /// After each datagram, keep polling without sleeping for this long:
    /// lower latency for CPU time. Zero sleeps at once.
    pub busy_poll: Duration,
    /// The message log's settings.
    pub log: LogConfig,
    /// Channels whose mid-log corruption the operator agreed to cut off at
    /// the first damaged record.
    pub truncate_corrupt: Vec<String>,
    /// Bytes per second of replay from the log that one client address gets
    /// in all, its replaying subscriptions taking turns: a replay does not
    /// overrun the subscriber, and opening many gets no larger a share.
    pub replay_rate: u64,
    /// The ARQ settings of reliable publish sessions and subscriptions.
    pub arq: ArqConfig,
    /// Most memory, in bytes, held for unreliable messages still arriving in
    /// pieces, across all clients: piece tables, pieces and bookkeeping are
    /// charged before they are allocated.
    pub reassembly_memory: usize,
    /// Most memory, in bytes, held for reliable publishing sessions'
    /// out-of-order and incomplete messages, across all clients.
    pub session_memory: usize,
    /// Most reliable publishing sessions across all clients.
    pub max_sessions: usize,
    /// NATS servers of the JetStream cluster this relay is an edge of
    /// (`nats://HOST:PORT`); empty: a relay on its own.
    pub cluster: Vec<String>,
    /// With a cluster: when a reliable publisher's message is acknowledged.
    pub cluster_ack: ClusterAck,
    /// Where to serve Prometheus metrics (`/metrics`, `/healthz`); `None`:
    /// nowhere.
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM, how long the relay goes on for the subscriptions and
    /// sessions it has (taking no new ones) before it stops; zero stops at
    /// once.
    pub drain_timeout: Duration,
}

/// When a relay in a cluster acknowledges a reliable publisher's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterAck {
    /// Once the cluster stored it (as well as this relay, and on disk where
    /// `--fsync` says so): a publisher that moves to another relay after
    /// this one died loses nothing it was told was stored.
    #[default]
    Cluster,
    /// Once this relay stored it: sooner, but until it is bridged it lives
    /// only in this relay's log.
    Local,
}

impl std::str::FromStr for ClusterAck {
    type Err = String;

    fn from_str(s: &str) -> Result<ClusterAck, String> {
        match s {
            "cluster" => Ok(ClusterAck::Cluster),
            "local" => Ok(ClusterAck::Local),
            other => Err(format!("unknown cluster ack {other:?}: cluster or local")),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            allow_anonymous: false,
            keys: None,
            auth: AuthMode::Optional,
            max_auth_sessions: 4096,
            data_dir: PathBuf::from("./udprelay-data"),
            lease: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE,
            datagram_size: 1400,
            max_channels: 10_000,
            max_subscriptions: 100_000,
            max_subscriptions_per_client: 4096,
            error_replies_per_sec: 1000,
            raw_in: Vec::new(),
            raw_out: Vec::new(),
            send_queue_limit: 65_536,
            busy_poll: Duration::ZERO,
            log: LogConfig::default(),
            truncate_corrupt: Vec::new(),
            replay_rate: 256 << 20,
            arq: ArqConfig::default(),
            reassembly_memory: 64 << 20,
            session_memory: 64 << 20,
            max_sessions: 100_000,
            cluster: Vec::new(),
            cluster_ack: ClusterAck::default(),
            metrics: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl RelayConfig {
    /// Checks every setting against its allowed range and every channel name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().to_canonical().is_loopback()
            && !self.allow_anonymous
            && self.keys.is_none()
        {
            return Err(ConfigError::OpenRelay(self.listen));
        }
        if self.auth == AuthMode::Required && self.keys.is_none() {
            return Err(ConfigError::AuthWithoutKeys);
        }
        if self.max_auth_sessions == 0 || self.max_auth_sessions > MAX_AUTH_SESSIONS {
            return Err(ConfigError::OutOfRange(format!(
                "max auth sessions must be between 1 and {MAX_AUTH_SESSIONS}, got {}",
                self.max_auth_sessions
            )));
        }
        let range = |what: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange(format!(
                    "{what} must be between {lo} and {hi}, got {v}"
                )))
            }
        };
        range(
            "max message size",
            self.max_message_size,
            1,
            MAX_MESSAGE_LIMIT,
        )?;
        range("datagram size", self.datagram_size, 64, 65_507)?;
        // A segment must hold the largest record with its headers.
        let min_segment = crate::log::segment::SEGMENT_HEADER
            + crate::log::segment::record_size(self.max_message_size);
        range("segment size", self.log.segment_size, min_segment, 1 << 40)?;
        if self.replay_rate < 1000 {
            return Err(ConfigError::OutOfRange(format!(
                "replay rate must be at least 1000 bytes/s, got {}",
                self.replay_rate
            )));
        }
        range("max channels", self.max_channels, 1, 10_000_000)?;
        range("max subscriptions", self.max_subscriptions, 1, 10_000_000)?;
        range("max sessions", self.max_sessions, 1, 10_000_000)?;
        // Each must hold at least one message of the largest size.
        let one_message = self.max_message_size + (1 << 16);
        range(
            "reassembly memory",
            self.reassembly_memory,
            one_message,
            1 << 40,
        )?;
        range("session memory", self.session_memory, one_message, 1 << 40)?;
        range(
            "max subscriptions per client",
            self.max_subscriptions_per_client,
            1,
            10_000_000,
        )?;
        if self.lease < Duration::from_millis(10) || self.lease > Duration::from_secs(86_400) {
            return Err(ConfigError::OutOfRange(format!(
                "lease must be between 10ms and 24h, got {:?}",
                self.lease
            )));
        }
        for url in &self.cluster {
            let hostport = url.strip_prefix("nats://").unwrap_or("");
            if hostport.is_empty() || hostport.contains(['/', ' ']) || !hostport.contains(':') {
                return Err(ConfigError::OutOfRange(format!(
                    "invalid cluster server {url:?}: expected nats://HOST:PORT"
                )));
            }
        }
        let channels = self
            .raw_in
            .iter()
            .map(|(_, c)| c)
            .chain(self.raw_out.iter().map(|(c, _)| c));
        for c in channels {
            if !valid_channel_name(c) {
                return Err(ConfigError::OutOfRange(format!(
                    "invalid channel name {c:?}: 1 to 255 bytes of UTF-8, no control characters"
                )));
            }
            if crate::subject::is_pattern(c) {
                return Err(ConfigError::OutOfRange(format!(
                    "channel {c:?} is a pattern (a `*` or `>` token): a raw port names one channel"
                )));
            }
        }
        Ok(())
    }
}

/// Channel name rule, repeated here so config stays free of crate dependencies;
/// `wire::validate_channel` is the same rule on bytes.
fn valid_channel_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `30d` (and `1.5s`). A bare number is
/// refused: the unit is the part people get wrong.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Parses a byte count: a number with an optional binary unit, `4096`,
/// `64K`, `64M`, `2G` (K = 1024).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || {
        ConfigError::OutOfRange(format!(
            "invalid size {s:?}: expected a number like 4096, 64K, 64M or 2G"
        ))
    };
    let t = s.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(scale).ok_or_else(bad)
}

/// A socket address, `IP:PORT` or `HOST:PORT` (the host resolved, its
/// first address taken), with the reason in one line when it is neither.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let has_port = s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    if !has_port {
        return Err(format!(
            "{s:?} has no port: write HOST:PORT, like 127.0.0.1:7070"
        ));
    }
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {s:?}: {e}")),
    }
}

/// Parses `ADDR=CHANNEL` (for `--raw-in`).
pub fn parse_raw_in(s: &str) -> Result<(SocketAddr, String), ConfigError> {
    let (addr, channel) = s.split_once('=').ok_or(ConfigError::BadMapping(
        s.to_string(),
        "expected ADDR=CHANNEL",
    ))?;
    let addr = parse_addr(addr).map_err(|_| {
        ConfigError::BadMapping(s.to_string(), "ADDR must be HOST:PORT, like 127.0.0.1:5514")
    })?;
    Ok((addr, channel.to_string()))
}

/// Parses `CHANNEL=ADDR` (for `--raw-out`). The channel is everything before
/// the last `=`, so a channel name may itself hold `=`.
pub fn parse_raw_out(s: &str) -> Result<(String, SocketAddr), ConfigError> {
    let (channel, addr) = s.rsplit_once('=').ok_or(ConfigError::BadMapping(
        s.to_string(),
        "expected CHANNEL=ADDR",
    ))?;
    let addr: SocketAddr = parse_addr(addr).map_err(|_| {
        ConfigError::BadMapping(s.to_string(), "ADDR must be HOST:PORT, like 127.0.0.1:9000")
    })?;
    // 0.0.0.0 and :: as a destination mean this host to the kernel (the
    // trap of coturn's CVE-2020-26262), and port 0 is no port: name the
    // address meant.
    if addr.port() == 0 || addr.ip().to_canonical().is_unspecified() {
        return Err(ConfigError::BadMapping(
            s.to_string(),
            "ADDR must name a host and a port: not 0.0.0.0, :: or port 0",
        ));
    }
    Ok((channel.to_string(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_port_names_one_channel_not_a_pattern() {
        for name in ["logs.*", "logs.>", ">"] {
            let config = RelayConfig {
                raw_in: vec![("127.0.0.1:5514".parse().unwrap(), name.to_string())],
                ..RelayConfig::default()
            };
            let refused = config.validate().unwrap_err().to_string();
            assert!(refused.contains("is a pattern"), "{refused}");
        }
        let config = RelayConfig {
            raw_out: vec![("logs.a*".to_string(), "127.0.0.1:9000".parse().unwrap())],
            ..RelayConfig::default()
        };
        assert_eq!(
            config.validate(),
            Ok(()),
            "a star inside a token is a character"
        );
    }

    #[test]
    fn an_open_relay_must_be_asked_for() {
        for listen in [
            "127.0.0.1:7070",
            "127.0.0.2:0",
            "[::1]:7070",
            "[::ffff:127.0.0.1]:1",
        ] {
            let config = RelayConfig {
                listen: listen.parse().unwrap(),
                ..RelayConfig::default()
            };
            assert_eq!(config.validate(), Ok(()), "{listen}");
        }
        for listen in ["0.0.0.0:7070", "[::]:7070", "192.0.2.7:7070"] {
            let mut config = RelayConfig {
                listen: listen.parse().unwrap(),
                ..RelayConfig::default()
            };
            let refused = config.validate().unwrap_err().to_string();
            assert!(refused.contains("--allow-anonymous"), "{refused}");
            config.allow_anonymous = true;
            assert_eq!(config.validate(), Ok(()), "{listen}");
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("1.5d"), Ok(Duration::from_secs(129_600)));
        for bad in ["30", "", "s", "10 parsecs", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65_536));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for bad in ["", "M", "1.5M", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn raw_mappings_parse_both_ways() {
        assert_eq!(
            parse_raw_in("127.0.0.1:5514=syslog"),
            Ok(("127.0.0.1:5514".parse().unwrap(), "syslog".to_string()))
        );
        assert_eq!(
            parse_raw_out("a=b=127.0.0.1:9000"),
            Ok(("a=b".to_string(), "127.0.0.1:9000".parse().unwrap()))
        );
        assert!(parse_raw_in("syslog").is_err());
        assert!(parse_raw_out("x=localhost").is_err());
        for unspecified in [
            "x=0.0.0.0:9000",
            "x=[::]:9000",
            "x=[::ffff:0.0.0.0]:9000",
            "x=127.0.0.1:0",
        ] {
            assert!(parse_raw_out(unspecified).is_err(), "{unspecified}");
        }
    }

    #[test]
    fn validation_catches_out_of_range_settings() {
        assert_eq!(RelayConfig::default().validate(), Ok(()));
        let c = RelayConfig {
            max_message_size: MAX_MESSAGE_LIMIT + 1,
            ..RelayConfig::default()
        };
        assert!(c.validate().is_err());
        let c = RelayConfig {
            raw_out: vec![("bad\nname".into(), "127.0.0.1:1".parse().unwrap())],
            ..RelayConfig::default()
        };
        assert!(c.validate().is_err());
    }
}

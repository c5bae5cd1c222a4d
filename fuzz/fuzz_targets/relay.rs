//! Drives a relay core on a scratch data directory with arbitrary datagrams
//! from a few source addresses, at advancing simulated times (the input
//! format is `udprelay_fuzz::relay_input`), and checks what it sends:
//!
//! - nothing panics, and handle_timeout does not leave its deadline due;
//! - nothing goes to the relay's own address;
//! - every datagram it sends decodes, frame by frame (raw egress aside);
//! - an address that never led a datagram with a token the relay gave it
//!   is sent in all no more bytes than it sent (docs/PROTOCOL.md, "Address
//!   validation"; frame bytes only while a known bug stands, see
//!   `drain`), and while no address has proven itself no subscription
//!   exists.
//!
//! The relay's token secret is random, so the harness plays the client's
//! part: a PROVEN step leads with the last token the relay sent to the
//! source it names.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use udprelay::config::RelayConfig;
use udprelay::log::{FsyncMode, LogConfig, LogError};
use udprelay::relay::{Now, Relay};
use udprelay::wire::{self, Frame, TOKEN_LEN};
use udprelay_fuzz::relay_input::{self, OWN_SOURCE, Settings, Step, source};
use udprelay_fuzz::scratch_dir;

/// Where raw egress goes: never a source, so its bytes are not a reply.
const RAW_OUT: &str = "192.0.2.1:9";
/// Calls of handle_timeout at one time before it counts as a busy loop.
const MAX_TIMEOUT_ROUNDS: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let (settings, steps) = relay_input::parse(data);
    let mut run = Run::new(settings);
    for step in steps {
        run.step(step);
    }
    run.drain();
});

/// One relay and what the harness saw of its traffic, by peer (an IPv4
/// address and its IPv4-mapped IPv6 form are one peer, as for the relay's
/// tokens).
struct Run {
    relay: Relay,
    now: Now,
    /// What each peer sent the relay.
    received: HashMap<SocketAddr, Traffic>,
    /// What the relay sent each peer.
    sent: HashMap<SocketAddr, Traffic>,
    /// Every token the relay sent each peer, oldest first.
    tokens: HashMap<SocketAddr, Vec<[u8; TOKEN_LEN]>>,
    /// Peers that led a datagram with a token the relay sent them.
    proven: HashSet<SocketAddr>,
}

impl Run {
    fn new(settings: Settings) -> Run {
        static START: OnceLock<Instant> = OnceLock::new();
        let now = Now {
            instant: *START.get_or_init(Instant::now),
            unix_nanos: 1_700_000_000_000_000_000,
        };
        let config = config(settings, scratch_dir("relay"));
        config
            .validate()
            .expect("the harness's configuration is valid");
        let mut relay = Relay::open(&config, now).expect("a relay opens on an empty directory");
        relay
            .set_own_addresses(vec![config.listen], Vec::new())
            .expect("raw egress is not the relay's own address");
        Run {
            relay,
            now,
            received: HashMap::new(),
            sent: HashMap::new(),
            tokens: HashMap::new(),
            proven: HashSet::new(),
        }
    }

    fn step(&mut self, step: Step<'_>) {
        match step {
            Step::Datagram { source: s, bytes } => self.datagram(source(s), bytes),
            Step::Proven {
                source: s,
                token_of,
                frames,
            } => {
                let token = self
                    .tokens
                    .get(&peer(source(token_of)))
                    .and_then(|t| t.last())
                    .copied()
                    .unwrap_or([0; TOKEN_LEN]);
                let mut datagram = wire::encode_datagram(&[Frame::Validate { token }])
                    .expect("a VALIDATE frame encodes");
                datagram.extend_from_slice(frames);
                self.datagram(source(s), &datagram);
            }
            Step::Advance { b } => {
                let ms = u64::from(b) * u64::from(b);
                self.now = self.now.after(Duration::from_millis(ms));
                self.timeouts();
                self.drain();
            }
            Step::Raw { port, bytes } => self.relay.handle_raw(self.now, port.into(), bytes),
            Step::Drain => self.drain(),
            Step::Sync { fail } => {
                while let Some(request) = self.relay.poll_sync() {
                    let result = if fail {
                        Err(LogError::Io {
                            path: request.job.path.clone(),
                            source: std::io::Error::other("the fuzzer failed this sync"),
                        })
                    } else {
                        request.job.run()
                    };
                    self.relay.handle_sync_done(request.channel, result);
                }
            }
        }
    }

    /// Hands the relay a datagram from `from`, noting whether it proves
    /// its peer.
    fn datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        // No UDP datagram is larger.
        let datagram = &datagram[..datagram.len().min(wire::MAX_DATAGRAM)];
        let peer = peer(from);
        let leading = wire::decode_datagram(datagram)
            .ok()
            .and_then(|mut frames| frames.next());
        if let Some(Ok(Frame::Validate { token })) = leading
            && self.tokens.get(&peer).is_some_and(|t| t.contains(&token))
        {
            self.proven.insert(peer);
        }
        self.received.entry(peer).or_default().add(datagram);
        self.relay.handle_datagram(self.now, from, datagram);
    }

    /// Handles every timeout due by now, as the driver does.
    fn timeouts(&mut self) {
        for _ in 0..MAX_TIMEOUT_ROUNDS {
            match self.relay.poll_timeout() {
                Some(due) if due <= self.now.instant => self.relay.handle_timeout(self.now),
                _ => return,
            }
        }
        panic!("handle_timeout left a deadline due {MAX_TIMEOUT_ROUNDS} times at one time");
    }

    /// Collects what the relay sends and checks it.
    fn drain(&mut self) {
        let own = source(OWN_SOURCE);
        let raw_out: SocketAddr = RAW_OUT.parse().expect("RAW_OUT parses");
        while let Some(t) = self.relay.poll_transmit() {
            let to = t.destination;
            assert_ne!(to, own, "the relay sent to its own address");
            assert!(
                t.payload.len() <= wire::MAX_DATAGRAM,
                "larger than UDP allows"
            );
            if to == raw_out {
                // Raw egress: a message as it is, not the protocol.
                continue;
            }
            let frames = wire::decode_datagram(&t.payload)
                .unwrap_or_else(|e| panic!("the relay sent {to} a datagram that fails: {e}"));
            for frame in frames {
                match frame {
                    Ok(Frame::AddressToken { token }) => {
                        self.tokens.entry(peer(to)).or_default().push(token)
                    }
                    Ok(_) => {}
                    Err(e) => panic!("the relay sent {to} a frame that fails: {e}"),
                }
            }
            self.sent.entry(peer(to)).or_default().add(&t.payload);
        }
        for (peer, sent) in &self.sent {
            if self.proven.contains(peer) {
                continue;
            }
            let received = self.received.get(peer).copied().unwrap_or_default();
            // Whole datagrams, headers included (an answer that spilled into
            // a second datagram once added a header nobody paid for:
            // fuzz/artifacts/relay/pongs-over-two-datagrams, fixed).
            let (sent, received) = (sent.bytes, received.bytes);
            assert!(
                sent <= received,
                "the relay sent {sent} bytes to {peer}, which never proved its address and sent {received}"
            );
        }
        if self.proven.is_empty() {
            assert_eq!(
                self.relay.subscription_count(),
                0,
                "a subscription exists though no address proved itself"
            );
        }
    }
}

/// Bytes of the datagrams between the relay and one peer.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    /// Whole datagrams.
    bytes: u64,
}

impl Traffic {
    fn add(&mut self, datagram: &[u8]) {
        self.bytes += datagram.len() as u64;
    }
}

/// The peer behind an address: an IPv4-mapped IPv6 address is its IPv4 one.
fn peer(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Small limits, so that the fuzzer reaches them: few channels,
/// subscriptions and sessions, small segments, a short lease.
fn config(settings: Settings, data_dir: PathBuf) -> RelayConfig {
    let max_message_size = 4096;
    RelayConfig {
        listen: source(OWN_SOURCE),
        data_dir,
        lease: Duration::from_secs(2),
        max_message_size,
        datagram_size: 1400,
        max_channels: 4,
        max_subscriptions: 6,
        max_subscriptions_per_client: 3,
        error_replies_per_sec: 100,
        raw_in: vec![("127.0.0.1:7071".parse().expect("parses"), "raw".to_string())],
        raw_out: vec![("raw".to_string(), RAW_OUT.parse().expect("parses"))],
        log: LogConfig {
            segment_size: 16 << 10,
            fsync: match settings.fsync {
                1 => FsyncMode::Interval(Duration::from_millis(5)),
                2 => FsyncMode::Always,
                _ => FsyncMode::None,
            },
            retain_bytes: settings.retain_bytes.then_some(32 << 10),
            retain_age: settings.retain_age.then_some(Duration::from_secs(10)),
        },
        replay_rate: 64_000,
        reassembly_memory: max_message_size + (1 << 16),
        session_memory: max_message_size + (1 << 16),
        max_sessions: 4,
        ..RelayConfig::default()
    }
}

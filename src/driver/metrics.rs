//! `--metrics ADDR`: Prometheus text on `/metrics` and `ok` on `/healthz`,
//! served by a thread of its own (`tiny_http`), so that a scrape never
//! waits on the event loop nor the loop on a scrape.
//!
//! The loop hands over a `Snapshot` of the relay's counters and channel
//! figures at most every [`SNAPSHOT_EVERY`] (nothing changes while it
//! sleeps) and observes the receive-to-send time into a histogram shared
//! with the thread; the thread reads the process's CPU and memory and the
//! kernel's receive drops of the relay's sockets (`/proc/net/udp*`) at each
//! scrape. Channels are shown for the [`TOP_CHANNELS`] with the most
//! messages and summed as `channel="other"` for the rest, so the series do
//! not grow with the number of channels.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};
use tracing::{debug, warn};

use crate::relay::{ChannelGauge, Counters, Relay};

/// Most channels shown by name.
pub const TOP_CHANNELS: usize = 20;
/// How often the loop refreshes what a scrape shows, while it runs.
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// What the loop last handed over.
#[derive(Debug, Default)]
struct Snapshot {
    counters: Vec<(&'static str, u64)>,
    channels: Vec<ChannelGauge>,
    other: ChannelGauge,
}

#[derive(Debug)]
struct Shared {
    snapshot: Mutex<Snapshot>,
    receive_to_send: Histogram,
    /// Inodes of the relay's UDP sockets, to find their drops.
    inodes: Vec<u64>,
}

/// The loop's side of the exporter.
#[derive(Debug)]
pub struct Metrics {
    shared: Arc<Shared>,
    /// When figures may next be handed over.
    next: Instant,
    /// Figures changed since they were last handed over.
    stale: bool,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics: cannot listen on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

impl Metrics {
    /// Listens on `addr` and serves from a new thread; `sockets` are the
    /// raw fds of the relay's UDP sockets. Returns the address bound.
    pub fn start(addr: SocketAddr, sockets: &[i32]) -> Result<(Metrics, SocketAddr), MetricsError> {
        let failed = |reason: String| MetricsError { addr, reason };
        let server = tiny_http::Server::http(addr).map_err(|e| failed(e.to_string()))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| failed("not an IP address".into()))?;
        let buckets =
            prometheus::exponential_buckets(1e-6, 2.0, 22).map_err(|e| failed(e.to_string()))?;
        let opts = HistogramOpts::new(
            "udprelay_receive_to_send_seconds",
            "Time from a batch of datagrams read to the first datagrams sent after it.",
        )
        .buckets(buckets);
        let receive_to_send = Histogram::with_opts(opts).map_err(|e| failed(e.to_string()))?;
        let inodes = sockets.iter().filter_map(|&fd| socket_inode(fd)).collect();
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot::default()),
            receive_to_send,
            inodes,
        });
        let serving = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(server, &serving))
            .map_err(|e| failed(e.to_string()))?;
        let metrics = Metrics {
            shared,
            next: Instant::now(),
            stale: true,
        };
        Ok((metrics, bound))
    }

    /// Hands the relay's figures over (the loop ran: they may have
    /// changed), if the last were handed over [`SNAPSHOT_EVERY`] ago;
    /// otherwise [`Metrics::deadline`] says when to.
    pub fn update(&mut self, relay: &Relay) {
        let now = Instant::now();
        if now < self.next {
            self.stale = true;
            return;
        }
        self.stale = false;
        self.next = now + SNAPSHOT_EVERY;
        let counters = relay
            .counters()
            .entries(relay.channel_count(), relay.subscription_count());
        let (channels, other) = relay.channel_gauges(TOP_CHANNELS);
        if let Ok(mut s) = self.shared.snapshot.lock() {
            *s = Snapshot {
                counters,
                channels,
                other,
            };
        }
    }

    /// When the loop must wake to hand over figures that changed, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.stale.then_some(self.next)
    }

    /// Notes that datagrams were sent `elapsed` after the batch that
    /// caused them was read.
    pub fn observe(&self, elapsed: Duration) {
        self.shared.receive_to_send.observe(elapsed.as_secs_f64());
    }
}

fn serve(server: tiny_http::Server, shared: &Shared) {
    for request in server.incoming_requests() {
        let path = request
            .url()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let (status, body, kind) = match (request.method(), path.as_str()) {
            (tiny_http::Method::Get, "/metrics") => match render(shared) {
                Ok(text) => (200, text, prometheus::TEXT_FORMAT),
                Err(e) => {
                    warn!("metrics: cannot render: {e}");
                    (500, format!("{e}\n"), "text/plain; charset=utf-8")
                }
            },
            (tiny_http::Method::Get, "/healthz") => {
                (200, "ok\n".to_string(), "text/plain; charset=utf-8")
            }
            (tiny_http::Method::Get, _) => {
                (404, "not found\n".to_string(), "text/plain; charset=utf-8")
            }
            _ => (405, "GET only\n".to_string(), "text/plain; charset=utf-8"),
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes());
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(header) = header {
            response = response.with_header(header);
        }
        if let Err(e) = request.respond(response) {
            debug!("metrics: answer not sent: {e}");
        }
    }
}

/// A per-channel gauge: its name, help, and how it is read.
type Figure = (&'static str, &'static str, fn(&ChannelGauge) -> u64);

/// Counters of the relay that are levels, not counts.
const GAUGES: [&str; 2] = ["channels", "subscriptions"];

/// The exposition text of everything, built afresh at each scrape.
fn render(shared: &Shared) -> Result<String, prometheus::Error> {
    let registry = prometheus::Registry::new();
    {
        let snapshot = shared
            .snapshot
            .lock()
            .map_err(|_| prometheus::Error::Msg("poisoned".into()))?;
        for &(name, value) in &snapshot.counters {
            if GAUGES.contains(&name) {
                let help = format!("Open {name}.");
                let gauge = IntGauge::new(format!("udprelay_{name}"), help)?;
                gauge.set(value as i64);
                registry.register(Box::new(gauge))?;
                continue;
            }
            let help = Counters::HELP
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(name, |(_, h)| h.trim());
            let counter = IntCounter::new(format!("udprelay_{name}_total"), help)?;
            counter.inc_by(value);
            registry.register(Box::new(counter))?;
        }
        let figures: [Figure; 4] = [
            (
                "udprelay_channel_messages",
                "Messages a channel stores.",
                |g| g.messages,
            ),
            (
                "udprelay_channel_next_offset",
                "The offset a channel's next message gets.",
                |g| g.next_offset,
            ),
            (
                "udprelay_channel_stored_bytes",
                "Bytes of a channel's segment files.",
                |g| g.stored_bytes,
            ),
            (
                "udprelay_channel_subscribers",
                "A channel's subscriptions.",
                |g| g.subscribers,
            ),
        ];
        for (name, help, value) in figures {
            let help = format!(
                "{help} The {TOP_CHANNELS} channels with the most messages by name, the rest as \"other\"."
            );
            let family = IntGaugeVec::new(Opts::new(name, help), &["channel"])?;
            for g in snapshot.channels.iter().chain([&snapshot.other]) {
                family
                    .with_label_values(&[g.name.as_str()])
                    .set(value(g) as i64);
            }
            registry.register(Box::new(family))?;
        }
    }
    registry.register(Box::new(shared.receive_to_send.clone()))?;
    let drops = IntCounter::new(
        "udprelay_kernel_receive_drops_total",
        "Datagrams the kernel dropped because a relay socket's receive buffer was full (/proc/net/udp).",
    )?;
    drops.inc_by(kernel_drops(&shared.inodes));
    registry.register(Box::new(drops))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The inode of socket `fd`, from its /proc/self/fd link (`socket:[N]`).
fn socket_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let text = link.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The kernel's receive drops of the sockets with these inodes: the last
/// column of /proc/net/udp and udp6.
fn kernel_drops(inodes: &[u64]) -> u64 {
    let mut total = 0;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            let (Some(inode), Some(drops)) = (fields.get(9), fields.last()) else {
                continue;
            };
            if inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
                total += drops.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

//! The I/O shell: a mio event loop that feeds a [`Relay`] from its sockets,
//! sends what it hands back, and sleeps exactly until its next deadline.
//!
//! This is the only module that touches sockets, the clock and signals. It
//! owns no protocol logic: every decision is the core's. Sockets are drained
//! until `WouldBlock` (mio is edge-triggered), in bounded rounds so that one
//! busy socket cannot starve sending; a send that would block waits in a
//! bounded queue for WRITABLE instead of being dropped.
//!
//! As mini-redis's `server::run(listener, shutdown)`, the driver is handed
//! its sockets ([`BoundSockets`]) and what stops it ([`Shutdown`]), so a test
//! or a benchmark can run a relay on a thread of its own process and stop it
//! from another; [`Driver::bind`] is the daemon's way: bind the configured
//! addresses, stop on SIGINT/SIGTERM.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tracing::{debug, info, warn};

pub mod batch;
#[cfg(feature = "cluster")]
pub mod bridge;
#[cfg(feature = "metrics")]
pub mod metrics;

use crate::config::{ConfigError, RelayConfig};
use crate::log::{FsyncMode, LogError};
use crate::relay::{Now, Relay, SyncRequest, Transmit};

/// Socket buffer size asked of the kernel (it caps this at net.core.rmem_max
/// and wmem_max). Large buffers absorb bursts that arrive while the loop is
/// busy sending.
const SOCKET_BUFFER: usize = 8 << 20;
/// Most datagrams read from one socket before the loop sends what they caused.
const READ_BUDGET: usize = 512;

const SIGNAL_TOKEN: Token = Token(0);
/// The loop's one waker (mio allows one per poller): the sync thread wakes
/// it when a sync finished, a [`ShutdownHandle`] to stop it.
const WAKE_TOKEN: Token = Token(usize::MAX);
/// Token of socket `i` (0 is the protocol socket, then the raw ingest ports).
const fn socket_token(i: usize) -> Token {
    Token(i + 1)
}

/// Why the relay could not start or had to stop.
#[derive(Debug, Error)]
pub enum DriverError {
    /// The configuration was refused.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The metrics endpoint could not start.
    #[cfg(feature = "metrics")]
    #[error("{0}")]
    Metrics(#[from] metrics::MetricsError),
    /// A socket could not be opened or bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The data directory could not be opened.
    #[error("{0}")]
    Log(#[from] crate::log::LogError),
    /// The relay could not be opened (its data directory, or randomness).
    #[error("{0}")]
    Open(#[from] crate::relay::OpenError),
    /// The configuration would make the relay send to its own sockets.
    #[error("{0}")]
    Loop(#[from] crate::relay::OwnAddressError),
    /// The sockets handed to [`Driver::new`] are not the ones the
    /// configuration names.
    #[error("{raw_in} raw ingest socket(s) given for {configured} --raw-in port(s)")]
    SocketCount {
        /// Raw ingest sockets given.
        raw_in: usize,
        /// Raw ingest ports configured.
        configured: usize,
    },
    /// The key file, read again on reload, was refused.
    #[error("key file {path}: {source}")]
    Keys {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: crate::auth::KeyFileError,
    },
    /// The poller or signal handling failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

/// The sockets a [`Driver`] serves, bound by its caller: the protocol socket
/// and one per raw ingest port, in configuration order.
#[derive(Debug)]
pub struct BoundSockets {
    /// Where clients speak the relay protocol.
    protocol: UdpSocket,
    /// Plain-UDP ingest, one per `--raw-in` of the configuration, same order.
    raw_in: Vec<UdpSocket>,
}

impl BoundSockets {
    /// Binds the addresses `config` names (`listen`, then every `raw_in`),
    /// non-blocking, with large buffers.
    pub fn bind(config: &RelayConfig) -> Result<BoundSockets, DriverError> {
        Ok(BoundSockets {
            protocol: bind_udp(config.listen)?,
            raw_in: config
                .raw_in
                .iter()
                .map(|(addr, _)| bind_udp(*addr))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Sockets the caller bound itself (made non-blocking here). Use
    /// [`BoundSockets::bind`] for the relay's buffer sizes and GRO.
    pub fn from_std(
        protocol: std::net::UdpSocket,
        raw_in: Vec<std::net::UdpSocket>,
    ) -> io::Result<BoundSockets> {
        let to_mio = |s: std::net::UdpSocket| {
            s.set_nonblocking(true)?;
            Ok::<_, io::Error>(UdpSocket::from_std(s))
        };
        Ok(BoundSockets {
            protocol: to_mio(protocol)?,
            raw_in: raw_in.into_iter().map(to_mio).collect::<Result<_, _>>()?,
        })
    }

    /// The protocol socket's address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.protocol.local_addr()
    }
}

/// What stops a [`Driver`]: SIGINT/SIGTERM, a [`ShutdownHandle`], or both.
pub struct Shutdown {
    /// Installed signal handlers, when signals stop the relay.
    signals: Option<Signals>,
    /// Shared with every [`ShutdownHandle`].
    shared: Arc<ShutdownShared>,
}

/// Asks a running [`Driver`] to stop, from any thread: it then sends what
/// is queued, syncs the log and returns from [`Driver::run`], as on SIGTERM.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<ShutdownShared>,
}

struct ShutdownShared {
    /// Set once stopping was asked for; the loop checks it after every wake.
    requested: AtomicBool,
    /// Wakes the loop out of `poll`; None until a driver took the
    /// [`Shutdown`]. A mutex, so a request made while the driver registers
    /// is either seen by it or wakes it.
    waker: Mutex<Option<Arc<Waker>>>,
}

impl Shutdown {
    /// A shutdown only the returned handle triggers.
    pub fn handle() -> (Shutdown, ShutdownHandle) {
        let shared = Arc::new(ShutdownShared {
            requested: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let handle = ShutdownHandle {
            shared: Arc::clone(&shared),
        };
        (
            Shutdown {
                signals: None,
                shared,
            },
            handle,
        )
    }

    /// A shutdown on SIGINT or SIGTERM (installs their handlers), or by the
    /// returned handle.
    pub fn on_signals() -> io::Result<(Shutdown, ShutdownHandle)> {
        let (mut shutdown, handle) = Shutdown::handle();
        shutdown.signals = Some(Signals::new([SIGINT, SIGTERM, SIGHUP])?);
        Ok((shutdown, handle))
    }

    /// Registers the signals and the handles' waker with the driver's poller.
    fn register(&mut self, poll: &Poll, waker: Arc<Waker>) -> io::Result<()> {
        if let Some(signals) = &mut self.signals {
            poll.registry()
                .register(signals, SIGNAL_TOKEN, Interest::READABLE)?;
        }
        *lock(&self.shared.waker) = Some(waker);
        Ok(())
    }

    /// Whether a handle asked to stop.
    fn requested(&self) -> bool {
        self.shared.requested.load(Ordering::SeqCst)
    }
}

impl ShutdownHandle {
    /// Asks the driver to stop; returns at once. Asking again does nothing.
    pub fn shutdown(&self) {
        let waker = lock(&self.shared.waker);
        self.shared.requested.store(true, Ordering::SeqCst);
        if let Some(waker) = &*waker {
            // A failed wake leaves the flag for the loop's next wake-up.
            if let Err(e) = waker.wake() {
                warn!(error = %e, "cannot wake the relay to stop it");
            }
        }
    }
}

/// The lock, also when a thread panicked holding it: the data is an
/// Option that a panic cannot leave half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A relay bound to its sockets, ready to [`Driver::run`].
pub struct Driver {
    poll: Poll,
    /// Signals or a handle that stop the loop.
    shutdown: Shutdown,
    /// The protocol socket first, then one per raw ingest port.
    sockets: Vec<UdpSocket>,
    /// Per socket: readable data may remain (the last drain hit its budget).
    pending_read: Vec<bool>,
    /// See [`RelayConfig::busy_poll`].
    busy_poll: Duration,
    /// When a datagram last arrived.
    last_datagram: Instant,
    /// How busy the event loop is, for the load PONG reports.
    load: LoadMeter,
    /// Send what each batch of received datagrams produced before reading
    /// the next, rather than once per drain round. Not under `--fsync
    /// always`, where the whole round shares one sync.
    answer_each_batch: bool,
    /// Whether the protocol socket is registered for WRITABLE too.
    want_writable: bool,
    /// Datagrams waiting for the protocol socket to accept them, in order.
    send_queue: VecDeque<Transmit>,
    /// Most datagrams `send_queue` holds before dropping.
    send_queue_limit: usize,
    relay: Relay,
    /// Buffers for receiving many datagrams per call.
    recv: batch::RecvBatch,
    /// Sends many datagrams per call, as GSO runs where the kernel can.
    sender: batch::BatchSender,
    /// Background syncs (`--fsync interval`): requests out, results back.
    syncer: Syncer,
    /// With `--cluster`: the bridge thread, and when how far each channel
    /// is bridged was last written.
    #[cfg(feature = "cluster")]
    bridge: Option<(bridge::Bridge, Instant)>,
    /// With `--metrics`: the exporter, and the address it serves.
    #[cfg(feature = "metrics")]
    metrics: Option<(metrics::Metrics, SocketAddr)>,
    /// When the first datagram not yet answered was read (for the
    /// receive-to-send histogram).
    received_at: Option<Instant>,
    /// The configuration that runs (what a reload compares with).
    config: RelayConfig,
    /// Reads the configuration again, on SIGHUP.
    reloader: Option<Reloader>,
    /// See [`RelayConfig::drain_timeout`].
    drain_timeout: Duration,
    /// Draining since SIGTERM: stop by then at the latest.
    drain_until: Option<Instant>,
}

/// Makes the configuration afresh (from its file and flags), for a reload.
pub type Reloader = Box<dyn FnMut() -> Result<RelayConfig, String> + Send>;

/// Tells systemd (when it started the relay with a NOTIFY_SOCKET) that the
/// relay is stopping; nothing without one.
fn notify_stopping() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]) {
        debug!("systemd notify: {e}");
    }
}

/// The share of time the event loop spends working rather than waiting in
/// `poll`, in thousandths, smoothed over about a second: the load a PONG
/// reports to clients picking the least loaded relay.
#[derive(Debug)]
struct LoadMeter {
    /// When the current window began.
    since: Instant,
    /// Time spent waiting in it.
    idle: Duration,
    /// The smoothed load, in thousandths.
    load: f64,
}

impl LoadMeter {
    /// Windows the load is measured over.
    const WINDOW: Duration = Duration::from_millis(250);

    fn new(now: Instant) -> LoadMeter {
        LoadMeter {
            since: now,
            idle: Duration::ZERO,
            load: 0.0,
        }
    }

    /// Notes a wait in `poll` from `from` to `until`; the new load when a
    /// window ended.
    fn waited(&mut self, from: Instant, until: Instant) -> Option<u32> {
        self.idle += until.saturating_duration_since(from);
        let elapsed = until.saturating_duration_since(self.since);
        if elapsed < Self::WINDOW {
            return None;
        }
        let busy = elapsed.saturating_sub(self.idle).as_secs_f64() / elapsed.as_secs_f64();
        // Four windows make a second: each new one weighs a quarter. A
        // window of a second or more (one long wait) is the last second on
        // its own.
        let weight = (elapsed.as_secs_f64() / (4.0 * Self::WINDOW.as_secs_f64())).clamp(0.25, 1.0);
        self.load += (busy * 1000.0 - self.load) * weight;
        self.since = until;
        self.idle = Duration::ZERO;
        Some(self.load.round() as u32)
    }
}

/// A thread that runs log syncs so the event loop never waits for the disk
/// (except under `--fsync always`, where waiting is the point).
struct Syncer {
    requests: Option<mpsc::Sender<SyncRequest>>,
    results: mpsc::Receiver<(usize, Result<u64, LogError>)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(waker: Arc<Waker>) -> io::Result<Syncer> {
        let (req_tx, req_rx) = mpsc::channel::<SyncRequest>();
        let (res_tx, res_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("udprelay-sync".into())
            .spawn(move || {
                for request in req_rx {
                    let result = request.job.run();
                    if res_tx.send((request.channel, result)).is_err() {
                        break;
                    }
                    // A failed wake only delays the result to the next event.
                    let _ = waker.wake();
                }
            })?;
        Ok(Syncer {
            requests: Some(req_tx),
            results: res_rx,
            thread: Some(thread),
        })
    }

    /// Hands every sync the core asks for to the thread.
    fn submit(&mut self, relay: &mut Relay) {
        while let Some(request) = relay.poll_sync() {
            let channel = request.channel;
            let sent = self.requests.as_ref().map(|tx| tx.send(request));
            if !matches!(sent, Some(Ok(()))) {
                let gone = io::Error::other("sync thread stopped");
                relay.handle_sync_done(
                    channel,
                    Err(LogError::Io {
                        path: "sync".into(),
                        source: gone,
                    }),
                );
            }
        }
    }

    /// Reports finished syncs to the core.
    fn collect(&mut self, relay: &mut Relay) {
        while let Ok((channel, result)) = self.results.try_recv() {
            relay.handle_sync_done(channel, result);
        }
    }

    /// Lets the thread finish what it was given, then reports it.
    fn finish(&mut self, relay: &mut Relay) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.collect(relay);
    }
}

/// Reads the real clocks: the only place the relay does.
pub fn now() -> Now {
    let unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Now {
        instant: Instant::now(),
        unix_nanos,
    }
}

impl Driver {
    /// Validates `config`, binds every socket it names and installs the
    /// SIGINT/SIGTERM handlers: the daemon's way to start. Nothing is read
    /// until [`Driver::run`].
    pub fn bind(config: &RelayConfig) -> Result<Driver, DriverError> {
        let relay = open_relay(config)?;
        let sockets = BoundSockets::bind(config)?;
        let (shutdown, _) = Shutdown::on_signals()?;
        Driver::start(config, relay, sockets, shutdown)
    }

    /// Validates `config` and opens its data directory; the relay then
    /// serves `sockets` (which must hold one raw ingest socket per
    /// `config.raw_in`, in order; `config.listen` is not used) until
    /// `shutdown` says stop.
    pub fn new(
        config: &RelayConfig,
        sockets: BoundSockets,
        shutdown: Shutdown,
    ) -> Result<Driver, DriverError> {
        let relay = open_relay(config)?;
        Driver::start(config, relay, sockets, shutdown)
    }

    fn start(
        config: &RelayConfig,
        mut relay: Relay,
        sockets: BoundSockets,
        mut shutdown: Shutdown,
    ) -> Result<Driver, DriverError> {
        if sockets.raw_in.len() != config.raw_in.len() {
            return Err(DriverError::SocketCount {
                raw_in: sockets.raw_in.len(),
                configured: config.raw_in.len(),
            });
        }
        let poll = Poll::new()?;
        let mut sockets: Vec<UdpSocket> = std::iter::once(sockets.protocol)
            .chain(sockets.raw_in)
            .collect();
        let (own, local_ips) = own_addresses(&sockets)?;
        relay.set_own_addresses(own, local_ips)?;
        for (i, socket) in sockets.iter_mut().enumerate() {
            poll.registry()
                .register(socket, socket_token(i), Interest::READABLE)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKE_TOKEN)?);
        shutdown.register(&poll, Arc::clone(&waker))?;
        #[cfg(feature = "cluster")]
        let bridge = match config.cluster.is_empty() {
            true => None,
            false => {
                let (id, unreadable) = relay.join_cluster(now())?;
                if unreadable > 0 {
                    warn!(
                        lines = unreadable,
                        "cluster: unreadable lines in the BRIDGED file: those channels are sent again"
                    );
                }
                info!(relay = %format!("{id:016x}"), servers = ?config.cluster, "cluster: joining");
                let bridge = bridge::Bridge::start(config.cluster.clone(), id, Arc::clone(&waker))?;
                Some((bridge, Instant::now()))
            }
        };
        #[cfg(not(feature = "cluster"))]
        if !config.cluster.is_empty() {
            return Err(DriverError::Config(ConfigError::OutOfRange(
                "--cluster: this udprelay was built without the `cluster` feature".into(),
            )));
        }
        let syncer = Syncer::start(waker)?;
        #[cfg(feature = "metrics")]
        let metrics = match config.metrics {
            None => None,
            Some(addr) => {
                use std::os::fd::AsRawFd;
                let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
                Some(metrics::Metrics::start(addr, &fds)?)
            }
        };
        #[cfg(not(feature = "metrics"))]
        if config.metrics.is_some() {
            return Err(DriverError::Config(ConfigError::OutOfRange(
                "--metrics: this udprelay was built without the `metrics` feature".into(),
            )));
        }
        Ok(Driver {
            poll,
            shutdown,
            pending_read: vec![true; sockets.len()],
            busy_poll: config.busy_poll,
            last_datagram: Instant::now(),
            load: LoadMeter::new(Instant::now()),
            answer_each_batch: config.log.fsync != FsyncMode::Always,
            sockets,
            want_writable: false,
            send_queue: VecDeque::new(),
            send_queue_limit: config.send_queue_limit,
            relay,
            recv: batch::RecvBatch::new(),
            sender: batch::BatchSender::new(),
            syncer,
            #[cfg(feature = "cluster")]
            bridge,
            #[cfg(feature = "metrics")]
            metrics,
            received_at: None,
            config: config.clone(),
            reloader: None,
            drain_timeout: config.drain_timeout,
            drain_until: None,
        })
    }

    /// Where `--metrics` is served (with the real port when 0 was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        #[cfg(feature = "metrics")]
        return self.metrics.as_ref().map(|(_, addr)| *addr);
        #[cfg(not(feature = "metrics"))]
        None
    }

    /// The protocol socket's address (with the real port when 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    /// The raw ingest ports' addresses, in configuration order.
    pub fn raw_in_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.sockets[1..].iter().map(|s| s.local_addr()).collect()
    }

    /// A handle that stops [`Driver::run`] from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shutdown.shared),
        }
    }

    /// The relay core, for its counters.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Runs until its [`Shutdown`] says stop (SIGINT, SIGTERM or a
    /// [`ShutdownHandle`]), then sends what is queued, syncs the log and
    /// returns.
    pub fn run(&mut self) -> Result<(), DriverError> {
        let mut events = Events::with_capacity(256);
        loop {
            let spinning =
                !self.busy_poll.is_zero() && self.last_datagram.elapsed() < self.busy_poll;
            let timeout = if spinning || self.pending_read.iter().any(|&p| p) {
                Some(Duration::ZERO)
            } else {
                let at = self.relay.poll_timeout();
                // Draining: look again at what is left every 50 ms.
                let at = match self.drain_until {
                    Some(_) => {
                        let soon = Instant::now() + Duration::from_millis(50);
                        Some(at.map_or(soon, |at| at.min(soon)))
                    }
                    None => at,
                };
                #[cfg(feature = "metrics")]
                let at = match self.metrics.as_ref().and_then(|(m, _)| m.deadline()) {
                    Some(due) => Some(at.map_or(due, |at| at.min(due))),
                    None => at,
                };
                at.map(|at| at.saturating_duration_since(Instant::now()))
            };
            let waiting = Instant::now();
            let polled = self.poll.poll(&mut events, timeout);
            if let Some(load) = self.load.waited(waiting, Instant::now()) {
                self.relay.set_load(load);
            }
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let mut stop = self.shutdown.requested();
            if stop {
                info!("stopping on request");
            }
            for event in events.iter() {
                match event.token() {
                    SIGNAL_TOKEN => {
                        let pending: Vec<i32> = match &mut self.shutdown.signals {
                            Some(signals) => signals.pending().collect(),
                            None => Vec::new(),
                        };
                        for signal in pending {
                            stop |= self.on_signal(signal);
                        }
                    }
                    // A finished sync, the bridge's news, or a shutdown
                    // request, whose flag was read above.
                    WAKE_TOKEN => self.syncer.collect(&mut self.relay),
                    Token(t) => {
                        let i = t - 1;
                        if event.is_readable() {
                            self.pending_read[i] = true;
                        }
                        if i == 0 && event.is_writable() {
                            self.flush_queue();
                        }
                    }
                }
            }
            if let Some(until) = self.drain_until {
                if self.relay.is_drained(now()) {
                    info!("drained: stopping");
                    stop = true;
                } else if Instant::now() >= until {
                    warn!("drain timeout: stopping with work unfinished");
                    stop = true;
                }
            }
            if stop {
                break;
            }
            for i in 0..self.sockets.len() {
                if self.pending_read[i] {
                    self.pending_read[i] = self.drain(i);
                }
            }
            self.relay.handle_timeout(now());
            self.bridge(false);
            // After the bridge: what it stored from other relays is synced
            // in this pass too (group commit), not at the next wake.
            self.syncer.submit(&mut self.relay);
            self.send_all()?;
            // What was read and not answered was not answered at all.
            self.received_at = None;
            #[cfg(feature = "metrics")]
            if let Some((metrics, _)) = &mut self.metrics {
                metrics.update(&self.relay);
            }
        }
        self.syncer.finish(&mut self.relay);
        self.relay.sync_all();
        self.relay.say_refused();
        self.bridge(true);
        self.send_all()?;
        if !self.send_queue.is_empty() {
            warn!(
                queued = self.send_queue.len(),
                "exiting with datagrams still queued"
            );
        }
        Ok(())
    }

    /// With a cluster: moves work between the core and the bridge thread,
    /// and writes how far each channel is bridged once a second (and when
    /// `last`, at shutdown).
    #[cfg(feature = "cluster")]
    fn bridge(&mut self, last: bool) {
        let Some((bridge, saved_at)) = &mut self.bridge else {
            return;
        };
        if !last {
            bridge.exchange(&mut self.relay, now());
        }
        if last || saved_at.elapsed() >= Duration::from_secs(1) {
            *saved_at = Instant::now();
            if let Err(e) = self.relay.save_bridged() {
                warn!("cluster: cannot keep how far channels are bridged: {e}");
            }
        }
    }

    #[cfg(not(feature = "cluster"))]
    fn bridge(&mut self, _last: bool) {}

    /// Reads socket `i` until it would block or the budget is spent; returns
    /// true if data may remain.
    fn drain(&mut self, i: usize) -> bool {
        let now = now();
        let mut read = 0;
        while read < READ_BUDGET {
            match self.recv.recv(&self.sockets[i]) {
                Ok(n) => {
                    if !self.busy_poll.is_zero() {
                        self.last_datagram = Instant::now();
                    }
                    if n > 0 {
                        self.received_at.get_or_insert_with(Instant::now);
                    }
                    for k in 0..n {
                        let (datagrams, from) = self.recv.get(k);
                        for datagram in datagrams {
                            match (i, from) {
                                (0, Some(from)) => self.relay.handle_datagram(now, from, datagram),
                                (0, None) => self.relay.counters_mut().recv_errors += 1,
                                _ => self.relay.handle_raw(now, i - 1, datagram),
                            }
                        }
                    }
                    read += n.max(1);
                    // Answering before reading on saves the last read (the
                    // one that finds the socket empty) from every answer's
                    // path: p50 at 10,000 msg/s 31-34 -> 26-28 us, and
                    // reliable throughput 1.9-2.3 -> 2.9-3.0 M msg/s, as
                    // acknowledgements leave sooner.
                    if self.answer_each_batch
                        && let Err(e) = self.send_all()
                    {
                        debug!(error = %e, "send failed");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some
                    // systems; they say nothing about the next datagram.
                    debug!(error = %e, "receive failed");
                    self.relay.counters_mut().recv_errors += 1;
                }
            }
        }
        true
    }

    /// What SIGHUP calls to read the configuration again (see
    /// [`Driver::reload`]); without one, SIGHUP is logged and ignored.
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    /// Reads the configuration again and applies what can change while
    /// running (limits, raw ports, the key file and its permissions,
    /// cluster acknowledgement, drain timeout, busy polling); says which settings cannot; keeps the running one
    /// if the new one is refused. Under systemd, says RELOADING=1 first
    /// and READY=1 after.
    pub fn reload(&mut self) {
        let mut says = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            says.push(now);
        }
        if let Err(e) = sd_notify::notify(false, &says) {
            debug!("systemd notify: {e}");
        }
        match self.reloader.as_mut().map(|read| read()) {
            None => warn!("SIGHUP: no configuration to read again"),
            Some(Err(e)) => warn!("reload refused, the running configuration stays: {e}"),
            Some(Ok(new)) => match new
                .validate()
                .map_err(DriverError::from)
                .and_then(|()| self.apply(new))
            {
                Ok(()) => info!("reloaded the configuration"),
                Err(e) => warn!("reload refused, the running configuration stays: {e}"),
            },
        }
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            debug!("systemd notify: {e}");
        }
    }

    /// Applies `new` (validated): binds the raw-in ports it adds before
    /// anything changes, so a port that cannot be bound refuses the whole.
    fn apply(&mut self, mut new: RelayConfig) -> Result<(), DriverError> {
        let old = self.config.clone();
        // The key file is read again (its path may have changed), before
        // anything changes; turning keys on or off needs a restart.
        let keys =
            match (&old.keys, &new.keys) {
                (Some(_), Some(path)) => Some(crate::auth::KeyFile::load(path).map_err(
                    |source| DriverError::Keys {
                        path: path.clone(),
                        source,
                    },
                )?),
                _ => None,
            };
        // Each raw-in port: the socket there already (by the address it was
        // asked for), or a new one, bound before anything changes.
        let mut taken = vec![false; old.raw_in.len()];
        let mut plan: Vec<Result<usize, UdpSocket>> = Vec::new();
        for (addr, _) in &new.raw_in {
            let same =
                (old.raw_in.iter().enumerate()).position(|(j, (a, _))| a == addr && !taken[j]);
            plan.push(match same {
                Some(j) => {
                    taken[j] = true;
                    Ok(j)
                }
                None => Err(bind_udp(*addr)?),
            });
        }
        let mut old_raw: Vec<Option<UdpSocket>> = self.sockets.drain(1..).map(Some).collect();
        for (socket, kept) in old_raw.iter_mut().zip(&taken) {
            if let (Some(socket), false) = (socket.as_mut(), kept) {
                let _ = self.poll.registry().deregister(socket);
            }
        }
        for step in plan {
            let token = socket_token(self.sockets.len());
            let socket = match step {
                Ok(j) => match old_raw.get_mut(j).and_then(Option::take) {
                    Some(mut socket) => {
                        self.poll
                            .registry()
                            .reregister(&mut socket, token, Interest::READABLE)?;
                        socket
                    }
                    None => continue, // each old socket is taken once
                },
                Err(mut socket) => {
                    self.poll
                        .registry()
                        .register(&mut socket, token, Interest::READABLE)?;
                    socket
                }
            };
            self.sockets.push(socket);
        }
        self.pending_read = vec![true; self.sockets.len()];
        let fixed = self.relay.reconfigure(&old, &new);
        if let (Some(file), Some(path)) = (keys, &new.keys) {
            let count = file.keys().len();
            let required = new.auth == crate::config::AuthMode::Required;
            let revoked = self
                .relay
                .rekey(now(), file, required, new.max_auth_sessions);
            info!(
                keys = count,
                ended_keyed_sessions = revoked.keyed_sessions,
                ended_subscriptions = revoked.subscriptions,
                ended_publishing_sessions = revoked.publishing_sessions,
                "reload: key file {}",
                path.display()
            );
        }
        if !fixed.is_empty() {
            warn!(
                "reload: {} cannot change while the relay runs (restart for them)",
                fixed.join(", ")
            );
        }
        let (own, local_ips) = own_addresses(&self.sockets)?;
        self.relay.set_own_addresses(own, local_ips)?;
        for (addr, (_, channel)) in self.raw_in_addrs()?.iter().zip(&new.raw_in) {
            info!(%addr, channel, "reload: raw-in");
        }
        for (channel, addr) in &new.raw_out {
            info!(%addr, channel, "reload: raw-out");
        }
        self.busy_poll = new.busy_poll;
        self.drain_timeout = new.drain_timeout;
        self.send_queue_limit = new.send_queue_limit;
        // What did not change stays what runs.
        new.listen = old.listen;
        new.data_dir = old.data_dir.clone();
        new.log = old.log.clone();
        new.truncate_corrupt = old.truncate_corrupt.clone();
        if old.keys.is_some() != new.keys.is_some() {
            new.keys = old.keys.clone();
            new.auth = old.auth;
            new.max_auth_sessions = old.max_auth_sessions;
        }
        new.allow_anonymous = old.allow_anonymous;
        new.cluster = old.cluster.clone();
        new.metrics = old.metrics;
        self.config = new;
        Ok(())
    }

    /// A signal arrived: SIGTERM drains (within `--drain-timeout`) or, a
    /// second time, stops; SIGINT stops; SIGHUP reloads. True to stop now.
    fn on_signal(&mut self, signal: i32) -> bool {
        if signal == SIGHUP {
            info!("SIGHUP: reading the configuration again");
            self.reload();
            return false;
        }
        if signal != SIGTERM || self.drain_until.is_some() || self.drain_timeout.is_zero() {
            info!(signal, "stopping on signal");
            notify_stopping();
            return true;
        }
        info!(timeout = ?self.drain_timeout, "draining on SIGTERM: no new subscriptions or sessions; a second SIGTERM or SIGINT stops at once");
        notify_stopping();
        self.relay.begin_drain();
        self.drain_until = Some(Instant::now() + self.drain_timeout);
        false
    }

    /// Datagrams went out: how long after the read they answer.
    fn sent_after_receive(&mut self) {
        let Some(at) = self.received_at.take() else {
            return;
        };
        #[cfg(feature = "metrics")]
        if let Some((metrics, _)) = &self.metrics {
            metrics.observe(at.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = at;
    }

    /// Sends every datagram the core has ready, many per system call,
    /// queueing behind a full socket.
    fn send_all(&mut self) -> io::Result<()> {
        self.flush_queue();
        let mut ready = Vec::with_capacity(batch::BATCH);
        loop {
            ready.clear();
            while ready.len() < batch::BATCH
                && let Some(t) = self.relay.poll_transmit()
            {
                ready.push(t);
            }
            if ready.is_empty() {
                break;
            }
            let mut sent = 0;
            if self.send_queue.is_empty() {
                sent = self.send_batch(&ready);
            }
            if sent > 0 {
                self.sent_after_receive();
            }
            for t in ready.drain(sent..) {
                if self.send_queue.len() >= self.send_queue_limit {
                    self.relay.counters_mut().send_dropped += 1;
                } else {
                    self.relay.counters_mut().send_queued += 1;
                    self.send_queue.push_back(t);
                }
            }
        }
        let want = !self.send_queue.is_empty();
        if want != self.want_writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(&mut self.sockets[0], socket_token(0), interest)?;
            self.want_writable = want;
        }
        Ok(())
    }

    /// Sends queued datagrams until the socket is full again.
    fn flush_queue(&mut self) {
        while !self.send_queue.is_empty() {
            let (front, _) = self.send_queue.as_slices();
            let n = front.len().min(batch::BATCH);
            let chunk: Vec<Transmit> = self.send_queue.drain(..n).collect();
            let sent = self.send_batch(&chunk);
            if sent < chunk.len() {
                for t in chunk.into_iter().skip(sent).rev() {
                    self.send_queue.push_front(t);
                }
                return;
            }
        }
    }

    /// Sends datagrams in order, many per call, until the socket is full;
    /// returns how many are done with (sent, or dropped on an error other
    /// than a full buffer: UDP promises no delivery, and one bad destination
    /// must not block the rest).
    fn send_batch(&mut self, batch: &[Transmit]) -> usize {
        let mut done = 0;
        while done < batch.len() {
            match self.sender.send(&self.sockets[0], &batch[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.relay.counters_mut().datagrams_sent += n as u64;
                    done += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(error = %e, to = %batch[done].destination, "send failed");
                    self.relay.counters_mut().send_errors += 1;
                    done += 1;
                }
            }
        }
        done
    }
}

/// Validates `config` and opens the data directory: before any port, so a
/// second relay on the same directory fails without touching one.
fn open_relay(config: &RelayConfig) -> Result<Relay, DriverError> {
    config.validate()?;
    Ok(Relay::open(config, now())?)
}

/// A non-blocking UDP socket bound to `addr`, with large buffers. No
/// SO_REUSEADDR: a second relay on the same port must fail, not share it.
/// The relay's own socket addresses, and, where one is bound to every
/// address, the machine's (only then does it need to know which they are).
fn own_addresses(sockets: &[UdpSocket]) -> io::Result<(Vec<SocketAddr>, Vec<std::net::IpAddr>)> {
    let own = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    let local_ips = if own.iter().any(|a| a.ip().is_unspecified()) {
        if_addrs::get_if_addrs()?.iter().map(|i| i.ip()).collect()
    } else {
        Vec::new()
    };
    Ok((own, local_ips))
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, DriverError> {
    let bind_err = |source| DriverError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    // Best effort: the kernel caps these, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    let socket = UdpSocket::from_std(socket.into());
    // Best effort too: runs of datagrams from one sender then arrive as one
    // buffer, which the receive batch cuts up again.
    batch::enable_gro(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_is_the_smoothed_share_of_time_not_spent_waiting() {
        let t = Instant::now();
        let mut m = LoadMeter::new(t);
        let ms = Duration::from_millis;
        // Waiting all along: no load, reported once a window has passed.
        assert_eq!(m.waited(t, t + ms(100)), None);
        assert_eq!(m.waited(t + ms(100), t + ms(250)), Some(0));
        // Busy for three quarters of each window from then on: it climbs
        // towards 750 and stays below it.
        let mut at = t + ms(250);
        let mut loads = Vec::new();
        for _ in 0..20 {
            let busy_until = at + ms(187) + Duration::from_micros(500);
            loads.push(m.waited(busy_until, at + ms(250)).unwrap());
            at += ms(250);
        }
        assert!(loads.windows(2).all(|w| w[0] <= w[1]), "{loads:?}");
        assert!((700..=750).contains(loads.last().unwrap()), "{loads:?}");
        assert!(
            loads[0] < 250,
            "smoothed, not the last window alone: {loads:?}"
        );
        // A long wait (an idle relay blocks in poll) is the last second
        // alone: no stale load.
        assert_eq!(m.waited(at, at + Duration::from_secs(3600)), Some(0));
    }
}

//! `udpcat`: netcat for udprelay. Publish lines, subscribe and print, ping the
//! relay, read its counters. A thin shell of blocking sockets around the
//! sans-IO pieces in `udprelay::client`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use socket2::{Domain, Protocol, Socket, Type};
use udprelay::client::{
    ClientError, PingOutcome, Pinger, Publisher, ReliablePublisher, ReliableSubscription,
    StatsError, StatsPager, Subscription, SubscriptionEvent, message_json,
};
use udprelay::config::parse_duration;
use udprelay::reliable::ArqConfig;
use udprelay::rng::Rng;
use udprelay::wire::{ErrorCode, StartPosition};

/// netcat for udprelay: publish, subscribe, ping, stats.
#[derive(Debug, Parser)]
#[command(name = "udpcat", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish messages to a channel: each stdin line (or file line) is one message.
    Pub {
        /// Relay address, like 127.0.0.1:7070.
        addr: String,
        /// Channel name.
        channel: String,
        /// Send this one message instead of reading stdin.
        #[arg(long, conflicts_with = "file")]
        message: Option<String>,
        /// Send the lines of this file instead of reading stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Send the input this many times.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Send all of the input (stdin or --file) as one message, bytes as
        /// they are, instead of one message per line. Messages larger than a
        /// datagram travel in pieces (up to the relay's --max-message-size).
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
        /// Print a summary on stderr when done.
        #[arg(short, long)]
        verbose: bool,
        /// Guaranteed delivery: every message is retransmitted until the relay
        /// acknowledges it (once it is in the log); exit 0 only if all were.
        #[arg(long)]
        reliable: bool,
        /// With --reliable: while at most this many messages are unacknowledged, a datagram with room carries them again beside new ones, so a lost datagram is repaired by the next (costs bytes, not datagrams; 0 turns it off).
        #[arg(long, default_value_t = ArqConfig::default().bundle_limit)]
        bundle_limit: u32,
    },
    /// Subscribe to a channel and print each message.
    Sub {
        /// Relay address, like 127.0.0.1:7070.
        addr: String,
        /// Channel name.
        channel: String,
        /// Output: `line` (payload and a newline), `raw` (payload bytes only) or
        /// `json` (one object per line: channel, offset, timestamp, payload).
        #[arg(long, value_enum, default_value_t = Format::Line)]
        format: Format,
        /// Exit 0 after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long (exit 1 if --count messages had not arrived by then).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Where to start: `latest` (new messages only), `earliest`, or an offset.
        #[arg(long, default_value = "latest", value_parser = parse_start)]
        from: StartPosition,
        /// How long to wait for the relay to accept the subscription.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        /// Guaranteed delivery: acknowledged, retransmitted, in offset order,
        /// each message exactly once; resume with --from the next offset.
        #[arg(long)]
        reliable: bool,
        /// Print the subscription's counters on stderr when done.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Measure the round trip to the relay.
    Ping {
        /// Relay address, like 127.0.0.1:7070.
        addr: String,
        /// Number of pings.
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Time between pings.
        #[arg(long, default_value = "200ms", value_parser = parse_duration)]
        interval: Duration,
        /// How long to wait for each pong.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
    },
    /// Print the relay's counters, one `name value` per line.
    Stats {
        /// Relay address, like 127.0.0.1:7070.
        addr: String,
        /// How long to wait for each page of the answer.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        reply_timeout: Duration,
        /// Pad each request to this many bytes: the relay answers with at
        /// most as many, so this is the page size.
        #[arg(long, default_value_t = 1400)]
        datagram_size: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Line,
    Raw,
    Json,
}

/// Why udpcat failed.
#[derive(Debug, thiserror::Error)]
enum CatError {
    #[error("cannot resolve relay address {0:?}")]
    BadAddress(String),
    #[error("no answer from the relay at {addr} within {waited:?}")]
    NoAnswer { addr: SocketAddr, waited: Duration },
    #[error("no relay at {0} (connection refused)")]
    Refused(SocketAddr),
    #[error("cannot read {0}: {1}")]
    Input(String, io::Error),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("cannot read the relay's counters: {0}")]
    Stats(StatsError),
    #[error("received {got} of {want} messages before the timeout")]
    Incomplete { got: u64, want: u64 },
    #[error("the relay refused {0} request(s)")]
    Refusals(u64),
    #[error("{count} message(s) were not acknowledged: {why}")]
    Unacknowledged { count: u64, why: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn parse_start(s: &str) -> Result<StartPosition, String> {
    match s {
        "latest" => Ok(StartPosition::Latest),
        "earliest" => Ok(StartPosition::Earliest),
        n => n
            .parse()
            .map(StartPosition::Offset)
            .map_err(|_| format!("expected latest, earliest or an offset, got {n:?}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Pub {
            addr,
            channel,
            message,
            file,
            count,
            datagram_size,
            reply_timeout,
            verbose,
            reliable,
            bundle_limit,
            whole,
        } => {
            let input = match (message, file, whole) {
                (Some(m), _, _) => Ok(Input::Message(m.into_bytes())),
                (None, Some(f), true) => std::fs::read(&f)
                    .map(Input::Message)
                    .map_err(|e| CatError::Input(f.display().to_string(), e)),
                (None, None, true) => {
                    let mut all = Vec::new();
                    io::stdin()
                        .read_to_end(&mut all)
                        .map(|_| Input::Message(all))
                        .map_err(|e| CatError::Input("stdin".into(), e))
                }
                (None, Some(f), false) => Ok(Input::File(f)),
                (None, None, false) => Ok(Input::Stdin),
            };
            let input = match input {
                Ok(input) => input,
                Err(e) => {
                    eprintln!("udpcat: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = PubOptions {
                channel,
                input,
                count,
                datagram_size,
                verbose,
                bundle_limit,
            };
            Conn::open(&addr, reply_timeout).and_then(|mut c| {
                if reliable {
                    publish_reliably(&mut c, opts)
                } else {
                    publish(&mut c, opts)
                }
            })
        }
        Command::Sub {
            addr,
            channel,
            format,
            count,
            timeout,
            from,
            reply_timeout,
            reliable,
            verbose,
        } => {
            let opts = SubOptions {
                channel,
                format,
                count,
                timeout,
                from,
                reliable,
                verbose,
            };
            Conn::open(&addr, reply_timeout).and_then(|mut c| subscribe(&mut c, &opts))
        }
        Command::Ping {
            addr,
            count,
            interval,
            reply_timeout,
        } => Conn::open(&addr, reply_timeout).and_then(|mut c| ping(&mut c, count, interval)),
        Command::Stats {
            addr,
            reply_timeout,
            datagram_size,
        } => Conn::open(&addr, reply_timeout).and_then(|mut c| stats(&mut c, datagram_size)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpcat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A UDP socket connected to the relay, so only the relay's datagrams reach
/// it and a missing relay shows up as "connection refused".
struct Conn {
    socket: UdpSocket,
    relay: SocketAddr,
    reply_timeout: Duration,
    buf: Vec<u8>,
    /// Probes the relay: that it is there, and when it has handled
    /// everything sent before.
    pinger: Pinger,
    /// Error frames the relay sent.
    refusals: u64,
}

impl Conn {
    fn open(addr: &str, reply_timeout: Duration) -> Result<Conn, CatError> {
        let relay = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| CatError::BadAddress(addr.to_string()))?;
        let local: SocketAddr = if relay.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = Socket::new(Domain::for_address(relay), Type::DGRAM, Some(Protocol::UDP))?;
        // A subscriber reading a burst must not lose it in a small default
        // buffer (the kernel caps this at net.core.rmem_max).
        let _ = socket.set_recv_buffer_size(8 << 20);
        socket.bind(&local.into())?;
        socket.connect(&relay.into())?;
        let socket: UdpSocket = socket.into();
        Ok(Conn {
            socket,
            relay,
            reply_timeout,
            buf: vec![0; 65_536],
            pinger: Pinger::new(Rng::from_entropy().next_u64(), reply_timeout),
            refusals: 0,
        })
    }

    fn send(&self, datagram: &[u8]) -> Result<(), CatError> {
        match self.socket.send(datagram) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(CatError::Refused(self.relay))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one datagram before `deadline`; `None` at the deadline.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<&[u8]>, CatError> {
        recv_until(&self.socket, &mut self.buf, self.relay, deadline)
    }

    /// Sends the first ping of a probe; [`Conn::await_pong`] waits for its
    /// answer.
    fn start_ping(&mut self) -> Result<(), CatError> {
        let now = Instant::now();
        self.pinger.start(now);
        match self.pinger.poll_transmit(now) {
            Some(ping) => self.send(&ping),
            None => Ok(()),
        }
    }

    /// Waits for the pong of the probe under way, sending a new ping every
    /// 250 ms (one may have been lost), reporting relay errors seen on the
    /// way. Returns the round trip of the ping that was answered.
    fn await_pong(&mut self) -> Result<Duration, CatError> {
        loop {
            let now = Instant::now();
            self.pinger.handle_timeout(now);
            match self.pinger.poll_outcome() {
                Some(PingOutcome::Answered { rtt }) => return Ok(rtt),
                Some(PingOutcome::TimedOut) => {
                    return Err(CatError::NoAnswer {
                        addr: self.relay,
                        waited: self.reply_timeout,
                    });
                }
                None => {}
            }
            if let Some(ping) = self.pinger.poll_transmit(now) {
                self.send(&ping)?;
            }
            let wake = self.pinger.poll_timeout().unwrap_or(now);
            let Some(datagram) = recv_until(&self.socket, &mut self.buf, self.relay, wake)? else {
                continue;
            };
            let mut refusals = 0;
            self.pinger
                .handle_datagram(Instant::now(), datagram, |code, reason| {
                    report_refusal(code, reason);
                    refusals += 1;
                });
            self.refusals += refusals;
        }
    }

    /// One probe: the round trip of the ping that was answered.
    fn ping(&mut self) -> Result<Duration, CatError> {
        self.start_ping()?;
        self.await_pong()
    }
}

/// Receives one datagram from the connected `socket` into `buf` before
/// `deadline`; `None` at the deadline.
fn recv_until<'b>(
    socket: &UdpSocket,
    buf: &'b mut [u8],
    relay: SocketAddr,
    deadline: Instant,
) -> Result<Option<&'b [u8]>, CatError> {
    let now = Instant::now();
    if now >= deadline {
        return Ok(None);
    }
    socket.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
    match socket.recv(buf) {
        Ok(n) => Ok(Some(&buf[..n])),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(CatError::Refused(relay)),
        Err(e) => Err(e.into()),
    }
}

/// A send or receive whose only trouble was an ICMP "port unreachable":
/// for a reliable publisher the relay may be restarting, so that is silence,
/// which the ARQ retransmits through, not the end.
fn unless_refused<T>(result: Result<T, CatError>) -> Result<Option<T>, CatError> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(CatError::Refused(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn report_refusal(code: ErrorCode, reason: &str) {
    eprintln!("udpcat: relay refused ({}): {reason}", code.name());
}

enum Input {
    Message(Vec<u8>),
    File(PathBuf),
    Stdin,
}

struct PubOptions {
    channel: String,
    input: Input,
    count: u64,
    datagram_size: usize,
    verbose: bool,
    bundle_limit: u32,
}

/// Datagrams sent between flow-control pings. The relay answers a ping only
/// after everything before it, so at most two windows are ever in flight: the
/// relay's socket buffer cannot overflow however fast the input comes.
const PING_EVERY: u64 = 64;

/// Sends datagrams with ping-paced flow control.
struct PacedSender<'c> {
    conn: &'c mut Conn,
    datagrams: u64,
}

impl PacedSender<'_> {
    fn send(&mut self, datagram: &[u8]) -> Result<(), CatError> {
        self.conn.send(datagram)?;
        self.datagrams += 1;
        if self.datagrams.is_multiple_of(PING_EVERY) {
            if self.conn.pinger.is_busy() {
                self.conn.await_pong()?;
            }
            self.conn.start_ping()?;
        }
        Ok(())
    }

    /// Returns once the relay has processed everything sent.
    fn finish(self) -> Result<u64, CatError> {
        if self.conn.pinger.is_busy() {
            self.conn.await_pong()?;
        }
        self.conn.ping()?;
        Ok(self.datagrams)
    }
}

fn publish(conn: &mut Conn, opts: PubOptions) -> Result<(), CatError> {
    // Make sure someone is listening before reading any input.
    conn.ping()?;
    let mut publisher = Publisher::new(&opts.channel, opts.datagram_size)?;
    let mut sender = PacedSender { conn, datagrams: 0 };
    let mut messages = 0u64;
    let input = spawn_input(opts.input, opts.count);
    let mut next = input.recv().ok();
    while let Some(message) = next.take() {
        for datagram in publisher.push(&message?)? {
            sender.send(&datagram)?;
        }
        messages += 1;
        next = match input.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                // Input paused (a person typing): send what we have now.
                if let Some(datagram) = publisher.flush() {
                    sender.send(&datagram)?;
                }
                input.recv().ok()
            }
        };
    }
    if let Some(datagram) = publisher.flush() {
        sender.send(&datagram)?;
    }
    let datagrams = sender.finish()?;
    if opts.verbose {
        eprintln!(
            "udpcat: published {messages} messages to {} in {datagrams} datagrams",
            opts.channel
        );
    }
    match conn.refusals {
        0 => Ok(()),
        n => Err(CatError::Refusals(n)),
    }
}

/// Reads the input on a thread, one message per line (or the one message of
/// --message and --whole), so the sending loop can wait for the network and
/// the input at once.
fn spawn_input(input: Input, count: u64) -> mpsc::Receiver<Result<Vec<u8>, CatError>> {
    let (tx, rx) = mpsc::sync_channel(4096);
    std::thread::spawn(move || {
        let result = (|| -> Result<(), CatError> {
            let send = |m: Vec<u8>| tx.send(Ok(m)).is_ok();
            match input {
                Input::Message(m) => {
                    for _ in 0..count {
                        if !send(m.clone()) {
                            break;
                        }
                    }
                }
                Input::File(path) => {
                    let name = path.display().to_string();
                    let file = File::open(&path).map_err(|e| CatError::Input(name.clone(), e))?;
                    let lines =
                        read_lines(BufReader::new(file), |e| CatError::Input(name.clone(), e))?;
                    'all: for _ in 0..count {
                        for line in &lines {
                            if !send(line.clone()) {
                                break 'all;
                            }
                        }
                    }
                }
                Input::Stdin if count == 1 => {
                    let mut reader = BufReader::with_capacity(1 << 16, io::stdin());
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        let n = reader
                            .read_until(b'\n', &mut line)
                            .map_err(|e| CatError::Input("stdin".into(), e))?;
                        if n == 0 || !send(trim_newline(&line).to_vec()) {
                            break;
                        }
                    }
                }
                Input::Stdin => {
                    let lines =
                        read_lines(io::stdin().lock(), |e| CatError::Input("stdin".into(), e))?;
                    'all: for _ in 0..count {
                        for line in &lines {
                            if !send(line.clone()) {
                                break 'all;
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    rx
}

/// Publishes with acknowledgements: exits 0 only when the relay acknowledged
/// every message.
fn publish_reliably(conn: &mut Conn, opts: PubOptions) -> Result<(), CatError> {
    conn.ping()?;
    let session = Rng::from_entropy().next_u64();
    let mut rp = ReliablePublisher::new(
        session,
        &opts.channel,
        ArqConfig {
            bundle_limit: opts.bundle_limit,
            ..ArqConfig::default()
        },
        opts.datagram_size,
    )?;
    let input = spawn_input(opts.input, opts.count);
    let mut input_done = false;
    let mut refusal: Option<String> = None;
    loop {
        while !input_done && rp.wants_input() {
            match input.try_recv() {
                Ok(Ok(message)) => rp.push(message)?,
                Ok(Err(e)) => return Err(e),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => input_done = true,
            }
        }
        if input_done && rp.is_done() {
            break;
        }
        let now = Instant::now();
        let gone_at = rp.silent_since().map(|t| t + conn.reply_timeout);
        if gone_at.is_some_and(|t| now >= t) {
            refusal.get_or_insert_with(|| {
                format!("no answer from the relay within {:?}", conn.reply_timeout)
            });
        }
        if rp.is_failed() || refusal.is_some() {
            let why = refusal.unwrap_or_else(|| "the relay stopped answering".into());
            return Err(CatError::Unacknowledged {
                count: rp.unacknowledged(),
                why,
            });
        }
        if rp.poll_timeout().is_some_and(|t| t <= now) {
            rp.handle_timeout(now);
        }
        while let Some(datagram) = rp.poll_transmit(now) {
            unless_refused(conn.send(&datagram))?;
        }
        // Wake for the next timer, or soon if input may be waiting.
        let mut wake = rp.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if let Some(t) = gone_at {
            wake = wake.min(t);
        }
        if !input_done && rp.wants_input() {
            wake = wake.min(now + Duration::from_millis(2));
        }
        if let Some(datagram) = unless_refused(conn.recv_until(wake))?.flatten() {
            rp.handle_datagram(Instant::now(), datagram, |code, reason| {
                report_refusal(code, reason);
                refusal = Some(format!("refused ({}): {reason}", code.name()));
            });
        }
    }
    if opts.verbose {
        let stats = rp.stats();
        eprintln!(
            "udpcat: {} pieces acknowledged on {} (a message larger than a datagram is several): \
             {} retransmissions, {} timeouts, {} tail-loss probes, srtt {:?}, window {}",
            rp.acknowledged(),
            opts.channel,
            stats.retransmits,
            stats.timeouts,
            stats.tail_loss_probes,
            rp.path().0.unwrap_or_default(),
            rp.path().1,
        );
    }
    Ok(())
}

fn read_lines(
    mut reader: impl Read,
    err: impl Fn(io::Error) -> CatError,
) -> Result<Vec<Vec<u8>>, CatError> {
    let mut all = Vec::new();
    reader.read_to_end(&mut all).map_err(err)?;
    let mut lines: Vec<Vec<u8>> = all
        .split(|&b| b == b'\n')
        .map(|l| trim_newline(l).to_vec())
        .collect();
    // A final newline ends the last line; it does not start an empty one.
    if all.last() == Some(&b'\n') || all.is_empty() {
        lines.pop();
    }
    Ok(lines)
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

struct SubOptions {
    channel: String,
    format: Format,
    count: Option<u64>,
    timeout: Option<Duration>,
    from: StartPosition,
    reliable: bool,
    verbose: bool,
}

/// Either kind of subscription, behind one interface for the receive loop.
enum AnySubscription {
    Plain(Subscription),
    Reliable(Box<ReliableSubscription>),
}

impl AnySubscription {
    fn is_active(&self) -> bool {
        match self {
            AnySubscription::Plain(s) => s.is_active(),
            AnySubscription::Reliable(s) => s.is_active(),
        }
    }

    fn poll_timeout(&self) -> Instant {
        match self {
            AnySubscription::Plain(s) => s.poll_timeout(),
            AnySubscription::Reliable(s) => s.poll_timeout(),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self {
            AnySubscription::Plain(s) => s.poll_transmit(now),
            AnySubscription::Reliable(s) => s.poll_transmit(now),
        }
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        on_event: &mut dyn FnMut(SubscriptionEvent<'_>),
    ) {
        match self {
            AnySubscription::Plain(s) => {
                s.handle_datagram(now, datagram, &mut *on_event);
            }
            AnySubscription::Reliable(s) => s.handle_datagram(now, datagram, on_event),
        }
    }

    fn unsubscribe(&self) -> Vec<u8> {
        match self {
            AnySubscription::Plain(s) => s.unsubscribe(),
            AnySubscription::Reliable(s) => s.unsubscribe(),
        }
    }
}

fn subscribe(conn: &mut Conn, opts: &SubOptions) -> Result<(), CatError> {
    let start = Instant::now();
    let sub_id = Rng::from_entropy().next_u64() as u32;
    let mut sub = if opts.reliable {
        let arq = ArqConfig::default();
        AnySubscription::Reliable(Box::new(ReliableSubscription::new(
            sub_id,
            &opts.channel,
            opts.from,
            arq,
            start,
        )?))
    } else {
        AnySubscription::Plain(Subscription::new(sub_id, &opts.channel, opts.from, start)?)
    };
    let stop_at = opts.timeout.map(|t| start + t);
    let answer_by = start + conn.reply_timeout;
    let mut received = 0u64;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = loop {
        let now = Instant::now();
        if opts.count.is_some_and(|c| received >= c) {
            break Ok(());
        }
        if stop_at.is_some_and(|s| now >= s) {
            break match opts.count {
                Some(want) => Err(CatError::Incomplete {
                    got: received,
                    want,
                }),
                None => Ok(()),
            };
        }
        if !sub.is_active() && now >= answer_by {
            break Err(CatError::NoAnswer {
                addr: conn.relay,
                waited: conn.reply_timeout,
            });
        }
        if let Some(datagram) = sub.poll_transmit(now) {
            conn.send(&datagram)?;
        }
        let mut wake = sub.poll_timeout();
        if let Some(s) = stop_at {
            wake = wake.min(s);
        }
        if !sub.is_active() {
            wake = wake.min(answer_by);
        }
        let Some(datagram) = conn.recv_until(wake)? else {
            continue;
        };
        let mut write_result = Ok(());
        sub.handle_datagram(Instant::now(), datagram, &mut |event| match event {
            SubscriptionEvent::Subscribed { first_offset, .. } => {
                eprintln!("udpcat: subscribed to {} at offset {first_offset}", opts.channel);
                if let StartPosition::Offset(asked) = opts.from
                    && first_offset > asked
                {
                    eprintln!(
                        "udpcat: offsets {asked}..{first_offset} are not available; starting at {first_offset}"
                    );
                }
            }
            SubscriptionEvent::Message {
                offset,
                timestamp,
                payload,
            } => {
                if opts.count.is_some_and(|c| received >= c) {
                    return;
                }
                received += 1;
                if write_result.is_ok() {
                    write_result = write_message(&mut out, opts, offset, timestamp, payload);
                }
            }
            SubscriptionEvent::Error { code, reason } => report_refusal(code, reason),
        });
        out.flush()?;
        if let Err(e) = write_result {
            // A closed stdout (udpcat sub | head -1) ends the subscription quietly.
            if e.kind() == io::ErrorKind::BrokenPipe {
                break Ok(());
            }
            break Err(e.into());
        }
    };
    // Best effort: the lease ends it anyway if this datagram is lost.
    let _ = conn.send(&sub.unsubscribe());
    if opts.verbose
        && let AnySubscription::Reliable(r) = &sub
    {
        let st = r.stats();
        eprintln!(
            "udpcat: {} messages received in order; {} duplicates dropped, {} arrived out of order",
            st.received, st.duplicates, st.out_of_order
        );
    }
    result
}

fn write_message(
    out: &mut impl Write,
    opts: &SubOptions,
    offset: u64,
    timestamp: u64,
    payload: &[u8],
) -> io::Result<()> {
    match opts.format {
        Format::Line => {
            out.write_all(payload)?;
            out.write_all(b"\n")
        }
        Format::Raw => out.write_all(payload),
        Format::Json => {
            let obj = message_json(&opts.channel, offset, timestamp, payload);
            writeln!(out, "{obj}")
        }
    }
}

fn ping(conn: &mut Conn, count: u32, interval: Duration) -> Result<(), CatError> {
    let mut answered = 0;
    let mut last_err = None;
    for seq in 1..=count {
        if seq > 1 {
            std::thread::sleep(interval);
        }
        match conn.ping() {
            Ok(rtt) => {
                answered += 1;
                println!(
                    "pong from {}: seq={seq} time={:.3} ms",
                    conn.relay,
                    rtt.as_secs_f64() * 1000.0
                );
            }
            Err(e @ CatError::NoAnswer { .. }) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    println!("{count} pings, {answered} answered");
    match (answered, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

fn stats(conn: &mut Conn, datagram_size: usize) -> Result<(), CatError> {
    let mut pager = StatsPager::new(Instant::now(), datagram_size, conn.reply_timeout);
    let entries = loop {
        let now = Instant::now();
        pager.handle_timeout(now);
        match pager.poll_outcome() {
            Some(Ok(entries)) => break entries,
            Some(Err(StatsError::NoAnswer(waited))) => {
                return Err(CatError::NoAnswer {
                    addr: conn.relay,
                    waited,
                });
            }
            Some(Err(e)) => return Err(CatError::Stats(e)),
            None => {}
        }
        if let Some(request) = pager.poll_transmit(now) {
            conn.send(&request)?;
        }
        let wake = pager.poll_timeout().unwrap_or(now);
        if let Some(datagram) = conn.recv_until(wake)? {
            pager.handle_datagram(Instant::now(), datagram);
        }
    };
    let mut out = io::stdout().lock();
    for (name, value) in entries {
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

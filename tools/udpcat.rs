//! `udpcat`: netcat for udprelay. Publish lines, subscribe and print, ping the
//! relay, read its counters. A thin shell of blocking sockets around the
//! sans-IO pieces in `udprelay::client`.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use udprelay::auth::Credential;
use udprelay::client::Routes;
use udprelay::client::{
    ClientError, Handshake, PacedPublisher, Pick, Picker, PingOutcome, Pinger, ReliablePublisher,
    SecureError, Secured, StatsError, StatsPager, message_json,
};
use udprelay::reliable::ArqConfig;
use udprelay::rng::Rng;
use udprelay::wire::{self, DeliveryMode, ErrorCode, Frame, StartPosition};

#[path = "udpcat/args.rs"]
mod args;
#[path = "udpcat/either.rs"]
mod either;
#[path = "udpcat/input.rs"]
mod input;
#[path = "common/pick.rs"]
mod pick;
#[path = "udpcat/ping.rs"]
mod ping;
#[path = "common/timestamps.rs"]
mod timestamps;
#[path = "common/usage.rs"]
mod usage;

use args::{Args, Command, Format, KeyArgs};
use clap::CommandFactory;
use clap::error::ErrorKind;
use either::{Either, Event};
use input::{Input, spawn_input};
use ping::PingTotals;
use timestamps::Timestamps;

/// Why udpcat failed.
#[derive(Debug, thiserror::Error)]
enum CatError {
    #[error("interrupted")]
    Interrupted,
    #[error("relay address: {0}")]
    BadAddress(String),
    #[error("no answer from the relay at {addr} within {waited:?}")]
    NoAnswer { addr: SocketAddr, waited: Duration },
    #[error("none of the {count} relays answered within {waited:?}")]
    NoneAnswered { count: usize, waited: Duration },
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
    Credential(String),
    #[error(
        "no handshake answer from the relay at {addr} within {waited:?}: is the credential \
         right, and was the relay started with the key file that holds its key (--keys)?"
    )]
    NoHandshake { addr: SocketAddr, waited: Duration },
    #[error("{0}")]
    Secure(#[from] SecureError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The credential the flags name, if any.
fn credential(key: &KeyArgs) -> Result<Option<Credential>, CatError> {
    Credential::from_flags(key.credential.as_deref(), key.credential_file.as_deref())
        .map_err(CatError::Credential)
}

fn main() -> ExitCode {
    let args = usage::parse::<Args>("udpcat");
    let result = match args.command {
        Command::Pub {
            addr,
            channel,
            input,
            message,
            file,
            count,
            datagram_size,
            reply_timeout,
            key,
            verbose,
            quiet,
            reliable,
            bundle_limit,
            whole,
        } => {
            let input = Input::choose(message, file.or(input), whole);
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
            Conn::open(&addr, reply_timeout, &key, quiet).and_then(|mut c| {
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
            timestamps,
            count,
            timeout,
            from,
            reply_timeout,
            key,
            reliable,
            verbose,
            quiet,
            group,
            wait,
        } => {
            if format == Format::Raw && timestamps != Timestamps::None {
                let why = "--timestamps needs --format line or json: raw is the payload bytes only";
                usage::exit(
                    "udpcat",
                    Args::command().error(ErrorKind::ArgumentConflict, why),
                );
            }
            let opts = SubOptions {
                group,
                channel,
                format,
                timestamps,
                count,
                timeout,
                from,
                reliable,
                verbose,
                quiet,
                wait,
            };
            Conn::open(&addr, reply_timeout, &key, quiet).and_then(|mut c| subscribe(&mut c, &opts))
        }
        Command::Ping {
            addr,
            count,
            interval,
            reply_timeout,
            key,
            quiet,
            json,
        } => Conn::open(&addr, reply_timeout, &key, quiet)
            .and_then(|mut c| ping(&mut c, count, interval, quiet, json)),
        Command::Stats {
            addr,
            reply_timeout,
            key,
            datagram_size,
            json,
        } => Conn::open(&addr, reply_timeout, &key, false)
            .and_then(|mut c| stats(&mut c, datagram_size, json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said already; the shell's code for a Ctrl-C.
        Err(CatError::Interrupted) => ExitCode::from(130),
        // Whoever read the output stopped reading (`| head`): nothing to say.
        Err(CatError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpcat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long a subscriber with other relays to go to lets its relay be
/// quiet before it pings it.
const PING_EVERY_QUIET: Duration = Duration::from_millis(300);

/// A UDP socket connected to the relay, so only the relay's datagrams reach
/// it and a missing relay shows up as "connection refused".
struct Conn {
    relay: SocketAddr,
    reply_timeout: Duration,
    /// The socket, and the session when there is a credential.
    link: Link,
    /// Probes the relay: that it is there, and when it has handled
    /// everything sent before.
    pinger: Pinger,
    /// Error frames the relay sent.
    refusals: u64,
    /// The credential's key id and expiry (unix seconds), if it has one:
    /// past it the relay ends the session and answers nothing more.
    expires: Option<(u32, u64)>,
    /// The other relays of the list, not given up on yet.
    others: Vec<SocketAddr>,
    /// How to pick among them.
    pick: Pick,
    /// What the pings of the list, again every ten seconds or so, measured.
    routes: Option<Arc<Mutex<Routes>>>,
    /// The credential, for the handshake with another relay.
    credential: Option<Credential>,
    /// Say nothing of which relay of the list was picked (-q).
    quiet: bool,
}

/// The relay of `relays` to use: the one --pick picks, or, when none
/// answers a plain ping and there is a credential (a relay that requires
/// keys answers only a handshake), the first of them.
///
/// Returns the round of pings too, when there was one.
fn choose(
    relays: &[SocketAddr],
    how: Pick,
    reply_timeout: Duration,
    keyed: bool,
    quiet: bool,
) -> Result<(SocketAddr, Option<Picker>), CatError> {
    match relays[..] {
        [one] => Ok((one, None)),
        _ => match pick_among(relays, how, reply_timeout, quiet) {
            Err(CatError::NoneAnswered { .. }) if keyed => Ok((relays[0], None)),
            other => other.map(|(relay, round)| (relay, Some(round))),
        },
    }
}

/// [`pick::pick`] with udpcat's errors.
fn pick_among(
    relays: &[SocketAddr],
    how: Pick,
    reply_timeout: Duration,
    quiet: bool,
) -> Result<(SocketAddr, Picker), CatError> {
    pick::pick("udpcat", relays, how, reply_timeout, quiet).map_err(|e| match e {
        pick::PickError::Io(e) => CatError::Io(e),
        pick::PickError::NoneAnswered { count, waited } => CatError::NoneAnswered { count, waited },
    })
}

/// The connected socket and, with a credential, the keyed session every
/// datagram is sealed and opened with.
struct Link {
    socket: UdpSocket,
    relay: SocketAddr,
    buf: Vec<u8>,
    secured: Option<Secured>,
    /// Sealed datagrams on the way out; opened ones on the way in.
    sealed: Vec<u8>,
    opened: Vec<u8>,
}

impl Conn {
    fn open(
        addr: &str,
        reply_timeout: Duration,
        key: &KeyArgs,
        quiet: bool,
    ) -> Result<Conn, CatError> {
        let credential = credential(key)?;
        let relays = pick::resolve(addr).map_err(CatError::BadAddress)?;
        let keyed = credential.is_some();
        let (relay, round) = choose(&relays, key.pick, reply_timeout, keyed, quiet)?;
        // Measured again while it runs, so that a move need not wait for
        // a round of pings.
        let routes = round.map(|round| pick::reprobe(&relays, key.pick, reply_timeout, &round));
        let link = Link::connect(relay, credential.as_ref(), reply_timeout)?;
        let expires = (credential.as_ref())
            .filter(|c| c.expires != 0)
            .map(|c| (c.id, c.expires));
        Ok(Conn {
            relay,
            reply_timeout,
            link,
            pinger: Pinger::new(Rng::from_entropy().next_u64(), reply_timeout),
            refusals: 0,
            expires,
            others: relays.into_iter().filter(|&r| r != relay).collect(),
            pick: key.pick,
            routes,
            credential,
            quiet,
        })
    }

    /// How long the relay may be silent, while it owes an answer, before
    /// another is tried: at most a second when there is another.
    fn patience(&self) -> Duration {
        match self.others.is_empty() {
            true => self.reply_timeout,
            false => self.reply_timeout.min(Duration::from_secs(1)),
        }
    }

    /// Moves to another relay of the list (the one --pick picks among those
    /// not given up on, by the last round of pings that answered, else by a
    /// round now; then the others in turn if it cannot be reached), leaving
    /// this one behind; false if none is left.
    fn fail_over(&mut self) -> Result<bool, CatError> {
        let from = self.relay;
        while !self.others.is_empty() {
            let keyed = self.credential.is_some();
            let known = (self.routes.as_ref())
                .and_then(|r| r.lock().ok().and_then(|mut r| r.choice(&self.others)));
            let next = match known {
                Some(next) => next,
                None => {
                    choose(
                        &self.others,
                        self.pick,
                        self.reply_timeout,
                        keyed,
                        self.quiet,
                    )?
                    .0
                }
            };
            self.others.retain(|&r| r != next);
            match Link::connect(next, self.credential.as_ref(), self.reply_timeout) {
                Ok(link) => {
                    eprintln!("udpcat: {from} stopped answering; now using {next}");
                    self.link = link;
                    self.relay = next;
                    return Ok(true);
                }
                Err(e) => eprintln!("udpcat: cannot use {next} either: {e}"),
            }
        }
        Ok(false)
    }

    /// The credential's expiry as an error once it has passed, and the
    /// instant it will otherwise (for a wait to end at).
    fn expiry(&self) -> Result<Option<Instant>, CatError> {
        let Some((id, at)) = self.expires else {
            return Ok(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(at).saturating_sub(now);
        if left.is_zero() {
            return Err(SecureError::Expired { id, expires: at }.into());
        }
        Ok(Some(Instant::now() + left))
    }

    fn send(&mut self, datagram: &[u8]) -> Result<(), CatError> {
        self.link.send(datagram)
    }

    /// Receives one datagram before `deadline`; `None` at the deadline.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<&[u8]>, CatError> {
        self.link.recv_until(deadline)
    }

    /// One probe: pings, a new one every 250 ms (one may have been lost),
    /// until a pong; relay errors seen on the way are reported. Returns the
    /// round trip of the ping that was answered.
    fn ping(&mut self) -> Result<Duration, CatError> {
        self.pinger.start(Instant::now());
        loop {
            let now = Instant::now();
            self.pinger.handle_timeout(now);
            match self.pinger.poll_outcome() {
                Some(PingOutcome::Answered { rtt, .. }) => return Ok(rtt),
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
            let Some(datagram) = self.link.recv_until(wake)? else {
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
}

impl Link {
    /// A socket connected to `relay` and, with a credential, the session
    /// made with it.
    fn connect(
        relay: SocketAddr,
        credential: Option<&Credential>,
        reply_timeout: Duration,
    ) -> Result<Link, CatError> {
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
        let mut link = Link {
            socket: socket.into(),
            relay,
            buf: vec![0; 65_536],
            secured: None,
            sealed: Vec::new(),
            opened: Vec::new(),
        };
        if let Some(credential) = credential {
            link.secured = Some(link.handshake(credential, reply_timeout)?);
        }
        Ok(link)
    }

    /// Opens a keyed session: the handshake, sent again every 250 ms until
    /// the relay answers or `timeout` passes.
    fn handshake(
        &mut self,
        credential: &Credential,
        timeout: Duration,
    ) -> Result<Secured, CatError> {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut hs = Handshake::new(credential, unix)?;
        let give_up = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= give_up {
                return Err(CatError::NoHandshake {
                    addr: self.relay,
                    waited: timeout,
                });
            }
            if let Some(d) = hs.poll_transmit(now) {
                self.send(&d)?;
            }
            let wake = hs.poll_timeout().unwrap_or(now).min(give_up);
            if let Some(d) = self.recv_until(wake)?
                && let Some(done) = hs.handle_datagram(Instant::now(), d)
            {
                return Ok(done?);
            }
        }
    }

    /// Sends a datagram, sealed if there is a session.
    fn send(&mut self, datagram: &[u8]) -> Result<(), CatError> {
        let bytes = match &mut self.secured {
            Some(s) => {
                self.sealed.clear();
                s.seal_into(datagram, &mut self.sealed)
                    .map_err(|e| CatError::Secure(e.into()))?;
                &self.sealed[..]
            }
            None => datagram,
        };
        match self.socket.send(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(CatError::Refused(self.relay))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Receives one datagram before `deadline`, opened if there is a
    /// session (one that does not open is dropped: it is not the relay's);
    /// `None` at the deadline.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<&[u8]>, CatError> {
        loop {
            let Some(n) =
                recv_until(&self.socket, &mut self.buf, self.relay, deadline)?.map(<[u8]>::len)
            else {
                return Ok(None);
            };
            let Some(s) = &mut self.secured else {
                return Ok(Some(&self.buf[..n]));
            };
            if s.open(&self.buf[..n], &mut self.opened).is_ok() {
                return Ok(Some(&self.opened));
            }
        }
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

struct PubOptions {
    channel: String,
    input: Input,
    count: u64,
    datagram_size: usize,
    verbose: bool,
    bundle_limit: u32,
}

fn publish(conn: &mut Conn, opts: PubOptions) -> Result<(), CatError> {
    let nonce = Rng::from_entropy().next_u64();
    // With other relays to go to, a second of silence moves there.
    let mut pp = PacedPublisher::new(
        &opts.channel,
        opts.datagram_size,
        nonce,
        conn.patience(),
        Instant::now(),
    )?;
    // Read no input before someone listens: spawned once the relay answered.
    let mut source = Some(opts.input);
    let mut input = None;
    let mut input_done = false;
    let mut messages = 0u64;
    loop {
        if pp.is_done() {
            break;
        }
        if let Some(waited) = pp.failed_after() {
            if conn.fail_over()? {
                // What the dead relay was sent and had not handled is
                // lost (plain publishing); the rest goes to the new one.
                // The last relay of the list is waited for as long as one
                // alone would be.
                pp.moved(Instant::now(), conn.patience());
                continue;
            }
            return Err(CatError::NoAnswer {
                addr: conn.relay,
                waited,
            });
        }
        let mut input_paused = false;
        while !input_done && pp.wants_input() {
            let rx = input.get_or_insert_with(|| {
                spawn_input(source.take().expect("spawned once"), opts.count)
            });
            match rx.try_recv() {
                Ok(message) => {
                    pp.push(&message?)?;
                    messages += 1;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    // Input paused (a person typing): send what we have now.
                    pp.flush();
                    input_paused = true;
                    break;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    pp.finish();
                    input_done = true;
                }
            }
        }
        let now = Instant::now();
        while let Some(datagram) = pp.poll_transmit(now) {
            match conn.send(&datagram) {
                // Another relay is there to go to: the silence decides.
                Err(CatError::Refused(_)) if !conn.others.is_empty() => {}
                other => other?,
            }
        }
        if !input_done && !input_paused && pp.wants_input() {
            continue;
        }
        if let (true, None, Some(rx)) = (input_paused, pp.poll_timeout(), &input) {
            // Nothing is awaited from the relay: only input moves things on.
            match rx.recv() {
                Ok(message) => {
                    pp.push(&message?)?;
                    messages += 1;
                }
                Err(mpsc::RecvError) => {
                    pp.finish();
                    input_done = true;
                }
            }
            continue;
        }
        let mut wake = pp.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        if input_paused {
            wake = wake.min(now + Duration::from_millis(2));
        }
        // A ping times out only after a wait in which nothing came: its pong
        // may sit in the socket buffer while input is being read.
        let got = match conn.link.recv_until(wake) {
            Err(CatError::Refused(_)) if !conn.others.is_empty() => None,
            other => other?,
        };
        match got {
            Some(datagram) => {
                pp.handle_datagram(Instant::now(), datagram, |code, reason| {
                    report_refusal(code, reason);
                    conn.refusals += 1;
                });
            }
            None => pp.handle_timeout(Instant::now()),
        }
    }
    if opts.verbose {
        eprintln!(
            "udpcat: published {messages} messages to {} in {} datagrams",
            opts.channel,
            pp.datagrams_sent()
        );
    }
    match conn.refusals {
        0 => Ok(()),
        n => Err(CatError::Refusals(n)),
    }
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
    // Silence is counted from the move to another relay, if later.
    let mut moved_at: Option<Instant> = None;
    // Ctrl-C says how much of the input is stored, to resume from.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));
    let mut pushed = 0u64;
    loop {
        if interrupted.load(Ordering::Relaxed) {
            let acked = pushed - rp.unacknowledged_messages();
            eprintln!(
                "udpcat: interrupted: {acked} of {pushed} message(s) read were acknowledged (stored): \
                 the first {acked} of the input; resume with the rest"
            );
            return Err(CatError::Interrupted);
        }
        while !input_done && rp.wants_input() {
            match input.try_recv() {
                Ok(Ok(message)) => {
                    rp.push(message)?;
                    pushed += 1;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => input_done = true,
            }
        }
        if input_done && rp.is_done() {
            break;
        }
        let now = Instant::now();
        let gone_at = rp
            .silent_since()
            .map(|t| t.max(moved_at.unwrap_or(t)) + conn.patience());
        if gone_at.is_some_and(|t| now >= t) && refusal.is_none() && conn.fail_over()? {
            // The session goes on at the other relay: it takes what was
            // not acknowledged from `acked_below` on, so nothing is lost.
            rp.moved();
            moved_at = Some(Instant::now());
            continue;
        }
        if gone_at.is_some_and(|t| now >= t) {
            refusal.get_or_insert_with(|| {
                format!("no answer from the relay within {:?}", conn.reply_timeout)
            });
        }
        if rp.is_failed() || refusal.is_some() {
            let why = refusal.unwrap_or_else(|| "the relay stopped answering".into());
            return Err(CatError::Unacknowledged {
                count: rp.unacknowledged_messages(),
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
            "udpcat: {pushed} message(s) acknowledged on {} ({} pieces: a message larger than a datagram is several): \
             {} retransmissions, {} timeouts, {} tail-loss probes, srtt {:?}, window {}",
            opts.channel,
            rp.acknowledged(),
            stats.retransmits,
            stats.timeouts,
            stats.tail_loss_probes,
            rp.path().0.unwrap_or_default(),
            rp.path().1,
        );
    }
    Ok(())
}

struct SubOptions {
    /// The queue group joined, if any.
    group: Option<String>,
    channel: String,
    format: Format,
    /// How each message's stored time is shown.
    timestamps: Timestamps,
    count: Option<u64>,
    timeout: Option<Duration>,
    from: StartPosition,
    reliable: bool,
    verbose: bool,
    /// No notes on stderr, only warnings and errors.
    quiet: bool,
    /// A start past the channel's end waits for it.
    wait: bool,
}

/// The subscription `opts` asks for, from `from`, under a new id.
fn open_subscription(
    conn: &Conn,
    opts: &SubOptions,
    from: StartPosition,
    now: Instant,
) -> Result<Either, CatError> {
    // Below the ids the relay keeps for the channels of wildcard subscriptions.
    let sub_id = (Rng::from_entropy().next_u64() as u32) % udprelay::wire::RELAY_SUB_IDS;
    let mode = if opts.reliable {
        DeliveryMode::Reliable
    } else {
        DeliveryMode::Unreliable
    };
    let mut sub = match &opts.group {
        Some(group) => Either::member(mode, sub_id, &opts.channel, group, now)?,
        None => Either::new(mode, sub_id, &opts.channel, from, now)?,
    };
    if opts.reliable && opts.group.is_none() && !conn.others.is_empty() {
        // With relays to move to: each message's origin, to resume exactly.
        // From the latest message: nothing stored well before now is wanted.
        let floor = match from {
            StartPosition::Latest => {
                let now = udprelay::driver::now().unix_nanos;
                now.saturating_sub(udprelay::client::RESUME_MARGIN.as_nanos() as u64)
            }
            _ => 0,
        };
        sub = sub.with_origins(floor);
    }
    Ok(sub)
}

fn subscribe(conn: &mut Conn, opts: &SubOptions) -> Result<(), CatError> {
    let start = Instant::now();
    let mut sub = open_subscription(conn, opts, opts.from, start)?;
    // A start past the channel's end starts over at its end, once.
    let mut started_over = false;
    let stop_at = opts.timeout.map(|t| start + t);
    let mut answer_by = start + conn.reply_timeout;
    let mut received = 0u64;
    // Stdout is line-buffered, a write(2) per message; one per datagram
    // (flushed below) is what a replay of millions can afford.
    let mut out = io::BufWriter::with_capacity(64 << 10, io::stdout().lock());
    // With other relays to go to: when this one was last heard from, and
    // when it was last pinged (a quiet channel must not pass for a dead
    // relay).
    let (mut heard, mut pinged) = (start, start);
    let result = loop {
        let now = Instant::now();
        // A new relay that never takes the subscription is left too.
        let silent = match sub.is_active() {
            true => now >= heard + conn.patience(),
            false => now >= answer_by,
        };
        if !conn.others.is_empty() && (sub.is_active() || silent) {
            if silent {
                if !conn.fail_over()? {
                    break Err(CatError::NoAnswer {
                        addr: conn.relay,
                        waited: conn.patience(),
                    });
                }
                let now = Instant::now();
                let resumed = sub.moved(now);
                if resumed {
                    eprintln!(
                        "udpcat: the reliable subscription resumes at the new relay after what it \
                         received of each source"
                    );
                } else if opts.reliable {
                    // Offsets are each relay's own (docs/DESIGN-CLUSTER.md).
                    eprintln!(
                        "udpcat: the reliable subscription starts again at the new relay's head: \
                         what reached it meanwhile is not replayed"
                    );
                }
                heard = now;
                answer_by = now + conn.reply_timeout;
            } else if sub.is_active() && now >= heard.max(pinged) + PING_EVERY_QUIET {
                let ping = Frame::Ping {
                    nonce: 0,
                    load: false,
                };
                match conn.send(&wire::encode_datagram(&[ping]).unwrap_or_default()) {
                    Err(CatError::Refused(_)) => {}
                    other => other?,
                }
                pinged = now;
            }
        }
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
        // The relay ends a session whose credential expires, silently:
        // say why the messages stopped rather than wait for them.
        let expires_at = match conn.expiry() {
            Ok(at) => at,
            Err(e) => break Err(e),
        };
        if !sub.is_active() && now >= answer_by {
            break Err(CatError::NoAnswer {
                addr: conn.relay,
                waited: conn.reply_timeout,
            });
        }
        if let Some(datagram) = sub.poll_transmit(now) {
            // With another relay to go to, the silence decides, not an
            // ICMP error.
            match conn.send(&datagram) {
                Err(CatError::Refused(_)) if !conn.others.is_empty() => {}
                other => other?,
            }
        }
        let mut wake = sub.poll_timeout();
        if let Some(s) = stop_at {
            wake = wake.min(s);
        }
        if sub.is_active() && !conn.others.is_empty() {
            wake = wake.min(heard.max(pinged) + PING_EVERY_QUIET);
        }
        if !sub.is_active() {
            wake = wake.min(answer_by);
        }
        if let Some(at) = expires_at {
            wake = wake.min(at);
        }
        let failing_over = !conn.others.is_empty();
        let got = match conn.recv_until(wake) {
            // Another relay is there to go to: the silence decides.
            Err(CatError::Refused(_)) if failing_over => None,
            other => other?,
        };
        let Some(datagram) = got else {
            continue;
        };
        heard = Instant::now();
        let mut write_result = Ok(());
        let mut denied = false;
        let mut start_over = None;
        sub.handle_datagram(Instant::now(), datagram, |event| match event {
            Event::Subscribed {
                first_offset: Some(first_offset),
                next_offset: Some(next_offset),
            } if first_offset > next_offset && !opts.wait && !started_over => {
                eprintln!(
                    "udpcat: {} ends before offset {first_offset} (its next message is {next_offset}): starting there (--wait waits for {first_offset})",
                    opts.channel
                );
                start_over = Some(next_offset);
            }
            Event::Subscribed {
                first_offset: Some(first_offset),
                ..
            } => {
                if !opts.quiet {
                    eprintln!("udpcat: subscribed to {} at offset {first_offset}", opts.channel);
                }
                if let StartPosition::Offset(asked) = opts.from
                    && first_offset > asked
                {
                    eprintln!(
                        "udpcat: offsets {asked}..{first_offset} are not available; starting at {first_offset}"
                    );
                }
            }
            Event::Subscribed {
                first_offset: None, ..
            } if !opts.quiet => {
                eprintln!("udpcat: subscribed to {} (a pattern)", opts.channel);
            }
            Event::Matched {
                channel,
                first_offset,
            } if !opts.quiet => eprintln!("udpcat: following {channel} from offset {first_offset}"),
            Event::Subscribed { .. } | Event::Matched { .. } => {}
            Event::Message {
                channel,
                offset,
                timestamp,
                payload,
            } => {
                if opts.count.is_some_and(|c| received >= c) {
                    return;
                }
                received += 1;
                if write_result.is_ok() {
                    write_result =
                        write_message(&mut out, opts, channel, offset, timestamp, payload);
                }
            }
            Event::Error { code, reason } => {
                report_refusal(code, reason);
                // Asking again will not grant a missing permission.
                denied |= code == ErrorCode::DENIED;
            }
        });
        if denied {
            break Err(CatError::Refusals(1));
        }
        if let Some(next) = start_over {
            conn.send(&sub.unsubscribe())?;
            sub = open_subscription(conn, opts, StartPosition::Offset(next), Instant::now())?;
            started_over = true;
            answer_by = Instant::now() + conn.reply_timeout;
        }
        if write_result.is_ok() {
            write_result = out.flush();
        }
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
        && let Some(st) = sub.reliable_stats()
    {
        eprintln!(
            "udpcat: {} messages received in order; {} duplicates dropped, {} arrived out of order",
            st.received, st.duplicates, st.out_of_order
        );
    }
    result
}

/// One message as `opts` (--format, --timestamps) asks.
fn write_message(
    out: &mut impl Write,
    opts: &SubOptions,
    channel: &str,
    offset: u64,
    timestamp: u64,
    payload: &[u8],
) -> io::Result<()> {
    match opts.format {
        Format::Line => {
            if let Some(stamp) = opts.timestamps.text(timestamp) {
                write!(out, "{stamp}\t")?;
            }
            out.write_all(payload)?;
            out.write_all(b"\n")
        }
        Format::Raw => out.write_all(payload),
        Format::Json => {
            let mut obj = message_json(channel, offset, timestamp, payload);
            opts.timestamps.add_to(&mut obj, timestamp);
            writeln!(out, "{obj}")
        }
    }
}

/// Pings `count` times (0: until Ctrl-C), then prints the totals: as
/// ping(8) does, or as one JSON object with `json`. A line for each pong
/// comes first unless `quiet` or `json` (stdout is then that one object).
fn ping(
    conn: &mut Conn,
    count: u32,
    interval: Duration,
    quiet: bool,
    json: bool,
) -> Result<(), CatError> {
    // Ctrl-C ends it with the totals, as ping(8) does.
    let interrupted = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted));
    let stop = || interrupted.load(Ordering::Relaxed);
    let mut totals = PingTotals::new(conn.relay);
    let mut last_err = None;
    while (count == 0 || totals.sent < count) && !stop() {
        if totals.sent > 0 {
            let until = Instant::now() + interval;
            while Instant::now() < until && !stop() {
                std::thread::sleep(Duration::from_millis(10).min(interval));
            }
            if stop() {
                break;
            }
        }
        totals.sent += 1;
        match conn.ping() {
            Ok(rtt) => {
                totals.rtts.push(rtt);
                if quiet || json {
                    continue;
                }
                println!(
                    "pong from {}: seq={} time={:.3} ms",
                    conn.relay,
                    totals.sent,
                    rtt.as_secs_f64() * 1000.0
                );
            }
            Err(e @ CatError::NoAnswer { .. }) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    let mut out = io::stdout().lock();
    match json {
        true => writeln!(out, "{}", totals.json())?,
        false => write!(out, "{}", totals.text())?,
    }
    match (totals.received(), last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

fn stats(conn: &mut Conn, datagram_size: usize, json: bool) -> Result<(), CatError> {
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
    if json {
        let object: serde_json::Map<String, serde_json::Value> = (entries.into_iter())
            .map(|(name, value)| (name, value.into()))
            .collect();
        writeln!(out, "{}", serde_json::Value::Object(object))?;
        return Ok(());
    }
    for (name, value) in entries {
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

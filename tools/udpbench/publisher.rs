//! The publishers: each on its own socket and thread, paced to `--rate` or
//! as fast as it can, sending plain messages packed into datagrams, a
//! reliable session, or (for baselines and raw runs) one bare message per
//! datagram.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use udprelay::auth::Credential;
use udprelay::client::{Publisher, ReliablePublisher, Secured};
use udprelay::driver::batch::BatchSender;
use udprelay::relay::Transmit;
use udprelay::reliable::ArqConfig;

use crate::traffic::{HEADER, fill_message, handshake, message, socket};
use crate::{Args, Baseline};

/// Spun at the end of a wait rather than slept: a sleep may end late.
const SPIN: Duration = Duration::from_micros(20);

/// Shortest wait of a paced publisher between bursts.
const STEP: Duration = Duration::from_micros(50);

/// Waits until `at`: sleeps while it is far off, then spins the last
/// stretch.
fn pace(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at > now + SPIN {
        thread::sleep(at - now - SPIN);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// Asks the kernel to end this thread's sleeps within a microsecond of
/// their time instead of the default 50 µs slack.
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Runs one publisher on `channel`; returns how many messages it sent.
pub fn publish(
    args: &Args,
    channel: &str,
    p: usize,
    target: SocketAddr,
    direct: &[SocketAddr],
    epoch: Instant,
    credential: Option<&Credential>,
) -> Result<u64, String> {
    let socket = socket()?;
    precise_sleeps();
    let deadline = Instant::now() + args.duration;
    let limit = args.count.unwrap_or(u64::MAX);
    let paced = args.rate > 0;
    let start = Instant::now();
    let mut sent = 0u64;
    let due = |sent: u64| {
        if paced {
            start + Duration::from_secs_f64(sent as f64 / args.rate as f64)
        } else {
            start
        }
    };
    if args.baseline.is_some() || args.raw {
        // Plain datagrams, one message each: straight to every subscriber,
        // or to the forwarder, socat or the relay's raw-in port.
        let forwarder = [target];
        let destinations: &[SocketAddr] = match args.baseline {
            Some(Baseline::Kernel) => direct,
            _ => &forwarder,
        };
        // A message a send: one ahead of time waits at least a STEP, and
        // sends what fell due meanwhile without waiting.
        while sent < limit && Instant::now() < deadline {
            let now = Instant::now();
            if due(sent) > now {
                pace(due(sent).max(now + STEP));
            }
            let m = message(p, sent, args.size, epoch);
            for to in destinations {
                let _ = socket.send_to(&m, to);
            }
            sent += 1;
        }
        return Ok(sent);
    }
    socket.connect(target).map_err(|e| e.to_string())?;
    // With a credential, every datagram is sealed on the way out and
    // opened on the way in.
    let mut secured = match credential {
        Some(c) => Some(handshake(&socket, c)?),
        None => None,
    };
    let mut opened = Vec::new();
    let mut buf = vec![0u8; 65_536];
    // Datagrams go out many per call, as GSO runs where the kernel can.
    let mut batch = BatchSender::new();
    let mut out: Vec<Transmit> = Vec::new();
    if args.reliable {
        let mut rp = ReliablePublisher::new(
            p as u64 + 1,
            channel,
            ArqConfig::default(),
            args.batch.max(64),
        )
        .map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_micros(200)))
            .map_err(|e| e.to_string())?;
        loop {
            let now = Instant::now();
            let sending = sent < limit && now < deadline;
            // Everything due by now: one message at a low rate, a batch at
            // a high one.
            while sending && rp.wants_input() && now >= due(sent) && sent < limit {
                rp.push(message(p, sent, args.size, epoch))
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
            if !sending && rp.is_done() {
                break;
            }
            if rp.is_failed() || now > deadline + Duration::from_secs(30) {
                return Err(format!(
                    "publisher {p}: {} messages not acknowledged",
                    rp.unacknowledged()
                ));
            }
            if rp.poll_timeout().is_some_and(|t| t <= now) {
                rp.handle_timeout(now);
            }
            while let Some(d) = rp.poll_transmit(now) {
                out.push(Transmit {
                    destination: target,
                    payload: seal(&mut secured, d)?.into(),
                });
            }
            send_all(&mut batch, &socket, &mut out);
            if let Ok(n) = socket.recv(&mut buf) {
                let datagram = match &mut secured {
                    Some(s) => match s.open(&buf[..n], &mut opened) {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                    None => &buf[..n],
                };
                rp.handle_datagram(Instant::now(), datagram, |_, _| {});
            }
        }
        return Ok(sent);
    }
    // --batch 0: a datagram too small for any message sends each alone.
    let datagram_size = if args.batch == 0 {
        0
    } else {
        args.batch.max(64)
    };
    let mut publisher = Publisher::new(channel, datagram_size).map_err(|e| e.to_string())?;
    let mut m = Vec::with_capacity(args.size.max(HEADER));
    let mut to_transmit = |payload: Vec<u8>| -> Result<Transmit, String> {
        Ok(Transmit {
            destination: target,
            payload: seal(&mut secured, payload)?.into(),
        })
    };
    // A paced publisher sends at most once a STEP: what is due then, the
    // rate kept by `due`. One that sent whenever a message fell due would,
    // above about 300,000 msg/s, find a message or two due after each send
    // (a send takes microseconds), and send datagrams of one or two
    // messages, a system call each, that keep it behind, and take a core
    // from the relay and the subscribers (1 -> 10 on two cores: half the
    // deliveries). At 10,000 msg/s and below, messages are further apart
    // than a STEP and each goes at its own time. Only a burst cut short by
    // BURST goes on at once. `benches/versus` paces NATS and Aeron a
    // message at a time (their sends cost no system call): one that is
    // ahead waits at least a STEP, then sends what fell due meanwhile.
    let mut next_send = start;
    while sent < limit {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wake = due(sent).max(next_send);
        if paced && now < wake {
            pace(wake);
            continue;
        }
        // Everything due by now (unpaced: a burst), stamped with one send
        // time: reading the clock per message cost the publisher more than
        // packing the message.
        let stamp = now.duration_since(epoch).as_nanos() as u64;
        let mut burst = 0;
        while sent < limit && burst < BURST && (!paced || due(sent) <= now) {
            fill_message(&mut m, p, sent, args.size, stamp);
            sent += 1;
            burst += 1;
            if args.batch == 0 {
                for datagram in publisher.push(&m).map_err(|e| e.to_string())? {
                    let _ = socket.send(&to_transmit(datagram)?.payload);
                }
                continue;
            }
            for datagram in publisher.push(&m).map_err(|e| e.to_string())? {
                out.push(to_transmit(datagram)?);
            }
        }
        // Paced: nothing more is due, so what is packed goes out now; a low
        // rate sends each message at once and a high one still batches.
        if paced && let Some(datagram) = publisher.flush() {
            out.push(to_transmit(datagram)?);
        }
        if paced || out.len() >= SEND_BATCH {
            send_all(&mut batch, &socket, &mut out);
        }
        next_send = match burst {
            BURST => now,
            _ => now + STEP,
        };
    }
    if let Some(datagram) = publisher.flush() {
        out.push(to_transmit(datagram)?);
    }
    send_all(&mut batch, &socket, &mut out);
    Ok(sent)
}

/// `datagram` sealed when there is a session, as it is otherwise.
fn seal(secured: &mut Option<Secured>, datagram: Vec<u8>) -> Result<Vec<u8>, String> {
    match secured {
        Some(s) => s.seal(&datagram).map_err(|e| e.to_string()),
        None => Ok(datagram),
    }
}

/// Most messages a publisher packs between two looks at the clock.
const BURST: usize = 256;

/// Full datagrams an unpaced publisher gathers before sending them in one
/// call.
const SEND_BATCH: usize = 64;

/// Sends `out` in as few calls as the kernel allows, waiting out a full
/// socket buffer, and empties it. A datagram the kernel refuses outright is
/// skipped: the subscribers count it lost.
fn send_all(batch: &mut BatchSender, socket: &UdpSocket, out: &mut Vec<Transmit>) {
    let mut done = 0;
    while done < out.len() {
        match batch.send(socket, &out[done..]) {
            Ok(0) => thread::yield_now(),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::yield_now(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => done += 1,
        }
    }
    out.clear();
}

//! `udpchaos`: an impairment proxy between UDP endpoints. Every client that
//! sends to `--listen` gets its own socket towards `--upstream`; datagrams in
//! both directions are lost, duplicated, reordered, delayed and rate-limited
//! by the seeded simulator in `udprelay::sim`, on real sockets and real time.
//! The kernel here has no netem: this is how tests (and users) see a bad
//! network.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use udprelay::rng::Rng;
use udprelay::sim::{LinkConfig, Network};

#[path = "udpchaos/args.rs"]
mod args;
#[path = "common/usage.rs"]
mod usage;
use args::Args;

/// A non-blocking UDP socket with large buffers: the proxy must not be what
/// drops a burst (a relay sends a large message as hundreds of datagrams at
/// once); only the simulated network drops.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

const LISTEN: Token = Token(0);
const SIGNALS: Token = Token(1);
/// Flows beyond this many are refused (each holds a socket).
const MAX_FLOWS: usize = 4096;

/// One client and its socket towards the upstream.
struct Flow {
    client: SocketAddr,
    upstream: UdpSocket,
    last_seen: Instant,
}

fn main() -> ExitCode {
    let args = usage::parse::<Args>("udpchaos");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpchaos: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let seed = args.seed.unwrap_or_else(|| Rng::from_entropy().next_u64());
    let link = LinkConfig {
        loss: args.loss,
        duplicate: args.dup,
        reorder: args.reorder,
        delay: args.delay,
        jitter: args.jitter,
        rate: args.rate,
        fifo: args.in_order,
    };
    let mut net = Network::new(seed, link);
    let mut poll = Poll::new()?;
    let mut listen = bind(args.listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", args.listen)))?;
    poll.registry()
        .register(&mut listen, LISTEN, Interest::READABLE)?;
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    println!(
        "udpchaos listening on {} -> upstream {} (seed {seed})",
        listen.local_addr()?,
        args.upstream
    );

    let mut flows: Vec<Option<Flow>> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 65_536];
    let mut forwarded = 0u64;
    let mut refused = 0u64;
    'outer: loop {
        let timeout = net
            .next_arrival()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = Instant::now();
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    if signals.pending().next().is_some() {
                        break 'outer;
                    }
                }
                LISTEN => loop {
                    let (n, client) = match listen.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => continue,
                    };
                    let index = match by_client.get(&client) {
                        Some(&i) => i,
                        None => {
                            if by_client.len() >= MAX_FLOWS {
                                refused += 1;
                                continue;
                            }
                            let mut upstream = bind(SocketAddr::new(args.listen.ip(), 0))?;
                            let i = flows
                                .iter()
                                .position(Option::is_none)
                                .unwrap_or(flows.len());
                            poll.registry().register(
                                &mut upstream,
                                Token(i + 2),
                                Interest::READABLE,
                            )?;
                            let flow = Flow {
                                client,
                                upstream,
                                last_seen: now,
                            };
                            if i == flows.len() {
                                flows.push(Some(flow));
                            } else {
                                flows[i] = Some(flow);
                            }
                            by_client.insert(client, i);
                            i
                        }
                    };
                    if let Some(flow) = flows[index].as_mut() {
                        flow.last_seen = now;
                    }
                    net.send(now, client, args.upstream, buf[..n].to_vec());
                },
                Token(t) => {
                    let Some(Some(flow)) = flows.get_mut(t - 2) else {
                        continue;
                    };
                    let local = flow.upstream.local_addr()?;
                    loop {
                        match flow.upstream.recv_from(&mut buf) {
                            Ok((n, _)) => net.send(now, local, flow.client, buf[..n].to_vec()),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => continue,
                        }
                    }
                }
            }
        }
        // Deliver what is due: towards the upstream through the client's own
        // socket, towards a client from the listening socket.
        while let Some(d) = net.poll_arrival(Instant::now()) {
            let sent = if d.to == args.upstream {
                by_client
                    .get(&d.from)
                    .and_then(|&i| flows[i].as_ref())
                    .map(|f| f.upstream.send_to(&d.bytes, d.to))
            } else {
                Some(listen.send_to(&d.bytes, d.to))
            };
            if matches!(sent, Some(Ok(_))) {
                forwarded += 1;
            }
        }
        // Forget clients that went quiet.
        for slot in flows.iter_mut() {
            if let Some(flow) = slot
                && now.saturating_duration_since(flow.last_seen) > args.idle
            {
                let mut flow = slot.take().expect("checked Some");
                by_client.remove(&flow.client);
                let _ = poll.registry().deregister(&mut flow.upstream);
            }
        }
    }
    let s = net.stats();
    eprintln!(
        "udpchaos: {} datagrams in, {forwarded} delivered, {} lost, {} duplicated, {} reordered, {refused} refused (seed {seed})",
        s.sent, s.lost, s.duplicated, s.reordered
    );
    Ok(())
}

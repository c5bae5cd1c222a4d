//! Several relays in one ADDR (`A,B,C`): resolving the list, picking one
//! with [`udprelay::client::Picker`] over a socket, and probing them again
//! on a thread while the tool runs ([`reprobe`]), for udpcat and udpbench.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use udprelay::client::{Pick, Picker, Routes};
use udprelay::rng::Rng;

/// Why no relay was picked.
#[derive(Debug)]
pub enum PickError {
    /// The socket failed.
    Io(std::io::Error),
    /// None of them answered its pings.
    NoneAnswered { count: usize, waited: Duration },
}

/// The relays of `list` (`A`, or `A,B,C`), each resolved; the one that
/// does not resolve, otherwise.
pub fn resolve(list: &str) -> Result<Vec<SocketAddr>, String> {
    list.split(',').map(udprelay::config::parse_addr).collect()
}

/// Pings every relay of `relays` and picks one by `pick`; says on stderr,
/// after `tool:`, what it measured and which it took, unless `quiet`.
/// Returns the round as well, for a [`Routes`] table.
pub fn pick(
    tool: &str,
    relays: &[SocketAddr],
    pick: Pick,
    reply_timeout: Duration,
    quiet: bool,
) -> Result<(SocketAddr, Picker), PickError> {
    let mut picker = probe(relays, pick, reply_timeout).map_err(PickError::Io)?;
    let measured: Vec<String> = (picker.candidates().iter())
        .map(|c| match (c.rtt, c.load) {
            (Some(rtt), load) => format!(
                "{} rtt {:.2} ms load {}",
                c.addr,
                rtt.as_secs_f64() * 1e3,
                load.map_or("?".to_string(), |l| format!("{:.1}%", f64::from(l) / 10.0))
            ),
            (None, _) => format!("{} no answer", c.addr),
        })
        .collect();
    let Some(i) = picker.choice() else {
        return Err(PickError::NoneAnswered {
            count: relays.len(),
            waited: reply_timeout,
        });
    };
    let chosen = relays[i];
    if !quiet {
        eprintln!(
            "{tool}: picked {chosen} ({pick}) of {}",
            measured.join(", ")
        );
    }
    Ok((chosen, picker))
}

/// One round of probing `relays`, on a socket of its own.
fn probe(relays: &[SocketAddr], pick: Pick, reply_timeout: Duration) -> std::io::Result<Picker> {
    let any: SocketAddr = match relays[0].is_ipv4() {
        true => ([0, 0, 0, 0], 0).into(),
        false => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    let seed = Rng::from_entropy().next_u64();
    let mut picker = Picker::new(relays, pick, Instant::now(), reply_timeout, seed);
    let mut buf = vec![0u8; 2048];
    while !picker.is_done() {
        let now = Instant::now();
        picker.handle_timeout(now);
        while let Some((to, ping)) = picker.poll_transmit(now) {
            // A relay that is down answers with ICMP, which a later
            // receive may report: it then just never answers.
            let _ = socket.send_to(&ping, to);
        }
        let wake = picker.poll_timeout().unwrap_or(now);
        let wait = wake.saturating_duration_since(Instant::now());
        socket.set_read_timeout(Some(wait.max(Duration::from_micros(100))))?;
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            picker.handle_datagram(Instant::now(), from, &buf[..n]);
        }
    }
    Ok(picker)
}

/// A table of `relays` that starts from `first` (the round that picked
/// the relay in use) and is kept up on a thread of its own, a new round
/// at each [`Routes::next_probe`], for as long as the tool runs.
#[allow(dead_code)] // udpbench picks once, before it starts
pub fn reprobe(
    relays: &[SocketAddr],
    pick: Pick,
    reply_timeout: Duration,
    first: &Picker,
) -> Arc<Mutex<Routes>> {
    let now = Instant::now();
    let mut routes = Routes::new(relays, pick, now, Rng::from_entropy().next_u64());
    routes.update(first, now);
    let routes = Arc::new(Mutex::new(routes));
    let table = Arc::clone(&routes);
    let relays = relays.to_vec();
    // Best effort: without it, a move probes the others then.
    let _ = std::thread::Builder::new()
        .name("reprobe".into())
        .spawn(move || {
            loop {
                let due = table.lock().map_or(Instant::now(), |r| r.next_probe());
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let Ok(round) = probe(&relays, pick, reply_timeout) else {
                    return;
                };
                match table.lock() {
                    Ok(mut routes) => routes.update(&round, Instant::now()),
                    Err(_) => return,
                }
            }
        });
    routes
}

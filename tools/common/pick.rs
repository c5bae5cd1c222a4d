//! Several relays in one ADDR (`A,B,C`): resolving the list, and picking
//! one with [`udprelay::client::Picker`] over a socket, for udpcat and
//! udpbench.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use udprelay::client::{Pick, Picker};
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
    list.split(',')
        .map(|a| {
            a.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| a.to_string())
        })
        .collect()
}

/// Pings every relay of `relays` and picks one by `pick`; says on stderr,
/// after `tool:`, what it measured and which it took.
pub fn pick(
    tool: &str,
    relays: &[SocketAddr],
    pick: Pick,
    reply_timeout: Duration,
) -> Result<SocketAddr, PickError> {
    let any: SocketAddr = match relays[0].is_ipv4() {
        true => ([0, 0, 0, 0], 0).into(),
        false => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(any).map_err(PickError::Io)?;
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
        (socket.set_read_timeout(Some(wait.max(Duration::from_micros(100)))))
            .map_err(PickError::Io)?;
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            picker.handle_datagram(Instant::now(), from, &buf[..n]);
        }
    }
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
    eprintln!(
        "{tool}: picked {chosen} ({pick}) of {}",
        measured.join(", ")
    );
    Ok(chosen)
}

//! Reliability benchmark: goodput and message latency of reliable publish and
//! subscribe, beside TCP on loopback, and KCP's published setup.
//!
//! `cargo bench --bench reliable`. Three parts, printed as tables:
//!
//! 1. Simulated (the seeded simulator, `udprelay::sim`): 20,000 64-byte
//!    messages through a relay to a reliable subscriber, 10 ms each way, at
//!    0, 1 and 10 % loss on every leg and both directions. Times are
//!    simulated, so they measure the protocol, not this machine.
//! 2. KCP's own setup, as its test.cpp and test.h build it: "10 % loss" per
//!    round trip (5 % each way), 30 to 62 ms each way with each direction a
//!    queue, one 8-byte message every 20 ms, 1000 messages; KCP's README
//!    reports 138 ms average and 392 ms worst round trip for its fast mode.
//!    Here a message crosses two such legs (publisher to relay, relay to
//!    subscriber): one round trip in all. KCP itself (the `kcp` crate, a
//!    port of its C code) runs the echo test on the same simulated network
//!    with the same seeds, in the same run.
//! 3. Real sockets on 127.0.0.1 in this process: the relay's driver on a
//!    thread, a reliable publisher and a reliable subscriber on UDP, beside
//!    a plain TCP connection carrying the same messages. Loopback does not
//!    lose, so this row is about cost, not recovery.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use udprelay::client::{ReliablePublisher, ReliableSubscription, SubscriptionEvent};
use udprelay::config::RelayConfig;
use udprelay::driver::Driver;
use udprelay::reliable::ArqConfig;
use udprelay::sim::scenario::{self, Scenario};
use udprelay::sim::{LinkConfig, Network, NetworkStats};
use udprelay::wire::StartPosition;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, messages: u64, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort();
    let avg = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
    println!(
        "| {name} | {:.0} | {} | {} | {} | {} |",
        messages as f64 / elapsed.as_secs_f64(),
        ms(avg),
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
}

fn simulated() {
    println!("\n1. Simulated, 20,000 x 64 B, 10 ms each way, loss on every leg and direction\n");
    println!("| loss | goodput msg/s (simulated) | avg ms | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for loss in [0.0, 0.01, 0.10] {
        let dir = tempfile::tempdir().unwrap();
        let s = Scenario {
            seed: 11,
            link: LinkConfig {
                loss,
                delay: Duration::from_millis(10),
                ..LinkConfig::default()
            },
            messages: 20_000,
            payload: 64,
            interval: None,
            subscribers: 1,
            limit: Duration::from_secs(3600),
            arq: ArqConfig::default(),
        };
        let mut out = scenario::run(&s, dir.path()).expect("scenario");
        report(
            &format!("{:.0} %", loss * 100.0),
            s.messages,
            out.simulated,
            &mut out.latencies,
        );
    }
}

/// KCP's test network (its test.h): "10 % loss" is per round trip, so 5 %
/// each way; each datagram is delayed 30 to 62 ms; and each direction is a
/// queue, so a datagram given a long delay holds back the ones behind it.
fn kcp_link() -> LinkConfig {
    LinkConfig {
        loss: 0.05,
        delay: Duration::from_millis(30),
        jitter: Duration::from_millis(32),
        fifo: true,
        ..LinkConfig::default()
    }
}

/// One KCP endpoint's output: each write is one datagram.
#[derive(Clone, Default)]
struct KcpWire(Rc<RefCell<Vec<Vec<u8>>>>);

impl Write for KcpWire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().push(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// KCP's own test (its test.cpp, fast mode), run on our simulator in
/// simulated time: endpoint 1 sends an 8-byte message every 20 ms, endpoint
/// 2 echoes each back, and the round trip of each is recorded. The `kcp`
/// crate is a port of KCP's C code.
fn kcp_echo(seed: u64, messages: u32) -> (Vec<Duration>, NetworkStats) {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let mut net = Network::new(seed, kcp_link());
    let (wire1, wire2) = (KcpWire::default(), KcpWire::default());
    let mut kcp1 = kcp::Kcp::new(0x1122_3344, wire1.clone());
    let mut kcp2 = kcp::Kcp::new(0x1122_3344, wire2.clone());
    for k in [&mut kcp1, &mut kcp2] {
        k.set_wndsize(128, 128);
        k.set_nodelay(true, 10, 2, true);
    }
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut sent = 0u32;
    let mut buf = [0u8; 2000];
    let mut ms = 0u32;
    while (latencies.len() as u32) < messages {
        ms += 1;
        assert!(ms < 3_600_000, "seed {seed}: KCP stalled");
        let now = start + Duration::from_millis(ms as u64);
        kcp1.update(ms).unwrap();
        kcp2.update(ms).unwrap();
        while sent * 20 <= ms && sent < messages {
            let mut msg = [0u8; 8];
            msg[..4].copy_from_slice(&sent.to_le_bytes());
            msg[4..].copy_from_slice(&ms.to_le_bytes());
            kcp1.send(&msg).unwrap();
            sent += 1;
        }
        for (wire, from, to) in [(&wire1, a, b), (&wire2, b, a)] {
            for d in wire.0.borrow_mut().drain(..) {
                net.send(now, from, to, d);
            }
        }
        while let Some(d) = net.poll_arrival(now) {
            let k = if d.to == b { &mut kcp2 } else { &mut kcp1 };
            let _ = k.input(&d.bytes);
        }
        while let Ok(n) = kcp2.recv(&mut buf) {
            kcp2.send(&buf[..n]).unwrap();
        }
        while let Ok(n) = kcp1.recv(&mut buf) {
            let sn = u32::from_le_bytes(buf[..4].try_into().unwrap());
            assert_eq!(sn as usize, latencies.len(), "KCP out of order");
            let ts = u32::from_le_bytes(buf[4..n].try_into().unwrap());
            latencies.push(Duration::from_millis((ms - ts) as u64));
        }
    }
    (latencies, net.stats())
}

/// Latencies and what the network carried, over several seeds.
type Runs = (Vec<Duration>, Vec<NetworkStats>);

fn kcp_setup() {
    println!(
        "\n2. KCP's setup (its test.cpp): 10 % round-trip loss, round trip 60-125 ms, \
         a message every 20 ms, 1000 messages, 5 seeds\n"
    );
    println!("| who | msg/s | avg ms | p50 ms | p99 ms | max ms | datagrams/msg | bytes/msg |");
    println!("|---|---|---|---|---|---|---|---|");
    let seeds = [21, 22, 23, 24, 25];
    let ours = |bundle_limit| -> Runs {
        let mut runs = (Vec::new(), Vec::new());
        for seed in seeds {
            let dir = tempfile::tempdir().unwrap();
            let s = Scenario {
                seed,
                link: kcp_link(),
                messages: 1000,
                payload: 8,
                interval: Some(Duration::from_millis(20)),
                subscribers: 1,
                limit: Duration::from_secs(3600),
                arq: ArqConfig {
                    bundle_limit,
                    ..ArqConfig::default()
                },
            };
            let out = scenario::run(&s, dir.path()).expect("scenario");
            runs.0.extend(out.latencies);
            runs.1.push(out.network);
        }
        runs
    };
    let mut theirs: Runs = (Vec::new(), Vec::new());
    for seed in seeds {
        let (latencies, net) = kcp_echo(seed, 1000);
        theirs.0.extend(latencies);
        theirs.1.push(net);
    }
    let n = 1000 * seeds.len() as u64;
    let span = Duration::from_secs(20) * seeds.len() as u32;
    let row = |name: &str, (mut latencies, net): Runs| {
        latencies.sort();
        let avg = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
        let datagrams: u64 = net.iter().map(|s| s.sent).sum();
        let bytes: u64 = net.iter().map(|s| s.bytes).sum();
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {:.2} | {:.0} |",
            n as f64 / span.as_secs_f64(),
            ms(avg),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(*latencies.last().unwrap_or(&Duration::ZERO)),
            datagrams as f64 / n as f64,
            bytes as f64 / n as f64,
        );
    };
    let default = ArqConfig::default().bundle_limit;
    row("udprelay: publisher -> relay -> subscriber", ours(default));
    row("udprelay, --bundle-limit 0", ours(0));
    row("KCP fast mode: echo, same network, same seeds", theirs);
    println!("| KCP fast mode, its README | 50 | 138 | | | 392 | | |");
    println!("\n(datagrams and bytes: all directions, acknowledgements included)");
}

const LOOPBACK_MESSAGES: u64 = 200_000;

/// Publishes LOOPBACK_MESSAGES reliably through a relay on 127.0.0.1 and
/// receives them on a reliable subscription; returns elapsed time and
/// per-message latencies.
fn relay_loopback() -> (Duration, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    let mut driver = Driver::bind(&config).expect("relay");
    let relay = driver.local_addr().unwrap();
    std::thread::spawn(move || driver.run());

    let arq = ArqConfig::default();
    let sub_socket = udp_to(relay);
    let start = Instant::now();
    let mut sub = ReliableSubscription::new(1, "bench", StartPosition::Latest, arq, start).unwrap();
    // Subscribe first, so every message is live.
    let mut buf = vec![0u8; 65_536];
    let deadline = start + Duration::from_secs(10);
    while !sub.is_active() {
        assert!(Instant::now() < deadline, "no answer from the relay");
        if let Some(d) = sub.poll_transmit(Instant::now()) {
            sub_socket.send(&d).unwrap();
        }
        if let Ok(n) = sub_socket.recv(&mut buf) {
            sub.handle_datagram(Instant::now(), &buf[..n], |_| {});
        }
    }
    let epoch = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut latencies = Vec::with_capacity(LOOPBACK_MESSAGES as usize);
        let mut buf = vec![0u8; 65_536];
        while (latencies.len() as u64) < LOOPBACK_MESSAGES {
            let now = Instant::now();
            while let Some(d) = sub.poll_transmit(now) {
                let _ = sub_socket.send(&d);
            }
            let Ok(n) = sub_socket.recv(&mut buf) else {
                continue;
            };
            sub.handle_datagram(Instant::now(), &buf[..n], |e| {
                if let SubscriptionEvent::Message { payload, .. } = e {
                    let sent = u64::from_le_bytes(payload[8..16].try_into().unwrap());
                    let at = epoch.elapsed().as_nanos() as u64;
                    latencies.push(Duration::from_nanos(at.saturating_sub(sent)));
                }
            });
        }
        let now = Instant::now();
        while let Some(d) = sub.poll_transmit(now) {
            let _ = sub_socket.send(&d);
        }
        latencies
    });

    let pub_socket = udp_to(relay);
    let mut publisher = ReliablePublisher::new(7, "bench", arq, 1400).unwrap();
    let mut pushed = 0u64;
    while pushed < LOOPBACK_MESSAGES || !publisher.is_done() {
        let now = Instant::now();
        while pushed < LOOPBACK_MESSAGES && publisher.wants_input() {
            let mut payload = pushed.to_le_bytes().to_vec();
            payload.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
            payload.resize(64, 0);
            publisher.push(payload).unwrap();
            pushed += 1;
        }
        if publisher.poll_timeout().is_some_and(|t| t <= now) {
            publisher.handle_timeout(now);
        }
        while let Some(d) = publisher.poll_transmit(now) {
            let _ = pub_socket.send(&d);
        }
        if let Ok(n) = pub_socket.recv(&mut buf) {
            publisher.handle_datagram(Instant::now(), &buf[..n], |_, r| panic!("refused: {r}"));
        }
    }
    let latencies = receiver.join().unwrap();
    (epoch.elapsed(), latencies)
}

fn udp_to(relay: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(relay).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    s
}

/// The same messages over one TCP connection on 127.0.0.1.
fn tcp_loopback() -> (Duration, Vec<Duration>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let epoch = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut latencies = Vec::with_capacity(LOOPBACK_MESSAGES as usize);
        let mut msg = [0u8; 64];
        for _ in 0..LOOPBACK_MESSAGES {
            stream.read_exact(&mut msg).unwrap();
            let sent = u64::from_le_bytes(msg[8..16].try_into().unwrap());
            let at = epoch.elapsed().as_nanos() as u64;
            latencies.push(Duration::from_nanos(at.saturating_sub(sent)));
        }
        latencies
    });
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    // Batched like the relay's clients batch: many messages per write.
    let mut batch = Vec::with_capacity(64 * 20);
    for i in 0..LOOPBACK_MESSAGES {
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&i.to_le_bytes());
        msg[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        batch.extend_from_slice(&msg);
        if batch.len() >= 64 * 20 {
            stream.write_all(&batch).unwrap();
            batch.clear();
        }
    }
    stream.write_all(&batch).unwrap();
    let latencies = receiver.join().unwrap();
    (epoch.elapsed(), latencies)
}

fn loopback() {
    println!("\n3. Real sockets on 127.0.0.1, {LOOPBACK_MESSAGES} x 64 B, no loss\n");
    println!("| path | msg/s | avg ms | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let (elapsed, mut lat) = tcp_loopback();
    report("TCP, one connection", LOOPBACK_MESSAGES, elapsed, &mut lat);
    let (elapsed, mut lat) = relay_loopback();
    report(
        "udprelay, reliable pub -> log -> reliable sub",
        LOOPBACK_MESSAGES,
        elapsed,
        &mut lat,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not run this.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    simulated();
    kcp_setup();
    loopback();
}

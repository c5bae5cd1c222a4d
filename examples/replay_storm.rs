//! A client that restarts many replays from the start of a channel, again
//! and again: the load that issue 10 asks a healthy client to be
//! unaffected by (replay bandwidth is a quota per client address).
//!
//! `cargo run --release --example replay_storm -- ADDR CHANNEL [REPLAYS] [SECONDS]`
//!
//! Every second, for SECONDS (default 10), it ends the REPLAYS (default 200)
//! subscriptions it opened the second before and opens as many new ones from
//! the earliest stored message, all from one socket (one address), reading
//! and counting what arrives. It proves its address as every client does.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use udprelay::client::AddressProof;
use udprelay::wire::{self, DeliveryMode, Frame, StartPosition};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: replay_storm ADDR CHANNEL [REPLAYS] [SECONDS]";
    let relay: SocketAddr = args.next().expect(usage).parse().expect("ADDR is IP:PORT");
    let channel = args.next().expect(usage);
    let replays: u32 = args
        .next()
        .map_or(200, |s| s.parse().expect("REPLAYS is a number"));
    let seconds: u64 = args
        .next()
        .map_or(10, |s| s.parse().expect("SECONDS is a number"));

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.connect(relay).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut proof = AddressProof::new();
    let mut buf = vec![0u8; 65_536];
    let until = Instant::now() + Duration::from_secs(10);
    while !proof.is_proven() {
        assert!(Instant::now() < until, "no address token from {relay}");
        if let Some(hello) = proof.poll_hello(Instant::now()) {
            socket.send(&hello).expect("send");
        }
        if let Ok(n) = socket.recv(&mut buf) {
            proof.handle_datagram(Instant::now(), &buf[..n]);
        }
    }

    let send = |frames: &[Frame<'_>], proof: &AddressProof| {
        let datagram = wire::encode_datagram(frames).expect("encode");
        let _ = socket.send(&proof.stamp(datagram));
    };
    let start = Instant::now();
    let (mut received, mut bytes) = (0u64, 0u64);
    let mut first_id = 1u32;
    for second in 0..seconds {
        // End last second's replays, open new ones from the start.
        for id in first_id.saturating_sub(replays)..first_id {
            send(&[Frame::Unsubscribe { sub_id: id }], &proof);
        }
        for id in first_id..first_id + replays {
            let subscribe = Frame::Subscribe {
                sub_id: id,
                mode: DeliveryMode::Unreliable,
                start: StartPosition::Earliest,
                channel: &channel,
            };
            send(&[subscribe], &proof);
        }
        first_id += replays;
        let next = start + Duration::from_secs(second + 1);
        while Instant::now() < next {
            if let Ok(n) = socket.recv(&mut buf) {
                proof.handle_datagram(Instant::now(), &buf[..n]);
                bytes += n as u64;
                received += wire::frame_bodies(&buf[..n])
                    .filter(|&(kind, _)| kind == wire::FrameType::Deliver as u8)
                    .count() as u64;
            }
        }
    }
    for id in first_id.saturating_sub(replays)..first_id {
        send(&[Frame::Unsubscribe { sub_id: id }], &proof);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} replays opened in {seconds} s; {received} messages, {:.1} MB/s received",
        u64::from(first_id - 1),
        bytes as f64 / secs / 1e6
    );
}

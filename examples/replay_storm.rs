//! A client that restarts many replays from the start of a channel, again
//! and again: the load that issue 10 asks a healthy client to be
//! unaffected by (replay bandwidth is a quota per client address).
//!
//! `cargo run --release --example replay_storm -- ADDR CHANNEL [REPLAYS] [SECONDS] [plain|reliable]`
//!
//! Every second, for SECONDS (default 10), it ends the REPLAYS (default 200)
//! subscriptions it opened the second before and opens as many new ones from
//! the earliest stored message, all from one socket (one address), reading
//! and counting what arrives. It proves its address as every client does.
//! `reliable` (default `plain`) opens reliable subscriptions and
//! acknowledges everything the moment it arrives, with a wide window: the
//! greediest a reliable subscriber can be.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use udprelay::client::AddressProof;
use udprelay::wire::{self, DeliveryMode, Frame, StartPosition};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: replay_storm ADDR CHANNEL [REPLAYS] [SECONDS] [plain|reliable]";
    let relay: SocketAddr = args.next().expect(usage).parse().expect("ADDR is IP:PORT");
    let channel = args.next().expect(usage);
    let replays: u32 = args
        .next()
        .map_or(200, |s| s.parse().expect("REPLAYS is a number"));
    let seconds: u64 = args
        .next()
        .map_or(10, |s| s.parse().expect("SECONDS is a number"));
    let mode = match args.next().as_deref() {
        None | Some("plain") => DeliveryMode::Unreliable,
        Some("reliable") => DeliveryMode::Reliable,
        Some(other) => panic!("mode is plain or reliable, not {other}"),
    };

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
                mode,
                start: StartPosition::Earliest,
                channel: &channel,
                group: None,
                origins: false,
                resume: udprelay::wire::ResumeVector::EMPTY,
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
                if mode == DeliveryMode::Reliable {
                    acknowledge(&buf[..n], &proof, &send);
                }
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

/// Acknowledges every delivery in `datagram` at once: for each
/// subscription, everything up to the highest offset it carried.
fn acknowledge(datagram: &[u8], proof: &AddressProof, send: &impl Fn(&[Frame<'_>], &AddressProof)) {
    let Ok(frames) = wire::decode_datagram(datagram) else {
        return;
    };
    let mut highest: Vec<(u32, u64)> = Vec::new();
    for frame in frames.flatten() {
        if let Frame::Deliver { sub_id, offset, .. } = frame {
            match highest.iter_mut().find(|(s, _)| *s == sub_id) {
                Some((_, h)) => *h = (*h).max(offset + 1),
                None => highest.push((sub_id, offset + 1)),
            }
        }
    }
    for (sub_id, cumulative) in highest {
        let ack = Frame::Ack {
            kind: wire::AckKind::Subscription,
            id: u64::from(sub_id),
            cumulative,
            window: 1 << 20,
            ranges: &[],
        };
        send(&[ack], proof);
    }
}

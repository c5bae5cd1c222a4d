//! The two halves together: a sender and a receiver over a lossy exchange
//! in simulated time.

use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> ArqConfig {
    ArqConfig::default()
}

#[test]
fn sender_and_receiver_converge_over_a_lossy_exchange() {
    // 30 % of data and acks lost, decided by a seeded generator.
    let mut rng = crate::rng::Rng::new(7);
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Sender::new(cfg(), 0);
    let mut r: Receiver<u64> = Receiver::new(cfg(), 0);
    let total = 2000;
    let mut delivered = Vec::new();
    let rtt = 10 * MS;
    let mut in_network: Vec<(Instant, u64)> = Vec::new();
    let mut acks: Vec<(Instant, Ack)> = Vec::new();
    while delivered.len() < total as usize {
        assert!(
            now < t0 + Duration::from_secs(600),
            "stuck at {}: una {} next {} failed {} rto {:?} stats {:?} timeout {:?} cwnd {}",
            delivered.len(),
            s.snd_una(),
            s.next_seq(),
            s.is_failed(),
            s.rto(),
            s.stats(),
            s.poll_timeout().map(|t| t - now),
            s.cwnd()
        );
        s.handle_timeout(now);
        while let Some(seq) = s.poll_retransmit(now) {
            if !rng.chance(0.3) {
                in_network.push((now + rtt / 2, seq));
            }
        }
        while s.can_send(now) && s.next_seq() < total {
            let seq = s.on_send(now);
            if !rng.chance(0.3) {
                in_network.push((now + rtt / 2, seq));
            }
        }
        for (_, seq) in in_network.iter().filter(|(at, _)| *at <= now) {
            r.on_data(*seq, *seq, now);
        }
        in_network.retain(|(at, _)| *at > now);
        while let Some((seq, v)) = r.pop() {
            assert_eq!(seq, v);
            delivered.push(seq);
        }
        if let Some(ack) = r.poll_ack(now)
            && !rng.chance(0.3)
        {
            acks.push((now + rtt / 2, ack));
        }
        for (_, ack) in acks.iter().filter(|(at, _)| *at <= now) {
            s.on_ack(ack.cumulative, ack.ranges.iter().copied(), ack.window, now);
        }
        acks.retain(|(at, _)| *at > now);
        now += MS;
    }
    assert_eq!(delivered, (0..total).collect::<Vec<_>>());
    assert!(s.stats().retransmits > 0);
}

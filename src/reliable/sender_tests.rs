//! The sender at exact simulated times: "nothing at RTO - 1 ms, the
//! retransmission at RTO".

use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> ArqConfig {
    ArqConfig::default()
}

fn send_n(s: &mut Sender, n: u64, now: Instant) -> Vec<u64> {
    (0..n).map(|_| s.on_send(now)).collect()
}

fn retransmits(s: &mut Sender, now: Instant) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(seq) = s.poll_retransmit(now) {
        out.push(seq);
    }
    out
}

#[test]
fn no_retransmit_before_the_rto_and_one_at_it() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    // Only one message, and an answer for the probe: isolate the RTO.
    s.on_send(t);
    let rto = cfg().initial_rto;
    let tlp = rto / 2;
    assert_eq!(
        s.poll_timeout(),
        Some(t + tlp),
        "the tail-loss probe comes first"
    );
    s.handle_timeout(t + tlp - MS);
    assert!(retransmits(&mut s, t + tlp - MS).is_empty());
    s.handle_timeout(t + tlp);
    assert_eq!(retransmits(&mut s, t + tlp), [0], "probe at PTO");
    assert_eq!(s.poll_timeout(), Some(t + rto));
    s.handle_timeout(t + rto - MS);
    assert!(
        retransmits(&mut s, t + rto - MS).is_empty(),
        "nothing at RTO - 1 ms"
    );
    s.handle_timeout(t + rto);
    assert_eq!(
        retransmits(&mut s, t + rto),
        [0],
        "the retransmission at RTO"
    );
    assert_eq!(s.stats().timeouts, 1);
}

#[test]
fn rto_backs_off_exponentially_and_the_peer_is_declared_lost() {
    let t = Instant::now();
    let config = ArqConfig {
        max_timeouts: 3,
        ..cfg()
    };
    let mut s = Sender::new(config, 0);
    s.on_send(t);
    s.handle_timeout(t + config.initial_rto / 2); // the probe
    retransmits(&mut s, t);
    let mut now = t + config.initial_rto;
    let mut expected = config.initial_rto;
    for round in 1..=4 {
        assert_eq!(s.poll_timeout(), Some(now), "round {round}");
        s.handle_timeout(now);
        assert_eq!(retransmits(&mut s, now), [0]);
        expected *= 2;
        assert_eq!(s.rto(), expected.min(config.max_rto), "round {round}");
        now += s.rto();
    }
    assert!(s.is_failed(), "4 timeouts > max_timeouts 3");
    assert!(!s.can_send(now));
}

#[test]
fn rtt_follows_rfc_6298_and_karn_skips_retransmitted_samples() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    s.on_send(t);
    s.on_ack(1, [], 100, t + 40 * MS);
    // First sample R: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR = 120 ms,
    // plus the peer's 5 ms delayed-ack allowance.
    assert_eq!(s.srtt(), Some(40 * MS));
    assert_eq!(s.rto(), 125 * MS);
    let t2 = t + 100 * MS;
    s.on_send(t2);
    s.on_ack(2, [], 100, t2 + 80 * MS);
    // RTTVAR = 3/4 * 20 + 1/4 * |40 - 80| = 25; SRTT = 7/8 * 40 + 1/8 * 80 = 45.
    assert_eq!(s.srtt(), Some(45 * MS));
    assert_eq!(s.rto(), 150 * MS);

    // A retransmitted message gives no sample, however late its ack.
    let t3 = t2 + 200 * MS;
    s.on_send(t3);
    // Tail-loss probe: PTO = SRTT + 2 RTTVAR + delayed-ack time = 100 ms.
    s.handle_timeout(t3 + 100 * MS);
    assert_eq!(retransmits(&mut s, t3 + 100 * MS), [2]);
    s.on_ack(3, [], 100, t3 + 500 * MS);
    assert_eq!(
        s.srtt(),
        Some(45 * MS),
        "Karn: no sample from a retransmission"
    );
}

#[test]
fn three_later_acks_trigger_fast_retransmit_without_a_timer() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 10);
    send_n(&mut s, 6, t);
    // 10 lost; 11 and 12 acknowledged: not yet (only two later).
    s.on_ack(10, [(11, 13)], 100, t + 10 * MS);
    assert!(retransmits(&mut s, t + 10 * MS).is_empty());
    // 13 too: three later ones, so 10 is lost, at once.
    s.on_ack(10, [(11, 14)], 100, t + 11 * MS);
    assert_eq!(retransmits(&mut s, t + 11 * MS), [10]);
    assert_eq!(s.stats().fast_retransmits, 1);
    // One loss is not congestion: 32 + 3 in slow start, no reduction.
    assert_eq!(s.cwnd(), 35);
    s.on_ack(14, [], 100, t + 20 * MS);
    assert_eq!(s.snd_una(), 14);
    assert_eq!(s.stats().timeouts, 0);
}

#[test]
fn rack_declares_a_message_lost_a_round_trip_and_a_quarter_after_it_was_sent() {
    let t = Instant::now();
    let us = Duration::from_micros(1);
    let mut s = Sender::new(cfg(), 0);
    send_n(&mut s, 2, t);
    // 1 arrived, 0 did not: one later message is short of dupthresh, so
    // only time declares 0 lost, at SRTT 10 + max(min RTT / 4, 1 ms) after
    // it was sent.
    s.on_ack(0, [(1, 2)], 100, t + 10 * MS);
    let deadline = t + 10 * MS + 2500 * us;
    assert_eq!(s.poll_timeout(), Some(deadline), "the RACK timer is first");
    s.handle_timeout(deadline - us);
    assert!(retransmits(&mut s, deadline - us).is_empty());
    s.handle_timeout(deadline);
    assert_eq!(retransmits(&mut s, deadline), [0], "lost at the deadline");
    assert_eq!(s.stats().fast_retransmits, 1);
    assert_eq!(s.stats().timeouts, 0);
}

#[test]
fn once_a_round_trip_is_known_new_messages_are_paced() {
    let t = Instant::now();
    let us = Duration::from_micros(1);
    let config = ArqConfig {
        initial_cwnd: 10,
        ..cfg()
    };
    let mut s = Sender::new(config, 0);
    s.on_send(t);
    s.on_ack(1, [], 100, t + 50 * MS);
    // SRTT 50 ms, window 11: one message per 50 / (11 * 1.25) ms, with a
    // burst of 1 ms allowed ahead of the schedule.
    let gap = (50 * MS).div_f64(11.0 * 1.25);
    let now = t + 50 * MS;
    s.on_send(now);
    assert_eq!(s.poll_timeout(), Some(now + gap - MS), "the pacing timer");
    assert!(!s.can_send(now + gap - MS - us));
    assert!(s.can_send(now + gap - MS));
}

#[test]
fn tail_loss_probe_resends_the_last_message_before_the_rto() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    send_n(&mut s, 4, t);
    s.on_ack(3, [], 100, t + 30 * MS); // srtt 30 ms; 3 is the lost tail
    let pto = 65 * MS; // SRTT 30 + 2 RTTVAR 30 + delayed ack 5
    let acked_at = t + 30 * MS;
    assert_eq!(s.poll_timeout(), Some(acked_at + pto));
    s.handle_timeout(acked_at + pto - MS);
    assert!(retransmits(&mut s, acked_at + pto - MS).is_empty());
    s.handle_timeout(acked_at + pto);
    assert_eq!(retransmits(&mut s, acked_at + pto), [3]);
    assert_eq!(s.stats().tail_loss_probes, 1);
    assert!(acked_at + pto < acked_at + s.rto(), "probe before the RTO");
}

fn bundled(s: &mut Sender, below: u64, room: usize) -> Vec<u64> {
    let mut out = Vec::new();
    s.bundle(below, |seq| {
        if out.len() == room {
            return false;
        }
        out.push(seq);
        true
    });
    out
}

#[test]
fn a_thin_stream_carries_its_unacknowledged_messages_again() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 100);
    send_n(&mut s, 5, t);
    // 102 arrived on its own; 103 is not yet lost.
    s.on_ack(100, [(102, 103)], 100, t + MS);
    // A datagram starting with new message 104: the older unacknowledged
    // ones ride along, oldest first, skipping the acknowledged one.
    assert_eq!(bundled(&mut s, 104, 10), [100, 101, 103]);
    // Only what fits: the datagram filled up after two.
    assert_eq!(bundled(&mut s, 104, 2), [100, 101]);
    assert_eq!(s.stats().bundled, 5);
    // What is waiting for a retransmission goes as one, not as a copy.
    s.handle_timeout(t + MS + s.rto()); // restarted by the acknowledgement
    assert_eq!(s.stats().timeouts, 1);
    assert!(bundled(&mut s, 104, 10).is_empty());
    // A stream with more in flight than the limit is not thin: no copies.
    let mut s = Sender::new(cfg(), 0);
    send_n(&mut s, u64::from(cfg().bundle_limit) + 1, t);
    assert!(bundled(&mut s, 8, 10).is_empty());
    let off = ArqConfig {
        bundle_limit: 0,
        ..cfg()
    };
    let mut s = Sender::new(off, 0);
    send_n(&mut s, 2, t);
    assert!(bundled(&mut s, 1, 10).is_empty(), "0 turns it off");
}

#[test]
fn large_messages_are_bounded_by_bytes_in_flight() {
    let t = Instant::now();
    let config = ArqConfig {
        max_in_flight_bytes: 3000,
        ..cfg()
    };
    let mut s = Sender::new(config, 0);
    // A message larger than the bound still goes when nothing is in flight.
    assert!(s.can_send(t));
    s.on_send_bytes(t, 5000);
    assert!(!s.can_send(t), "5000 bytes out: nothing more");
    s.on_ack(1, [], 100, t + 10 * MS);
    // 1000-byte messages: three fit, the fourth waits for an acknowledgement.
    for _ in 0..3 {
        assert!(s.can_send(t + 10 * MS));
        s.on_send_bytes(t + 10 * MS, 1000);
    }
    assert!(!s.can_send(t + 10 * MS));
    // A selective acknowledgement frees its bytes as a cumulative one does.
    s.on_ack(1, [(2, 3)], 100, t + 20 * MS);
    assert!(s.can_send(t + 20 * MS));
    s.on_send_bytes(t + 20 * MS, 1000);
    assert!(!s.can_send(t + 20 * MS));
    s.on_ack(5, [], 100, t + 30 * MS);
    assert!(s.can_send(t + 30 * MS));
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn the_window_limits_what_is_in_flight() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    let mut sent = 0;
    while s.can_send(t) {
        s.on_send(t);
        sent += 1;
    }
    assert_eq!(sent, 32, "initial congestion window");
    s.on_ack(32, [], 5, t + 10 * MS);
    let mut more = 0;
    let mut now = t + 10 * MS;
    while more < 100 {
        if !s.can_send(now) {
            match s.poll_timeout() {
                Some(at) if at > now && at < now + 5 * MS => {
                    now = at;
                    s.handle_timeout(now);
                    continue;
                }
                _ => break,
            }
        }
        s.on_send(now);
        more += 1;
    }
    assert_eq!(
        more, 5,
        "the receiver's window of 5 holds, whatever cwnd says"
    );
    // Hostile acks beyond what was sent change nothing.
    assert_eq!(s.on_ack(1_000_000, [(2_000_000, 3_000_000)], 5, now), 5);
    assert_eq!(s.snd_una(), 37);
}

/// Runs `rounds` rounds of `per_round` messages, losing `lose(round)` of
/// each (the first ones), acknowledging the rest; returns the window after.
fn rounds_with_loss(rounds: u64, per_round: u64, lose: impl Fn(u64) -> u64) -> u64 {
    let t0 = Instant::now();
    let config = ArqConfig {
        initial_cwnd: per_round as u32,
        max_cwnd: per_round as u32,
        ..cfg()
    };
    let mut s = Sender::new(config, 0);
    let mut now = t0;
    for round in 0..rounds {
        let first = s.next_seq();
        for _ in 0..per_round {
            s.on_send(now);
        }
        now += 20 * MS;
        let lost = lose(round);
        // Later messages arrive: the first `lost` are declared lost...
        s.on_ack(first, [(first + lost, first + per_round)], 10_000, now);
        // Timers fire when due; what they declare lost goes again at once
        // and is acknowledged one round trip later.
        let until = now + 30 * MS;
        let mut resent_at = None;
        while resent_at.is_none()
            && let Some(at) = s.poll_timeout().filter(|&at| at <= until)
        {
            now = now.max(at);
            s.handle_timeout(now);
            for seq in retransmits(&mut s, now) {
                assert!(seq < first + lost);
                resent_at.get_or_insert(now);
            }
        }
        now = resent_at.map_or(until, |r| r + 20 * MS);
        s.on_ack(first + per_round, [], 10_000, now);
    }
    s.cwnd()
}

#[test]
fn steady_random_loss_is_not_taken_for_congestion() {
    // 10 % loss every round, from the start: after the first rounds teach
    // the sender the path's usual loss, the window stays near its top.
    let cwnd = rounds_with_loss(40, 200, |_| 20);
    assert!(cwnd >= 150, "window {cwnd} of 200 under steady 10 % loss");
}

#[test]
fn a_loss_spike_shrinks_the_window() {
    // 2 % usual loss, then one round with 30 %: that is congestion.
    let steady = rounds_with_loss(30, 200, |_| 4);
    let spiked = rounds_with_loss(30, 200, |r| if r == 29 { 60 } else { 4 });
    assert!(spiked < steady, "spike {spiked} vs steady {steady}");
    assert!(spiked <= 140, "a spike gives up at least 30 %: {spiked}");
}

#[test]
fn a_second_timeout_forgets_selective_acknowledgements_in_case_the_receiver_reneged() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    send_n(&mut s, 4, t);
    // 1..4 reported received, 0 missing: what a relay says of messages it
    // holds but has not yet made durable, just before it is killed.
    s.on_ack(0, [(1, 4)], 64, t + 10 * MS);
    let mut resent = Vec::new();
    let mut at = t;
    while s.stats().timeouts < 2 {
        at = s.poll_timeout().expect("a timer while messages are out");
        s.handle_timeout(at);
        let now = retransmits(&mut s, at);
        if s.stats().timeouts < 2 {
            resent.extend(now);
        } else {
            assert_eq!(
                now,
                [0, 1, 2, 3],
                "after the second timeout everything unacknowledged goes again"
            );
        }
    }
    assert!(
        resent.iter().all(|&seq| seq == 0),
        "until then only the gap: {resent:?}"
    );
    // The restarted receiver acknowledges them all: nothing is left out.
    assert_eq!(s.on_ack(4, [], 64, at + MS), 4);
    assert!(s.is_idle());
}

#[test]
fn a_new_path_sends_everything_not_cumulatively_acknowledged_again_at_once() {
    let t = Instant::now();
    let mut s = Sender::new(cfg(), 0);
    send_n(&mut s, 10, t);
    // The old relay stored 0..3 and said it received 3..6 (its cluster had
    // not stored them yet); 6..10 were in the air when it died.
    s.on_ack(3, [(3, 6)], 100, t + 10 * MS);
    assert!(s.srtt().is_some());
    s.handle_timeout(t + 2000 * MS);
    assert!(s.stats().timeouts > 0, "the dead relay's silence");
    s.new_path();
    assert_eq!(s.srtt(), None, "the new path is measured afresh");
    assert_eq!(s.rto(), cfg().initial_rto);
    let now = t + 2001 * MS;
    assert_eq!(
        retransmits(&mut s, now),
        (3..10).collect::<Vec<_>>(),
        "selectively acknowledged ones too, without waiting for a timeout"
    );
    // The new relay acknowledging them all ends it, and measures the path.
    s.on_ack(10, [], 100, now + 40 * MS);
    assert!(s.is_idle());
    assert_eq!(s.srtt(), Some(40 * MS), "a sample of the new path");
}

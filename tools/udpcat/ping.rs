//! What `udpcat ping` measured: its totals as ping(8) prints them, or as
//! one JSON object (`--json`).

use std::net::SocketAddr;
use std::time::Duration;

/// The pings sent to one relay and the round trip of each answered one.
pub struct PingTotals {
    pub relay: SocketAddr,
    pub sent: u32,
    /// One for each pong, in order.
    pub rtts: Vec<Duration>,
}

/// The smallest, mean and largest round trip.
struct Spread {
    min: Duration,
    avg: Duration,
    max: Duration,
}

impl PingTotals {
    pub fn new(relay: SocketAddr) -> PingTotals {
        PingTotals {
            relay,
            sent: 0,
            rtts: Vec::new(),
        }
    }

    pub fn received(&self) -> u32 {
        self.rtts.len() as u32
    }

    /// Unanswered pings as a percentage of those sent (0 when none were).
    fn loss_percent(&self) -> f64 {
        match self.sent {
            0 => 0.0,
            n => 100.0 * f64::from(n - self.received()) / f64::from(n),
        }
    }

    fn spread(&self) -> Option<Spread> {
        let (min, max) = (self.rtts.iter().min()?, self.rtts.iter().max()?);
        let total: Duration = self.rtts.iter().sum();
        Some(Spread {
            min: *min,
            avg: total / self.received(),
            max: *max,
        })
    }

    /// The totals as ping(8) gives them.
    pub fn text(&self) -> String {
        let mut text = format!(
            "--- {} ping statistics ---\n{} pings, {} answered, {:.0}% loss\n",
            self.relay,
            self.sent,
            self.received(),
            self.loss_percent()
        );
        if let Some(Spread { min, avg, max }) = self.spread() {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            text += &format!(
                "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms\n",
                ms(min),
                ms(avg),
                ms(max)
            );
        }
        text
    }

    /// One object, each key with its unit; the round trips are `null` when
    /// no ping was answered, so every key is always there.
    pub fn json(&self) -> serde_json::Value {
        let spread = self.spread();
        // Microseconds to the nanosecond.
        let us = |pick: fn(&Spread) -> Duration| {
            (spread.as_ref()).map(|s| pick(s).as_nanos() as f64 / 1000.0)
        };
        serde_json::json!({
            "relay": self.relay.to_string(),
            "sent": self.sent,
            "received": self.received(),
            "loss_percent": self.loss_percent(),
            "rtt_min_us": us(|s| s.min),
            "rtt_avg_us": us(|s| s.avg),
            "rtt_max_us": us(|s| s.max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_totals_name_their_units_and_keep_every_key_when_nothing_answered() {
        let relay = "127.0.0.1:7070".parse().unwrap();
        let mut totals = PingTotals::new(relay);
        totals.sent = 4;
        totals.rtts = vec![Duration::from_micros(100), Duration::from_nanos(300_500)];
        let json = totals.json();
        assert_eq!(json["sent"], 4);
        assert_eq!(json["received"], 2);
        assert_eq!(json["loss_percent"], 50.0);
        assert_eq!(json["rtt_min_us"], 100.0);
        assert_eq!(json["rtt_avg_us"], 200.25);
        assert_eq!(json["rtt_max_us"], 300.5);
        totals.rtts.clear();
        let json = totals.json();
        assert_eq!(json["loss_percent"], 100.0);
        assert!(json["rtt_avg_us"].is_null(), "{json}");
        assert!(!totals.text().contains("rtt"), "{}", totals.text());
    }
}

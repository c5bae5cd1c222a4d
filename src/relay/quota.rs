//! Per-key publishing rates: a token bucket of messages and one of payload
//! bytes for each key that has them in the key file, made at start (one
//! per key, whatever the clients do), and how often a key is told it went
//! over.
//!
//! What a key may hold (subscriptions, sessions, reassembly bytes) is
//! counted where it is held: `peers` and `reassembly`.

use std::time::{Duration, Instant};

use crate::auth::Quota;

/// Nanoseconds in a second: the bucket counts in token-nanoseconds, so
/// that any rate refills exactly, however short the gap between messages.
const NANOS: u128 = 1_000_000_000;

/// How often a key over its rate is sent an ERROR saying so (the rest of
/// its over-rate messages are dropped and counted, unanswered).
const TELL_EVERY: Duration = Duration::from_secs(1);

/// Allows `per_sec` a second, in a burst of at most one second's worth.
#[derive(Debug, Clone)]
struct Rate {
    per_sec: u64,
    /// Tokens times [`NANOS`].
    tokens: u128,
    last: Option<Instant>,
}

impl Rate {
    fn new(per_sec: u64) -> Rate {
        Rate {
            per_sec,
            tokens: u128::from(per_sec) * NANOS,
            last: None,
        }
    }

    /// Refills for the time since the last call, up to one second's worth.
    fn refill(&mut self, now: Instant) {
        let last = self.last.replace(now).unwrap_or(now);
        let elapsed = now.saturating_duration_since(last).as_nanos();
        let full = u128::from(self.per_sec) * NANOS;
        self.tokens = (self.tokens + elapsed.min(NANOS) * u128::from(self.per_sec)).min(full);
    }

    fn has(&self, n: u64) -> bool {
        self.tokens >= u128::from(n) * NANOS
    }

    fn spend(&mut self, n: u64) {
        self.tokens -= u128::from(n) * NANOS;
    }
}

/// Which of a key's rates a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OverRate {
    /// `"messages"` or `"bytes"`.
    pub(super) what: &'static str,
    /// The key's rate of it, per second.
    pub(super) per_sec: u64,
    /// True if the key should be told (at most once per [`TELL_EVERY`]).
    pub(super) tell: bool,
}

impl std::fmt::Display for OverRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "over this key's quota of {} {} per second",
            self.per_sec, self.what
        )
    }
}

#[derive(Debug, Clone)]
struct KeyRates {
    messages: Option<Rate>,
    bytes: Option<Rate>,
    told: Option<Instant>,
}

/// The publishing rates of every key, by its stable index (see `secure::Secure`).
#[derive(Debug, Clone, Default)]
pub(super) struct Rates {
    keys: Vec<KeyRates>,
}

impl Rates {
    /// Full buckets for each quota, in key-file order.
    pub(super) fn new<'a>(quotas: impl Iterator<Item = &'a Quota>) -> Rates {
        Rates {
            keys: quotas
                .map(|q| KeyRates {
                    messages: q.messages_per_sec.map(Rate::new),
                    bytes: q.bytes_per_sec.map(Rate::new),
                    told: None,
                })
                .collect(),
        }
    }

    /// The rates for `quotas` (by key index), keeping the buckets of each
    /// index `kept` says is the same key whose rates did not change: a
    /// reload gives no key a fresh burst.
    pub(super) fn rekey(&mut self, quotas: &[Quota], kept: impl Fn(usize) -> bool) {
        let mut fresh = Rates::new(quotas.iter());
        for (i, new) in fresh.keys.iter_mut().enumerate() {
            if let Some(old) = self.keys.get(i)
                && kept(i)
                && old.messages.as_ref().map(|r| r.per_sec)
                    == new.messages.as_ref().map(|r| r.per_sec)
                && old.bytes.as_ref().map(|r| r.per_sec) == new.bytes.as_ref().map(|r| r.per_sec)
            {
                *new = old.clone();
            }
        }
        *self = fresh;
    }

    /// Charges one message of `len` payload bytes to key `key`: both rates
    /// must have room, or neither is spent.
    pub(super) fn charge(&mut self, key: usize, now: Instant, len: usize) -> Result<(), OverRate> {
        let Some(k) = self.keys.get_mut(key) else {
            return Ok(());
        };
        let len = len as u64;
        let over = [
            (&mut k.messages, 1, "messages"),
            (&mut k.bytes, len, "bytes"),
        ]
        .into_iter()
        .filter_map(|(rate, n, what)| {
            let rate = rate.as_mut()?;
            rate.refill(now);
            (!rate.has(n)).then_some((what, rate.per_sec))
        })
        .next();
        if let Some((what, per_sec)) = over {
            let tell = k
                .told
                .is_none_or(|t| now.saturating_duration_since(t) >= TELL_EVERY);
            if tell {
                k.told = Some(now);
            }
            return Err(OverRate {
                what,
                per_sec,
                tell,
            });
        }
        if let Some(r) = &mut k.messages {
            r.spend(1);
        }
        if let Some(r) = &mut k.bytes {
            r.spend(len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(quota: Quota) -> Rates {
        Rates::new([quota].iter())
    }

    #[test]
    fn a_key_gets_one_seconds_worth_then_its_rate() {
        let t = Instant::now();
        let mut r = rates(Quota {
            messages_per_sec: Some(100),
            ..Quota::default()
        });
        let burst = (0..1000).filter(|_| r.charge(0, t, 10).is_ok()).count();
        assert_eq!(burst, 100, "a burst of one second's worth");
        let over = r.charge(0, t, 10).unwrap_err();
        assert_eq!(
            (over.what, over.per_sec, over.tell),
            ("messages", 100, false)
        );
        // 10 ms later: one more message, exactly.
        let later = t + Duration::from_millis(10);
        assert!(r.charge(0, later, 10).is_ok());
        assert!(r.charge(0, later, 10).is_err());
        // A long silence refills one second's worth, not more.
        let much_later = t + Duration::from_secs(60);
        let burst = (0..1000)
            .filter(|_| r.charge(0, much_later, 10).is_ok())
            .count();
        assert_eq!(burst, 100);
    }

    #[test]
    fn bytes_and_messages_are_charged_together_or_not_at_all() {
        let t = Instant::now();
        let mut r = rates(Quota {
            messages_per_sec: Some(10),
            bytes_per_sec: Some(1000),
            ..Quota::default()
        });
        assert!(r.charge(0, t, 900).is_ok());
        let over = r.charge(0, t, 200).unwrap_err();
        assert_eq!(over.what, "bytes");
        assert!(over.tell, "the first time over is told");
        // The refused message spent no message token: 9 more fit.
        let fit = (0..20).filter(|_| r.charge(0, t, 1).is_ok()).count();
        assert_eq!(fit, 9);
        assert!(!r.charge(0, t, 1).unwrap_err().tell, "told once a second");
        // A message larger than a second's worth of bytes never fits.
        assert!(r.charge(0, t + TELL_EVERY, 1001).unwrap_err().tell);
    }

    #[test]
    fn a_key_without_rates_and_an_unknown_key_are_never_limited() {
        let t = Instant::now();
        let mut r = rates(Quota::default());
        assert!((0..10_000).all(|_| r.charge(0, t, 1 << 20).is_ok()));
        assert!(r.charge(7, t, 1).is_ok());
    }
}

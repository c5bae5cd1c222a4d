//! The `relay` target's input: a settings byte, then a run of steps, each a
//! control byte and its arguments.
//!
//! ```text
//! settings  1  bits 0-1 fsync (0, 3 none; 1 interval=5ms; 2 always),
//!              bit 2 retain 32 KiB per channel, bit 3 retain 10 s
//! then steps until the input ends; a control byte c says which:
//!   c >> 5 = 0 or 7  DATAGRAM  len u16 LE, bytes   from source c & 7, as is
//!   c >> 5 = 1 or 6  PROVEN    token_of u8, len u16 LE, frame bytes
//!                              from source c & 7: the harness puts the
//!                              header and a VALIDATE frame in front, with
//!                              the last token the relay sent to source
//!                              token_of & 7 (20 zeros if none: a hello)
//!   c >> 5 = 2       ADVANCE   b u8: time moves on b*b ms (up to 65 s),
//!                              due timeouts are handled, output collected
//!   c >> 5 = 3       RAW       len u16 LE, bytes   at raw port c & 1
//!                              (port 0 is configured, port 1 is not)
//!   c >> 5 = 4       DRAIN     collect everything the relay sends
//!   c >> 5 = 5       SYNC      run the syncs the relay asks for; c & 1
//!                              set reports them failed
//! ```
//!
//! A length past the end of the input takes what is left. The harness
//! picks the token a PROVEN step leads with, because the relay's secret is
//! random and the fuzzer never sees what the relay sends.

use std::net::SocketAddr;

/// The addresses datagrams come from, by the low 3 bits of a control byte.
/// 0 and 4 are one peer seen as IPv4 and as IPv4-mapped IPv6; 5 is the
/// relay's own socket (its datagrams must be dropped unanswered).
pub const SOURCES: [&str; 8] = [
    "10.0.0.1:5000",
    "10.0.0.1:5001",
    "10.0.0.2:5000",
    "[2001:db8::1]:5000",
    "[::ffff:10.0.0.1]:5000",
    "127.0.0.1:7070",
    "0.0.0.0:0",
    "[::1]:6000",
];

/// Index in [`SOURCES`] of the relay's own address.
pub const OWN_SOURCE: u8 = 5;

/// The address of source `i` (its low 3 bits).
pub fn source(i: u8) -> SocketAddr {
    SOURCES[usize::from(i & 7)]
        .parse()
        .expect("the source addresses parse")
}

/// The run's settings, from the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// 0 none, 1 interval, 2 always.
    pub fsync: u8,
    /// Delete old segments past a byte limit.
    pub retain_bytes: bool,
    /// Delete old segments past an age.
    pub retain_age: bool,
}

impl Settings {
    fn from_byte(b: u8) -> Settings {
        Settings {
            fsync: match b & 3 {
                3 => 0,
                m => m,
            },
            retain_bytes: b & 4 != 0,
            retain_age: b & 8 != 0,
        }
    }

    fn to_byte(self) -> u8 {
        (self.fsync & 3) | u8::from(self.retain_bytes) << 2 | u8::from(self.retain_age) << 3
    }
}

/// One step of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A datagram from `source`, as it is.
    Datagram {
        /// Index in [`SOURCES`].
        source: u8,
        /// The whole datagram.
        bytes: &'a [u8],
    },
    /// `frames` from `source` behind a header and a VALIDATE frame holding
    /// the last token sent to `token_of`.
    Proven {
        /// Index in [`SOURCES`].
        source: u8,
        /// Whose token leads the datagram.
        token_of: u8,
        /// Encoded frames.
        frames: &'a [u8],
    },
    /// Time moves on `b * b` milliseconds.
    Advance {
        /// The square root of the step, in ms.
        b: u8,
    },
    /// A datagram at raw ingest port `port`.
    Raw {
        /// 0 (configured) or 1 (not).
        port: u8,
        /// The message.
        bytes: &'a [u8],
    },
    /// Collect what the relay sends.
    Drain,
    /// Run the syncs the relay asks for.
    Sync {
        /// Report them failed.
        fail: bool,
    },
}

/// Reads the settings and steps of `data`.
pub fn parse(data: &[u8]) -> (Settings, Vec<Step<'_>>) {
    let Some((&first, mut rest)) = data.split_first() else {
        return (Settings::default(), Vec::new());
    };
    let mut steps = Vec::new();
    while let Some((&c, after)) = rest.split_first() {
        rest = after;
        let low = c & 7;
        let step = match c >> 5 {
            0 | 7 => Step::Datagram {
                source: low,
                bytes: take_sized(&mut rest),
            },
            1 | 6 => {
                let token_of = take_byte(&mut rest);
                Step::Proven {
                    source: low,
                    token_of,
                    frames: take_sized(&mut rest),
                }
            }
            2 => Step::Advance {
                b: take_byte(&mut rest),
            },
            3 => Step::Raw {
                port: c & 1,
                bytes: take_sized(&mut rest),
            },
            4 => Step::Drain,
            _ => Step::Sync { fail: c & 1 != 0 },
        };
        steps.push(step);
    }
    (Settings::from_byte(first), steps)
}

/// Writes `settings` and `steps` in the form [`parse`] reads.
pub fn encode(settings: Settings, steps: &[Step<'_>]) -> Vec<u8> {
    let mut out = vec![settings.to_byte()];
    for step in steps {
        match *step {
            Step::Datagram { source, bytes } => {
                out.push(source & 7);
                put_sized(&mut out, bytes);
            }
            Step::Proven {
                source,
                token_of,
                frames,
            } => {
                out.push(1 << 5 | (source & 7));
                out.push(token_of);
                put_sized(&mut out, frames);
            }
            Step::Advance { b } => out.extend_from_slice(&[2 << 5, b]),
            Step::Raw { port, bytes } => {
                out.push(3 << 5 | (port & 1));
                put_sized(&mut out, bytes);
            }
            Step::Drain => out.push(4 << 5),
            Step::Sync { fail } => out.push(5 << 5 | u8::from(fail)),
        }
    }
    out
}

fn take_byte(rest: &mut &[u8]) -> u8 {
    match rest.split_first() {
        Some((&b, after)) => {
            *rest = after;
            b
        }
        None => 0,
    }
}

fn take_sized<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let len = usize::from(u16::from_le_bytes([take_byte(rest), take_byte(rest)]));
    let (bytes, after) = rest.split_at(len.min(rest.len()));
    *rest = after;
    bytes
}

fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("a step's bytes fit a u16 length");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_steps_parse_back() {
        let settings = Settings {
            fsync: 2,
            retain_bytes: true,
            retain_age: false,
        };
        let steps = [
            Step::Datagram {
                source: 3,
                bytes: b"UR\x01",
            },
            Step::Proven {
                source: 1,
                token_of: 4,
                frames: b"frames",
            },
            Step::Advance { b: 200 },
            Step::Raw {
                port: 1,
                bytes: b"raw",
            },
            Step::Drain,
            Step::Sync { fail: true },
        ];
        assert_eq!(parse(&encode(settings, &steps)), (settings, steps.to_vec()));
    }
}

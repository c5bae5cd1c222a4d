//! The other side of benches/versus.sh (issue 13): NATS (core pub/sub and
//! JetStream, through the official async-nats client) and Aeron (Aeron C's
//! client and media driver, as the rusteron crates build them), measured
//! the way udpbench measures udprelay: 64-byte messages on 127.0.0.1, the
//! lossless rate found by udpbench's search, one-way latency from a send
//! time in the payload. Each mode prints one JSON line on stdout, progress
//! on stderr, and on failure one line `versus: ...` and exit status 1.
//!
//! usage: versus MODE [--FLAG VALUE]...
//!   nats-lossless  --url URL [--subscribers 1] [--duration 2]
//!   nats-latency   --url URL [--rate 10000] [--duration 5]
//!   js-publish     --url URL [--window 256] [--duration 3]
//!   js-replay      --url URL [--count 1000000] [--batch 1000]
//!   aeron-driver   --dir DIR                 (runs until killed)
//!   aeron-lossless --dir DIR [--subscribers 1] [--duration 2]
//!   aeron-latency  --dir DIR [--rate 10000] [--duration 5]

#[cfg(feature = "aeron")]
mod aeron;
mod common;
mod nats;

use std::process::ExitCode;

use common::{Error, Flags};

const USAGE: &str = "usage: versus nats-lossless|nats-latency|js-publish|js-replay|aeron-driver|aeron-lossless|aeron-latency [--FLAG VALUE]... (see src/main.rs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Flags::parse(rest).and_then(|flags| dispatch(mode, &flags));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: Aeron C's messages run over several.
            let e = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("versus: {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(mode: &str, flags: &Flags) -> Result<(), Error> {
    match mode {
        "nats-lossless" => nats::lossless(flags),
        "nats-latency" => nats::latency(flags),
        "js-publish" => nats::js_publish(flags),
        "js-replay" => nats::js_replay(flags),
        #[cfg(feature = "aeron")]
        "aeron-driver" => aeron::driver(flags),
        #[cfg(feature = "aeron")]
        "aeron-lossless" => aeron::lossless(flags),
        #[cfg(feature = "aeron")]
        "aeron-latency" => aeron::latency(flags),
        #[cfg(not(feature = "aeron"))]
        "aeron-driver" | "aeron-lossless" | "aeron-latency" => {
            Err("built without the `aeron` feature".into())
        }
        _ => Err(format!("unknown mode; {USAGE}").into()),
    }
}

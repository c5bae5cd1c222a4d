//! `udprelay`: the relay daemon. Parses flags, builds the configuration, runs
//! the driver until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use udprelay::config::{self, RelayConfig};
use udprelay::driver::Driver;

/// A UDP datagram relay: clients publish to named channels, subscribers
/// receive every message with its channel offset.
#[derive(Debug, Parser)]
#[command(name = "udprelay", version)]
struct Args {
    /// Address of the protocol socket (port 0 picks a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the relay's data (the message log; created if missing).
    #[arg(long, default_value = "./udprelay-data")]
    data_dir: PathBuf,
    /// How long a subscription lives without hearing from its subscriber (e.g. 500ms, 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    lease: Duration,
    /// Largest message payload accepted, in bytes (at most 65000).
    #[arg(long, default_value_t = config::MAX_UNFRAGMENTED_MESSAGE)]
    max_message_size: usize,
    /// Size up to which messages for one subscriber are packed into one datagram, in bytes.
    #[arg(long, default_value_t = 1400)]
    datagram_size: usize,
    /// Most channels; publishing to a new channel beyond it is refused.
    #[arg(long, default_value_t = 10_000)]
    max_channels: usize,
    /// Most subscriptions across all clients.
    #[arg(long, default_value_t = 100_000)]
    max_subscriptions: usize,
    /// Most subscriptions one client address may hold.
    #[arg(long, default_value_t = 4096)]
    max_subscriptions_per_client: usize,
    /// Plain-UDP ingest: every datagram arriving at ADDR becomes one message of CHANNEL (repeatable).
    #[arg(long = "raw-in", value_name = "ADDR=CHANNEL", value_parser = config::parse_raw_in)]
    raw_in: Vec<(SocketAddr, String)>,
    /// Plain-UDP egress: every message of CHANNEL is sent as a plain datagram to ADDR (repeatable).
    #[arg(long = "raw-out", value_name = "CHANNEL=ADDR", value_parser = config::parse_raw_out)]
    raw_out: Vec<(String, SocketAddr)>,
    /// Log level: error, warn, info, debug or trace (logs go to stderr).
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(args.log_level)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = RelayConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        lease: args.lease,
        max_message_size: args.max_message_size,
        datagram_size: args.datagram_size,
        max_channels: args.max_channels,
        max_subscriptions: args.max_subscriptions,
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        raw_in: args.raw_in,
        raw_out: args.raw_out,
        ..RelayConfig::default()
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udprelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &RelayConfig) -> Result<(), Box<dyn std::error::Error>> {
    let mut driver = Driver::bind(config)?;
    // These lines are the relay's contract with scripts and tests: they name
    // the real ports when 0 was asked for.
    println!("udprelay listening on {}", driver.local_addr()?);
    for (addr, (_, channel)) in driver.raw_in_addrs()?.iter().zip(&config.raw_in) {
        println!("raw-in {addr} -> channel {channel}");
    }
    for (channel, addr) in &config.raw_out {
        println!("raw-out channel {channel} -> {addr}");
    }
    driver.run()?;
    let relay = driver.relay();
    let counters = relay
        .counters()
        .entries(relay.channel_count(), relay.subscription_count());
    let summary: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!("stopped: {}", summary.join(" "));
    Ok(())
}

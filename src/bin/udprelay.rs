//! `udprelay`: the relay daemon, `udprelay log` to inspect its data
//! directory, `udprelay key` to manage a key file and `udprelay config` to
//! check a configuration file. Parses flags (`cli`, with the file's in
//! `config_file`), builds the configuration, runs the driver until it is
//! stopped.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use udprelay::auth::{KeyFile, NewKey, Quota};
use udprelay::client::message_json;
use udprelay::config::{AuthMode, RelayConfig};
use udprelay::driver::Driver;
use udprelay::log::{LogConfig, inspect};
use udprelay::reliable::ArqConfig;
use udprelay::subject::Pattern;

#[path = "udprelay/cli.rs"]
mod cli;
#[path = "udprelay/config_file.rs"]
mod config_file;
#[path = "../../tools/common/timestamps.rs"]
mod timestamps;
#[path = "../../tools/common/usage.rs"]
mod usage;

use cli::{Cli, Command, ConfigCommand, DumpFormat, KeyCommand, LogCommand, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = match config_file::with_file(std::env::args_os().skip(1).collect()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_error) => usage::exit("udprelay", *clap_error),
            Err(e) => {
                eprintln!("udprelay: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let result = match cli.command {
        Some(Command::Log(cmd)) => log_command(cmd),
        Some(Command::Key(cmd)) => key_command(cmd),
        Some(Command::Config(cmd)) => config_command(cmd),
        None => run(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("udprelay: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(args: RunArgs) -> Result<ExitCode> {
    // The NATS client says every reconnect attempt at info: during an
    // outage that is a line a second; the bridge says what matters.
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{},async_nats=warn",
        args.log_level.as_str().to_ascii_lowercase()
    ));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object a line (timestamp, level, target, fields), for
        // log shippers.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let config = relay_config(args)?;
    let mut driver = Driver::bind(&config)?;
    // SIGHUP makes the configuration again from the same flags and the
    // file as it is then.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    driver.set_reloader(Box::new(move || {
        let cli = config_file::with_file(argv.clone()).map_err(|e| one_line(&*e))?;
        relay_config(cli.run).map_err(|e| e.to_string())
    }));
    // These lines are the relay's contract with scripts and tests: they name
    // the real ports when 0 was asked for. Whoever started the relay may
    // stop reading its output after the line it wanted: a closed stdout is
    // not a reason to stop relaying (println! would panic on it).
    let mut out = std::io::stdout().lock();
    if let Some(addr) = driver.metrics_addr() {
        let _ = writeln!(out, "metrics on http://{addr}/metrics");
    }
    let _ = writeln!(out, "udprelay listening on {}", driver.local_addr()?);
    if let Some(keys) = &config.keys {
        let mode = match config.auth {
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        };
        let _ = writeln!(out, "keys from {} (auth {mode})", keys.display());
    }
    for (addr, (_, channel)) in driver.raw_in_addrs()?.iter().zip(&config.raw_in) {
        let _ = writeln!(out, "raw-in {addr} -> channel {channel}");
    }
    for (channel, addr) in &config.raw_out {
        let _ = writeln!(out, "raw-out channel {channel} -> {addr}");
    }
    let _ = out.flush();
    drop(out);
    // Sockets bound, logs recovered: under systemd (Type=notify), ready.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("systemd notify: {e}");
    }
    driver.run()?;
    let relay = driver.relay();
    let counters = relay
        .counters()
        .entries(relay.channel_count(), relay.subscription_count());
    let summary: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!("stopped: {}", summary.join(" "));
    Ok(ExitCode::SUCCESS)
}

/// An error in one line (clap's own messages run to several).
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<clap::Error>() {
        Some(clap_error) => usage::one_line(clap_error),
        None => e.to_string(),
    }
}

/// The relay's configuration from its flags (and file).
fn relay_config(args: RunArgs) -> Result<RelayConfig> {
    Ok(RelayConfig {
        listen: args.listen,
        allow_anonymous: args.allow_anonymous,
        keys: args.keys,
        auth: args.auth,
        max_auth_sessions: args.max_auth_sessions,
        data_dir: args.data_dir,
        lease: args.lease,
        max_message_size: args.max_message_size,
        datagram_size: args.datagram_size,
        max_channels: args.max_channels,
        max_subscriptions: args.max_subscriptions,
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        max_sessions: args.max_sessions,
        reassembly_memory: usize::try_from(args.reassembly_memory)?,
        session_memory: usize::try_from(args.session_memory)?,
        raw_in: args.raw_in,
        raw_out: args.raw_out,
        log: LogConfig {
            segment_size: usize::try_from(args.segment_size)?,
            fsync: args.fsync,
            retain_bytes: args.retain_bytes,
            retain_age: args.retain_age,
        },
        truncate_corrupt: args.truncate_corrupt,
        replay_rate: args.replay_rate,
        busy_poll: args.busy_poll,
        cluster: args.cluster,
        cluster_ack: args.cluster_ack,
        metrics: args.metrics,
        drain_timeout: args.drain_timeout,
        arq: ArqConfig {
            bundle_limit: args.bundle_limit,
            ..ArqConfig::default()
        },
        ..RelayConfig::default()
    })
}

fn config_command(cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { file } => {
            let tokens = config_file::read(&file, None)?;
            let argv = std::iter::once("udprelay".into()).chain(tokens);
            let matches = <Cli as clap::CommandFactory>::command().try_get_matches_from(argv)?;
            let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
            relay_config(cli.run)?.validate()?;
            print!("{}", config_file::effective(&matches));
        }
        ConfigCommand::Example => print!("{}", config_file::example()),
    }
    Ok(ExitCode::SUCCESS)
}

fn require_dir(dir: &Path) -> Result<()> {
    if dir.join("channels").is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a udprelay data directory", dir.display()).into())
    }
}

fn log_command(cmd: LogCommand) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        LogCommand::Ls { data_dir, json } => {
            require_dir(&data_dir)?;
            if json {
                for c in inspect::list(&data_dir)? {
                    let line = serde_json::json!({
                        "channel": c.name,
                        "first": c.first_offset,
                        "next": c.next_offset,
                        "messages": c.next_offset - c.first_offset,
                        "segments": c.segments,
                        "bytes": c.bytes,
                    });
                    writeln!(out, "{line}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<24} {:>12} {:>12} {:>12} {:>8} {:>14}",
                "CHANNEL", "FIRST", "NEXT", "MESSAGES", "SEGMENTS", "BYTES"
            )?;
            for c in inspect::list(&data_dir)? {
                // A name with spaces is quoted, so the columns still read.
                let name = match c.name.contains(char::is_whitespace) {
                    true => format!("{:?}", c.name),
                    false => c.name.clone(),
                };
                writeln!(
                    out,
                    "{:<24} {:>12} {:>12} {:>12} {:>8} {:>14}",
                    name,
                    c.first_offset,
                    c.next_offset,
                    c.next_offset - c.first_offset,
                    c.segments,
                    c.bytes
                )?;
            }
        }
        LogCommand::Dump {
            channel,
            from,
            count,
            format,
            timestamps,
            data_dir,
        } => {
            require_dir(&data_dir)?;
            let mut write_err = None;
            inspect::dump(
                &data_dir,
                &channel,
                from,
                count.unwrap_or(u64::MAX),
                &mut |r| {
                    if write_err.is_some() {
                        return;
                    }
                    let result = match format {
                        DumpFormat::Line => {
                            let stamp = (timestamps.text(r.timestamp))
                                .map_or(String::new(), |t| format!("{t}\t"));
                            let payload = String::from_utf8_lossy(r.payload);
                            writeln!(out, "{}\t{stamp}{payload}", r.offset)
                        }
                        DumpFormat::Json => {
                            let mut obj = message_json(&channel, r.offset, r.timestamp, r.payload);
                            timestamps.add_to(&mut obj, r.timestamp);
                            writeln!(out, "{obj}")
                        }
                    };
                    if let Err(e) = result {
                        write_err = Some(e);
                    }
                },
            )?;
            match write_err {
                Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Some(e) => return Err(e.into()),
                None => {}
            }
        }
        LogCommand::Verify { data_dir, json } => {
            require_dir(&data_dir)?;
            let (problems, checked) = inspect::verify(&data_dir)?;
            if json {
                let list: Vec<serde_json::Value> = (problems.iter())
                    .map(|p| {
                        serde_json::json!({
                            "channel": p.channel,
                            "path": p.path.display().to_string(),
                            "position": p.position,
                            "reason": p.reason.to_string(),
                        })
                    })
                    .collect();
                let summary = serde_json::json!({"checked": checked, "problems": list});
                writeln!(out, "{summary}")?;
                return Ok(match problems.is_empty() {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::FAILURE,
                });
            }
            for p in &problems {
                writeln!(
                    out,
                    "{}: {}: byte {}: {}",
                    p.channel,
                    p.path.display(),
                    p.position,
                    p.reason
                )?;
            }
            writeln!(
                out,
                "checked {checked} records: {} problem(s)",
                problems.len()
            )?;
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A key's quotas for `key ls` and summaries: comma-separated, `-` for none.
fn quota_list(q: &Quota) -> String {
    let parts: Vec<String> = [
        q.messages_per_sec.map(|n| format!("{n} msg/s")),
        q.bytes_per_sec.map(|n| format!("{n} B/s")),
        q.max_subscriptions.map(|n| format!("{n} subscriptions")),
        q.max_sessions.map(|n| format!("{n} sessions")),
        q.reassembly_bytes.map(|n| format!("{n} B reassembly")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    }
}

/// Patterns for `key ls` and summaries: comma-separated, `-` for none.
fn pattern_list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        return "-".to_string();
    }
    let list: Vec<&str> = patterns.iter().map(Pattern::as_str).collect();
    list.join(",")
}

fn key_command(cmd: KeyCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        KeyCommand::New {
            name,
            keys,
            publish,
            subscribe,
            deny_publish,
            deny_subscribe,
            admin,
            messages_per_sec,
            bytes_per_sec,
            max_subscriptions,
            max_sessions,
            reassembly_bytes,
        } => {
            let created = !keys.exists();
            let new = NewKey {
                name,
                publish,
                subscribe,
                deny_publish,
                deny_subscribe,
                admin,
                quota: Quota {
                    messages_per_sec,
                    bytes_per_sec,
                    max_subscriptions,
                    max_sessions,
                    reassembly_bytes,
                },
            };
            let (file, id) = KeyFile::add_key(&keys, &new)?;
            let key = file.key(id).ok_or("the new key is missing")?;
            let p = key.permissions();
            let what = if created {
                format!(
                    "created {} (mode 0600) with key {:?} (id {id})",
                    keys.display(),
                    key.name()
                )
            } else {
                format!("added key {:?} (id {id}) to {}", key.name(), keys.display())
            };
            eprintln!(
                "{what}: publish {}, subscribe {}, deny-publish {}, deny-subscribe {}, admin {}, quota {}",
                pattern_list(&p.publish),
                pattern_list(&p.subscribe),
                pattern_list(&p.deny_publish),
                pattern_list(&p.deny_subscribe),
                if p.admin { "yes" } else { "no" },
                quota_list(key.quota()),
            );
            writeln!(out, "{}", key.credential())?;
        }
        KeyCommand::Derive {
            name,
            keys,
            expires,
        } => {
            if expires < Duration::from_secs(1) {
                return Err("--expires must be at least 1s".into());
            }
            let file = KeyFile::load(&keys)?;
            let key = file
                .named(&name)
                .ok_or_else(|| format!("{}: no key named {name:?}", keys.display()))?;
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
            let until = now
                .as_secs()
                .checked_add(expires.as_secs())
                .ok_or("--expires is too far in the future")?;
            eprintln!(
                "credential from key {:?} (id {}), valid for {} s, refused from unix time {until} on",
                key.name(),
                key.id(),
                expires.as_secs()
            );
            writeln!(out, "{}", key.derive(until))?;
        }
        KeyCommand::Ls { keys } => {
            let file = KeyFile::load(&keys)?;
            let header = [
                "NAME",
                "ID",
                "ADMIN",
                "PUBLISH",
                "SUBSCRIBE",
                "DENY-PUBLISH",
                "DENY-SUBSCRIBE",
                "QUOTA",
            ]
            .map(String::from);
            let mut rows = vec![header];
            for key in file.keys() {
                let p = key.permissions();
                rows.push([
                    key.name().to_string(),
                    key.id().to_string(),
                    if p.admin { "yes" } else { "no" }.to_string(),
                    pattern_list(&p.publish),
                    pattern_list(&p.subscribe),
                    pattern_list(&p.deny_publish),
                    pattern_list(&p.deny_subscribe),
                    quota_list(key.quota()),
                ]);
            }
            let a = file.anonymous();
            rows.push([
                "(anonymous)".to_string(),
                "-".to_string(),
                "no".to_string(),
                pattern_list(&a.publish),
                pattern_list(&a.subscribe),
                pattern_list(&a.deny_publish),
                pattern_list(&a.deny_subscribe),
                "-".to_string(),
            ]);
            let mut widths = [0; 8];
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                writeln!(out, "{}", cells.join("  ").trim_end())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

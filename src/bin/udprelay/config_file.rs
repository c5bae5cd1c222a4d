//! `udprelay --config FILE`: a TOML file whose keys are the relay's flags
//! (`data-dir = "/var/lib/udprelay"`, `raw-out = ["feed=127.0.0.1:9000"]`
//! for a repeatable one), read before the command line, which overrides it.
//!
//! Each value is handed to the flag's own parser, as if it were given on the
//! command line: one set of rules for both, and one error, naming the key,
//! for a value the flag would refuse. The example file (`dist/udprelay.toml`,
//! every key commented with its default) is made from the same flags by
//! [`example`].

use std::ffi::OsString;
use std::path::Path;

use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, parser::ValueSource};

use super::cli::Cli;

/// Flags that are not keys of the file.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// Why a configuration file was refused: one line, naming the file and, for
/// a key, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("config {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config {path}: not TOML: {error}")]
    Toml {
        /// The file.
        path: String,
        /// Where and why, in one line.
        error: String,
    },
    /// A key that is no flag of the relay.
    #[error("config {path}: unknown key `{key}`{hint}")]
    Unknown {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// `(did you mean …?)` or nothing.
        hint: String,
    },
    /// A value the key's flag refuses, or of the wrong TOML type.
    #[error("config {path}: key `{key}`: {reason}")]
    Value {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The command line `args` (without the program name) with the file named
/// by its `--config`, if any, read in front: the arguments to parse, and the
/// matches of those given on the command line alone.
pub fn with_file(args: Vec<OsString>) -> Result<Cli, Box<dyn std::error::Error>> {
    let given = Cli::command().try_get_matches_from(program().chain(args.iter().cloned()))?;
    let Some(path) = given.get_one::<std::path::PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&given)?);
    };
    let from_file = read(&path, Some(&given))?;
    let all = program().chain(from_file).chain(args);
    let matches = Cli::command().try_get_matches_from(all)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The arguments `path` stands for (what the command line `given` sets
/// left out), each key checked by its flag's parser.
pub fn read(path: &Path, given: Option<&ArgMatches>) -> Result<Vec<OsString>, ConfigFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        path: name.clone(),
        error,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Toml {
            path: name.clone(),
            error: e.message().to_string() + &line_of(&text, e.span()),
        })?;
    let command = Cli::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let arg = (command.get_arguments())
            .find(|a| a.get_long() == Some(key) && !NOT_KEYS.contains(&key.as_str()));
        let Some(arg) = arg else {
            return Err(ConfigFileError::Unknown {
                path: name,
                key: key.clone(),
                hint: hint(key),
            });
        };
        let id = arg.get_id().as_str();
        let on_command_line =
            given.is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine));
        let bad = |reason: String| ConfigFileError::Value {
            path: name.clone(),
            key: key.clone(),
            reason,
        };
        let tokens = tokens(key, arg.get_action(), value).map_err(bad)?;
        // Checked alone by the flag's own parser, so the error names the key.
        let alone = program().chain(tokens.iter().cloned());
        if let Err(e) = Cli::command().try_get_matches_from(alone) {
            return Err(bad(super::usage::one_line(&e)));
        }
        if !on_command_line {
            out.extend(tokens);
        }
    }
    Ok(out)
}

/// The flags a key's value stands for.
fn tokens(key: &str, action: &ArgAction, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = format!("--{key}");
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    };
    match (action, value) {
        (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
            Ok(if *on { vec![flag.into()] } else { vec![] })
        }
        (ArgAction::SetTrue, other) => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
        (ArgAction::Append, toml::Value::Array(items)) => (items.iter())
            .map(|v| scalar(v).map(|s| format!("{flag}={s}").into()))
            .collect(),
        (_, v) => Ok(vec![format!("{flag}={}", scalar(v)?).into()]),
    }
}

fn program() -> impl Iterator<Item = OsString> {
    std::iter::once(OsString::from("udprelay"))
}

/// ` (line N)` for a TOML error's span.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// ` (did you mean `k`?)` for the key closest to a misspelled one.
fn hint(key: &str) -> String {
    let command = Cli::command();
    let best = (command.get_arguments())
        .filter_map(|a| a.get_long())
        .filter(|k| !NOT_KEYS.contains(k))
        .map(|k| (distance(key, k), k))
        .min();
    match best {
        Some((d, k)) if d <= 3 => format!(" (did you mean `{k}`?)"),
        _ => String::new(),
    }
}

/// Levenshtein distance, for the hint.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The settings `matches` holds, as a TOML file: every key, with the value
/// in effect.
pub fn effective(matches: &ArgMatches) -> String {
    let command = Cli::command();
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(key), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_KEYS.contains(&key) {
            continue;
        }
        let values: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        out += &match arg.get_action() {
            ArgAction::SetTrue => format!("{key} = {}\n", matches.get_flag(id)),
            ArgAction::Append => format!("{key} = {}\n", toml_list(&values)),
            _ => match values.first() {
                Some(v) => format!("{key} = {}\n", toml_string(v)),
                None => format!("# {key}: not set\n"),
            },
        };
    }
    out
}

/// A value as TOML: a plain number bare, anything else a string.
fn toml_string(s: &str) -> String {
    match s.parse::<i64>() {
        Ok(n) if n.to_string() == s => s.to_string(),
        _ => toml::Value::String(s.to_string()).to_string(),
    }
}

fn toml_list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
    format!("[{}]", items.join(", "))
}

/// The example file: every key, commented, with its help and its default
/// (`dist/udprelay.toml` is this, checked by a test).
pub fn example() -> String {
    let command = Cli::command();
    let mut out = String::from(
        "# udprelay configuration: `udprelay --config FILE`. Every key is a flag of\n\
         # `udprelay` (see `udprelay --help`) with the same name and value; a flag\n\
         # given on the command line overrides the file. Each line below is the\n\
         # default, commented out; `udprelay config check FILE` prints what a file\n\
         # sets, and refuses an unknown key or a bad value by name.\n",
    );
    for arg in command.get_arguments() {
        let Some(key) = arg.get_long().filter(|k| !NOT_KEYS.contains(k)) else {
            continue;
        };
        out.push('\n');
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        for line in wrap(&help, 76) {
            out += &format!("# {line}\n");
        }
        let defaults: Vec<String> = (arg.get_default_values().iter())
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        out += &match (arg.get_action(), defaults.first()) {
            (ArgAction::SetTrue, _) => format!("# {key} = false\n"),
            (ArgAction::Append, _) => format!("# {key} = {}\n", toml_list(&defaults)),
            (_, Some(v)) => format!("# {key} = {}\n", toml_string(v)),
            (_, None) => format!("# {key} = (none)\n"),
        };
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

//! A usage error in one line, as every binary prints its errors: clap's own
//! message (without its "error: ", usage and "try --help" lines) after the
//! tool's name, exit status 2; `--help` and `--version` as clap prints them.

use std::ffi::OsString;

/// `error` as the tool's one line, or clap's help or version text.
pub fn exit(tool: &str, error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            eprintln!("{tool}: {} (see --help)", one_line(&error));
            std::process::exit(2);
        }
    }
}

/// clap's message for `error` in one line: its first paragraph (the
/// missing arguments' names included), without "error: ".
pub fn one_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let first: Vec<&str> = (text.lines())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    first.join(" ").trim_start_matches("error: ").to_string()
}

/// Parses the command line into `T`, or exits as [`exit`] says.
#[allow(dead_code)]
pub fn parse<T: clap::Parser>(tool: &str) -> T {
    let args: Vec<OsString> = std::env::args_os().collect();
    T::try_parse_from(args).unwrap_or_else(|e| exit(tool, e))
}

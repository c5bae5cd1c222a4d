//! Writes the man pages and shell completions of the four binaries,
//! made from their clap definitions (`clap_mangen`, `clap_complete`):
//!
//! ```sh
//! cargo run --example gen_docs -- target/docs
//! ```
//!
//! gives `target/docs/man/{udprelay,udpcat,udpbench,udpchaos}*.1` (one page
//! per subcommand too) and `target/docs/completions/` for bash, zsh and
//! fish.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

/// `--timestamps`, which udpcat's and udprelay's command lines share.
#[allow(dead_code)]
#[path = "../tools/common/timestamps.rs"]
mod timestamps;
#[allow(dead_code)]
#[path = "../tools/udpbench/args.rs"]
mod udpbench_args;
#[allow(dead_code)]
#[path = "../tools/udpcat/args.rs"]
mod udpcat_args;
#[allow(dead_code)]
#[path = "../tools/udpchaos/args.rs"]
mod udpchaos_args;
#[allow(dead_code)]
#[path = "../src/bin/udprelay/cli.rs"]
mod udprelay_cli;

/// Each binary's name and its command line.
pub fn commands() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("udprelay", udprelay_cli::Cli::command()),
        ("udpcat", udpcat_args::Args::command()),
        ("udpbench", udpbench_args::Args::command()),
        ("udpchaos", udpchaos_args::Args::command()),
    ]
}

/// Writes every man page under `out/man` and every completion script
/// under `out/completions`.
pub fn generate(out: &Path) -> std::io::Result<()> {
    let (man, completions) = (out.join("man"), out.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    for (name, command) in commands() {
        clap_mangen::generate_to(command.clone(), &man)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut command.clone(), name, &completions)?;
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("gen_docs: give the directory to write to, like target/docs");
        return std::process::ExitCode::FAILURE;
    };
    match generate(Path::new(&out)) {
        Ok(()) => {
            println!(
                "man pages in {0}/man, completions in {0}/completions",
                Path::new(&out).display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_docs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

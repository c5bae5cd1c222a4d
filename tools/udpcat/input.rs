//! What udpcat publishes: stdin or file lines, or one whole message, read
//! on a thread.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::mpsc;

use super::CatError;

/// Where the messages to publish come from.
pub enum Input {
    Message(Vec<u8>),
    File(PathBuf),
    Stdin,
}

impl Input {
    /// The input the flags ask for: `--message`, `--file` (with `--whole`:
    /// all of it as one message), or stdin, which a file named `-` is too.
    pub fn choose(
        message: Option<String>,
        file: Option<PathBuf>,
        whole: bool,
    ) -> Result<Input, CatError> {
        let file = file.filter(|f| f.as_os_str() != "-");
        match (message, file, whole) {
            (Some(m), _, _) => Ok(Input::Message(m.into_bytes())),
            (None, Some(f), true) => std::fs::read(&f)
                .map(Input::Message)
                .map_err(|e| CatError::Input(f.display().to_string(), e)),
            (None, None, true) => {
                let mut all = Vec::new();
                io::stdin()
                    .read_to_end(&mut all)
                    .map(|_| Input::Message(all))
                    .map_err(|e| CatError::Input("stdin".into(), e))
            }
            (None, Some(f), false) => Ok(Input::File(f)),
            (None, None, false) => Ok(Input::Stdin),
        }
    }
}

/// Reads the input on a thread, one message per line (or the one message of
/// --message and --whole), so the sending loop can wait for the network and
/// the input at once.
pub fn spawn_input(input: Input, count: u64) -> mpsc::Receiver<Result<Vec<u8>, CatError>> {
    let (tx, rx) = mpsc::sync_channel(4096);
    std::thread::spawn(move || {
        let result = (|| -> Result<(), CatError> {
            let send = |m: Vec<u8>| tx.send(Ok(m)).is_ok();
            match input {
                Input::Message(m) => {
                    for _ in 0..count {
                        if !send(m.clone()) {
                            break;
                        }
                    }
                }
                Input::File(path) => {
                    let name = path.display().to_string();
                    let file = File::open(&path).map_err(|e| CatError::Input(name.clone(), e))?;
                    let lines =
                        read_lines(BufReader::new(file), |e| CatError::Input(name.clone(), e))?;
                    'all: for _ in 0..count {
                        for line in &lines {
                            if !send(line.clone()) {
                                break 'all;
                            }
                        }
                    }
                }
                Input::Stdin if count == 1 => {
                    let mut reader = BufReader::with_capacity(1 << 16, io::stdin());
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        let n = reader
                            .read_until(b'\n', &mut line)
                            .map_err(|e| CatError::Input("stdin".into(), e))?;
                        if n == 0 || !send(trim_newline(&line).to_vec()) {
                            break;
                        }
                    }
                }
                Input::Stdin => {
                    let lines =
                        read_lines(io::stdin().lock(), |e| CatError::Input("stdin".into(), e))?;
                    'all: for _ in 0..count {
                        for line in &lines {
                            if !send(line.clone()) {
                                break 'all;
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    rx
}

fn read_lines(
    mut reader: impl Read,
    err: impl Fn(io::Error) -> CatError,
) -> Result<Vec<Vec<u8>>, CatError> {
    let mut all = Vec::new();
    reader.read_to_end(&mut all).map_err(err)?;
    let mut lines: Vec<Vec<u8>> = all
        .split(|&b| b == b'\n')
        .map(|l| trim_newline(l).to_vec())
        .collect();
    // A final newline ends the last line; it does not start an empty one.
    if all.last() == Some(&b'\n') || all.is_empty() {
        lines.pop();
    }
    Ok(lines)
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

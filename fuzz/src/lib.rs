//! What the fuzz targets and the seed generator share: the input formats of
//! the `relay` and `log_recovery` targets (so that `seeds` writes inputs in
//! exactly the form the targets read), and the scratch directory each
//! target works in.
//!
//! - [`relay_input`]: a run of datagrams from a few source addresses, time
//!   steps, drains and syncs, for a relay core.
//! - [`log_input`]: the segment files (and session snapshot) of one channel,
//!   for recovery and scanning.
//! - [`scratch_dir`]: an empty directory per target and process.
//! - [`sidestep_known_bugs`]: whether the targets steer around the bugs
//!   already found (and kept in `fuzz/artifacts`), to look for others.

pub mod log_input;
pub mod relay_input;

use std::path::PathBuf;

/// An empty directory for one run of `target` in this process, emptied again
/// on every call. Under `UDPRELAY_FUZZ_DIR` if it is set (`tools/fuzz.sh`
/// points it at /dev/shm), else the system's temporary directory.
pub fn scratch_dir(target: &str) -> PathBuf {
    let root = std::env::var_os("UDPRELAY_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = root.join(format!("udprelay-fuzz-{target}-{}", std::process::id()));
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("cannot empty the scratch directory {}: {e}", dir.display())
        }
        _ => {}
    }
    std::fs::create_dir_all(&dir).expect("the scratch directory can be made");
    dir
}

/// True unless `UDPRELAY_FUZZ_KNOWN` is set: the targets then change the
/// inputs that reach a bug already found and reported (each place says
/// which, and names its input in `fuzz/artifacts`), so that a run looks
/// for new ones instead of stopping at the same crash. Set it to replay
/// those artifacts, e.g. to check a fix.
pub fn sidestep_known_bugs() -> bool {
    static SIDESTEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SIDESTEP.get_or_init(|| std::env::var_os("UDPRELAY_FUZZ_KNOWN").is_none())
}

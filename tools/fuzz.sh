#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ for a set time each, from generated seed
# corpora and the dictionaries, and prints what each run did.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 60; the targets to all of them (decode, relay, sealed,
# log_recovery). First it writes the seeds (fuzz/src/bin/seeds.rs: real
# datagrams, relay conversations and log segments made with the library)
# into fuzz/corpus/TARGET/, which the runs then grow. Then, per target:
#
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET corpus/TARGET -- \
#       -dict=DICT -max_total_time=SECONDS
#
# and prints the runs, the coverage (libFuzzer's cov:, edges reached), the
# corpus size, and whether it crashed (the input is then in
# fuzz/artifacts/TARGET/; libFuzzer stops at the first crash). The whole
# output of each run is kept in $TMPDIR (default /tmp)/udprelay-fuzz-TARGET.log.
# Exits 1 if any target crashed.
#
# Installs cargo-fuzz from crates.io if it is missing; it works with the
# stable toolchain given RUSTC_BOOTSTRAP=1. The targets work in scratch
# directories under UDPRELAY_FUZZ_DIR (default /dev/shm when writable, else
# the temporary directory). On a shared machine run it under nice.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: tools/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode relay sealed log_recovery)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  cargo install cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
if [ -z "${UDPRELAY_FUZZ_DIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export UDPRELAY_FUZZ_DIR=/dev/shm
fi
logs=${TMPDIR:-/tmp}

echo "== seeds"
cargo run --quiet --bin seeds -- corpus

dict_of() {
  case $1 in
    log_recovery) echo log.dict ;;
    *) echo decode.dict ;;
  esac
}

results=()
crashed_any=0
for target in "${targets[@]}"; do
  log="$logs/udprelay-fuzz-$target.log"
  echo "== $target: ${seconds}s, corpus/$target, -dict=$(dict_of "$target"), log $log"
  cargo fuzz build "$target"
  status=0
  cargo fuzz run "$target" "corpus/$target" -- \
    -dict="$(dict_of "$target")" -max_total_time="$seconds" \
    >"$log" 2>&1 </dev/null || status=$?
  # libFuzzer's status lines: "#RUNS <event> cov: N ft: N corp: N/SIZE ...".
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -n 1)
  [ -n "$runs" ] || runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  execs=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
  if [ "$status" -eq 0 ]; then
    crash=no
  else
    crashed_any=1
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
    panic=$(grep -m 1 -A 1 'panicked at' "$log" | tr '\n' ' ' || true)
    crash="YES (exit $status) ${artifact:-no artifact written}: ${panic:-see $log}"
  fi
  results+=("$target: runs ${runs:-?}, cov ${cov:-?}, corpus ${corp:-?}, exec/s ${execs:-?}, crashed: $crash")
  echo "${results[-1]}"
done

echo "== summary (${seconds}s each)"
printf '%s\n' "${results[@]}"
exit "$crashed_any"

#!/usr/bin/env bash
# Kills the relay with SIGKILL at random moments while reliable publishers
# run, restarts it on the same port and data directory, and checks what the
# log holds at the end: every publisher exited 0, offsets are dense, every
# message is there, and none is stored twice.
#
#   tools/kill-loop.sh [--kills N] [--messages N] [--fsync MODE]... [--chaos]
#
# --fsync repeats (default: none, interval=10 and always, one loop each).
# --chaos puts udpchaos (no impairment) between publisher and relay, so the
# publisher sees silence instead of ICMP "port unreachable" while the relay
# is down. Needs the release binaries (cargo build --release) and python3
# for the final check. Traffic goes to 127.0.0.1 only; every loop stops by
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."

kills=30
messages=200000
modes=()
chaos=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    --fsync) modes+=("$2"); shift 2 ;;
    --chaos) chaos=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "kill-loop: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#modes[@]} -gt 0 ] || modes=(none interval=10 always)

bin=target/release
for b in udprelay udpcat udpchaos; do
  [ -x "$bin/$b" ] || { echo "kill-loop: $bin/$b missing: run cargo build --release" >&2; exit 2; }
done

work=$(mktemp -d)
# A copy, so that a build during the run cannot swap binaries under it.
mkdir "$work/bin"
cp "$bin/udprelay" "$bin/udpcat" "$bin/udpchaos" "$work/bin/"
bin="$work/bin"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_relay() { # mode port data
  "$bin/udprelay" --listen "127.0.0.1:$2" --data-dir "$3" --fsync "$1" \
    >>"$work/relay.out" 2>>"$work/relay.err" &
  relay=$!
  pids+=("$relay")
  # Ready once it answers a ping: recovering a data directory of many
  # channels takes a while (about 10 ms a channel), and a ping refused
  # before the relay binds returns at once, so the wait is by the clock.
  # Another program may briefly hold the port (a test's ephemeral socket):
  # then start again.
  local deadline=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    "$bin/udpcat" ping "127.0.0.1:$2" --count 1 --reply-timeout 100ms >/dev/null 2>&1 && return 0
    sleep 0.02
    if ! kill -0 "$relay" 2>/dev/null; then
      sleep 0.1
      "$bin/udprelay" --listen "127.0.0.1:$2" --data-dir "$3" --fsync "$1" \
        >>"$work/relay.out" 2>>"$work/relay.err" &
      relay=$!
      pids+=("$relay")
    fi
  done
  echo "kill-loop: relay did not answer a ping within 60 s of starting" >&2
  tail -5 "$work/relay.err" >&2; exit 1
}

failed=0
for mode in "${modes[@]}"; do
  data="$work/data-${mode//[^a-z0-9]/_}"
  port=$(free_port)
  start_relay "$mode" "$port" "$data"
  target="127.0.0.1:$port"
  if [ "$chaos" = 1 ]; then
    cport=$(free_port)
    "$bin/udpchaos" --listen "127.0.0.1:$cport" --upstream "$target" >/dev/null 2>&1 &
    pids+=("$!")
    target="127.0.0.1:$cport"
  fi
  start=$(date +%s)
  pub_failures=0
  mid_run=0
  # Rounds go on until $kills of them killed the relay mid-publish (a
  # publisher can finish between the last look at the log and the kill).
  k=0
  while [ "$mid_run" -lt "$kills" ] && [ "$k" -lt $((3 * kills)) ]; do
    k=$((k + 1))
    # One publisher per kill: its own channel, so the check is exact.
    seq 1 "$messages" | sed "s/^/$k:/" |
      "$bin/udpcat" pub "$target" "kill-$k" --reliable --reply-timeout 20s \
        >"$work/pub-$k.out" 2>"$work/pub-$k.err" &
    pub=$!
    pids+=("$pub")
    # A random moment of the run: once the log holds a random number of
    # its messages, in the first half. Each look at the log lists every
    # channel, so it lags more as rounds add channels: the kill lands later
    # than the number says, often past the end when it is near it.
    kill_at=$(( (RANDOM * 32768 + RANDOM) % (messages / 2) + 1 ))
    while kill -0 "$pub" 2>/dev/null; do
      have=$("$bin/udprelay" log ls --data-dir "$data" 2>/dev/null |
        awk -v c="kill-$k" '$1 == c { print $3 }')
      [ "${have:-0}" -ge "$kill_at" ] && break
    done
    if kill -0 "$pub" 2>/dev/null; then mid_run=$((mid_run + 1)); fi
    kill -9 "$relay" 2>/dev/null || true
    wait "$relay" 2>/dev/null || true
    start_relay "$mode" "$port" "$data"
    if ! wait "$pub"; then
      pub_failures=$((pub_failures + 1))
      echo "  kill $k: publisher failed: $(tail -1 "$work/pub-$k.err")"
    fi
  done
  kill -TERM "$relay"; wait "$relay" || true
  report=$(python3 - "$bin/udprelay" "$data" "$k" "$messages" <<'PY'
import json, subprocess, sys
udprelay, data, kills, messages = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bad = []
dup_total = missing_total = 0
for k in range(1, kills + 1):
    out = subprocess.run([udprelay, "log", "dump", f"kill-{k}", "--data-dir", data, "--format", "json"],
                         capture_output=True, text=True)
    recs = [json.loads(l) for l in out.stdout.splitlines() if l.strip()]
    offsets = [r["offset"] for r in recs]
    if offsets != list(range(len(offsets))):
        bad.append(f"kill-{k}: offsets not dense")
    payloads = [r["payload"] for r in recs]
    want = [f"{k}:{i}" for i in range(1, messages + 1)]
    seen = set(payloads)
    dups = len(payloads) - len(seen)
    missing = sum(1 for w in want if w not in seen)
    dup_total += dups
    missing_total += missing
    if dups or missing:
        bad.append(f"kill-{k}: {len(payloads)} stored, {dups} twice, {missing} missing")
    elif payloads != want:
        bad.append(f"kill-{k}: out of order")
print(f"stored twice {dup_total}, missing {missing_total}")
for b in bad[:10]:
    print("  " + b)
sys.exit(1 if bad else 0)
PY
) && ok=1 || ok=0
  secs=$(( $(date +%s) - start ))
  echo "fsync=$mode: $k kills ($mid_run mid-publish) in ${secs}s, publishers failed $pub_failures, $report"
  if [ "$ok" = 0 ] || [ "$pub_failures" -gt 0 ] || [ "$mid_run" -lt "$kills" ]; then failed=1; fi
done
exit $failed

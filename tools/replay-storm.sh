#!/usr/bin/env bash
# A healthy client beside a replay storm (issue 10): udpbench at 10,000
# msg/s, plain then reliable, alone and beside examples/replay_storm (one
# client that opens 200 replays of an 18 MB channel from the start every
# second: plain ones, then reliable ones it acknowledges at once).
#
# Each storm runs twice: against the healthy client's relay ("shared"), and
# against a second relay on the same machine ("control"). The control puts
# the same load on the machine's cores without sharing the relay, so
# shared/control says what sharing the relay costs and alone/control what
# the machine's cores cost. Prints one line per run and, at the end, the
# median p99 of each case over the rounds.
#
# usage: tools/replay-storm.sh [ROUNDS]   (default 3; about 100 s a round)
# UDPRELAY=path/to/udprelay runs another build of the relay (before/after).
# Needs the release build: cargo build --release --bins --example replay_storm
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "usage: tools/replay-storm.sh [ROUNDS] (1 or more)" >&2; exit 2; }
bin=target/release
storm=target/release/examples/replay_storm
relay_bin=${UDPRELAY:-$bin/udprelay}
for b in "$relay_bin" "$bin/udpcat" "$bin/udpbench" "$storm"; do
    [ -x "$b" ] || { echo "replay-storm: $b missing: cargo build --release --bins --example replay_storm" >&2; exit 2; }
done
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

# Starts a relay with its own data directory, fills its channel "stored",
# and sets `addr` to its address (not in a subshell: the trap must see
# its pid).
start_relay() {
    local name=$1
    "$relay_bin" --listen 127.0.0.1:0 --data-dir "$dir/$name" --log-level warn \
        > "$dir/$name.out" 2> "$dir/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$dir/$name.out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^udprelay listening on //p' "$dir/$name.out")
    [ -n "$addr" ] || { echo "replay-storm: relay $name did not start: $(cat "$dir/$name.err")" >&2; exit 1; }
    python3 -c "import sys; sys.stdout.write(('x' * 900 + '\n') * 20000)" |
        "$bin/udpcat" pub "$addr" stored --reliable > /dev/null
}
start_relay healthy
healthy=$addr
start_relay other
other=$addr

# One healthy run against the healthy relay; prints a line, records p99.
run() {
    local case=$1
    shift
    local line
    line=$("$bin/udpbench" --relay "$healthy" --rate 10000 --duration 10s "$@" --json 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["runs"][0]; l=j["latency"]; print("sent", j["sent"], "received", j["received"], "lost", j["lost"], "p50", round(l["p50_us"]), "us p99", round(l["p99_us"]), "us")')
    echo "$line"
    echo "$case ${line##*p99 }" | sed 's/ us$//' >> "$dir/p99"
}
for round in $(seq "$rounds"); do
    for mode in plain reliable; do
        flags=()
        [ "$mode" = reliable ] && flags=(--reliable)
        echo "round $round $mode alone: $(run "$mode alone" "${flags[@]}")"
        for storm_mode in plain reliable; do
            for target in shared control; do
                at=$healthy
                [ "$target" = control ] && at=$other
                "$storm" "$at" stored 200 12 "$storm_mode" > "$dir/storm" 2>&1 &
                storm_pid=$!
                sleep 1
                echo "round $round $mode beside the $storm_mode storm ($target): $(run "$mode $storm_mode $target" "${flags[@]}")"
                wait "$storm_pid"
                echo "  storm: $(cat "$dir/storm")"
            done
        done
    done
done
echo "median p99 over $rounds rounds (us):"
python3 - "$dir/p99" <<'EOF'
import statistics, sys
cases = {}
for line in open(sys.argv[1]):
    *name, p99 = line.split()
    cases.setdefault(" ".join(name), []).append(int(p99))
for mode in ("plain", "reliable"):
    alone = statistics.median(cases[f"{mode} alone"])
    print(f"  {mode} alone: {alone:.0f}")
    for storm in ("plain", "reliable"):
        shared = statistics.median(cases[f"{mode} {storm} shared"])
        control = statistics.median(cases[f"{mode} {storm} control"])
        print(f"  {mode} beside the {storm} storm: shared {shared:.0f} ({shared / alone:.1f}x alone),"
              f" control {control:.0f} ({control / alone:.1f}x alone), shared/control {shared / control:.2f}")
EOF

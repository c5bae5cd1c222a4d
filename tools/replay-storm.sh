#!/usr/bin/env bash
# A healthy client beside a replay storm (issue 10): udpbench at 10,000
# msg/s, plain then reliable, alone and beside examples/replay_storm (one
# client that opens 200 replays of an 18 MB channel from the start every
# second: plain ones, then reliable ones it acknowledges at once), two
# rounds. Prints loss and latency for each run and what the storm received. Needs the release build: cargo build --release --bins
# --example replay_storm.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
storm=target/release/examples/replay_storm
for b in "$bin/udprelay" "$bin/udpcat" "$bin/udpbench" "$storm"; do
    [ -x "$b" ] || { echo "replay-storm: $b missing: cargo build --release --bins --example replay_storm" >&2; exit 2; }
done
dir=$(mktemp -d)
trap 'kill "$relay" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin/udprelay" --listen 127.0.0.1:0 --data-dir "$dir/data" --log-level warn > "$dir/out" 2> "$dir/err" &
relay=$!
for _ in $(seq 100); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^udprelay listening on //p' "$dir/out")
[ -n "$addr" ] || { echo "replay-storm: the relay did not start: $(cat "$dir/err")" >&2; exit 1; }
python3 -c "import sys; sys.stdout.write(('x' * 900 + '\n') * 20000)" |
    "$bin/udpcat" pub "$addr" stored --reliable > /dev/null
run() {
    "$bin/udpbench" --relay "$addr" --rate 10000 --duration 10s "$@" --json 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin); l=j["latency_us"]; print("sent", j["sent"], "received", j["received"], "lost", j["lost"], "p50", round(l["p50"]), "us p99", round(l["p99"]), "us")'
}
for round in 1 2; do
    for mode in plain reliable; do
        flags=()
        [ "$mode" = reliable ] && flags=(--reliable)
        echo "round $round $mode alone: $(run "${flags[@]}")"
        for storm_mode in plain reliable; do
            "$storm" "$addr" stored 200 12 "$storm_mode" > "$dir/storm" 2>&1 &
            storm_pid=$!
            sleep 1
            echo "round $round $mode beside the $storm_mode storm: $(run "${flags[@]}")"
            wait "$storm_pid"
            echo "  storm: $(cat "$dir/storm")"
        done
    done
done

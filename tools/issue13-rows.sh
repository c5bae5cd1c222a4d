#!/usr/bin/env bash
# Every row of issue 13 for two relay builds, alternating in one sitting,
# with the same udpbench and udpcat (AFTER's) for both, so that only the
# relay differs:
#
#   tools/issue13-rows.sh BEFORE_BIN AFTER_BIN [ROUNDS]
#
# Each BIN is a directory of release binaries (target/release of a worktree
# built with `cargo build --release --bins`). ROUNDS defaults to 2. One line
# per build per round: 1 -> 1 and 1 -> 10 lossless (udpbench --spawn
# --find-lossless --duration 2s), p50/p99 at 10,000 msg/s (5 s), reliable
# publish acknowledged per publishing second with --fsync none (5 s) and
# --fsync interval=10 (3 s), and the replay of 1 M stored messages to
# `udpcat sub --reliable --from earliest` at the default --replay-rate.
set -euo pipefail
before=${1:?usage: tools/issue13-rows.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
after=${2:?usage: tools/issue13-rows.sh BEFORE_BIN AFTER_BIN [ROUNDS]}
rounds=${3:-2}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "issue13-rows: ROUNDS must be 1 or more" >&2; exit 2; }
for b in "$before" "$after"; do
    [ -x "$b/udprelay" ] || { echo "issue13-rows: no udprelay in $b" >&2; exit 1; }
done
for t in udpbench udpcat; do
    [ -x "$after/$t" ] || { echo "issue13-rows: no $t in $after" >&2; exit 1; }
done
dir=$(mktemp -d)
relay_pid=
cleanup() {
    [ -z "$relay_pid" ] || kill "$relay_pid" 2> /dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
# udpbench --spawn starts the udprelay next to it: one directory per side.
for side in before after; do
    mkdir "$dir/$side"
    src=$before
    [ "$side" = after ] && src=$after
    cp "$src/udprelay" "$dir/$side/"
    cp "$after/udpbench" "$dir/$side/"
done
python3 -c "import sys; sys.stdout.write(''.join('%064d\\n' % i for i in range(1000000)))" > "$dir/payloads"
field() { python3 -c "import json,sys; r=json.load(sys.stdin)['runs'][0]; print($1)"; }
for round in $(seq 1 "$rounds"); do
    for side in before after; do
        bench=("$dir/$side/udpbench" --size 64 --json --spawn)
        one=$("${bench[@]}" --find-lossless --duration 2s 2> /dev/null | field "round(r['delivered_per_sec'])")
        ten=$("${bench[@]}" --subscribers 10 --find-lossless --duration 2s 2> /dev/null | field "round(r['delivered_per_sec'])")
        lat=$("${bench[@]}" --rate 10000 --duration 5s 2> /dev/null |
            field "'%.1f/%.1f' % (r['latency']['p50_us'], r['latency']['p99_us'])")
        none=$("${bench[@]}" --reliable --duration 5s 2> /dev/null | field "round(r['sent'] / r['publishing_seconds'])")
        synced=$("${bench[@]}" --reliable --relay-arg=--fsync=interval=10 --duration 3s 2> /dev/null |
            field "round(r['sent'] / r['publishing_seconds'])")
        rm -rf "$dir/data"
        "$dir/$side/udprelay" --listen 127.0.0.1:0 --data-dir "$dir/data" --log-level warn > "$dir/out" 2> /dev/null &
        relay_pid=$!
        for _ in $(seq 100); do grep -q listening "$dir/out" 2> /dev/null && break; sleep 0.1; done
        addr=$(sed -n 's/^udprelay listening on //p' "$dir/out")
        [ -n "$addr" ] || { echo "issue13-rows: the $side relay did not start" >&2; exit 1; }
        "$after/udpcat" pub "$addr" replay --reliable --file "$dir/payloads" > /dev/null 2> "$dir/err" ||
            { echo "issue13-rows: storing for the replay failed: $(tail -1 "$dir/err")" >&2; exit 1; }
        t0=$(date +%s.%N)
        "$after/udpcat" sub "$addr" replay --reliable --from earliest --count 1000000 --timeout 300s \
            > "$dir/got" 2> "$dir/err" || { echo "issue13-rows: the replay failed: $(tail -1 "$dir/err")" >&2; exit 1; }
        t1=$(date +%s.%N)
        replay=$(python3 -c "print(round($(wc -l < "$dir/got") / ($t1 - $t0)))")
        kill "$relay_pid"
        wait "$relay_pid" 2> /dev/null || true
        relay_pid=
        echo "$side round $round: 1->1 $one, 1->10 $ten, p50/p99 $lat us, reliable none $none, interval=10 $synced, replay $replay msg/s"
    done
done

#!/usr/bin/env bash
# Where the tail at 10,000 msg/s comes from (issue 13): udprelay's one-way
# latency beside the floors of this machine, alternating in one sitting.
#
#   tools/latency-floor.sh [ROUNDS]     (ROUNDS defaults to 5; 5 s per run)
#
# Each round runs, with the release udpbench (cargo build --release first):
#   relay       udpbench --spawn (udprelay, sleeping in epoll between datagrams)
#   busy-poll   the same relay with --busy-poll=1ms (it never sleeps at 10 k/s)
#   forwarder   --baseline relay: a thread that only receives and sends, no
#               log, no parsing: two hops, like any relay process
#   kernel      --baseline kernel: publisher straight to subscriber, one hop
# and prints p50, p99 and p99.9 in µs, one line per run, then the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "latency-floor: ROUNDS must be 1 or more" >&2; exit 2; }
bench=target/release/udpbench
[ -x "$bench" ] || { echo "latency-floor: no $bench (cargo build --release)" >&2; exit 1; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
common=(--rate 10000 --duration 5s --size 64 --json)
for round in $(seq 1 "$rounds"); do
    for what in relay busy-poll forwarder kernel; do
        case $what in
            relay) args=(--spawn) ;;
            busy-poll) args=(--spawn --relay-arg=--busy-poll=1ms) ;;
            forwarder) args=(--baseline relay) ;;
            kernel) args=(--baseline kernel) ;;
        esac
        "$bench" "${args[@]}" "${common[@]}" 2> /dev/null |
            python3 -c "import json,sys; l=json.load(sys.stdin)['runs'][0]['latency']; print('$what', $round, round(l['p50_us'],1), round(l['p99_us'],1), round(l['p999_us'],1))" |
            tee -a "$out"
    done
done
echo "medians over $rounds rounds (µs): what p50 p99 p99.9"
python3 - "$out" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    what, _, *v = line.split()
    rows.setdefault(what, []).append([float(x) for x in v])
for what, runs in rows.items():
    print(what, *(round(statistics.median(c), 1) for c in zip(*runs)))
PY

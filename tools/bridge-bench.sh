#!/usr/bin/env bash
# Throughput of the cluster bridge (issue 11), in one run on one 3-server
# NATS JetStream cluster: N reliable messages of 64 bytes from a publisher
# on relay A to a reliable subscriber on relay C (through JetStream), beside
# the same from a publisher to a subscriber on one relay alone, beside
# JetStream's own acknowledged publish rate (examples/jetstream_publish,
# 4,096 in flight as the bridge has). Each rate is messages over the time
# from the publisher's start to the subscriber's last message.
#
# usage: tools/bridge-bench.sh [N] [ROUNDS]   (default 200000 messages, 3 rounds)
# Needs nats-server (apt-get install nats-server) and the release build:
#   cargo build --release --bins --example jetstream_publish
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
rounds=${2:-3}
bin=target/release
for b in "$bin/udprelay" "$bin/udpcat" "$bin/examples/jetstream_publish"; do
    [ -x "$b" ] || { echo "bridge-bench: $b missing: cargo build --release --bins --example jetstream_publish" >&2; exit 2; }
done
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats" ] || { echo "bridge-bench: nats-server missing: apt-get install nats-server" >&2; exit 2; }
dir=$(mktemp -d)
pids=()
nats_pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=() route=()
for i in 0 1 2; do client+=("$(free_port)"); route+=("$(free_port)"); done
for i in 0 1 2; do
    routes=""
    for k in 0 1 2; do [ "$k" = "$i" ] || routes+="${routes:+,}nats://127.0.0.1:${route[$k]}"; done
    "$nats" -a 127.0.0.1 -p "${client[$i]}" -js -sd "$dir/js$i" -n "n$i" \
        --cluster_name bench --cluster "nats://127.0.0.1:${route[$i]}" --routes "$routes" \
        > "$dir/nats$i.log" 2>&1 &
    pids+=($!)
    nats_pids+=($!)
done
urls="nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"
for i in 0 1 2; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${client[$i]}") 2>/dev/null && break; sleep 0.1; done
done

# Starts relay NAME (with extra flags) and sets `addr`.
start_relay() {
    local name=$1; shift
    "$bin/udprelay" --listen 127.0.0.1:0 --data-dir "$dir/$name" "$@" \
        > "$dir/$name.out" 2> "$dir/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$dir/$name.out" 2>/dev/null && break; sleep 0.1; done
    addr=$(sed -n 's/^udprelay listening on //p' "$dir/$name.out")
}
start_relay alone; alone=$addr
start_relay a --cluster "$urls"; a=$addr; a_pid=${pids[-1]}
start_relay c --cluster "$urls"; c=$addr; c_pid=${pids[-1]}
# The same as A, acknowledging once stored here rather than in JetStream.
start_relay a_local --cluster "$urls" --cluster-ack local; a_local=$addr

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# CPU seconds of the three servers together.
nats_cpu() { local t=0; for p in "${nats_pids[@]}"; do t=$(python3 -c "print($t + $(cpu "$p"))"); done; echo "$t"; }

payloads="$dir/payloads"
for i in $(seq 1 "$n"); do printf '%064d\n' "$i"; done | cut -c1-63 > "$payloads"

# rate PUB_RELAY SUB_RELAY CHANNEL [SUB_RELAY_ERR]: messages per second.
rate() {
    local pub=$1 sub=$2 channel=$3 err=${4:-}
    rm -f "$dir/sub.out" "$dir/sub.err"
    "$bin/udpcat" sub "$sub" "$channel" --reliable --count "$n" > "$dir/sub.out" 2> "$dir/sub.err" &
    local sub_pid=$!
    pids+=($sub_pid)
    for _ in $(seq 100); do grep -q "subscribed to" "$dir/sub.err" 2>/dev/null && break; sleep 0.05; done
    if [ -n "$err" ]; then
        for _ in $(seq 200); do grep -q "following subject=udprelay.$channel" "$err" && break; sleep 0.05; done
    fi
    local t0 t1
    t0=$(date +%s.%N)
    "$bin/udpcat" pub "$pub" "$channel" --reliable < "$payloads"
    wait "$sub_pid"
    t1=$(date +%s.%N)
    [ "$(wc -l < "$dir/sub.out")" = "$n" ] || { echo "bridge-bench: the subscriber got $(wc -l < "$dir/sub.out") of $n" >&2; exit 1; }
    python3 -c "print(round($n / ($t1 - $t0)))"
}

echo "messages=$n size=64 rounds=$rounds (rates in msg/s)"
for r in $(seq 1 "$rounds"); do
    one=$(rate "$alone" "$alone" "one$r")
    n0=$(nats_cpu) a0=$(cpu "$a_pid") c0=$(cpu "$c_pid")
    bridged=$(rate "$a" "$c" "bridge$r" "$dir/c.err")
    n1=$(nats_cpu) a1=$(cpu "$a_pid") c1=$(cpu "$c_pid")
    js=$("$bin/examples/jetstream_publish" "nats://127.0.0.1:${client[0]}" "js$r" "$n" 64 | awk '{print $4}')
    n2=$(nats_cpu)
    local_ack=$(rate "$a_local" "$c" "local$r" "$dir/c.err")
    echo "round $r: one relay $one   A -> JetStream -> C $bridged (acknowledged once in JetStream; $local_ack once stored at A)   JetStream publish alone $js"
    python3 -c "print(f'  CPU s for A -> C: nats-servers {$n1 - $n0:.1f}, relay A {$a1 - $a0:.1f}, relay C {$c1 - $c0:.1f}; for the JetStream publish: nats-servers {$n2 - $n1:.1f}')"
done

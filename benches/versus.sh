#!/usr/bin/env bash
# udprelay beside NATS and Aeron in one sitting (issue 13): 64-byte messages
# on 127.0.0.1, one table with udprelay/NATS and udprelay/Aeron ratios.
#
#   1. 1 -> 1 lossless rate: udpbench --spawn --find-lossless; NATS core
#      pub/sub; Aeron unicast UDP. Lossless means under 0.1 % lost, found by
#      udpbench's search (an unpaced run, then 7 bisection runs over the
#      rate) for all three.
#   2. 1 -> 10 subscribers, lossless deliveries/s: udpbench --subscribers
#      10; NATS, each subscriber on its own connection; Aeron
#      multi-destination-cast to 10 UDP destinations.
#   3. one-way latency at 10,000 msg/s, p50 and p99 (a send time in each
#      payload), with udpbench's kernel baseline (--baseline kernel) beside
#      udprelay in the same udpbench run, and then udpbench's minimal
#      forwarder (--baseline relay: two hops through a blocking thread that
#      only receives and sends), the floor of any relay process here.
#   4. reliable publish, acknowledged once durable: udpbench --reliable with
#      the relay on --fsync interval=10 (acknowledged messages over the
#      publisher's time, its last ack included); JetStream acked publishes
#      to a file-stored stream, 256 acks outstanding. (JetStream's ack
#      means written to its file store; its fsync is every 2 minutes by
#      default, so it promises less than --fsync interval=10.)
#   5. replay of 1 M stored messages to one reliable subscriber: udprelay
#      with its default --replay-rate, `udpcat sub --reliable --from earliest`;
#      JetStream pull consumer fetching batches of 1,000, each acknowledged
#      by its last message (AckPolicy::All). Storing is not timed.
#
# Aeron has no durable publish or replay without its archive, so rows 4 and
# 5 show "n/a" for it. Ratios are udprelay over the other: above 1 is
# udprelay ahead on rates, below 1 is udprelay ahead on latency.
#
# usage: benches/versus.sh            (a few minutes; the machine should be idle)
# Environment: VERSUS_ROUNDS (1) rounds of every row, each cell the median
# (the issue's figures took 3: VERSUS_ROUNDS=3), VERSUS_SECONDS (2) per search run, VERSUS_LATENCY_SECONDS
# (5), VERSUS_REPLAY (1000000) messages replayed, VERSUS_ONLY (e.g.
# "nats aeron" or "udprelay") to run some systems only, NATS_SERVER
# (nats-server on PATH, else /usr/sbin/nats-server) the server to start,
# VERSUS_KEEP a directory to keep each run's JSON and its progress (the
# lossless searches' steps) in.
# Needs: cargo; nats-server (apt-get install nats-server) for NATS; for
# Aeron, CMake >= 3.30 (pip install cmake), a C/C++ compiler, libclang
# (apt-get install clang libclang-dev) and libbsd and libuuid
# (apt-get install libbsd-dev uuid-dev) for the rusteron crates, which
# build Aeron C from the source they carry. A system that cannot be built or
# started is skipped with one line saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${VERSUS_SECONDS:-2}
lat_secs=${VERSUS_LATENCY_SECONDS:-5}
replay_n=${VERSUS_REPLAY:-1000000}
only=${VERSUS_ONLY:-udprelay nats aeron}
rounds=${VERSUS_ROUNDS:-1}
keep=${VERSUS_KEEP:-}
[ -z "$keep" ] || mkdir -p "$keep"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "versus: VERSUS_ROUNDS must be 1 or more" >&2; exit 2; }
bin=target/release
versus_dir=benches/versus
versus=$versus_dir/target/release/versus

dir=$(mktemp -d "${TMPDIR:-/tmp}/versus.XXXXXX")
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo "versus: interrupted" >&2; exit 130' INT TERM

say() { echo "versus: $*" >&2; }
wants() { [[ " $only " == *" $1 "* ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# json FILE EXPR: EXPR over the JSON in FILE's last line (as `j`).
json() { python3 -c "import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print($2)" "$1"; }

declare -A R    # R[system,row] = the figures of each round, space-separated
add() { R[$1]="${R[$1]:-}${R[$1]:+ }$2"; }
skipped=()      # "system: skipped: why" lines, printed again under the table

skip() { skipped+=("$1: skipped: $2"); say "$1: skipped: $2"; }

# --- build -------------------------------------------------------------------
say "building udprelay (cargo build --release --bins)"
cargo build --release --bins -q 2> "$dir/udprelay-build.log" || {
    cat "$dir/udprelay-build.log" >&2
    say "udprelay: the release build failed"; exit 1
}

# cmake's version as a number, 3.30 -> 330; 0 when missing.
cmake_version() {
    command -v cmake > /dev/null || { echo 0; return; }
    cmake --version | sed -n '1s/[^0-9]*\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | awk '{print $1 * 100 + $2}'
}
has_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* > /dev/null 2>&1
}

aeron=1 nats=1
wants aeron || aeron=0
wants nats || nats=0
if [ "$aeron" = 1 ]; then
    if [ "$(cmake_version)" -lt 330 ]; then
        skip aeron "cmake >= 3.30 not found (pip install cmake)"; aeron=0
    elif ! has_libclang; then
        skip aeron "libclang not found, bindgen needs it (apt-get install clang libclang-dev)"; aeron=0
    elif ! command -v c++ > /dev/null; then
        skip aeron "no C++ compiler (apt-get install g++)"; aeron=0
    elif ! echo 'int main(void) { return 0; }' | cc -x c - -lbsd -luuid -o "$dir/probe" 2> /dev/null; then
        skip aeron "Aeron C links libbsd and libuuid (apt-get install libbsd-dev uuid-dev)"; aeron=0
    fi
fi
if [ "$nats" = 1 ] || [ "$aeron" = 1 ]; then
    features=() what="with Aeron C; its first build takes minutes"
    [ "$aeron" = 1 ] || features=(--no-default-features) what="NATS only"
    say "building benches/versus ($what)"
    if ! cargo build --release -q --manifest-path "$versus_dir/Cargo.toml" "${features[@]}" 2> "$dir/versus-build.log"; then
        if [ "$aeron" = 1 ]; then
            cp "$dir/versus-build.log" "${TMPDIR:-/tmp}/versus-aeron-build.log"
            skip aeron "building the rusteron crates failed (log: ${TMPDIR:-/tmp}/versus-aeron-build.log)"
            aeron=0
            cargo build --release -q --manifest-path "$versus_dir/Cargo.toml" --no-default-features \
                2> "$dir/versus-build.log" || { skip nats "benches/versus did not build"; nats=0; }
        else
            skip nats "benches/versus did not build: $(grep -m1 error "$dir/versus-build.log")"; nats=0
        fi
    fi
fi

# --- servers -----------------------------------------------------------------
nats_url=
if [ "$nats" = 1 ]; then
    nats_bin=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
    if [ ! -x "$nats_bin" ]; then
        skip nats "nats-server not found (apt-get install nats-server)"; nats=0
    else
        port=$(free_port)
        "$nats_bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream" > "$dir/nats.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            nats_url=nats://127.0.0.1:$port
            say "nats: $("$nats_bin" --version 2>&1 | head -1) on $nats_url, JetStream in $dir/jetstream"
        else
            skip nats "nats-server did not start: $(tail -1 "$dir/nats.log")"; nats=0
        fi
    fi
fi
aeron_dir=$dir/aeron
if [ "$aeron" = 1 ]; then
    "$versus" aeron-driver --dir "$aeron_dir" > "$dir/aeron.out" 2> "$dir/aeron.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q ready "$dir/aeron.out" 2>/dev/null && break; sleep 0.1; done
    if grep -q ready "$dir/aeron.out" 2>/dev/null; then
        say "aeron: media driver (Aeron C 1.54, default settings) in $aeron_dir"
    else
        skip aeron "the media driver did not start: $(tail -1 "$dir/aeron.err")"; aeron=0
    fi
fi

# --- rows --------------------------------------------------------------------
# udpbench and udpcat catch Ctrl-C, clean up and exit 130, so bash never
# sees the signal itself: a child's 130 ends the script as Ctrl-C would.
stop_if_interrupted() { [ "$1" != 130 ] || { say "interrupted"; exit 130; }; }

# measure SYSTEM ROW OUT_FILE CMD...: runs CMD (stdout to OUT_FILE); on
# failure says so and leaves the figure out.
measure() {
    local system=$1 row=$2 out=$3 rc=0; shift 3
    say "$system: $row"
    "$@" > "$out" 2> "$out.err" || rc=$?
    stop_if_interrupted "$rc"
    if [ -n "$keep" ]; then
        cp "$out" "$keep/${out##*/}.round${round:-1}.json"
        cp "$out.err" "$keep/${out##*/}.round${round:-1}.log"
    fi
    if [ "$rc" != 0 ]; then
        say "$system: $row failed: $(grep -v '^\s*$' "$out.err" | tail -1)"
        return 1
    fi
}

# core_rows SYSTEM WHERE...: rows 1 to 3 through benches/versus, whose modes
# for SYSTEM are SYSTEM-lossless and SYSTEM-latency; WHERE is --url URL
# (NATS) or --dir DIR (Aeron's media driver).
core_rows() {
    local s=$1; shift
    measure "$s" "1->1 lossless" "$dir/${s}1" "$versus" "$s-lossless" "$@" --duration "$secs" &&
        add "$s,one" "$(json "$dir/${s}1" 'round(j["delivered_per_sec"])')"
    measure "$s" "1->10 lossless" "$dir/${s}10" "$versus" "$s-lossless" "$@" --subscribers 10 --duration "$secs" &&
        add "$s,ten" "$(json "$dir/${s}10" 'round(j["delivered_per_sec"])')"
    if measure "$s" "latency at 10,000 msg/s" "$dir/${s}lat" "$versus" "$s-latency" "$@" --rate 10000 --duration "$lat_secs"; then
        add "$s,p50" "$(json "$dir/${s}lat" 'round(j["p50_us"], 1)')"
        add "$s,p99" "$(json "$dir/${s}lat" 'round(j["p99_us"], 1)')"
    fi
}
# One round: every row for every system, udprelay first.
one_round() {
    udpbench=("$bin/udpbench" --size 64 --json)
    if wants udprelay; then
        measure udprelay "1->1 lossless" "$dir/u1" "${udpbench[@]}" --spawn --find-lossless --duration "${secs}s" &&
            add udprelay,one "$(json "$dir/u1" 'round(j["runs"][0]["delivered_per_sec"])')"
        measure udprelay "1->10 lossless" "$dir/u10" "${udpbench[@]}" --spawn --subscribers 10 --find-lossless --duration "${secs}s" &&
            add udprelay,ten "$(json "$dir/u10" 'round(j["runs"][0]["delivered_per_sec"])')"
        if measure udprelay "latency at 10,000 msg/s (and the kernel baseline)" "$dir/ulat" \
            "${udpbench[@]}" --spawn --rate 10000 --duration "${lat_secs}s" --baseline kernel; then
            add udprelay,p50 "$(json "$dir/ulat" 'round(j["runs"][0]["latency"]["p50_us"], 1)')"
            add udprelay,p99 "$(json "$dir/ulat" 'round(j["runs"][0]["latency"]["p99_us"], 1)')"
            add kernel,p50 "$(json "$dir/ulat" 'round(j["runs"][1]["latency"]["p50_us"], 1)')"
            add kernel,p99 "$(json "$dir/ulat" 'round(j["runs"][1]["latency"]["p99_us"], 1)')"
        fi
        # The floor of any relay process here: two hops through a thread that
        # only receives and sends (blocking, no log, no parsing).
        if measure udprelay "latency at 10,000 msg/s through a minimal forwarder" "$dir/uflat" \
            "${udpbench[@]}" --baseline relay --rate 10000 --duration "${lat_secs}s"; then
            add forwarder,p50 "$(json "$dir/uflat" 'round(j["runs"][0]["latency"]["p50_us"], 1)')"
            add forwarder,p99 "$(json "$dir/uflat" 'round(j["runs"][0]["latency"]["p99_us"], 1)')"
        fi
        measure udprelay "reliable publish, --fsync interval=10" "$dir/urel" \
            "${udpbench[@]}" --spawn --reliable --relay-arg=--fsync=interval=10 --duration 3s &&
            add udprelay,publish "$(json "$dir/urel" 'round(j["runs"][0]["sent"] / j["runs"][0]["publishing_seconds"])')"

        # Replay: a relay of the script's own, 1 M messages stored (not timed),
        # then one reliable subscriber from the earliest.
        say "udprelay: replay of $replay_n stored messages"
        "$bin/udprelay" --listen 127.0.0.1:0 --data-dir "$dir/relay" --log-level warn \
            > "$dir/relay.out" 2> "$dir/relay.err" &
        pids+=($!)
        for _ in $(seq 100); do grep -q listening "$dir/relay.out" 2>/dev/null && break; sleep 0.1; done
        addr=$(sed -n 's/^udprelay listening on //p' "$dir/relay.out")
        if [ -z "$addr" ]; then
            say "udprelay: replay failed: the relay did not start: $(tail -1 "$dir/relay.err")"
        else
            python3 -c "import sys; sys.stdout.write(''.join('%064d\\n' % i for i in range($replay_n)))" > "$dir/payloads"
            rc=0
            "$bin/udpcat" pub "$addr" replay --reliable --file "$dir/payloads" > /dev/null 2> "$dir/store.err" || rc=$?
            stop_if_interrupted "$rc"
            if [ "$rc" != 0 ]; then
                say "udprelay: storing for the replay failed: $(tail -1 "$dir/store.err")"
            else
                t0=$(date +%s.%N)
                "$bin/udpcat" sub "$addr" replay --reliable --from earliest --count "$replay_n" --timeout 300s \
                    > "$dir/replayed" 2> "$dir/replay.err" || rc=$?
                t1=$(date +%s.%N)
                stop_if_interrupted "$rc"
                got=$(wc -l < "$dir/replayed")
                if [ "$rc" != 0 ]; then
                    say "udprelay: replay failed: $(tail -1 "$dir/replay.err")"
                elif [ "$got" != "$replay_n" ]; then
                    say "udprelay: replay failed: $got of $replay_n arrived"
                else
                    add udprelay,replay "$(python3 -c "print(round($replay_n / ($t1 - $t0)))")"
                fi
            fi
            rm -f "$dir/payloads" "$dir/replayed"
        fi
        kill "${pids[-1]}" 2>/dev/null || true
    fi

    if [ "$nats" = 1 ]; then
        core_rows nats --url "$nats_url"
        measure nats "JetStream acked publish" "$dir/npub" "$versus" js-publish --url "$nats_url" --window 256 --duration 3 &&
            add nats,publish "$(json "$dir/npub" 'round(j["msg_per_sec"])')"
        measure nats "JetStream replay of $replay_n" "$dir/nrep" "$versus" js-replay --url "$nats_url" --count "$replay_n" --batch 1000 &&
            add nats,replay "$(json "$dir/nrep" 'round(j["msg_per_sec"])')"
    fi
    # Aeron's 1 -> 10 is multi-destination-cast: one publication, 10 UDP destinations.
    if [ "$aeron" = 1 ]; then core_rows aeron --dir "$aeron_dir"; fi
}
for round in $(seq "$rounds"); do
    [ "$rounds" = 1 ] || say "round $round of $rounds"
    one_round
done

# --- table -------------------------------------------------------------------
row_names=(one ten p50 p99 publish replay)
declare -A label=(
    [one]="1 -> 1 lossless, msg/s"
    [ten]="1 -> 10 lossless, deliveries/s"
    [p50]="latency p50 at 10k msg/s, us"
    [p99]="latency p99 at 10k msg/s, us"
    [publish]="reliable publish acked, msg/s"
    [replay]="replay of $replay_n, msg/s"
)
# The median of a cell's rounds (the mean of the middle two of an even count).
median() {
    local v=${R[$1]:-}
    [ -n "$v" ] || return 0
    python3 -c "import statistics, sys; m = statistics.median(float(x) for x in sys.argv[1:]); print(round(m) if m >= 1000 else round(m, 1))" $v
}
cell() { local m; m=$(median "$1,$2"); echo "${m:-${3:--}}"; }
ratio() {
    local a b
    a=$(median "udprelay,$2") b=$(median "$1,$2")
    [ -n "$a" ] && [ -n "$b" ] || { echo -; return; }
    python3 -c "b = $b; print(f'{$a / b:.2f}x' if b else '-')"
}
echo
rounds_note=
[ "$rounds" = 1 ] || rounds_note=", median of $rounds rounds"
echo "udprelay beside NATS and Aeron: 64-byte messages, 127.0.0.1$rounds_note, $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %12s %12s %12s %14s %14s\n' row udprelay NATS Aeron udprelay/NATS udprelay/Aeron
for r in "${row_names[@]}"; do
    na=
    case $r in publish|replay) na=n/a ;; esac
    printf '%-34s %12s %12s %12s %14s %14s\n' "${label[$r]}" "$(cell udprelay "$r")" "$(cell nats "$r")" \
        "$(cell aeron "$r" "$na")" "$(ratio nats "$r")" "$(ratio aeron "$r")"
done
if [ -n "${R[kernel,p50]:-}" ]; then
    echo "kernel baseline in the same udpbench run (no relay, one hop): p50 $(median kernel,p50) us, p99 $(median kernel,p99) us"
fi
if [ -n "${R[forwarder,p50]:-}" ]; then
    echo "minimal forwarder (two hops through a thread that only receives and sends, no log): p50 $(median forwarder,p50) us, p99 $(median forwarder,p99) us"
fi
for s in "${skipped[@]}"; do echo "$s"; done
echo "rates: higher is better (ratio > 1: udprelay ahead); latency: lower is better (ratio < 1: udprelay ahead)"

#!/bin/bash
# Instructions per message of the relay core loop, which the machine's load
# does not change: examples/relay_core_count under cachegrind at 12,000 and
# 2,000 iterations, the difference divided by the messages between them.
#
#   cargo build --release --example relay_core_count
#   tools/count-instructions.sh [SUBSCRIBERS] [BINARY]
set -euo pipefail
subs=${1:-1}
bin=${2:-target/release/examples/relay_core_count}
command -v valgrind > /dev/null || { echo "count-instructions: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "count-instructions: $bin not built (cargo build --release --example relay_core_count)" >&2; exit 1; }
refs() {
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" "$1" "$subs" 2>&1 \
        | awk '/I *refs:/ { gsub(",", "", $4); print $4 }'
}
per_datagram=$("$bin" 1 "$subs" 2>&1 | sed -n 's/.*per_dgram=\([0-9]*\).*/\1/p')
high=$(refs 12000)
low=$(refs 2000)
echo "subscribers=$subs instructions/message=$(( (high - low) / (10000 * per_datagram) ))"

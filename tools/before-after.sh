#!/usr/bin/env bash
# One sitting, before and after: runs the issue 9 throughput checks
# alternately on two builds, so the machine's drift hits both alike.
#
#   tools/before-after.sh BEFORE_TARGET AFTER_TARGET [ROUNDS]
#
# Each TARGET is a cargo target directory holding a release build of the
# binaries and of the core bench (`cargo build --release --bins` and
# `cargo bench --bench core --no-run` with CARGO_TARGET_DIR=TARGET, in a
# worktree of the commit to compare). ROUNDS defaults to 3. Prints one line
# per build per round: the fastest lossless rate (delivered msg/s and
# losses), the reliable rate (delivered msg/s, lost, duplicated) and
# relay_core/publish_append_fan_out_to_1 (criterion's low/estimate/high).
set -euo pipefail
before=${1:?usage: tools/before-after.sh BEFORE_TARGET AFTER_TARGET [ROUNDS]}
after=${2:?usage: tools/before-after.sh BEFORE_TARGET AFTER_TARGET [ROUNDS]}
rounds=${3:-3}

bench_of() {
    ls -t "$1"/release/deps/core-* 2>/dev/null | grep -v '\.d$' | head -1
}
# A field of the (first) run; a build from before {"runs": [...]} printed
# the run itself.
json_field() {
    python3 -c "import json,sys; j=json.load(sys.stdin); j=j['runs'][0] if 'runs' in j else j; print(*[round(j[k]) if isinstance(j[k], float) else j[k] for k in sys.argv[1:]])" "$@"
}

for round in $(seq 1 "$rounds"); do
    for side in before after; do
        target=$before
        [ "$side" = after ] && target=$after
        bin=$target/release
        core=$(bench_of "$target")
        [ -x "$bin/udpbench" ] && [ -n "$core" ] || {
            echo "no release build with the core bench in $target" >&2
            exit 1
        }
        lossless=$("$bin/udpbench" --spawn --find-lossless --duration 2s --json 2>/dev/null |
            json_field delivered_per_sec lost)
        reliable=$("$bin/udpbench" --spawn --reliable --duration 5s --json 2>/dev/null |
            json_field delivered_per_sec lost duplicated)
        relay_core=$(cd /tmp && "$core" --bench relay_core 2>&1 |
            grep -A2 publish_append_fan_out_to_1 | grep thrpt | sed 's/.*thrpt: *//')
        echo "round $round $side | lossless $lossless | reliable $reliable | core $relay_core"
    done
done

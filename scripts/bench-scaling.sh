#!/usr/bin/env bash
# Shard scaling: requests/s of `quring serve` and of the quinn + tokio peer
# (examples/quinn_peer.rs) as their shards / worker threads go from 1 up, each driven by the
# same `quring load` pinned to CPUs of its own.
#
# Usage: scripts/bench-scaling.sh
# Environment:
#   SHARDS       space-separated shard counts to try (default "1 2 4 8"); the server of N
#                shards runs on CPUs 0..N-1
#   LOAD_CPUS    `taskset -c` list for the load generator (default: the upper half of the CPUs)
#   THREADS      `quring load --threads` (default: the number of CPUs in LOAD_CPUS)
#   DURATION     measured seconds per run (3), WARMUP seconds before it (1)
#   QURING_BIN, QUINN_PEER_BIN   prebuilt binaries (default: build them with cargo)
# Workloads (perf protocol): rr = 64 connections x 16 streams, 1 KiB each way;
# hs = a new connection per request, 64 at once, resuming sessions.
# Prints one line per (shards, server, workload) and a markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cpus="$(nproc)"
SHARDS="${SHARDS:-1 2 4 8}"
LOAD_CPUS="${LOAD_CPUS:-$((cpus / 2))-$((cpus - 1))}"
THREADS="${THREADS:-$((cpus - cpus / 2))}"
DURATION="${DURATION:-3}"
WARMUP="${WARMUP:-1}"
if [[ -n "${QURING_BIN:-}" && -n "${QUINN_PEER_BIN:-}" ]]; then
    QURING="$QURING_BIN"
    PEER="$QUINN_PEER_BIN"
else
    cargo build --release --bin quring --example quinn_peer >&2
    QURING="target/release/quring"
    PEER="target/release/examples/quinn_peer"
fi
out="$(mktemp -d)"
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT

rows=()
for n in $SHARDS; do
    if ((n >= cpus)); then
        echo "bench-scaling: skipping $n shards: only $cpus CPUs" >&2
        continue
    fi
    for kind in quring quinn; do
        if [[ "$kind" == quring ]]; then
            taskset -c "0-$((n - 1))" "$QURING" serve --shards "$n" --listen 127.0.0.1:0 \
                --app echo,perf,discard >"$out/server" 2>&1 &
        else
            taskset -c "0-$((n - 1))" "$PEER" --listen 127.0.0.1:0 --threads "$n" >"$out/server" 2>&1 &
        fi
        server=$!
        addr=""
        for _ in $(seq 200); do
            addr="$(grep -o 'listening on [0-9.]*:[0-9]*' "$out/server" | head -1 | cut -d' ' -f3 || true)"
            [[ -n "$addr" ]] && break
            kill -0 "$server" 2>/dev/null || { cat "$out/server" >&2; exit 1; }
            sleep 0.05
        done
        [[ -n "$addr" ]] || { echo "bench-scaling: $kind did not start" >&2; exit 1; }
        for w in rr hs; do
            if [[ "$w" == rr ]]; then
                args=(--conns 64 --streams 16 --request-size 1024 --response-size 1024)
            else
                args=(--new-conn-per-request --conns 64 --request-size 0 --response-size 1024 --resume)
            fi
            timeout -k 5 $((WARMUP + DURATION + 60)) taskset -c "$LOAD_CPUS" "$QURING" load "$addr" \
                --insecure --threads "$THREADS" --protocol perf "${args[@]}" \
                --duration "$DURATION" --warmup "$WARMUP" --json "$out/run.json" >/dev/null 2>&1 || true
            row="$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(sys.argv[2], sys.argv[3], sys.argv[4], round(d["requests_per_s"]), d["latency_us"]["p50"], d["errors"]["total"])
' "$out/run.json" "$n" "$kind" "$w")"
            echo "$row" >&2
            rows+=("$row")
        done
        kill "$server"
        wait "$server" 2>/dev/null || true
        server=""
    done
done

echo "### Shard scaling: requests/s (load: $THREADS threads on CPUs $LOAD_CPUS, ${DURATION} s after ${WARMUP} s warm-up)"
echo
echo "| shards | workload | quring | quinn | quring/quinn |"
echo "|---:|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}" | python3 -c '
import sys
r = {}
for line in sys.stdin:
    n, kind, w, rate, p50, err = line.split()
    r[(int(n), w, kind)] = (int(rate), int(err))
for (n, w) in sorted({(n, w) for (n, w, _) in r}):
    q, qn = r.get((n, w, "quring"), (0, 0)), r.get((n, w, "quinn"), (0, 0))
    ratio = q[0] / qn[0] if qn[0] else float("nan")
    note = "" if q[1] == 0 and qn[1] == 0 else " (errors: %d/%d)" % (q[1], qn[1])
    print(f"| {n} | {w} | {q[0]:,} | {qn[0]:,} | {ratio:.2f}x{note} |")
'

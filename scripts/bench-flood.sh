#!/usr/bin/env bash
# Handshake-flood latency: does a flood of new handshakes slow the connections a server
# already has? A probe (`quring load --rate`, open loop: latency counts from each request's
# scheduled start) echoes small requests over a few established connections at a fixed low
# rate, once alone (baseline) and once while flooders (`quring load --new-conn-per-request`)
# open new connections, with full handshakes, as fast as they can. The probe's connections are
# established before the flood starts. Against `quring serve --app echo` in the configurations
# CONFIGS names: `default` (handshake workers on, no `--max-handshakes`), `limit` (with
# `--max-handshakes`) and `inline` (`--no-handshake-workers`: first flights on the shard).
# Prints, per server configuration, the medians over RUNS of the probe's p50 and p99 with and
# without the flood, the ratio p99(flood) / p99(baseline), the lowest p99 of any run with and
# without the flood and their ratio (other work on the machine only ever adds latency, so on a
# shared or virtual machine the best run is the closest to the server's own figure), the
# flood's handshake rate and the server's Retry count.
#
# Usage: scripts/bench-flood.sh [--help]
# Settings, by environment variable:
#
#   RUNS            repetitions of every case; medians reported (3)
#   DURATION        measured seconds of each probe run (5), after 1 s of warm-up
#   SHARDS          server shards (1)
#   RATE            probe requests per second, all connections together (1000)
#   PROBE_CONNS     probe connections (4)
#   REQUEST_SIZE    probe request (and echo) size in bytes (64)
#   FLOODERS        flooding `quring load` processes (1)
#   FLOOD_CONNS     handshakes each flooder keeps in flight (32), at most with FLOOD_RATE
#   FLOOD_RATE      handshakes per second each flooder starts, on a fixed schedule (open
#                   loop), so that every configuration faces the same flood; empty: as fast
#                   as the server answers (closed loop; the default)
#   MAX_HANDSHAKES  the `--max-handshakes` of the `limit` configuration (16)
#   CONFIGS         server configurations to run, of default, limit, inline (all three)
#   SERVER_CPUS     `taskset -c` list for the server (0)
#   PROBE_CPUS      `taskset -c` list for the probe (1)
#   FLOOD_CPUS      `taskset -c` list for the flooders (1)
#   FLOOD_SCHED     how the flooders run: `normal`, `nice` (nice 19) or `idle` (SCHED_IDLE:
#                   only when nothing else on their CPUs wants to run) (normal)
#   REALTIME        1: the server and the probe run under SCHED_FIFO (`chrt -f 1`), so that
#                   nothing else on their CPUs (the flooders, other work) delays them; needs
#                   CAP_SYS_NICE (0)
#   QURING_BIN      the `quring` binary to run (default: build the release binary)
#
# On a machine with few cores, keep the server's CPUs apart from the clients': the figure is
# the server's. Where the probe shares CPUs with the flooders (or with other work), run with
# REALTIME=1 so that only the server's own delays show. Every process runs under `timeout`;
# the whole script takes about RUNS x 2 x (configurations) x (DURATION + 5) seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"
SHARDS="${SHARDS:-1}"
RATE="${RATE:-1000}"
PROBE_CONNS="${PROBE_CONNS:-4}"
REQUEST_SIZE="${REQUEST_SIZE:-64}"
FLOODERS="${FLOODERS:-1}"
FLOOD_CONNS="${FLOOD_CONNS:-32}"
FLOOD_RATE="${FLOOD_RATE:-}"
MAX_HANDSHAKES="${MAX_HANDSHAKES:-16}"
CONFIGS="${CONFIGS:-default limit inline}"
SERVER_CPUS="${SERVER_CPUS:-0}"
PROBE_CPUS="${PROBE_CPUS:-1}"
FLOOD_CPUS="${FLOOD_CPUS:-1}"
FLOOD_SCHED="${FLOOD_SCHED:-normal}"
REALTIME="${REALTIME:-0}"

# The probe's warm-up, and how far into it the flood starts: the probe's connections are
# established before the flood (the figure is about connections a server already has), and
# the flood runs at full rate before the probe's measured seconds begin.
WARMUP=2
PROBE_LEAD=1
# How long a server gets to print its `listening on` line, and to exit after SIGTERM.
STARTUP_SECS=20
STOP_SECS=5

die() {
    echo "bench-flood: error: $*" >&2
    exit 1
}
note() {
    echo "bench-flood: $*" >&2
}

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo pipefail$/{/^set/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    "") ;;
    *) die "unknown argument '$1' (settings are environment variables, see --help)" ;;
esac

for config in $CONFIGS; do
    case "$config" in
        default | limit | inline) ;;
        *) die "CONFIGS: '$config' is not default, limit or inline" ;;
    esac
done
is_count() { [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]; }
for v in RUNS DURATION SHARDS RATE PROBE_CONNS REQUEST_SIZE FLOODERS FLOOD_CONNS MAX_HANDSHAKES; do
    is_count "${!v}" || die "$v '${!v}' is not a whole number from 1"
done
flood_rate=()
if [[ -n "$FLOOD_RATE" ]]; then
    is_count "$FLOOD_RATE" || die "FLOOD_RATE '$FLOOD_RATE' is not a whole number from 1"
    flood_rate=(--rate "$FLOOD_RATE")
fi
case "$FLOOD_SCHED" in
    idle) flood_sched=(chrt --idle 0) ;;
    nice) flood_sched=(nice -n 19) ;;
    normal) flood_sched=() ;;
    *) die "FLOOD_SCHED '$FLOOD_SCHED' is not idle, nice or normal" ;;
esac
case "$REALTIME" in
    0) realtime=() ;;
    1)
        realtime=(chrt --fifo 1)
        chrt --fifo 1 true 2>/dev/null || die "REALTIME=1: chrt --fifo is not permitted here"
        ;;
    *) die "REALTIME '$REALTIME' is not 0 or 1" ;;
esac
for tool in python3 taskset timeout chrt; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
for cpus in "$SERVER_CPUS" "$PROBE_CPUS" "$FLOOD_CPUS"; do
    taskset -c "$cpus" true 2>/dev/null || die "'$cpus' is not a usable \`taskset -c\` CPU list"
done

if [[ -n "${QURING_BIN:-}" ]]; then
    QURING="$QURING_BIN"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH"
    note "building quring (release)"
    cargo build --release --bin quring >&2
    target_dir="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    QURING="$target_dir/release/quring"
fi
[[ -x "$QURING" ]] || die "$QURING was not built"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/bench-flood.XXXXXX")"
server_pid=""
flood_pids=()

# Stops the server (SIGTERM, SIGKILL after STOP_SECS); its counters go to its log.
stop_server() {
    local pid="$server_pid" i
    [[ -n "$pid" ]] || return 0
    server_pid=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_SECS * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_flood() {
    local pid
    for pid in "${flood_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    flood_pids=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_flood
    stop_server
    if [[ "$rc" -ne 0 ]]; then
        note "logs kept in $scratch"
    else
        rm -rf "$scratch"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the server with extra arguments "$@", its output in $log.*; sets server_addr.
start_server() {
    local i line
    taskset -c "$SERVER_CPUS" "${realtime[@]}" timeout -s KILL 600 "$QURING" serve --listen 127.0.0.1:0 \
        --shards "$SHARDS" --no-pin --app echo "$@" </dev/null >"$log.server" 2>&1 &
    server_pid=$!
    for ((i = 0; i < STARTUP_SECS * 20; i++)); do
        line="$(grep -m1 -o 'listening on [^ ,|]*' "$log.server" 2>/dev/null || true)"
        if [[ -n "$line" ]]; then
            server_addr="${line#listening on }"
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || { tail "$log.server" >&2; die "the server exited"; }
        sleep 0.05
    done
    die "the server printed no \`listening on\` line within ${STARTUP_SECS}s"
}

# One case: configuration $1 (default|limit), flood $2 (no|yes), run $3.
run_case() {
    local config="$1" flood="$2" run="$3" i rc=0
    local -a extra=()
    case "$config" in
        limit) extra=(--max-handshakes "$MAX_HANDSHAKES") ;;
        inline) extra=(--no-handshake-workers) ;;
    esac
    log="$scratch/$config-$flood-$run"
    start_server "${extra[@]}"
    taskset -c "$PROBE_CPUS" "${realtime[@]}" timeout -s KILL $((WARMUP + DURATION + 30)) \
        "$QURING" load "$server_addr" --insecure --conns "$PROBE_CONNS" --threads 1 --no-pin \
        --rate "$RATE" --request-size "$REQUEST_SIZE" --warmup "$WARMUP" \
        --duration "$DURATION" --json "$log.probe.json" >"$log.probe" 2>&1 &
    local probe_pid=$!
    if [[ "$flood" == yes ]]; then
        sleep "$PROBE_LEAD"
        for ((i = 0; i < FLOODERS; i++)); do
            taskset -c "$FLOOD_CPUS" "${flood_sched[@]}" \
                timeout -s KILL $((WARMUP + DURATION + 30)) \
                "$QURING" load "$server_addr" --insecure --new-conn-per-request \
                --conns "$FLOOD_CONNS" --threads 1 --no-pin --request-size "$REQUEST_SIZE" \
                "${flood_rate[@]}" \
                --duration $((WARMUP - PROBE_LEAD + DURATION + 1)) \
                --json "$log.flood$i.json" >"$log.flood$i" 2>&1 &
            flood_pids+=($!)
        done
    fi
    wait "$probe_pid" || rc=$?
    stop_flood
    stop_server
    [[ "$rc" -eq 0 ]] || { tail "$log.probe" >&2; die "the probe failed ($config, flood $flood)"; }
    printf '%s\t%s\t%s\t%s\n' "$config" "$flood" "$run" "$log" >>"$scratch/manifest"
    python3 "$scratch/report.py" progress "$scratch/manifest"
}

cat >"$scratch/report.py" <<'PY'
import glob
import json
import re
import statistics
import sys


def record(line):
    config, flood, run, log = line.rstrip("\n").split("\t")
    with open(log + ".probe.json") as f:
        probe = json.load(f)
    floods = []
    for path in sorted(glob.glob(log + ".flood*.json")):
        with open(path) as f:
            floods.append(json.load(f))
    stats = {}
    with open(log + ".server") as f:
        for l in f:
            if l.startswith("stats total "):
                stats = dict(kv.split("=", 1) for kv in l.split()[2:])
    return {
        "config": config, "flood": flood, "run": int(run),
        "p50": probe["latency_us"]["p50"], "p99": probe["latency_us"]["p99"],
        "probe_errors": probe["errors"]["total"],
        "handshakes_per_s": sum(f["connections"]["per_s"] for f in floods),
        "retry_sent": int(stats.get("retry_sent", 0)),
        "server_handshakes": int(stats.get("conns_accepted", 0)),
    }


def records(manifest):
    with open(manifest) as f:
        return [record(l) for l in f if l.strip()]


def progress(manifest):
    r = records(manifest)[-1]
    print(f"  run {r['run']} {r['config']:<7} flood {r['flood']:<3}  p50 {r['p50']:9.1f} µs"
          f"  p99 {r['p99']:9.1f} µs  flood {r['handshakes_per_s']:8.0f} handshakes/s"
          f"  retries {r['retry_sent']}  probe errors {r['probe_errors']}", file=sys.stderr)


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def report(manifest, settings):
    rs = records(manifest)
    print(settings)
    print()
    print("| server | p50 baseline | p99 baseline | p50 flood | p99 flood | p99 flood / baseline "
          "| best p99 baseline | best p99 flood | best flood / best baseline "
          "| flood handshakes/s | Retries per run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for config in dict.fromkeys(r["config"] for r in rs):
        base = [r for r in rs if r["config"] == config and r["flood"] == "no"]
        flood = [r for r in rs if r["config"] == config and r["flood"] == "yes"]
        if not base or not flood:
            continue
        b99, f99 = med(base, "p99"), med(flood, "p99")
        bb, bf = min(r["p99"] for r in base), min(r["p99"] for r in flood)
        print(f"| {config} | {med(base, 'p50'):.1f} µs | {b99:.1f} µs | {med(flood, 'p50'):.1f} µs "
              f"| {f99:.1f} µs | {f99 / b99:.2f} | {bb:.1f} µs | {bf:.1f} µs | {bf / bb:.2f} "
              f"| {med(flood, 'handshakes_per_s'):.0f} | {med(flood, 'retry_sent'):.0f} |")


if sys.argv[1] == "progress":
    progress(sys.argv[2])
else:
    report(sys.argv[2], sys.argv[3])
PY

note "server on CPUs $SERVER_CPUS ($SHARDS shards), probe on $PROBE_CPUS, $FLOODERS flooder(s) on $FLOOD_CPUS ($FLOOD_SCHED), realtime $REALTIME"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for ((run = 1; run <= RUNS; run++)); do
    for config in $CONFIGS; do
        for flood in no yes; do
            run_case "$config" "$flood" "$run"
        done
    done
done
settings="medians of $RUNS runs; server: $SHARDS shard(s) on CPUs $SERVER_CPUS; probe: \
$PROBE_CONNS connections, $RATE requests/s of $REQUEST_SIZE B, ${DURATION} s, on CPUs \
$PROBE_CPUS; flood: $FLOODERS x $FLOOD_CONNS handshakes in flight${FLOOD_RATE:+ at most, $FLOOD_RATE/s each,} on CPUs \
$FLOOD_CPUS ($FLOOD_SCHED); limit: --max-handshakes $MAX_HANDSHAKES; realtime $REALTIME; load average \
before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$scratch/report.py" report "$scratch/manifest" "$settings"

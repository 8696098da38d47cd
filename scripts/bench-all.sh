#!/usr/bin/env bash
# The whole benchmark matrix, written up as BENCHMARKS.md.
#
# Usage: scripts/bench-all.sh [--out PATH] [--note TEXT] [BENCH-LOAD FLAGS...]
#
#   --out PATH   where the write-up goes (BENCHMARKS.md at the repository root)
#   --note TEXT  the machine's state, printed under the machine line (e.g. "quiet, nothing
#                else running"); also NOTE
#
# It runs scripts/bench-load.sh with every workload (bulk, rr, handshakes, resumed, 0rtt,
# datagrams, rtt, rtt-busy) against quring, quinn + tokio and, for the round trips, the raw
# UDP echo (`quring serve --app udp-echo` under examples/udp_rtt.rs), then writes the date,
# commit, machine (CPU model, CPUs, kernel, load average before and after), settings, exact
# commands and, per workload, medians with ratios against the issue's targets. Everything
# else is bench-load.sh's: its flags and variables (RUNS, DURATION, WARMUP, SHARDS, THREADS,
# SERVER_CPUS=0, LOAD_CPUS=1, BUSY_POLL_US, QURING_BIN, QUINN_PEER_BIN, UDP_RTT_BIN, ...) pass
# through; see `scripts/bench-load.sh --help`. Its raw runs go to
# target/bench-all/<time>.json.
#
# Before the runs, if tests/allocations.rs exists, `cargo test --release --test allocations
# -- --nocapture` runs (bounded by ALLOC_TEST_SECS, 1200) and its verdict fills the
# allocations row; without it the row says "not measured".
#
# Bounded: every server and client run has its own time limit in bench-load.sh, which also
# stops its servers on any exit; an interrupt here stops bench-load.sh and the test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OUT="$ROOT/BENCHMARKS.md"
NOTE="${NOTE:-}"
ALLOC_TEST_SECS="${ALLOC_TEST_SECS:-1200}"

die() {
    echo "bench-all: error: $*" >&2
    exit 1
}
note() {
    echo "bench-all: $*" >&2
}

command_line="scripts/bench-all.sh"
forward=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            sed -n '2,/^set -euo pipefail$/{/^set/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        --out | --note)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            if [[ "$1" == --out ]]; then OUT="$2"; else NOTE="$2"; fi
            shift 2
            ;;
        --out=*) OUT="${1#*=}"; shift ;;
        --note=*) NOTE="${1#*=}"; shift ;;
        --json | --json=*) die "--json is bench-all's own (target/bench-all/<time>.json)" ;;
        *)
            command_line+=" $(printf '%q' "$1")"
            forward+=("$1")
            shift
            ;;
    esac
done
for var in RUNS DURATION WARMUP SHARDS THREADS SERVER_CPUS LOAD_CPUS BUSY_POLL_US WORKLOADS SERVERS; do
    if [[ -n "${!var:-}" ]]; then
        command_line="$var=$(printf '%q' "${!var}") $command_line"
    fi
done
[[ "$ALLOC_TEST_SECS" =~ ^[1-9][0-9]{0,4}$ ]] || die "ALLOC_TEST_SECS '$ALLOC_TEST_SECS' is not a number of seconds"
command -v python3 >/dev/null 2>&1 || die "python3 not found in PATH"

stamp="$(date +%Y%m%d-%H%M%S)"
mkdir -p target/bench-all
json="$ROOT/target/bench-all/$stamp.json"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/bench-all.XXXXXX")"
child=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$child" ]]; then
        # bench-load.sh stops its own servers when it ends; the test dies with its process.
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    rm -rf "$scratch"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a signal to this script is
# handled at once (and stops it through cleanup); returns its status.
run_child() {
    local rc=0
    "$@" &
    child=$!
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//' || true)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit+=" (with uncommitted changes)"
fi
meta=(
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    --meta "commit=$commit"
    --meta "cpu=${cpu_model:-unknown CPU}"
    --meta "cores=$(getconf _NPROCESSORS_ONLN)"
    --meta "kernel=$(uname -sr)"
    --meta "note=$NOTE"
    --meta "command=$command_line"
    --meta "json_name=target/bench-all/$stamp.json"
)

alloc=()
if [[ -f tests/allocations.rs ]]; then
    note "running the allocations test (at most ${ALLOC_TEST_SECS}s)"
    alloc_status=0
    run_child timeout -k 10 "$ALLOC_TEST_SECS" cargo test --release --test allocations \
        -- --nocapture >"$scratch/alloc.log" 2>&1 || alloc_status=$?
    alloc=(--alloc-log "$scratch/alloc.log" --alloc-status "$alloc_status")
else
    note "no tests/allocations.rs: allocations not measured"
fi

meta+=(--meta "load_before=$(loadavg)")
run_child "$ROOT/scripts/bench-load.sh" --json "$json" "${forward[@]}" >"$scratch/table.md" ||
    die "scripts/bench-load.sh failed"
meta+=(--meta "load_after=$(loadavg)")

# The binaries bench-load.sh ran, for the write-up's commands.
read_bins="$(python3 - "$json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
runs = doc["runs"]
quring = next((r["server_command"].split()[0] for r in runs if r["server"] != "quinn"), "")
peer = next((r["server_command"].split()[0] for r in runs if r["server"] == "quinn"), "")
rtt = next((r["load_command"].split()[0] for r in runs if r["server"] == "udp-echo"), "")
print(f"quring_bin={quring}\nquinn_peer_bin={peer}\nudp_rtt_bin={rtt}")
PY
)"
while IFS= read -r line; do
    meta+=(--meta "$line")
done <<<"$read_bins"

python3 "$ROOT/scripts/bench_report.py" benchmarks --json "$json" --out "$OUT" "${meta[@]}" \
    "${alloc[@]}"
cat "$scratch/table.md"
note "wrote $OUT (raw runs: $json)"

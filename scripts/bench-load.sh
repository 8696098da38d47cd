#!/usr/bin/env bash
# Load benchmark: `quring serve --app echo,perf,discard` against the equivalent quinn + tokio
# server (examples/quinn_peer.rs), both driven by the same `quring load` client.
#
# Usage: scripts/bench-load.sh [--runs N] [--duration S] [--warmup S] [--shards N]
#            [--threads N] [--server-cpus LIST] [--load-cpus LIST] [--workloads LIST]
#            [--servers LIST] [--json PATH]
# Every flag has an environment variable of the same name in capitals (RUNS, DURATION, ...);
# a flag wins over its variable.
#
#   RUNS         repetitions; servers alternate which goes first; medians reported (3)
#   DURATION     measured seconds of each load run, `quring load --duration` (5)
#   WARMUP       unmeasured seconds before it, `quring load --warmup` (1)
#   SHARDS       quring shards / quinn tokio worker threads (1)
#   THREADS      `quring load --threads` (1)
#   SERVER_CPUS  `taskset -c` list for the servers (0)
#   LOAD_CPUS    `taskset -c` list for the load client (1); must not overlap SERVER_CPUS
#   WORKLOADS    comma list of bulk,rr,handshakes,resumed,0rtt (all)
#   SERVERS      comma list of quring,quinn (both)
#   JSON         where all raw runs go (target/bench-load/<time>.json)
# QURING_BIN and QUINN_PEER_BIN, when set, replace the binaries built here (the release
# `quring` and `examples/quinn_peer` of the cargo target directory).
#
# Workloads (all `--protocol perf`):
#   bulk        1 conn, 1 stream, 100 MB responses     Gbit/s          server ns per byte
#   rr          1 conn, 100 streams, 1 KiB each way    requests/s      server µs per request
#   handshakes  new connection per request, 16 at once new conns/s     server µs per connection
#   resumed     same, resuming TLS sessions (--resume)
#   0rtt        same, with the request in 0-RTT data (--resume --0rtt)
#
# Every server process serves one load run and is stopped after it, so each run starts with a
# fresh certificate and empty ticket caches on both sides. Server CPU is utime + stime from
# /proc/PID/stat. It is read before and after each load run (recorded as `total`) and at the
# ends of the measured window, WARMUP and WARMUP + DURATION seconds after the load started:
# the per-unit cost divides the window's CPU time by the window's length times the measured rate.
# The markdown table goes to stdout, progress to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-1}"
SHARDS="${SHARDS:-1}"
THREADS="${THREADS:-1}"
SERVER_CPUS="${SERVER_CPUS:-0}"
LOAD_CPUS="${LOAD_CPUS:-1}"
WORKLOADS="${WORKLOADS:-bulk,rr,handshakes,resumed,0rtt}"
SERVERS="${SERVERS:-quring,quinn}"
JSON="${JSON:-}"

# How long a server gets to print its `listening on` line, and to exit after SIGTERM.
STARTUP_SECS=20
STOP_SECS=5
# A load run gets WARMUP + DURATION + this before it is killed.
LOAD_SLACK_SECS=60

die() {
    echo "bench-load: error: $*" >&2
    exit 1
}
note() {
    echo "bench-load: $*" >&2
}
usage() {
    sed -n '2,/^set -euo pipefail$/{/^set/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

while [[ $# -gt 0 ]]; do
    opt="$1"
    case "$opt" in
        -h | --help)
            usage
            exit 0
            ;;
        --runs | --duration | --warmup | --shards | --threads | --server-cpus | --load-cpus | \
            --workloads | --servers | --json)
            [[ $# -ge 2 ]] || die "$opt needs a value"
            value="$2"
            shift 2
            ;;
        --*=*)
            value="${opt#*=}"
            opt="${opt%%=*}"
            shift
            ;;
        *) die "unknown argument '$opt' (see --help)" ;;
    esac
    case "$opt" in
        --runs) RUNS="$value" ;;
        --duration) DURATION="$value" ;;
        --warmup) WARMUP="$value" ;;
        --shards) SHARDS="$value" ;;
        --threads) THREADS="$value" ;;
        --server-cpus) SERVER_CPUS="$value" ;;
        --load-cpus) LOAD_CPUS="$value" ;;
        --workloads) WORKLOADS="$value" ;;
        --servers) SERVERS="$value" ;;
        --json) JSON="$value" ;;
        *) die "unknown argument '$opt' (see --help)" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Checking the settings

is_count() { [[ "$1" =~ ^[1-9][0-9]{0,3}$ ]]; }
is_secs() { [[ "$1" =~ ^[0-9]{1,5}(\.[0-9]{1,3})?$ ]]; }

is_count "$RUNS" || die "RUNS '$RUNS' is not a count from 1 to 9999"
is_count "$SHARDS" || die "SHARDS '$SHARDS' is not a count from 1 to 9999"
is_count "$THREADS" || die "THREADS '$THREADS' is not a count from 1 to 9999"
is_secs "$DURATION" || die "DURATION '$DURATION' is not a number of seconds"
is_secs "$WARMUP" || die "WARMUP '$WARMUP' is not a number of seconds"
awk -v d="$DURATION" 'BEGIN { exit !(d > 0) }' || die "DURATION must be more than 0"

# Prints the CPUs of a `taskset -c` list (N, N-M, comma-separated), one per line.
expand_cpus() {
    local part lo hi cpu
    local -a parts
    IFS=, read -r -a parts <<<"$1"
    [[ ${#parts[@]} -gt 0 ]] || return 1
    for part in "${parts[@]}"; do
        if [[ "$part" =~ ^([0-9]{1,4})-([0-9]{1,4})$ ]]; then
            lo="${BASH_REMATCH[1]}"
            hi="${BASH_REMATCH[2]}"
        elif [[ "$part" =~ ^[0-9]{1,4}$ ]]; then
            lo="$part"
            hi="$part"
        else
            return 1
        fi
        ((10#$lo <= 10#$hi)) || return 1
        for ((cpu = 10#$lo; cpu <= 10#$hi; cpu++)); do
            echo "$cpu"
        done
    done
}

server_cpus="$(expand_cpus "$SERVER_CPUS")" || die "SERVER_CPUS '$SERVER_CPUS' is not a CPU list"
load_cpus="$(expand_cpus "$LOAD_CPUS")" || die "LOAD_CPUS '$LOAD_CPUS' is not a CPU list"
shared="$(comm -12 <(sort -u <<<"$server_cpus") <(sort -u <<<"$load_cpus") | tr '\n' ' ')"
[[ -z "$shared" ]] || die "SERVER_CPUS and LOAD_CPUS share CPU(s) $shared"
n_server_cpus="$(sort -u <<<"$server_cpus" | wc -l)"
n_load_cpus="$(sort -u <<<"$load_cpus" | wc -l)"
((SHARDS <= n_server_cpus)) || note "warning: $SHARDS shards on $n_server_cpus server CPU(s)"
((THREADS <= n_load_cpus)) || note "warning: $THREADS load threads on $n_load_cpus load CPU(s)"

# The `quring load` arguments and the figure of each workload.
workload_args() {
    local conn=(--protocol perf --new-conn-per-request --conns 16 --request-size 0
        --response-size 1024)
    case "$1" in
        bulk) echo --protocol perf --conns 1 --streams 1 --request-size 0 --response-size 100000000 ;;
        rr) echo --protocol perf --conns 1 --streams 100 --request-size 1024 --response-size 1024 ;;
        handshakes) echo "${conn[@]}" ;;
        resumed) echo "${conn[@]}" --resume ;;
        0rtt) echo "${conn[@]}" --resume --0rtt ;;
        *) return 1 ;;
    esac
}

IFS=, read -r -a workloads <<<"$WORKLOADS"
[[ ${#workloads[@]} -gt 0 ]] || die "WORKLOADS is empty"
for w in "${workloads[@]}"; do
    workload_args "$w" >/dev/null || die "unknown workload '$w' (bulk, rr, handshakes, resumed, 0rtt)"
done
IFS=, read -r -a servers <<<"$SERVERS"
[[ ${#servers[@]} -gt 0 ]] || die "SERVERS is empty"
for s in "${servers[@]}"; do
    [[ "$s" == quring || "$s" == quinn ]] || die "unknown server '$s' (quring, quinn)"
done

for tool in cargo python3 taskset timeout getconf awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
CLK_TCK="$(getconf CLK_TCK)"
[[ "$CLK_TCK" =~ ^[1-9][0-9]*$ ]] || die "getconf CLK_TCK gave '$CLK_TCK'"

# ---------------------------------------------------------------------------------------------
# Building

note "building quring and the quinn peer (release)"
cargo build --release --bin quring --example quinn_peer >&2
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
QURING="${QURING_BIN:-$target_dir/release/quring}"
PEER="${QUINN_PEER_BIN:-$target_dir/release/examples/quinn_peer}"
[[ -x "$QURING" ]] || die "$QURING was not built"
[[ -x "$PEER" ]] || die "$PEER was not built"
"$QURING" load --help >/dev/null 2>&1 || die "$QURING has no \`load\` subcommand"

stamp="$(date +%Y%m%d-%H%M%S)"
if [[ -z "$JSON" ]]; then
    mkdir -p target/bench-load
    JSON="$ROOT/target/bench-load/$stamp.json"
fi

# ---------------------------------------------------------------------------------------------
# Processes

scratch="$(mktemp -d "${TMPDIR:-/tmp}/bench-load.XXXXXX")"
keep_scratch=0
server_pid=""
load_pid=""
sleep_pid=""

# Stops the running server: SIGTERM, SIGKILL after STOP_SECS. Prints a warning if it did not
# exit cleanly.
stop_server() {
    local pid="$server_pid" i rc=0
    [[ -n "$pid" ]] || return 0
    server_pid=""
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_SECS * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "warning: server $pid did not exit within ${STOP_SECS}s of SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # 143: the process was killed by SIGTERM before its handler was installed.
    if [[ "$rc" -ne 0 && "$rc" -ne 143 ]]; then
        note "warning: server $pid exited with status $rc"
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$sleep_pid" ]]; then
        kill -TERM "$sleep_pid" 2>/dev/null || true
    fi
    if [[ -n "$load_pid" ]]; then
        kill -TERM "$load_pid" 2>/dev/null || true
        wait "$load_pid" 2>/dev/null || true
    fi
    stop_server
    if [[ "$rc" -ne 0 || "$keep_scratch" -eq 1 ]]; then
        note "logs kept in $scratch"
    else
        rm -rf "$scratch"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the last lines of a log to stderr.
show_log() {
    if [[ -s "$1" ]]; then
        echo "--- $1 (last 20 lines):" >&2
        tail -n 20 "$1" >&2
    fi
}

# Starts server $1 (quring or quinn) with its output in $2.{out,err}; sets server_pid and
# server_addr.
start_server() {
    local kind="$1" log="$2" i line
    local -a cmd
    case "$kind" in
        quring) cmd=("$QURING" serve --listen 127.0.0.1:0 --shards "$SHARDS" --app "echo,perf,discard") ;;
        quinn) cmd=("$PEER" --listen 127.0.0.1:0 --threads "$SHARDS") ;;
    esac
    # taskset execs the server, so $! is the server's own PID.
    taskset -c "$SERVER_CPUS" "${cmd[@]}" </dev/null >"$log.out" 2>"$log.err" &
    server_pid=$!
    server_addr=""
    for ((i = 0; i < STARTUP_SECS * 20; i++)); do
        line="$(grep -m1 -o 'listening on [^ ,|]*' "$log.out" || true)"
        if [[ -n "$line" ]]; then
            server_addr="${line#listening on }"
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            show_log "$log.out"
            show_log "$log.err"
            die "$kind server exited before listening"
        fi
        sleep 0.05
    done
    show_log "$log.err"
    die "$kind server printed no \`listening on\` line within ${STARTUP_SECS}s"
}

# Prints utime + stime of process $1 in clock ticks.
cpu_ticks() {
    local stat rest
    local -a f
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # The command name (field 2) may hold spaces; the fields after its ')' are plain, field 3
    # first, so utime (14) and stime (15) are the 12th and 13th.
    rest="${stat##*) }"
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

# Prints the current time in seconds (microsecond resolution).
now() { echo "$EPOCHREALTIME"; }

# Sleeps until time $1 (as printed by now). The sleep runs in the background so that a signal
# to this script is handled at once.
sleep_until() {
    local left
    left="$(awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN { d = t - n; printf "%.6f", (d > 0 ? d : 0) }')"
    sleep "$left" &
    sleep_pid=$!
    wait "$sleep_pid"
    sleep_pid=""
}

add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a + b }'; }

# ---------------------------------------------------------------------------------------------
# Runs

# The figures: `progress` prints the manifest's last run (to stderr), `report` writes the JSON
# and prints the markdown tables.
cat >"$scratch/report.py" <<'PY'
import json
import statistics
import sys

# workload: figure unit, CPU-per-unit unit, units per second of figure, CPU seconds scale
UNITS = {
    "bulk": ("Gbit/s", "ns/byte", lambda r: r * 1e9 / 8, 1e9),
    "rr": ("requests/s", "µs/request", lambda r: r, 1e6),
    "handshakes": ("connections/s", "µs/connection", lambda r: r, 1e6),
    "resumed": ("connections/s", "µs/connection", lambda r: r, 1e6),
    "0rtt": ("connections/s", "µs/connection", lambda r: r, 1e6),
}


def finite(x):
    return x if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") else None


def figure(workload, load):
    if workload == "bulk":
        return load["gbit_per_s"]
    if workload == "rr":
        return load["requests_per_s"]
    return load["connections"]["per_s"]


def records(manifest, hz):
    out = []
    with open(manifest) as f:
        for line in f:
            (run, w, s, path, rc, before, warm, end, after, t_warm, t_end,
             cmd) = line.rstrip("\n").split("\t")
            with open(path) as j:
                load = json.load(j)
            fig_unit, cost_unit, per_s, scale = UNITS[w]
            window = float(t_end) - float(t_warm)
            cpu = (int(end) - int(warm)) / hz
            fig = figure(w, load)
            units = per_s(fig) * window
            out.append({
                "run": int(run), "workload": w, "server": s, "exit_status": int(rc),
                "load_command": cmd,
                "figure": fig, "figure_unit": fig_unit,
                "cpu_per_unit": finite(cpu * scale / units) if units > 0 else None,
                "cpu_per_unit_unit": cost_unit,
                "server_cpu": {
                    "clk_tck": hz, "window_s": cpu, "window_wall_s": window,
                    "window_busy": finite(cpu / window) if window > 0 else None,
                    "total_s": (int(after) - int(before)) / hz,
                    "ticks": {"before": int(before), "window_start": int(warm),
                              "window_end": int(end), "after": int(after)},
                },
                "load": load,
            })
    return out


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def progress(argv):
    manifest, hz, runs = argv
    r = records(manifest, int(hz))[-1]
    c = r["load"]["connections"]
    busy = r["server_cpu"]["window_busy"]
    print(f"  run {r['run']}/{runs} {r['workload']:<10} {r['server']:<6} "
          f"{fmt(r['figure']):>12} {r['figure_unit']:<13} server CPU "
          f"{fmt(r['cpu_per_unit'], 3):>9} {r['cpu_per_unit_unit']:<13} "
          f"(busy {fmt(None if busy is None else busy * 100, 0)}%, resumed "
          f"{c['resumed_pct']:.0f}%, 0-RTT {c['zero_rtt_pct']:.0f}%, "
          f"errors {r['load']['errors']['total']})")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return finite(a / b) if a is not None and b else None


def report(argv):
    (manifest, hz, runs, out, duration, warmup, shards, threads, server_cpus, load_cpus, rev,
     stamp) = argv
    runs_ = records(manifest, int(hz))
    workloads, servers = [], []
    for r in runs_:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
        if r["server"] not in servers:
            servers.append(r["server"])
    summary, ratios = [], []
    for w in workloads:
        row = {}
        for s in servers:
            rs = [r for r in runs_ if r["workload"] == w and r["server"] == s]
            if not rs:
                continue
            row[s] = {
                "workload": w, "server": s, "runs": len(rs),
                "figure": median([r["figure"] for r in rs]),
                "figure_unit": rs[0]["figure_unit"],
                "cpu_per_unit": median([r["cpu_per_unit"] for r in rs]),
                "cpu_per_unit_unit": rs[0]["cpu_per_unit_unit"],
                "resumed_pct": median([r["load"]["connections"]["resumed_pct"] for r in rs]),
                "zero_rtt_pct": median([r["load"]["connections"]["zero_rtt_pct"] for r in rs]),
                "errors": sum(r["load"]["errors"]["total"] for r in rs),
            }
            summary.append(row[s])
        if "quring" in row and "quinn" in row:
            q, n = row["quring"], row["quinn"]
            ratios.append({
                "workload": w,
                "throughput_quring_over_quinn": ratio(q["figure"], n["figure"]),
                "cpu_per_unit_quinn_over_quring": ratio(n["cpu_per_unit"], q["cpu_per_unit"]),
            })
    doc = {
        "schema": "quring-bench-load/1",
        "time": stamp,
        "git": rev,
        "config": {
            "runs": int(runs), "duration_s": float(duration), "warmup_s": float(warmup),
            "shards": int(shards), "load_threads": int(threads),
            "server_cpus": server_cpus, "load_cpus": load_cpus,
        },
        "summary": summary,
        "ratios": ratios,
        "runs": runs_,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")

    print(f"### quring vs quinn under `quring load`: medians of {runs} run(s), {duration} s "
          f"each after {warmup} s of warm-up\n")
    print(f"{shards} server shard(s) / tokio worker thread(s) on CPUs {server_cpus}; "
          f"{threads} load thread(s) on CPUs {load_cpus}. Server CPU per unit: utime + stime "
          f"over the measured window, divided by the units served in it.\n")
    print("| workload | server | throughput | server CPU per unit | resumed | 0-RTT | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in summary:
        print(f"| {r['workload']} | {r['server']} | {fmt(r['figure'])} {r['figure_unit']} | "
              f"{fmt(r['cpu_per_unit'], 3)} {r['cpu_per_unit_unit']} | "
              f"{fmt(r['resumed_pct'], 0)}% | {fmt(r['zero_rtt_pct'], 0)}% | {r['errors']} |")
    if ratios:
        print("\n| workload | throughput quring/quinn (>1: quring faster) | "
              "CPU per unit quinn/quring (>1: quring cheaper) |")
        print("|---|---:|---:|")
        for r in ratios:
            print(f"| {r['workload']} | {fmt(r['throughput_quring_over_quinn'])}x | "
                  f"{fmt(r['cpu_per_unit_quinn_over_quring'])}x |")
    print(f"\nAll runs: {out}")


if __name__ == "__main__":
    {"progress": progress, "report": report}[sys.argv[1]](sys.argv[2:])
PY

manifest="$scratch/manifest.tsv"
: >"$manifest"
load_limit="$(awk -v w="$WARMUP" -v d="$DURATION" -v s="$LOAD_SLACK_SECS" \
    'BEGIN { printf "%d", w + d + s + 1 }')"
note "runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s shards=$SHARDS threads=$THREADS" \
    "server CPUs $SERVER_CPUS, load CPUs $LOAD_CPUS; workloads ${workloads[*]}; servers ${servers[*]}"

for ((run = 1; run <= RUNS; run++)); do
    order=("${servers[@]}")
    if ((run % 2 == 0)); then
        order=()
        for ((i = ${#servers[@]} - 1; i >= 0; i--)); do
            order+=("${servers[i]}")
        done
    fi
    for w in "${workloads[@]}"; do
        read -r -a wargs <<<"$(workload_args "$w")"
        for s in "${order[@]}"; do
            base="$scratch/run$run-$w-$s"
            start_server "$s" "$base.server"
            pid="$server_pid"
            load_cmd=("$QURING" load "$server_addr" --threads "$THREADS" --duration "$DURATION"
                --warmup "$WARMUP" --insecure --json "$base.json" "${wargs[@]}")
            before="$(cpu_ticks "$pid")" || die "$s server died before the $w run"
            t0="$(now)"
            taskset -c "$LOAD_CPUS" timeout -k 5 "$load_limit" "${load_cmd[@]}" \
                </dev/null >"$base.load.out" 2>"$base.load.err" &
            load_pid=$!
            # The measured window: WARMUP to WARMUP + DURATION seconds after the load started.
            sleep_until "$(add "$t0" "$WARMUP")"
            t_warm="$(now)"
            warm="$(cpu_ticks "$pid")" || die "$s server died during the $w run"
            sleep_until "$(add "$t0" "$(add "$WARMUP" "$DURATION")")"
            t_end="$(now)"
            end="$(cpu_ticks "$pid")" || die "$s server died during the $w run"
            rc=0
            wait "$load_pid" || rc=$?
            load_pid=""
            after="$(cpu_ticks "$pid")" || die "$s server died during the $w run"
            stop_server
            case "$rc" in
                0 | 1) ;;
                124 | 137)
                    show_log "$base.load.err"
                    die "quring load ($w against $s) ran past ${load_limit}s and was killed"
                    ;;
                *)
                    show_log "$base.load.err"
                    die "quring load ($w against $s) failed with status $rc: ${load_cmd[*]}"
                    ;;
            esac
            if [[ ! -s "$base.json" ]]; then
                show_log "$base.load.err"
                die "quring load wrote no $base.json"
            fi
            if [[ "$rc" -eq 1 ]]; then
                keep_scratch=1
                note "warning: $w against $s had errors (see $base.json, $base.load.err)"
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$w" "$s" \
                "$base.json" "$rc" "$before" "$warm" "$end" "$after" "$t_warm" "$t_end" \
                "${load_cmd[*]}" >>"$manifest"
            python3 "$scratch/report.py" progress "$manifest" "$CLK_TCK" "$RUNS" >&2 ||
                die "cannot read $base.json"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$(dirname "$JSON")"
git_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 "$scratch/report.py" report "$manifest" "$CLK_TCK" "$RUNS" "$JSON" "$DURATION" \
    "$WARMUP" "$SHARDS" "$THREADS" "$SERVER_CPUS" "$LOAD_CPUS" "$git_rev" "$stamp"

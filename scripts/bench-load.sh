#!/usr/bin/env bash
# Load benchmark: `quring serve --app echo,perf,discard` against the equivalent quinn + tokio
# server (examples/quinn_peer.rs), both driven by the same `quring load` client; and for round
# trips, `quring serve --app udp-echo` (raw UDP, no QUIC) driven by examples/udp_rtt.rs as the
# physical limit.
#
# Usage: scripts/bench-load.sh [--runs N] [--duration S] [--warmup S] [--shards N]
#            [--threads N] [--server-cpus LIST] [--load-cpus LIST] [--workloads LIST]
#            [--servers LIST] [--busy-poll-us US] [--json PATH]
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
#   WORKLOADS    comma list of bulk,rr,handshakes,resumed,0rtt,datagrams,rtt,rtt-busy (all)
#   SERVERS      comma list of quring,quinn,udp-echo (all); udp-echo runs only rtt workloads
#   BUSY_POLL_US `--busy-poll-us` of the rtt-busy servers and clients (20)
#   JSON         where all raw runs go (target/bench-load/<time>.json)
# QURING_BIN, QUINN_PEER_BIN and UDP_RTT_BIN, when set, replace the binaries built here (the
# release `quring`, `examples/quinn_peer` and `examples/udp_rtt` of the cargo target
# directory); with the first two set, nothing is built and UDP_RTT_BIN defaults to the
# `udp_rtt` next to QUINN_PEER_BIN.
#
# Workloads (`quring load` against quring and quinn; udp_rtt against udp-echo):
#   bulk        1 conn, 1 stream, 100 MB perf responses  Gbit/s        server ns per byte
#   rr          1 conn, 100 streams, 1 KiB perf each way requests/s    server µs per request
#   handshakes  new connection per request, 16 at once   new conns/s   server µs per connection
#   resumed     same, resuming TLS sessions (--resume)
#   0rtt        same, with the request in 0-RTT data (--resume --0rtt)
#   datagrams   1 conn, 100 DATAGRAM frames of 1 KiB in flight, echoed   requests/s
#   rtt         1 conn, 1 stream, 64 B echo, closed loop p50 round trip (µs); udp-echo: one
#               64 B datagram at a time
#   rtt-busy    same, with --busy-poll-us BUSY_POLL_US on the quring servers and both clients
#               (quinn + tokio cannot spin: only its client does)
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
WORKLOADS="${WORKLOADS:-bulk,rr,handshakes,resumed,0rtt,datagrams,rtt,rtt-busy}"
SERVERS="${SERVERS:-quring,quinn,udp-echo}"
BUSY_POLL_US="${BUSY_POLL_US:-20}"
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
            --workloads | --servers | --busy-poll-us | --json)
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
        --busy-poll-us) BUSY_POLL_US="$value" ;;
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
[[ "$BUSY_POLL_US" =~ ^[1-9][0-9]{0,5}$ ]] || die "BUSY_POLL_US '$BUSY_POLL_US' is not 1 to 999999"
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

# The `quring load` arguments of each workload.
workload_args() {
    local conn=(--protocol perf --new-conn-per-request --conns 16 --request-size 0
        --response-size 1024)
    local rtt=(--protocol echo --conns 1 --streams 1 --request-size 64)
    case "$1" in
        bulk) echo --protocol perf --conns 1 --streams 1 --request-size 0 --response-size 100000000 ;;
        rr) echo --protocol perf --conns 1 --streams 100 --request-size 1024 --response-size 1024 ;;
        handshakes) echo "${conn[@]}" ;;
        resumed) echo "${conn[@]}" --resume ;;
        0rtt) echo "${conn[@]}" --resume --0rtt ;;
        datagrams) echo --protocol echo --datagrams --conns 1 --streams 100 --request-size 1024 ;;
        rtt) echo "${rtt[@]}" ;;
        rtt-busy) echo "${rtt[@]}" --busy-poll-us "$BUSY_POLL_US" ;;
        *) return 1 ;;
    esac
}

# Whether server $2 runs workload $1: udp-echo only answers round trips.
serves() {
    [[ "$2" != udp-echo || "$1" == rtt || "$1" == rtt-busy ]]
}

IFS=, read -r -a workloads <<<"$WORKLOADS"
[[ ${#workloads[@]} -gt 0 ]] || die "WORKLOADS is empty"
for w in "${workloads[@]}"; do
    workload_args "$w" >/dev/null ||
        die "unknown workload '$w' (bulk, rr, handshakes, resumed, 0rtt, datagrams, rtt, rtt-busy)"
done
IFS=, read -r -a servers <<<"$SERVERS"
[[ ${#servers[@]} -gt 0 ]] || die "SERVERS is empty"
for s in "${servers[@]}"; do
    [[ "$s" == quring || "$s" == quinn || "$s" == udp-echo ]] ||
        die "unknown server '$s' (quring, quinn, udp-echo)"
done
pairs=0
for w in "${workloads[@]}"; do
    for s in "${servers[@]}"; do
        if serves "$w" "$s"; then
            pairs=$((pairs + 1))
        fi
    done
done
((pairs > 0)) || die "nothing to run: udp-echo serves only the rtt workloads"

for tool in python3 taskset timeout getconf awk; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
CLK_TCK="$(getconf CLK_TCK)"
[[ "$CLK_TCK" =~ ^[1-9][0-9]*$ ]] || die "getconf CLK_TCK gave '$CLK_TCK'"

# ---------------------------------------------------------------------------------------------
# Building

if [[ -n "${QURING_BIN:-}" && -n "${QUINN_PEER_BIN:-}" ]]; then
    QURING="$QURING_BIN"
    PEER="$QUINN_PEER_BIN"
    UDP_RTT="${UDP_RTT_BIN:-$(dirname "$QUINN_PEER_BIN")/udp_rtt}"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH"
    note "building quring, the quinn peer and udp_rtt (release)"
    cargo build --release --bin quring --example quinn_peer --example udp_rtt >&2
    target_dir="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    QURING="${QURING_BIN:-$target_dir/release/quring}"
    PEER="${QUINN_PEER_BIN:-$target_dir/release/examples/quinn_peer}"
    UDP_RTT="${UDP_RTT_BIN:-$target_dir/release/examples/udp_rtt}"
fi
[[ -x "$QURING" ]] || die "$QURING was not built"
[[ -x "$PEER" ]] || die "$PEER was not built"
[[ -x "$UDP_RTT" ]] || die "$UDP_RTT was not built (set UDP_RTT_BIN)"
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

# Starts server $1 (quring, quinn or udp-echo) for workload $2 with its output in
# $3.{out,err}; sets server_pid, server_addr and server_cmd.
start_server() {
    local kind="$1" workload="$2" log="$3" i line
    local -a cmd busy=()
    if [[ "$workload" == rtt-busy ]]; then
        busy=(--busy-poll-us "$BUSY_POLL_US")
    fi
    case "$kind" in
        quring) cmd=("$QURING" serve --listen 127.0.0.1:0 --shards "$SHARDS" --app "echo,perf,discard" "${busy[@]}") ;;
        quinn) cmd=("$PEER" --listen 127.0.0.1:0 --threads "$SHARDS") ;;
        udp-echo) cmd=("$QURING" serve --listen 127.0.0.1:0 --shards "$SHARDS" --app udp-echo "${busy[@]}") ;;
    esac
    server_cmd="${cmd[*]}"
    # taskset execs the server, so $! is the server's own PID.
    taskset -c "$SERVER_CPUS" "${cmd[@]}" </dev/null >"$log.out" 2>"$log.err" &
    server_pid=$!
    server_addr=""
    for ((i = 0; i < STARTUP_SECS * 20; i++)); do
        # The log may not exist yet: the redirection happens in the background job.
        line="$(grep -m1 -o 'listening on [^ ,|]*' "$log.out" 2>/dev/null || true)"
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
            serves "$w" "$s" || continue
            base="$scratch/run$run-$w-$s"
            start_server "$s" "$w" "$base.server"
            pid="$server_pid"
            if [[ "$s" == udp-echo ]]; then
                load_cmd=("$UDP_RTT" "$server_addr" --size 64 --duration "$DURATION"
                    --warmup "$WARMUP" --json "$base.json")
                if [[ "$w" == rtt-busy ]]; then
                    load_cmd+=(--busy-poll-us "$BUSY_POLL_US")
                fi
            else
                load_cmd=("$QURING" load "$server_addr" --threads "$THREADS" --duration "$DURATION"
                    --warmup "$WARMUP" --insecure --json "$base.json" "${wargs[@]}")
            fi
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
                    die "the load client ($w against $s) ran past ${load_limit}s and was killed"
                    ;;
                *)
                    show_log "$base.load.err"
                    die "the load client ($w against $s) failed with status $rc: ${load_cmd[*]}"
                    ;;
            esac
            if [[ ! -s "$base.json" ]]; then
                show_log "$base.load.err"
                die "the load client wrote no $base.json"
            fi
            if [[ "$rc" -eq 1 ]]; then
                keep_scratch=1
                note "warning: $w against $s had errors (see $base.json, $base.load.err)"
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$w" "$s" \
                "$base.json" "$rc" "$before" "$warm" "$end" "$after" "$t_warm" "$t_end" \
                "$server_cmd" "${load_cmd[*]}" >>"$manifest"
            python3 "$ROOT/scripts/bench_report.py" progress "$manifest" "$CLK_TCK" "$RUNS" >&2 ||
                die "cannot read $base.json"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Report

mkdir -p "$(dirname "$JSON")"
git_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 "$ROOT/scripts/bench_report.py" report "$manifest" "$CLK_TCK" "$RUNS" "$JSON" "$DURATION" \
    "$WARMUP" "$SHARDS" "$THREADS" "$SERVER_CPUS" "$LOAD_CPUS" "$BUSY_POLL_US" "$git_rev" "$stamp"

#!/usr/bin/env bash
# Instruction counts of fixed workloads under `valgrind --tool=callgrind`: stable on a noisy
# machine (they count instructions, not seconds), so two commits can be compared.
#
# Usage: scripts/icount.sh [--base REV] [WORKLOAD...]
#   WORKLOAD  rr, bulk, handshakes, resumed, datagrams (default: all); see examples/workload.rs
#   --base REV  also count REV (built in a temporary worktree) and print the ratio
# Environment: ICOUNT_BIN, a prebuilt `workload` example to count instead of building one.
#
# Each workload runs a quring server shard and a quring client shard on one thread, joined in
# memory (no sockets, no threads, idle time skipped), so the count covers both sides of the
# whole per-packet path plus start-up (certificate, TLS configuration), which is the same in
# every run. Prints a markdown table: total instructions, and per request (per byte for bulk).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() { echo "icount: $*" >&2; exit 2; }
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"

BASE=""
WORKLOADS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --base) BASE="${2:?--base needs a revision}"; shift 2 ;;
        rr|bulk|handshakes|resumed|datagrams) WORKLOADS+=("$1"); shift ;;
        *) die "unknown argument '$1' (workloads: rr bulk handshakes resumed datagrams)" ;;
    esac
done
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(rr bulk handshakes resumed datagrams)

SCRATCH="$(mktemp -d)"
cleanup() {
    if [ -n "$BASE" ] && [ -d "$SCRATCH/base" ]; then
        git worktree remove --force "$SCRATCH/base" >/dev/null 2>&1 || true
    fi
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# Builds the workload example of the tree at $1 into target dir $2; prints the binary's path.
build() {
    (cd "$1" && CARGO_TARGET_DIR="$2" cargo build --release --quiet --example workload) >&2
    echo "$2/release/examples/workload"
}

# Instructions (callgrind's Ir total) of one run of binary $1 on workload $2, and its output.
count() {
    local out="$SCRATCH/cg.$$.$RANDOM"
    local line
    line="$(valgrind --tool=callgrind --callgrind-out-file="$out" "$1" "$2" 2>/dev/null)" ||
        die "workload $2 failed under valgrind"
    echo "$(awk '/^summary:/ {print $2}' "$out") $line"
    rm -f "$out"
}

HEAD_BIN="${ICOUNT_BIN:-}"
[ -n "$HEAD_BIN" ] || HEAD_BIN="$(build "$ROOT" "${CARGO_TARGET_DIR:-$ROOT/target}")"
BASE_BIN=""
if [ -n "$BASE" ]; then
    git rev-parse --verify --quiet "$BASE^{commit}" >/dev/null || die "no such revision: $BASE"
    git worktree add --detach --quiet "$SCRATCH/base" "$BASE"
    BASE_BIN="$(build "$SCRATCH/base" "$ROOT/target/icount-base")"
fi

head_rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo +changes)"
if [ -n "$BASE" ]; then
    echo "| workload | $BASE instructions | $head_rev instructions | ratio | $head_rev per unit |"
    echo "|---|---:|---:|---:|---:|"
else
    echo "| workload | $head_rev instructions | per unit |"
    echo "|---|---:|---:|"
fi
for w in "${WORKLOADS[@]}"; do
    # shellcheck disable=SC2034
    read -r ir _ _ _ requests _ bytes <<<"$(count "$HEAD_BIN" "$w")"
    if [ "$w" = bulk ]; then
        unit="$(awk -v i="$ir" -v b="$bytes" 'BEGIN {printf "%.2f / byte", i / b}')"
    else
        unit="$(awk -v i="$ir" -v r="$requests" 'BEGIN {printf "%.0f / request", i / r}')"
    fi
    if [ -n "$BASE_BIN" ]; then
        read -r base_ir _ <<<"$(count "$BASE_BIN" "$w")"
        ratio="$(awk -v h="$ir" -v b="$base_ir" 'BEGIN {printf "%.3f", h / b}')"
        echo "| $w | $base_ir | $ir | $ratio | $unit |"
    else
        echo "| $w | $ir | $unit |"
    fi
done

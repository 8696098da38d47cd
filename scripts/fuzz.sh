#!/usr/bin/env bash
# Run quring's fuzz targets (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer).
#
#   scripts/fuzz.sh TARGET SECONDS    fuzz one target for SECONDS
#   scripts/fuzz.sh all SECONDS       fuzz each target in turn for SECONDS
#   scripts/fuzz.sh list              name the targets
#
# Installs cargo-fuzz if it is missing, builds the targets (on a stable toolchain too:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags), and runs each from its committed
# seeds (fuzz/seeds/TARGET, read only) with a working corpus in fuzz/corpus/TARGET (not
# committed, kept between runs). Ends each target with one line:
#
#   fuzz TARGET: N execs in S s, crashes: K
#
# A crash stops that target and leaves its input in fuzz/artifacts/TARGET/ (the path is
# printed); the script then exits 1, after running the remaining targets of `all`.
#
# Environment:
#   QURING_FUZZ_TARGET_DIR  cargo target dir for the instrumented build (default fuzz/target)
#   QURING_FUZZ_LOG_DIR     where each run's libFuzzer output is kept (default a temp dir)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

die() {
    echo "scripts/fuzz.sh: error: $*" >&2
    exit 2
}

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

targets() {
    for f in fuzz/fuzz_targets/*.rs; do
        basename "$f" .rs
    done
}

[ $# -ge 1 ] || usage
if [ "$1" = list ]; then
    targets
    exit 0
fi
[ $# -eq 2 ] || usage
WHAT="$1"
SECS="$2"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, not '$SECS'"
if [ "$WHAT" = all ]; then
    mapfile -t RUN < <(targets)
else
    [ -f "fuzz/fuzz_targets/$WHAT.rs" ] || die "no target '$WHAT' (targets: $(targets | paste -sd ' '))"
    RUN=("$WHAT")
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found in PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
TARGET_DIR="${QURING_FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"
# The same options for build and run, so that run finds the build current.
FUZZ_OPTS=(--fuzz-dir fuzz --target-dir "$TARGET_DIR")

LOG_DIR="${QURING_FUZZ_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"

build_start=$SECONDS
build=()
[ "${#RUN[@]}" -eq 1 ] && build=("${RUN[0]}")
if ! cargo fuzz build "${FUZZ_OPTS[@]}" "${build[@]}" >"$LOG_DIR/build.log" 2>&1; then
    tail -n 40 "$LOG_DIR/build.log" >&2
    die "cargo fuzz build failed (full log: $LOG_DIR/build.log)"
fi
echo "scripts/fuzz.sh: built ${RUN[*]} in $((SECONDS - build_start)) s"

failed=0
for target in "${RUN[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="$LOG_DIR/$target.log"
    echo "scripts/fuzz.sh: fuzzing $target for $SECS s"
    start=$SECONDS
    set +e
    cargo fuzz run "${FUZZ_OPTS[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$SECS" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$((SECONDS - start))
    # libFuzzer's last lines: "Done N runs in S second(s)" when time ran out; the final stats
    # (also after a crash) count every input executed.
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    crashes=$(grep -c 'Test unit written to' "$log" || true)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        tail -n 40 "$log"
        echo "fuzz $target: the run failed (exit $rc) before fuzzing; full log: $log"
        failed=1
        continue
    fi
    if [ "$crashes" -gt 0 ]; then
        # The panic message or sanitizer report, then where the input went.
        grep -A 4 -E 'panicked at|ERROR: ' "$log" | head -n 40
        echo "full log: $log"
        sed -n 's/.*Test unit written to \(.*\)$/crash artifact: \1/p' "$log"
        echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${FUZZ_OPTS[*]} $target ARTIFACT"
        failed=1
    fi
    echo "fuzz $target: ${execs:-0} execs in ${secs:-$elapsed} s, crashes: $crashes"
done
exit "$failed"

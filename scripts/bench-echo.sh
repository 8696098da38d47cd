#!/usr/bin/env bash
# Echo benchmark: quring vs an equivalent quinn + tokio server.
#
# Usage: scripts/bench-echo.sh [ARGS...]
#   ARGS go to the bench binary (benches/echo.rs); `scripts/bench-echo.sh --help`
#   lists them. Common ones: --shards N, --runs K, --bulk-bytes S, --requests R,
#   --workloads bulk,rr, --servers quring,quinn, --no-pin, --json PATH.
#   Without --json the results also go to target/bench-echo/echo-<time>.json.
set -euo pipefail

# Make a --json path absolute relative to the caller's directory: the bench
# itself runs with the repository root as its working directory.
abs() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

json=""
want_help=0
args=()
expect_json=0
for arg in "$@"; do
    if [[ "$expect_json" -eq 1 ]]; then
        json="$(abs "$arg")"
        args+=("$json")
        expect_json=0
        continue
    fi
    case "$arg" in
        --json)
            expect_json=1
            args+=("$arg")
            ;;
        --json=*)
            json="$(abs "${arg#--json=}")"
            args+=("--json=$json")
            ;;
        -h | --help)
            want_help=1
            args+=("$arg")
            ;;
        *) args+=("$arg") ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "$json" && "$want_help" -eq 0 ]]; then
    mkdir -p target/bench-echo
    json="$PWD/target/bench-echo/echo-$(date +%Y%m%d-%H%M%S).json"
    args+=(--json "$json")
fi

cargo build --release --bin quring --example quinn_peer
cargo bench --bench echo -- "${args[@]}"

if [[ -n "$json" && "$want_help" -eq 0 ]]; then
    echo "bench-echo: JSON results written to $json"
fi

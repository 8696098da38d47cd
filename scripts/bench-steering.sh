#!/usr/bin/env bash
# End-to-end echo with CID steering on (`--steering bpf`) and off (`--steering none`, where
# shards hand foreign packets to their owner): 100 connections of 1 KiB request/response.
# Usage: [SHARDS=2] [RUNS=3] scripts/bench-steering.sh [other echo bench args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for mode in bpf none; do
    echo "== --steering $mode"
    cargo bench --quiet --bench echo -- --servers quring --workloads rr --conns 100 \
        --shards "${SHARDS:-2}" --runs "${RUNS:-3}" \
        --quring-arg=--steering --quring-arg="$mode" --json "$out/$mode.json" "$@"
done
python3 - "$out/bpf.json" "$out/none.json" <<'PY'
import json, sys
bpf, none = (json.load(open(p))["results"][0] for p in sys.argv[1:3])
print(f"bpf / none: throughput {bpf['throughput'] / none['throughput']:.2f} x, "
      f"server CPU per request {bpf['cpu_cost'] / none['cpu_cost']:.2f} x")
PY

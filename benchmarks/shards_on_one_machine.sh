#!/usr/bin/env bash
# What shards cost on one machine: the tenants stream (256 tenants x 1,000 rows, blocks of 50)
# learned through HTTP by one `psp serve` (role all) holding one model, then by one holding
# `SHARDS` models (PSP_SHARDS__COUNT), one after the other in this run. Prints each run's time
# and mean accuracy, then the time of the sharded run / the one-model run (goal <= 1.5) and
# the accuracy difference (goal: within 1 point).
#
#   benchmarks/shards_on_one_machine.sh          # 8 shards against 1
#   SHARDS=4 SEED=1 benchmarks/shards_on_one_machine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-8}
SEED=${SEED:-0}

run() {  # run COUNT: learns the stream on COUNT shards; prints "seconds accuracy"
  local started finished
  started=$(date +%s.%N)
  SHARDS=$1 RUNS=tenants SEEDS=$SEED benchmarks/learning_via_http.sh >&2
  finished=$(date +%s.%N)
  python3 -c "import json, sys; m = json.load(open(sys.argv[1]))['methods'][0]; \
print(f'{float(sys.argv[3]) - float(sys.argv[2]):.1f} {m[\"average_accuracy\"]:.4f}')" \
    "bench-out/http-tenants-seed$SEED-shards$1/results.json" "$started" "$finished"
}

read -r one_seconds one_accuracy < <(run 1)
read -r many_seconds many_accuracy < <(run "$SHARDS")
python3 - "$SHARDS" "$one_seconds" "$one_accuracy" "$many_seconds" "$many_accuracy" <<'EOF'
import sys

shards = sys.argv[1]
one_seconds, one_accuracy, many_seconds, many_accuracy = map(float, sys.argv[2:])
print(f"1 model:   {one_seconds:7.1f} s (server start included), mean accuracy {one_accuracy:.3f}")
print(f"{shards} shards: {many_seconds:7.1f} s, mean accuracy {many_accuracy:.3f}")
print(f"time {shards} shards / 1 model: {many_seconds / one_seconds:.2f} (goal <= 1.5)")
difference = many_accuracy - one_accuracy
print(f"accuracy {shards} shards - 1 model: {difference:+.3f} (goal >= -0.010)")
EOF

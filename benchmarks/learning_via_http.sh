#!/usr/bin/env bash
# The learning goals measured through the HTTP service with its default settings.
#
# Each run starts a fresh `psp serve` (embedded mode, a throwaway data directory, model seed =
# the run's seed, one torch thread as the benchmark uses), drives it with
# `psp bench continual --via-http`, and stops it. Results go to bench-out/http-*/results.json,
# and a summary line per run is printed at the end.
#
#   benchmarks/learning_via_http.sh                  # tenants stream, then permuted-10, seeds 0-2
#   RUNS="tenants" SEEDS="0" benchmarks/learning_via_http.sh
#   SHARDS=8 RUNS="tenants" SEEDS="0" benchmarks/learning_via_http.sh   # 8 models, one process
#   INPUT_SCALING=none RUNS="tenants" SEEDS="0" benchmarks/learning_via_http.sh  # rows as sent
set -euo pipefail
cd "$(dirname "$0")/.."
PSP=${PSP:-.venv/bin/psp}
PORT=${PORT:-8765}
SEEDS=${SEEDS:-"0 1 2"}
RUNS=${RUNS:-"tenants permuted-10"}
METHOD=${METHOD:-complex-replay}  # the service replays by default
SHARDS=${SHARDS:-1}  # PSP_SHARDS__COUNT: new contexts spread over this many models
INPUT_SCALING=${INPUT_SCALING:-}  # PSP_MODEL__INPUT_SCALING; empty: the default (context)
summary=()

serve() {  # serve SEED: starts a fresh server and waits until it answers
  data=$(mktemp -d)
  OMP_NUM_THREADS=1 PSP_DATA_DIR="$data" PSP_MODEL__KIND="${METHOD%%-*}" PSP_MODEL__SEED="$1" \
    PSP_SHARDS__COUNT="$SHARDS" PSP_MODEL__INPUT_SCALING="$INPUT_SCALING" \
    "$PSP" serve --host 127.0.0.1 --port "$PORT" --log-level warning &
  server=$!
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0
    sleep 0.5
  done
  echo "the server did not become ready" >&2
  exit 1
}

stop() {
  kill "$server" && wait "$server" || true
  rm -rf "$data"
}
trap 'kill "${server:-0}" 2>/dev/null || true' EXIT

for run in $RUNS; do
  for seed in $SEEDS; do
    case $run in
      tenants) args=(--stream tenants --tenants 256 --rows-per-tenant 1000 --block-rows 50) ;;
      permuted-10) args=(--stream permuted-digits --tasks 10 --steps-per-task 500) ;;
      permuted-50) args=(--stream permuted-digits --tasks 50 --steps-per-task 500) ;;
      *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    out="bench-out/http-$run-seed$seed-shards$SHARDS"
    serve "$seed"
    started=$(date +%s)
    "$PSP" bench continual "${args[@]}" --kinds "$METHOD" --seed "$seed" \
      --via-http "http://127.0.0.1:$PORT" --out "$out"
    stop
    line=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['methods'][0]; \
print(f\"{m['average_accuracy']:.3f} mean, {m['minimum_accuracy']:.3f} min\")" "$out/results.json")
    summary+=("$run seed $seed, $SHARDS shard(s), input scaling ${INPUT_SCALING:-context}: $line ($(( $(date +%s) - started )) s)")
  done
done
printf '%s\n' "${summary[@]}"

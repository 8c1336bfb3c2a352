#!/usr/bin/env bash
# The GPU check: one run, within 8 minutes on one GPU, that prints a summary table of
#   1. the CUDA tests (tests marked `cuda`);
#   2. benchmarks/core_speed.py on CUDA with the paper's Table 2 shape, 784-2000-2000;
#   3. predict p50 through the real HTTP service on the GPU, for the default model (complex,
#      64-256-256): one row from one client, and a burst of 4096 rows over 64 contexts at once
#      (goals on an H100-class GPU: < 2 ms, < 5 ms).
#
# Usage: benchmarks/gpu_check.sh [--dry-run]
#   --dry-run runs every step on the CPU at small sizes (the CUDA tests then skip), to check the
#   script itself on a machine without a GPU.
# Environment: PYTHON (default .venv/bin/python, else python3: on a GPU host whose Python
# brings torch, run from the checkout with the service's other dependencies and the checkout
# itself on PYTHONPATH; `psp serve` then runs as `python -m service.cli.commands`), OUT (where logs and
# JSON go; a temporary directory by default).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -x .venv/bin/python ]]; then DEFAULT_PYTHON=.venv/bin/python; else DEFAULT_PYTHON=python3; fi
PYTHON=${PYTHON:-$DEFAULT_PYTHON}
OUT=${OUT:-$(mktemp -d -t psp-gpu-check-XXXXXX)}
mkdir -p "$OUT"

if [[ "${1:-}" == "--dry-run" ]]; then
    DEVICE=cpu
    CORE_ARGS=(--rows 64 --batch 32 --hidden 64,64 --repeats 3 --conv-rows 16)
    PREDICT_ARGS=(--requests 40 --rounds 1 --bursts 2 --burst-rows 256 --contexts 64)
else
    DEVICE=cuda
    CORE_ARGS=(--rows 4096 --batch 256 --hidden 2000,2000 --repeats 20 --conv-rows 1024)
    PREDICT_ARGS=(--requests 1000 --rounds 1 --bursts 50 --burst-rows 4096 --contexts 1000)
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run with --dry-run to check the script on the CPU")'
fi

# Each step has its own time limit (they sum to under 8 minutes); a step that fails or runs
# out of time is reported in the summary, and the others still run.
declare -A STATUS
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; then
        STATUS[$name]=ok
    else
        STATUS[$name]="failed (exit ${PIPESTATUS[0]}), see $OUT/$name.log"
    fi
}

step cuda_tests 90 "$PYTHON" -m pytest tests/psp_core/test_cuda.py -q -p no:cacheprovider -rs
step core_speed 210 "$PYTHON" benchmarks/core_speed.py --device "$DEVICE" --inputs 784 \
    "${CORE_ARGS[@]}" --json "$OUT/core_speed.json"
step predict 150 "$PYTHON" benchmarks/predict_latency.py --device "$DEVICE" --no-bare \
    --kind complex --input 64 --hidden 256,256 "${PREDICT_ARGS[@]}" --json "$OUT/predict.json"

echo
echo "== summary ($DEVICE; logs and JSON in $OUT)"
"$PYTHON" - "$OUT" "$DEVICE" "${STATUS[cuda_tests]}" "${STATUS[core_speed]}" "${STATUS[predict]}" <<'EOF'
import json
import re
import sys
from pathlib import Path

out, device, *statuses = sys.argv[1:]
out = Path(out)
rows = []
tests = (out / "cuda_tests.log").read_text() if (out / "cuda_tests.log").exists() else ""
counts = re.findall(r"(\d+) (passed|failed|skipped|error)", tests)
rows.append(("CUDA tests", ", ".join(f"{n} {what}" for n, what in counts) or "no result", statuses[0]))


def figures(name: str) -> dict:
    path = out / name
    return json.loads(path.read_text()) if path.exists() else {}


core = figures("core_speed.json")
for key, goal in [
    ("mixed_binary", ">= 0.90"),
    ("mixed_complex", ">= 0.90"),
    ("mixed_onepower", ">= 0.90"),
    ("conv_mixed_binary", ">= 0.90"),
    ("conv_mixed_complex", ">= 0.90"),
    ("conv_mixed_onepower", ">= 0.90"),
    ("train_binary", "<= 1.15"),
    ("train_complex", "<= 3.0"),
    ("train_onepower", "<= 3.0"),
    ("train_complex_real_part", "<= 3.0"),
    ("train_onepower_real_part", "<= 3.0"),
]:
    value = core.get(key)
    rows.append((f"core_speed {key}", "-" if value is None else f"{value:.3f}", f"goal {goal}"))
predict = figures("predict.json")
idle = predict.get("idle", {}).get("service")
burst = predict.get("burst", {})
rows.append(("predict p50, 1 row", "-" if idle is None else f"{idle * 1e3:.2f} ms", "goal < 2 ms"))
rows.append((
    f"predict p50, {burst.get('rows', 4096)} mixed rows",
    "-" if "p50" not in burst else f"{burst['p50'] * 1e3:.2f} ms",
    "goal < 5 ms",
))
rows.append(("steps", f"core_speed: {statuses[1]}", f"predict: {statuses[2]}"))
widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
for row in rows:
    print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
EOF

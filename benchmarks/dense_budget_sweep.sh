#!/usr/bin/env bash
# GPU: the dense fwd+bwd time and peak memory at 1,024 and 4,096 tokens for several values of the
# tiled backward's scratch budget (kernels.dense.fused.SCRATCH_BUDGET, MiB), to choose the default.
#   OUT=/tmp/out bash benchmarks/dense_budget_sweep.sh
set -u
OUT=${OUT:-/tmp/dynast-device}
mkdir -p "$OUT"
export PYTHONPATH=.
for mib in ${BUDGETS:-128 256 320 384 512}; do
  for preset in deepfashion-256 deepfashion-512; do
    echo "=== budget ${mib} MiB, $preset"
    python3 - "$mib" "$preset" "$OUT/dense_budget.csv" <<'PY' 2>&1 | grep -E "^dense|Error|error"
import runpy, sys
import kernels.dense.fused as fd
mib, preset, csv = sys.argv[1:]
fd.SCRATCH_BUDGET = int(mib) << 20
sys.argv = ["bench_attention.py", "--preset", preset, "--blocks", "dense", "--impls", "fused",
            "--passes", "both", "--warmup", "10", "--rep", "60", "--csv", csv]
runpy.run_path("benchmarks/bench_attention.py", run_name="__main__")
PY
  done
done

#!/usr/bin/env bash
# One lent-GPU session, in priority order, each stage under its own time limit so that a slow
# stage cannot starve the later ones; everything lands in $OUT (logs and CSVs).
#   OUT=/tmp/out bash benchmarks/device_session.sh
set -u
OUT=${OUT:-/tmp/dynast-device}
mkdir -p "$OUT"
export PYTHONPATH=.
export TRITON_CACHE_DIR=/tmp/triton-cache
PY=${PY:-python3}

stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 40 "$OUT/$name.log"
}

stage env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
  $PY -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'; nproc"
# Which stages run, in order (space-separated): a session can rerun some of them.
STAGES=${STAGES:-"pytest_gpu attn256 attn512 step256 step512"}
for name in $STAGES; do
  case $name in
    # test_aot is left out: it checks spills with the Triton the project pins, not the card's.
    pytest_gpu) stage pytest_gpu ${T_PYTEST:-120} $PY -m pytest -q -p no:cacheprovider -n 8 \
      tests/kernels --deselect tests/kernels/test_aot.py ;;
    dense) stage dense ${T_DENSE:-150} bash -c "$PY benchmarks/bench_attention.py --preset deepfashion-256 \
      --blocks dense --impls fused,reference,flex --passes fwd,both --csv $OUT/attention.csv && \
      $PY benchmarks/bench_attention.py --preset deepfashion-512 --blocks dense \
      --impls fused,reference,flex --passes fwd,both --csv $OUT/attention.csv" ;;
    autotune) stage autotune ${T_TUNE:-150} $PY -m kernels.autotune --preset deepfashion-256 \
      --kernel dense_fwd --kernel dense_bwd_tile --kernel candidate_fwd --kernel candidate_bwd \
      --out "$OUT/kernel_tuning.json" ;;
    attn256) stage attn256 ${T_ATTN256:-180} $PY benchmarks/bench_attention.py \
      --preset deepfashion-256 --impls fused,reference,flex --passes fwd,both \
      --csv "$OUT/attention.csv" ;;
    attn512) stage attn512 ${T_ATTN512:-80} $PY benchmarks/bench_attention.py \
      --preset deepfashion-512 --blocks dense --impls fused,reference,flex --passes fwd,both \
      --csv "$OUT/attention.csv" ;;
    step256) stage step256 ${T_STEP256:-110} $PY benchmarks/bench_train_step.py \
      --preset deepfashion-256 --batch 8 --sizes 256 --warmup 50 --rep 500 \
      --csv "$OUT/train_step.csv" ;;
    step512) stage step512 ${T_STEP512:-80} $PY benchmarks/bench_train_step.py \
      --preset deepfashion-256 --batch 1 --sizes 512 --warmup 50 --rep 500 \
      --csv "$OUT/train_step.csv" ;;
    *) echo "unknown stage $name" ;;
  esac
done

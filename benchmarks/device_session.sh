#!/usr/bin/env bash
# One lent-GPU session measuring every row of the step's target table (docs/benchmarks-h200.md), in
# priority order, each stage under its own time limit so that a slow stage cannot starve the later
# ones. The default stages run in two calls with the same $OUT, each under 10 minutes of limits:
# call 1 (the default) at most 585 s, CALL=2 at most 590 s (the release's training step beside
# dynast's full step, the release's test forward, the 256 px step at batch 1, the 512 px step with
# activation checkpointing, and the query-tile candidate forward). A stage that finishes early leaves its time unused. Everything lands in $OUT (one log
# per stage and the CSVs); the last stage of each call prints the target table filled from those
# CSVs.
#   OUT=/tmp/out bash benchmarks/device_session.sh
#   OUT=/tmp/out CALL=2 RELEASE_ROOT=shared/release-dynast bash benchmarks/device_session.sh
#   STAGES="step256 summary" bash benchmarks/device_session.sh      # rerun some stages
#   STAGES="derived" bash benchmarks/device_session.sh              # derived vs list candidates
#   STAGES="norm" bash benchmarks/device_session.sh                 # fused SPADE modulation
set -u
# Every stage is GPU-sized: without an NVIDIA GPU, refuse rather than start hours of CPU work.
if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "device_session.sh: error: no CUDA device (nvidia-smi finds no GPU); every stage is a GPU" \
    "measurement: run the benchmarks' --tiny smoke runs on a CPU instead" >&2
  exit 2
fi
OUT=${OUT:-/tmp/dynast-device}
mkdir -p "$OUT"
export PYTHONPATH=.
export TRITON_CACHE_DIR=/tmp/triton-cache
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
PY=${PY:-python3}
P256="--preset deepfashion-256"
# The authors' code (benchmarks/release_code.py): beside the repository, or a copy inside it.
RELEASE_ROOT=${RELEASE_ROOT:-../shared/release-dynast}

stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 25 "$OUT/$name.log"
}

# Which stages run, in order (space-separated). Limits in seconds, each overridable (T_<STAGE>).
if [ "${CALL:-1}" = 2 ]; then
  STAGES=${STAGES:-"env release relgen mem256b1 ckpt512 tile summary"}
else
  STAGES=${STAGES:-"env step256 attn256 attn512 optstep generate mem512 profile step256c summary"}
fi
for name in $STAGES; do
  case $name in
    env) stage env ${T_ENV:-20} bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
      $PY -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())'; nproc" ;;
    # Row 1: the generator step, fused vs reference, batch 8, bf16.
    step256) stage step256 ${T_STEP256:-80} $PY benchmarks/bench_train_step.py $P256 --batch 8 \
      --sizes 256 --warmup 25 --rep 300 --csv "$OUT/train_step.csv" ;;
    # Rows 3-5: inner 256x256 candidate fwd (% of copy) and fwd+bwd, dense at 1,024 tokens...
    attn256) stage attn256 ${T_ATTN256:-80} $PY benchmarks/bench_attention.py $P256 \
      --blocks dense,inner --impls fused,reference --passes fwd,both --warmup 10 --rep 60 \
      --csv "$OUT/attention.csv" ;;
    # ... and at 4,096 tokens (the dense block of the 512-pixel model).
    attn512) stage attn512 ${T_ATTN512:-50} $PY benchmarks/bench_attention.py \
      --preset deepfashion-512 --blocks dense --impls fused,reference --passes fwd,both \
      --warmup 10 --rep 60 --csv "$OUT/attention.csv" ;;
    # Row 2: the full optimiser step (G + D + VGG) as train/loop.py runs it, with its breakdown.
    optstep) stage optstep ${T_OPTSTEP:-80} $PY benchmarks/bench_optimizer_step.py $P256 \
      --batch 8 --warmup 25 --rep 150 --csv "$OUT/optimizer_step.csv" ;;
    # Row 7: generation throughput, images/s, fused vs reference, 256 px bf16.
    generate) stage generate ${T_GENERATE:-40} $PY benchmarks/bench_generate.py $P256 --batch 16 \
      --warmup 25 --rep 300 --csv "$OUT/generate.csv" ;;
    # Row 6: 512 px at batch 4: peak memory and step time of the full optimiser step (fused).
    mem512) stage mem512 ${T_MEM512:-60} $PY benchmarks/bench_optimizer_step.py $P256 \
      --size 512 --batch 4 --backends triton --parts step,g_fwd_bwd --warmup 10 --rep 100 \
      --csv "$OUT/optimizer_step.csv" ;;
    # Lever: where the step's time goes (top kernels by device time, categories), then each
    # category's measured time against its roofline floor (benchmarks/step_cost.py, CPU only).
    profile) stage profile ${T_PROFILE:-55} bash -c "$PY benchmarks/profile_step.py $P256 \
      --batch 8 --backend triton --warmup 2 --steps 2 --top 30 --csv $OUT/profile_step.csv && \
      $PY benchmarks/step_cost.py --profile $OUT/profile_step.csv --top 0" ;;
    # Lever: torch.compile of the generator through kernels.custom_ops (inductor compiles first).
    step256c) stage step256c ${T_STEP256C:-110} $PY benchmarks/bench_train_step.py $P256 \
      --batch 8 --sizes 256 --backends triton --compile --warmup 25 --rep 300 \
      --csv "$OUT/train_step.csv" ;;
    # Lever: the query-tile candidate forward (`fused-tile`, $DYNAST_CANDIDATE_FORWARD=tile)
    # against the gather forward the operators run (`fused`) and the reference, every sparse
    # block, fwd (% of copy on compulsory bytes) and fwd+bwd; then each row's GB/s under both byte
    # accountings and the tile kernel's modelled reads. Its JIT compiles take most of the limit.
    tile) stage tile ${T_TILE:-120} bash -c "$PY benchmarks/bench_attention.py $P256 \
      --blocks inter,inner --impls fused-tile,fused,reference --passes fwd,both --warmup 10 \
      --rep 60 --csv $OUT/attention.csv && $PY benchmarks/attention_cost.py $P256 --tile \
      --csv $OUT/attention.csv" ;;
    summary) stage summary ${T_SUMMARY:-10} $PY benchmarks/performance_targets.py "$OUT" ;;
    # The yardstick: the release's full training step (its Pix2PixTrainer, fp16 amp,
    # batch 8, 256 px), then dynast's full step on the same card (train/loop.py's code, bf16,
    # fused and reference): full_step rows of train_step.csv. About 150 s.
    release) stage release ${T_RELEASE:-200} bash -c "$PY benchmarks/bench_release_step.py \
      --release-root $RELEASE_ROOT --batch 8 --size 256 --amp --warmup 1000 --rep 5000 \
      --csv $OUT/train_step.csv; $PY benchmarks/bench_optimizer_step.py $P256 --batch 8 \
      --parts step --warmup 500 --rep 3000 --csv $OUT/optimizer_step.csv \
      --step-csv $OUT/train_step.csv" ;;
    # Generation against the release's test forward (its Pix2PixModel "inference", fp16 amp,
    # batch 16, 256 px): a release row of generate.csv beside the generate stage's rows.
    relgen) stage relgen ${T_RELGEN:-50} $PY benchmarks/bench_release_step.py \
      --release-root $RELEASE_ROOT --work generate --batch 16 --size 256 --amp --warmup 500 \
      --rep 3000 --csv "$OUT/generate.csv" ;;
    # The paper's setting on a consumer card: deepfashion-256 at batch 1, full step (fused,
    # bf16), peak memory (target < 8 GiB).
    mem256b1) stage mem256b1 ${T_MEM256B1:-60} $PY benchmarks/bench_optimizer_step.py $P256 \
      --size 256 --batch 1 --backends triton --parts step --warmup 200 --rep 1500 \
      --csv "$OUT/optimizer_step.csv" ;;
    # deepfashion-512 at batch 4 with activation checkpointing (fused, bf16): peak
    # memory (target < 24 GiB) and the step's time, beside mem512's run without it.
    ckpt512) stage ckpt512 ${T_CKPT512:-130} $PY benchmarks/bench_optimizer_step.py $P256 \
      --size 512 --batch 4 --backends triton --parts step --checkpoint-activations --warmup 500 \
      --rep 3000 --csv "$OUT/optimizer_step.csv" --step-csv "$OUT/train_step.csv" ;;
    # Not in the default list (the rows do not need them; earlier sessions ran them):
    dense) stage dense ${T_DENSE:-150} bash -c "$PY benchmarks/bench_attention.py $P256 \
      --blocks dense --impls fused,reference,flex --passes fwd,both --csv $OUT/attention.csv && \
      $PY benchmarks/bench_attention.py --preset deepfashion-512 --blocks dense \
      --impls fused,reference,flex --passes fwd,both --csv $OUT/attention.csv" ;;
    step512) stage step512 ${T_STEP512:-80} $PY benchmarks/bench_train_step.py $P256 --batch 1 \
      --sizes 512 --warmup 50 --rep 500 --csv "$OUT/train_step.csv" ;;
    pytest_gpu) stage pytest_gpu ${T_PYTEST:-120} $PY -m pytest -q -p no:cacheprovider -n 8 \
      tests/kernels --deselect tests/kernels/aot/test_aot.py ;;
    autotune) stage autotune ${T_TUNE:-150} $PY -m kernels.autotune $P256 --dtype "${DTYPE:-bf16}" \
      --kernel dense_fwd --kernel dense_bwd_tile --kernel candidate_fwd --kernel candidate_bwd \
      --out "$OUT/kernel_tuning.json" ;;
    # The inner 256x256 candidate block with its candidates derived in the kernel from
    # the previous top-k (the operators' default) against the int32 list read, and the reference;
    # fwd (% of copy on the derived bytes) and fwd+bwd. About 90 s; `STAGES="derived"` alone.
    derived) stage derived ${T_DERIVED:-90} $PY benchmarks/bench_attention.py \
      --shape inner:H=256,W=256,Cqk=80,Cp=16,Cv=64 --impls fused-derived,fused-list,reference \
      --passes fwd,both --warmup 10 --rep 60 --csv "$OUT/attention.csv" ;;
    # The dense block alone at 1,024 tokens, the dense GPU tests, and the tiled backward
    # with an unbounded scratch budget (one pass, the backward before the budget) for comparison.
    dense256) stage dense256 ${T_DENSE256:-40} $PY benchmarks/bench_attention.py $P256 \
      --blocks dense --impls fused,reference --passes fwd,both --warmup 10 --rep 60 \
      --csv "$OUT/attention.csv" ;;
    pytest_dense) stage pytest_dense ${T_PYTEST_DENSE:-90} $PY -m pytest -q -p no:cacheprovider \
      -m gpu tests/kernels/dense/test_dense_fused.py ;;
    unbounded) stage unbounded ${T_UNBOUNDED:-80} env OUT="$OUT" BUDGETS="${BUDGETS:-4096}" \
      bash benchmarks/dense_budget_sweep.sh ;;
    # The SPADE modulation alone at every deepfashion-256 scale (eager chain, fused
    # kernels, torch.compile of the chain), then the generator step with the fused normalisation
    # kernels on top of the fused attention (`triton+norm`) next to `triton`. About 100 s.
    norm) stage norm ${T_NORM:-120} bash -c "$PY benchmarks/bench_norm.py $P256 --batch 8 \
      --csv $OUT/norm.csv && $PY benchmarks/bench_train_step.py $P256 --batch 8 --sizes 256 \
      --backends triton,triton+norm --warmup 25 --rep 300 --csv $OUT/train_step.csv" ;;
    # The convolutions' layout. The step with weights and inputs in channels_last (the
    # attention's token-major views are then free, the fused normalisations read NHWC), the
    # normalisations alone in NHWC, and cuDNN's benchmark mode. About 100 s.
    layout) stage layout ${T_LAYOUT:-150} bash -c "$PY benchmarks/bench_train_step.py $P256 \
      --batch 8 --sizes 256 --backends triton,triton+norm --channels-last --warmup 25 --rep 300 \
      --csv $OUT/train_step.csv && $PY benchmarks/bench_norm.py $P256 --batch 8 --channels-last \
      --impls eager,fused --csv $OUT/norm.csv && $PY benchmarks/bench_train_step.py $P256 \
      --batch 8 --sizes 256 --backends triton --cudnn-benchmark --warmup 25 --rep 300 \
      --csv $OUT/train_step.csv" ;;
    *) echo "unknown stage $name" ;;
  esac
done

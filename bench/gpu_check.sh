#!/usr/bin/env bash
# One command that turns a GPU machine into all the evidence we need (docs/gpu.md):
#
#   bash bench/gpu_check.sh OUTDIR                 # on a GPU machine (offline, torch + CUDA, Triton, nvcc)
#   bash bench/gpu_check.sh --dry-run OUTDIR       # here, on the CPU: same steps, same files, tiny tables
#   bash bench/gpu_check.sh --budget 300 OUTDIR    # total time budget in seconds (default 480)
#
# Steps, each logged and timed, each bounded by what is left of the budget (a step that fails or runs out
# of time is recorded and the next one runs):
#   build      pip install --no-build-isolation --no-deps -e . on all cores (dry run: the checkout's build)
#   info       python -m fastconv info
#   static     python -m fastconv.gpu_static: SASS/PTX checks of the CUDA module and the Triton kernels
#   tests      pytest -m gpu (cuda + triton backends, every dtype and layout, torch.compile, tensor-core
#              dispatch; not the soak, not test_compute_sanitizer) (dry run: the emulator subset)
#   sanitize   compute-sanitizer memcheck and racecheck on bench/gpu_sample.py (dry run: the sample on
#              the SIMT emulator, no sanitizer)
#   bench      bench/test_gpu_backends.py against cuDNN (cudnn.benchmark = True): ResNet-50's layers fwd,
#              dgrad, wgrad, fwd+bwd, plain and fused, fp16/bf16/fp32 (TF32), both layouts, and pooling;
#              whatever budget is left, minus a reserve for packing; rows past the deadline are skipped
#              (dry run: the cpu backend, one layer, batch 1, float32)
# OUTDIR receives 5 files (the device tool brings back at most 8, 16 MiB each, two folders deep):
#   summary.txt  gpu_check.json  bench.txt  sass.txt  logs.tar.gz
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
BUDGET=480
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --budget=*) BUDGET="${1#--budget=}" ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || { echo "usage: bash bench/gpu_check.sh [--dry-run] [--budget SECONDS] OUTDIR" >&2; exit 2; }
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: --budget must be whole seconds, got $BUDGET" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
mkdir -p "$OUT"
WORK="$(mktemp -d)"
mkdir -p "$WORK/logs"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=20   # seconds kept for packing the files at the end
export PYTHONUNBUFFERED=1
printf 'step\tstatus\trc\tseconds\n' > "$WORK/steps.tsv"

left() { echo $((DEADLINE - RESERVE - $(date +%s))); }

# step NAME CAP CMD...: runs CMD with a timeout of min(CAP, what is left), its output in logs/NAME.log.
step() {
  local name="$1" cap="$2"; shift 2
  local avail t0 rc status
  avail=$(left)
  [ "$cap" -lt "$avail" ] || cap="$avail"
  if [ "$cap" -le 5 ]; then
    printf '%s\tskipped (budget spent)\t-\t0\n' "$name" >> "$WORK/steps.tsv"
    echo "== $name: skipped, the time budget is spent"
    return 0
  fi
  echo "== $name (at most ${cap}s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$cap" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timed out after ${cap}s" ;; *) status=failed ;; esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" $(($(date +%s) - t0)) >> "$WORK/steps.tsv"
  tail -n 3 "$WORK/logs/$name.log"
  echo "   -> $status ($(($(date +%s) - t0)) s)"
}

finish() {
  "$PY" bench/gpu_check_pack.py "$WORK" "$OUT" "$DRY" "$BUDGET" "$START" || echo "gpu_check: packing failed" >&2
  rm -rf "$WORK"
}
trap finish EXIT

{ date -u +%FT%TZ; uname -a; nproc; nvidia-smi 2>&1 || echo "nvidia-smi: not available";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())";
  command -v nvcc && nvcc --version | tail -n 2; command -v compute-sanitizer; } > "$WORK/logs/env.log" 2>&1

JOBS=$(nproc)
if [ "$DRY" = 1 ]; then
  step build 60 "$PY" -c "import fastconv, fastconv._C; print('dry run: the checkout build is used:', fastconv.__file__)"
else
  # Offline: no build isolation (setuptools, pybind11 come from the machine), every core compiling;
  # the CUDA module for the device's own architecture and sm_80 (the static report's pair).
  CC_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  ARCHS="80${CC_ARCH:+;$CC_ARCH}"
  [ "$CC_ARCH" = "80" ] && ARCHS="80;90"
  step build 300 env FASTCONV_BUILD_JOBS="$JOBS" FASTCONV_CUDA=1 FASTCONV_CUDA_ARCHS="$ARCHS" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi
cp build/fastconv-ptxas.txt "$WORK/logs/ptxas.txt" 2>/dev/null

step info 60 "$PY" -m fastconv info

STATIC_ARGS=(--out "$WORK/sass.txt")
# dry run: sm_90 only (CI's own static step has just checked sm_80 and sm_90)
[ "$DRY" = 1 ] && STATIC_ARGS+=(--allow-missing --archs 90)
step static 150 "$PY" -m fastconv.gpu_static "${STATIC_ARGS[@]}"

if [ "$DRY" = 1 ]; then
  # The GPU selection collects and skips here (no GPU); the emulator and interpreter run a small part.
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$WORK/junit.xml" \
    -m "gpu or emu" tests/test_cuda_gpu.py tests/test_triton_gpu.py tests/test_emu_mma_dispatch.py -x
else
  # compute-sanitizer runs below on its own sample; the soak is a long-run test, not a check
  step tests 150 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$WORK/junit.xml" -n 4 --durations=10 \
    -m gpu -k "not test_compute_sanitizer and not soak" tests
fi

if [ "$DRY" = 1 ]; then
  step sanitize 90 "$PY" bench/gpu_sample.py --device cpu --small
else
  step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" bench/gpu_sample.py
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" bench/gpu_sample.py --small
fi

# The benchmarks get what is left; each test skips itself once FASTCONV_BENCH_DEADLINE has passed,
# and the report of what ran is written all the same.
# 45 s between the last case's start and the step's end: the case itself, the skips of the rest, and the
# report (measure_peak per dtype: a GEMM and a copy; ~20 s on the dry run's busy 2-core CPU).
BENCH_ENV=(FASTCONV_GPU_BENCH_REPORT="$WORK/bench.json" FASTCONV_BENCH_DEADLINE=$((DEADLINE - RESERVE - 45))
           FASTCONV_TRITON_TUNE=small FASTCONV_BENCH_TARGET_S=0.2)
if [ "$DRY" = 1 ]; then
  BENCH_ENV+=(FASTCONV_GPU_BENCH_DEVICE=cpu FASTCONV_GPU_BENCH_BACKENDS=cpu FASTCONV_BENCH_SHORT=1
              FASTCONV_GPU_BENCH_DTYPES=float32 FASTCONV_GPU_BENCH_LAYERS=r50-l4-3x3-c512-7
              FASTCONV_GPU_BENCH_BATCH=1)
fi
step bench 100000 env "${BENCH_ENV[@]}" "$PY" -m pytest bench/test_gpu_backends.py --benchmark-only -q \
  -p no:cacheprovider --junitxml="$WORK/bench-junit.xml"

# Exit status: 1 when a step failed or timed out (a step skipped for lack of budget is not a failure).
if cut -f2 "$WORK/steps.tsv" | grep -qE '^(failed|timed out)'; then
  exit 1
fi
exit 0

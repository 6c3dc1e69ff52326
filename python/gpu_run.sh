#!/usr/bin/env bash
# The one GPU script: on the lent GPU machine (or any CUDA box), from the repo root:
#   build burstkern._C, print `burstkern info`, run the WHOLE test suite (GPU-only tests included),
#   optionally compute-sanitizer memcheck over the CUDA-backend tests, and `pytest benchmarks --benchmark-only`
#   to JSON, then a markdown summary. Everything lands in $OUT (default ./gpu_out): at most 8 files.
# Usage: bash python/gpu_run.sh [--no-bench] [--sanitize] [--bench-k EXPR] [--tests-k EXPR]
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
BENCH=1 SANITIZE=0 BENCH_K="" TESTS_K=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-bench) BENCH=0 ;;
    --sanitize) SANITIZE=1 ;;
    --bench-k) BENCH_K="$2"; shift ;;
    --tests-k) TESTS_K="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
export PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export BURSTKERN_FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}

# Wheels carried for packages the GPU image lacks (nvtx, lpips): see .whl/ and the device notes in README.md.
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

status=0
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  t0=$(date +%s)
  $PY -m pip install -e . --no-build-isolation --no-deps -q 2>&1 | tail -20
  echo "build_seconds=$(( $(date +%s) - t0 ))"
  $PY -m burstkern info
} > "$OUT/build_info.txt" 2>&1 || status=1
cat "$OUT/build_info.txt"

$PY -m pytest tests -q -rs ${TESTS_K:+-k "$TESTS_K"} -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

if [ "$SANITIZE" = 1 ]; then
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests -q -k "cuda" -p no:cacheprovider \
    > "$OUT/sanitizer.log" 2>&1
  s=$?; echo "compute-sanitizer memcheck exit=$s (0 = clean)"; tail -5 "$OUT/sanitizer.log"
  [ $s -eq 0 ] || status=1
fi

if [ "$BENCH" = 1 ]; then
  $PY -m pytest benchmarks --benchmark-only -q -p no:cacheprovider ${BENCH_K:+-k "$BENCH_K"} \
    --benchmark-json="$OUT/bench.json" --benchmark-columns=median,iqr,rounds > "$OUT/bench.log" 2>&1
  [ $? -eq 0 ] || status=1
  tail -5 "$OUT/bench.log"
  $PY benchmarks/summarize.py "$OUT/bench.json" > "$OUT/results.md" && cat "$OUT/results.md"
fi
echo "gpu_run status=$status"
exit $status

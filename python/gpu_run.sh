#!/usr/bin/env bash
# burstkern's GPU checks, for a lent GPU machine (H100/H200: torch + CUDA 13, Triton, nvcc, ncu, compute-sanitizer,
# no network). From the repo root:
#
#   bash python/gpu_run.sh --quick             <= 8 minutes: (1) build burstkern._C for sm_90, (2) pytest -m gpu,
#                                              (3) compute-sanitizer memcheck, one call per kernel and dtype,
#                                              (4) headline benchmarks with peers, E-BSRD paper one step,
#                                              (5) summary.md. Stages run in that order (order of value).
#   bash python/gpu_run.sh --dry-run [--full]  the plan with an estimated time per stage (python/gpu_plan.py; CI runs it)
#   bash python/gpu_run.sh --full --part K/N   the long tail: the whole test suite, every benchmark, ncu on the
#                                              deform_conv kernels, split in N parts that each fit one 10-minute call
#                                              (--dry-run --full prints the parts and how many are needed)
#
# Results go to $OUT (default ./gpu_out) as they come: summary.md and results.json are rewritten after every stage,
# so a run cut off at its limit still returns what it finished. At most 8 files: summary.md results.json tests.xml
# tests.jsonl sanitizer.txt bench.json build.log run.log (--full: ncu.csv instead of sanitizer.txt).
# Each stage has a limit (CAP_* below, and the run's budget); a stage that fails does not stop the next one.
# Merge a returned $OUT into the repo with: python python/gpu_results.py DIR
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# stage limits in seconds (python/gpu_plan.py reads these lines)
CAP_BUILD=240
CAP_TESTS=200
CAP_SANITIZE=150
CAP_NCU=240

MODE="" PART="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --part) PART="$2"; shift ;;
    --part=*) PART="${1#--part=}" ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}

if [ "$DRY" = 1 ]; then
  exec "$PY" python/gpu_plan.py "${MODE:-quick}" ${PART:+--part "$PART"}
fi
[ -n "$MODE" ] || { echo "gpu_run.sh: give --quick, --full --part K/N or --dry-run (see --help)" >&2; exit 2; }
if [ "$MODE" = full ] && ! [[ "$PART" =~ ^[0-9]+/[0-9]+$ ]]; then
  echo "gpu_run.sh: --full needs --part K/N (bash python/gpu_run.sh --dry-run --full shows how many parts)" >&2; exit 2
fi

OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
if [ "$MODE" = quick ]; then BUDGET=${GPU_RUN_BUDGET:-465}; else BUDGET=${GPU_RUN_BUDGET:-540}; fi
RESERVE=${GPU_RUN_RESERVE:-12}  # kept back for the final summary
MIN_STAGE=${GPU_RUN_MIN_STAGE:-15}  # a stage with less time than this left is skipped
T0=$(date +%s)
exec > >(tee -a "$OUT/run.log") 2>&1

# --- environment ---------------------------------------------------------------------------------------------------
find_cuda_home() {
  local nvcc c
  nvcc=$(command -v nvcc 2>/dev/null || true)
  for c in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-13.0 ${nvcc:+"$(dirname "$(dirname "$(readlink -f "$nvcc")")")"}; do
    if [ -n "$c" ] && [ -x "$c/bin/nvcc" ]; then echo "$c"; return 0; fi
  done
  return 1
}
CUDA_HOME=$(find_cuda_home || true)
export CUDA_HOME
[ -n "$CUDA_HOME" ] && export PATH="$CUDA_HOME/bin:$PATH"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export BURSTKERN_GPU_RUN=1 BURSTKERN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/burstkern-triton-cache}
export PYTHONPATH="$REPO:$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
export GPU_TEST_LOG="$OUT/tests.jsonl"
unset TRITON_INTERPRET
if [ "$MODE" = full ]; then export BURSTKERN_TESTING=1; else unset BURSTKERN_TESTING; fi
export OUT PY REPO MODE PART CUDA_HOME
# wheels carried for packages the image lacks (the device notes: `carry` .whl): installed outside the repo
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

elapsed() { echo $(( $(date +%s) - T0 )); }
summary() { "$PY" python/gpu_summary.py --out "$OUT" --mode "$MODE" ${PART:+--part "$PART"} "$@" || true; }

# stage NAME CAP FUNCTION: runs FUNCTION under the smaller of CAP and the time left, records it, never aborts the run
stage() {
  local name=$1 cap=$2 fn=$3 now left lim s rc el
  now=$(date +%s)
  left=$(( T0 + BUDGET - RESERVE - now ))
  lim=$left
  if [ -n "$cap" ] && [ "$cap" -lt "$lim" ]; then lim=$cap; fi
  if [ "$lim" -lt "$MIN_STAGE" ]; then
    echo "=== [$(elapsed)s] stage $name: SKIPPED (${left}s left)"
    summary --stage "$name" --status skipped --rc 0 --note "no time left (${left}s)"
    return 0
  fi
  echo "=== [$(elapsed)s] stage $name (limit ${lim}s)"
  s=$(date +%s)
  STAGE_LIMIT=$lim timeout --kill-after=10 "$lim" bash -c "$fn"
  rc=$?
  el=$(( $(date +%s) - s ))
  echo "=== [$(elapsed)s] stage $name: rc=$rc, ${el}s (limit ${lim}s)"
  summary --stage "$name" --rc "$rc" --seconds "$el" --limit "$lim"
}

# --- stage bodies (exported: each runs in its own bash under timeout) -----------------------------------------------
s_setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
  echo "CUDA_HOME=${CUDA_HOME:-<no nvcc found>} MAX_JOBS=$MAX_JOBS nproc=$(nproc) python=$(command -v "$PY")"
  "$PY" python/gpu_summary.py --out "$OUT" --mode "$MODE" ${PART:+--part "$PART"} --env  # versions, GPU, nvcc
  "$PY" -c "import json; e = json.load(open('$OUT/results.json'))['env']; print(*(f'{k}: {v}' for k, v in e.items()), sep='\n')"
}

s_build() {
  [ -n "$CUDA_HOME" ] || { echo "no nvcc found (CUDA_HOME unset, none at /usr/local/cuda)"; return 3; }
  # no pip, no network: build the extension in place (ninja, MAX_JOBS jobs); the repo root is on PYTHONPATH
  local t0=$SECONDS
  "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && [ $(( SECONDS - t0 )) -lt 30 ]; then  # setup.py itself refused, not a compile error: pip
    echo "setup.py build_ext failed in $(( SECONDS - t0 ))s; trying pip install --no-deps --no-build-isolation --no-index -e ."
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >> "$OUT/build.log" 2>&1
    rc=$?
  fi
  tail -n 15 "$OUT/build.log"
  "$PY" -c "
import sys, burstkern
e = burstkern._extension.cuda_extension_error()
print('burstkern._C:', e or 'loaded', burstkern._extension.build_info())
sys.exit(1 if e else 0)" || { [ $rc -eq 0 ] && rc=4; }
  "$PY" -m burstkern info 2>&1 | head -60 || true
  return $rc
}

pytest_opts() {  # xdist workers ($1) when pytest-xdist is there; a per-test timeout when pytest-timeout is
  local o="-p gpu_pytest_log -p no:cacheprovider -rfEs"
  if [ "${1:-1}" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then o="$o -n $1 --dist loadgroup"; fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then o="$o --timeout ${2:-180}"; fi
  echo "$o"
}

s_tests() {
  : > "$GPU_TEST_LOG"
  # shellcheck disable=SC2046
  "$PY" -m pytest -m gpu tests/test_gpu.py -q --junitxml="$OUT/tests.xml" $(pytest_opts "${GPU_TEST_WORKERS:-4}" 150)
}

s_sanitize() {
  local cs
  cs=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
  if [ ! -x "$cs" ]; then echo "compute-sanitizer not found" | tee "$OUT/sanitizer.txt"; return 3; fi
  # no caching allocator: every tensor its own allocation, so an access past its end is outside any allocation
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --print-limit 200 --error-exitcode 9 \
    "$PY" python/gpu_sanitize.py > "$OUT/sanitizer.txt" 2>&1
  local rc=$?
  grep -E "^call .*FAILED|ERROR SUMMARY|^calls=" "$OUT/sanitizer.txt" | tail -20
  return $rc
}

s_bench() {
  "$PY" python/gpu_bench.py --out "$OUT/bench.json" --time-limit $(( STAGE_LIMIT - 30 ))
}

s_full_tests() {
  set -f  # node ids hold [...]: no globbing
  # shellcheck disable=SC2046,SC2086
  "$PY" -m pytest $PART_TESTS -q --junitxml="$OUT/tests.xml" $(pytest_opts "${GPU_TEST_WORKERS:-16}" 300)
}

s_full_bench() {
  set -f
  # timing: one process, no xdist; pytest-benchmark's JSON at the end, every case in tests.jsonl as it finishes
  # shellcheck disable=SC2046,SC2086
  "$PY" -m pytest $PART_BENCH --benchmark-only -q --benchmark-json="$OUT/bench.json" $(pytest_opts 1 400)
}

s_ncu() {
  local ncu
  ncu=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
  [ -x "$ncu" ] || { echo "ncu not found" | tee "$OUT/ncu.csv"; return 3; }
  "$ncu" --clock-control none --target-processes all --kernel-name regex:deform_conv --launch-count 60 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy \
    --section LaunchStats --csv --page details --log-file "$OUT/ncu.csv" "$PY" python/gpu_ncu.py
}
export -f s_setup s_build pytest_opts s_tests s_sanitize s_bench s_full_tests s_full_bench s_ncu
if [ "${GPU_RUN_FAKE:-0}" = 1 ]; then  # tests/test_gpu_plan.py: the stage machinery, no GPU (a failure, a hang)
  s_setup() { echo "fake setup"; }
  s_build() { echo "fake build: failed"; return 1; }
  s_tests() { echo "fake tests: hang"; sleep 600; }
  s_sanitize() { echo "fake sanitize"; }
  s_bench() { echo "fake bench"; }
  s_full_tests() { echo "fake full tests: $(wc -w <<< "$PART_TESTS") files"; }
  s_full_bench() { echo "fake full bench: $(wc -w <<< "$PART_BENCH") ids"; }
  s_ncu() { echo "fake ncu"; }
  export -f s_setup s_build s_tests s_sanitize s_bench s_full_tests s_full_bench s_ncu
fi

# --- run -----------------------------------------------------------------------------------------------------------
echo "gpu_run.sh --$MODE ${PART:+--part $PART }budget ${BUDGET}s, out $OUT, $(date -u +%FT%TZ)"
stage setup 60 s_setup
stage build "$CAP_BUILD" s_build
if [ "$MODE" = quick ]; then
  stage tests "$CAP_TESTS" s_tests
  stage sanitize "$CAP_SANITIZE" s_sanitize
  stage bench "" s_bench
else
  PART_TESTS="" PART_BENCH="" PART_NCU=0
  while read -r kind rest; do
    case "$kind" in
      TESTS) PART_TESTS="$rest" ;;
      BENCH) PART_BENCH="$rest" ;;
      NCU) PART_NCU=1 ;;
    esac
  done < <("$PY" python/gpu_plan.py full --part "$PART" --commands)
  export PART_TESTS PART_BENCH
  echo "part $PART: $(wc -w <<< "$PART_TESTS") test files, $(wc -w <<< "$PART_BENCH") benchmarks, ncu=$PART_NCU"
  [ -n "$PART_TESTS" ] && stage tests "" s_full_tests
  [ -n "$PART_BENCH" ] && stage bench "" s_full_bench
  [ "$PART_NCU" = 1 ] && stage ncu "$CAP_NCU" s_ncu
fi
summary
echo "=== [$(elapsed)s] done; $OUT:"
ls -la "$OUT"
echo
head -n 80 "$OUT/summary.md"
"$PY" -c "import json, sys; sys.exit(0 if json.load(open('$OUT/results.json')).get('ok') else 1)"

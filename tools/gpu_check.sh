#!/usr/bin/env bash
# tools/gpu_check.sh: everything a session lent a GPU should run, in one call of at most ~8
# minutes (issue 14 item 7; docs/cuda.md "Running on a GPU").
#
# On the device machine (an H200 with nvcc, cmake, ninja, jax with CUDA, torch, pytest; no
# network) it: builds jaxkeops for sm_90 against the jax there; runs tests/test_cuda.py; times
# jaxkeops against KeOps 2.3 (pykeops on torch) and dense / row-chunked jnp
# (python -m jaxkeops.benchmarks gpu_compare: Gaussian sum 10^6 × 10^6, Sinkhorn logsumexp
# 10^6 × 10^6, argKmin K=10 10^5 × 10^6, a formula outside the families 10^5 × 10^6, first
# call of a new formula), checking every output against a float64 reference; then runs as much
# of the rest of the suite as fits in the time left, with the GPU as jax's default backend (the
# timings come first: they are what no CPU run can give). Logs go to $OUT; one short table is
# printed last.
#
# Before the call, here (where pip reaches PyPI), from the repository root: pykeops and
# keopscore are pure Python but published as sources only, so build their wheels into the
# ignored folder .whl (about 0.3 MB), which the call carries:
#
#   mkdir -p .whl && python3 -m pip wheel --no-deps -w .whl keopscore==2.3 pykeops==2.3
#
# The call (the device tool's `run`, from the checkout the session started in):
#
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# GPU_CHECK_SECONDS (default 480) is the script's own budget; each stage gets what is left.
# Without .whl the KeOps column says so and the rest runs. A dry run on a machine without a GPU
# (everything on jax's CPU backend, KeOps skipped): PYTHON=.venv/bin/python OUT=/tmp/gc
# GPU_CHECK_COMPARE_SIZE="2000 2000" bash tools/gpu_check.sh

set -u
START=$SECONDS
BUDGET=${GPU_CHECK_SECONDS:-480}
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# jax must not take 75 % of the GPU up front: torch (KeOps) runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
left() { echo $((BUDGET - (SECONDS - START))); }
# At most $1 seconds, never more than what is left minus $2 (kept for the later stages).
slot() { local want=$1 keep=$2 l; l=$(($(left) - keep)); ((l < want)) && want=$l; ((want < 10)) && want=10; echo "$want"; }
SUMMARY=()
note() { SUMMARY+=("$1"); echo "== $1"; }

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version | tail -1
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
} >"$OUT/env.log" 2>&1
echo "== environment: $(head -c 600 "$OUT/env.log" | tr '\n' ' ')"
BACKEND=$($PY -c "import jax; print(jax.default_backend())" 2>/dev/null)

# ---- KeOps 2.3 from the carried wheels
if ls .whl/keopscore-*.whl .whl/pykeops-*.whl >/dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl >>"$OUT/env.log" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    $PY -c "import pykeops; print('pykeops', pykeops.__version__, 'gpu_available',
            pykeops.config.gpu_available)" >>"$OUT/env.log" 2>&1
  else
    note "KeOps: installing the carried wheels failed (env.log)"
  fi
else
  note "KeOps: no .whl/ carried (see this script's header): no KeOps column"
fi

# ---- build (editable: `python -m jaxkeops.benchmarks` from this folder finds the modules)
t0=$SECONDS
if timeout "$(slot 240 200)" $PY -m pip install --no-build-isolation --no-deps -e . \
    --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90-real >"$OUT/build.log" 2>&1 &&
   $PY -c "import jaxkeops._jaxkeops_cuda" >>"$OUT/build.log" 2>&1; then
  note "build: ok in $((SECONDS - t0)) s (sm_90)"
else
  note "build: FAILED after $((SECONDS - t0)) s"
  tail -40 "$OUT/build.log"
  exit 1
fi

PYTEST=(-v -rN -p no:cacheprovider)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=90)
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n 4)
# pytest -v prints one line per test as it ends ("path::test STATUS", or with xdist "[gwN]
# [ n%] STATUS path::test"): counted even when `timeout` ends the run.
status() { grep -cE "(::[^ ]+ $2( |\$))|(^\[gw[0-9]+\] \[ *[0-9]+%\] $2 )" "$1"; }
count() { # $1 log -> "P passed, F failed, E errors, S skipped"
  echo "$(status "$1" PASSED) passed, $(status "$1" FAILED) failed, $(status "$1" ERROR) errors," \
    "$(status "$1" SKIPPED) skipped"
}

# ---- tests/test_cuda.py
t0=$SECONDS
timeout "$(slot 100 280)" $PY -m pytest "${PYTEST[@]}" tests/test_cuda.py >"$OUT/test_cuda.log" 2>&1
rc=$?
note "tests/test_cuda.py: $(count "$OUT/test_cuda.log") (rc $rc$([ $rc = 124 ] && echo ', TIMED OUT'), $((SECONDS - t0)) s)"

# ---- timings against KeOps 2.3 and jnp
CMP=$(slot 260 60)
export JAXKEOPS_GPU_COMPARE_SECONDS=$((CMP > 60 ? CMP - 20 : CMP * 2 / 3))
export JAXKEOPS_GPU_COMPARE_LOG="$OUT/compare.jsonl"
SIZE=()
[ -n "${GPU_CHECK_COMPARE_SIZE:-}" ] && SIZE=(--size $GPU_CHECK_COMPARE_SIZE)
timeout "$CMP" $PY -m jaxkeops.benchmarks gpu_compare "${SIZE[@]}" \
  --markdown "$OUT/compare.md" >"$OUT/compare.log" 2>&1
rc=$?
[ $rc = 0 ] || note "gpu_compare: rc $rc (compare.log)"

# ---- the rest of the suite on jax's default backend (the GPU there), in what time is left
t0=$SECONDS
timeout "$(slot 200 10)" $PY -m pytest "${PYTEST[@]}" "${XDIST[@]}" tests \
  --ignore=tests/test_cuda.py >"$OUT/suite.log" 2>&1
rc=$?
note "rest of the suite on $BACKEND: $(count "$OUT/suite.log") (rc $rc$([ $rc = 124 ] && echo ', stopped by its time box'), $((SECONDS - t0)) s)"
grep -E "(::[^ ]+ (FAILED|ERROR))|(\] (FAILED|ERROR) )" "$OUT/suite.log" | head -15

echo
echo "==== summary ($((SECONDS - START)) s; logs in \$OUT: env, build, test_cuda, suite, compare)"
for line in "${SUMMARY[@]}"; do echo "- $line"; done
echo
if [ -s "$OUT/compare.md" ]; then
  sed -n '/^Device:/,$p' "$OUT/compare.md"
else
  tail -25 "$OUT/compare.log"
fi

#!/usr/bin/env bash
# GPU check of the CUDA backend: build it for this machine's GPU, run the CUDA tests, time the
# float32 and int8 GEMM kernels, and print a summary. Timing only: nothing here is pass/fail
# except the tests.
#
# Usage, on a machine with an NVIDIA GPU and nvcc (CUDA 12 or 13), from the repository:
#   bash bench/gpu_check.sh
# Environment:
#   PY=/path/to/python   interpreter with numpy, pybind11, pytest (default: .venv/bin/python,
#                        else python3)
#   CUDA_ARCH=90         GPU architecture to build for (default: native, the GPU present;
#                        'native' needs CMake >= 3.24)
#   BUILD_DIR=dir        CMake build directory (default: build/gpu-check, git-ignored)
#   JOBS=8               parallel compile jobs (default: nproc)
#   QUICK=1              smaller timing shapes
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
CUDA_ARCH=${CUDA_ARCH:-native}
BUILD_DIR=${BUILD_DIR:-build/gpu-check}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
LOG_DIR=$(mktemp -d)
summary=()

echo "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version | tail -n 2
"$PY" --version

echo "== build (CUDA architectures: $CUDA_ARCH)"
if cmake -S . -B "$BUILD_DIR" -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" > "$LOG_DIR/cmake.log" 2>&1 \
   && cmake --build "$BUILD_DIR" -j "$JOBS" > "$LOG_DIR/build.log" 2>&1; then
  summary+=("build: ok")
else
  cat "$LOG_DIR/cmake.log" "$LOG_DIR/build.log" 2>/dev/null | tail -n 60
  echo "build FAILED (logs in $LOG_DIR)"
  exit 1
fi

if ! "$PY" -c "
import needle.backend_ndarray.ndarray_backend_cuda as m, sys
n = m.device_count()
if n == 0:
    try:
        m.Array(1, 'float32')
    except RuntimeError as e:
        print(e)  # e.g. a driver too old for the CUDA runtime the module was built with
    sys.exit(1)
print('devices:', n, '|', m.device_name(), '| compute capability', m.compute_capability())"; then
  echo "the CUDA module is built but sees no usable GPU: nothing more to check"
  exit 1
fi

echo "== tests: tests/test_cuda_backend.py"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_backend.py 2>&1 \
  | tee "$LOG_DIR/test_cuda.log" | tail -n 25
if [ "${PIPESTATUS[0]}" -eq 0 ]; then
  summary+=("tests/test_cuda_backend.py: $(tail -n 1 "$LOG_DIR/test_cuda.log")")
else
  summary+=("tests/test_cuda_backend.py: FAILED: $(tail -n 1 "$LOG_DIR/test_cuda.log")")
fi

echo "== tests: device-parametrized tests on cuda (pytest -k cuda)"
"$PY" -m pytest -q -p no:cacheprovider tests -k "cuda and not test_cuda_backend" 2>&1 \
  | tee "$LOG_DIR/test_k_cuda.log" | tail -n 25
rc=${PIPESTATUS[0]}
case $rc in
  0) summary+=("pytest tests -k cuda: $(tail -n 1 "$LOG_DIR/test_k_cuda.log")") ;;
  5) summary+=("pytest tests -k cuda: no tests selected") ;;
  *) summary+=("pytest tests -k cuda: FAILED: $(tail -n 1 "$LOG_DIR/test_k_cuda.log")") ;;
esac

echo "== timing (median per call incl. launch and host checks; uint8 x int8 -> uint8 + ReLU)"
QUICK=${QUICK:-0} "$PY" - <<'EOF' | tee "$LOG_DIR/timing.log"
import os, time
import numpy as np
import needle.backend_ndarray.ndarray_backend_cuda as m
from needle.quant import reference as R

quick = os.environ.get("QUICK", "0") == "1"
g = np.random.default_rng(0)

def dev(x):
    x = np.ascontiguousarray(x)
    a = m.Array(x.size, x.dtype.name)
    m.from_numpy(x, a)
    return a

def bench(fn, batch_time=0.02, batches=5):
    """Median seconds per call: calls are batched so one batch lasts >= batch_time."""
    fn()
    m.synchronize()  # warm-up, including first-launch costs
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        m.synchronize()
        if time.perf_counter() - t0 >= batch_time or reps >= 1 << 14:
            break
        reps *= 2
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        m.synchronize()
        times.append((time.perf_counter() - t0) / reps)
    return float(np.median(times))

shapes = [(1, 4096, 4096), (256, 128, 784), (1024, 1024, 1024), (4096, 4096, 4096),
          (4096, 4096, 4095)]
if quick:
    shapes = [(1, 1024, 1024), (256, 128, 784), (1024, 1024, 1024), (1024, 1024, 1023)]
paths = ["dp4a"] + (["mma"] if m.compute_capability() >= (8, 0) else [])
print(f"compute capability {m.compute_capability()}; qgemm kernels timed: {', '.join(paths)}")
print(f"{'M x N x K':>20} {'f32 GFLOP/s':>12}" + "".join(f" {p + ' GOP/s':>11}" for p in paths)
      + f" {'best/f32':>9}  bit-exact")
for M, N, K in shapes:
    a = g.standard_normal((M, K)).astype(np.float32)
    b = g.standard_normal((K, N)).astype(np.float32)
    da, db, dc = dev(a), dev(b), m.Array(M * N, "float32")
    t_f = bench(lambda: m.matmul(da, db, dc, M, K, N))

    qa = g.integers(0, 256, (M, K)).astype(np.uint8)
    w = g.integers(-127, 128, (N, K)).astype(np.int8)
    colsum, bias = R.weight_colsum(w), g.integers(-5000, 5000, N).astype(np.int32)
    mult, shift = R.quantize_multiplier(g.uniform(1e-5, 1e-3, N))
    dqa, packed = dev(qa), m.qpack_weights(dev(w), N, K)
    dout = m.Array(M * N, "uint8")
    args = (dev(colsum), dev(bias), dev(mult.astype(np.int32)), dev(shift.astype(np.int32)))
    rows = slice(0, min(M, 16))                 # check a slice against the numpy reference
    ref = R.qgemm_reference(qa[rows], w, 128, bias, mult, shift, 3, True, "uint8", colsum)
    t_q, exact = [], []
    for path in paths:
        m.set_qgemm_path(path)
        t_q.append(bench(lambda: m.qgemm(dqa, packed, dout, M, N, K, 128, *args, 3, True)))
        exact.append(np.array_equal(m.to_numpy(dout, (M, N), (N, 1), 0)[rows], ref))
    m.set_qgemm_path("dp4a")
    ops = 2.0 * M * N * K
    print(f"{f'{M} x {N} x {K}':>20} {ops / t_f / 1e9:12.1f}"
          + "".join(f" {ops / t / 1e9:11.1f}" for t in t_q)
          + f" {t_f / min(t_q):9.2f}  " + " ".join("yes" if e else "NO" for e in exact))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] && summary+=("timing: ok") || summary+=("timing: FAILED")

echo
echo "== summary"
for line in "${summary[@]}"; do echo "  $line"; done
grep -qw "NO" "$LOG_DIR/timing.log" && echo "  WARNING: qgemm differs from the reference above"
echo "  logs: $LOG_DIR"

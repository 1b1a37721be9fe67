#!/usr/bin/env bash
# Everything the GPU machine must run for the cuda backend (issue 21), in one command, about 4 minutes
# (243 s on an H200 on 2026-12-04; each stage has its own time limit, 8 min 30 s in all):
#
#   DATA=path/to/tinyshakespeare.txt bash bench/gpu_check.sh
#
# 1. pytest -m gpu: the engine on CuPy against the CPU engine (float64 1e-9, float32 1e-4), the
#    cells' cupy.fuse kernels against the unfused path, resume across devices, sampling on the
#    device (the first run also compiles the fused kernels, seconds each)            (36 s)
# 2. bench/bench.py --device cuda: training steps against PyTorch cuDNN, vanilla 1x512, LSTM 2x512
#    and GRU 2x512 at B64 and B256, sampling 256 samples at once, GPU memory        (101 s)
# 3. bench/gpu_agreement.py: 300 steps of configs/shakespeare-lstm.yaml on cuda, and on the CPU for
#    as long as 60 s allow, with the largest loss difference; GPU memory             (85 s)
#
# Needs: Python 3.12, CuPy (cupy-cuda13x or -12x), PyTorch with CUDA, numpy, typer, rich, pyyaml,
# pytest; nothing is downloaded. The project is installed with pip install --no-deps -e . first
# (without build isolation, so offline), and importable from the checkout if that fails.
# Outputs go to $OUT if set (else bench/gpu-out): pytest.txt, bench.json, agreement.json, summary.txt.
# DATA defaults to shared/data/tinyshakespeare.txt, then tinyshakespeare.txt.
#
# Dry run on a machine without a GPU (the Python parts against the tests' numpy stand-in for CuPy,
# PyTorch left out, short timings):  DRY_RUN=1 DATA=... bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/gpu-out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python || command -v python3)}"
# The checkout is importable even where the editable install cannot run (an offline machine
# without setuptools): bench/ and tests/ import charrnn from here.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA="${DATA:-}"
for candidate in "$DATA" shared/data/tinyshakespeare.txt tinyshakespeare.txt; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then DATA="$candidate"; break; fi
done
if [ ! -f "$DATA" ]; then
    echo "gpu_check: no text to train on: set DATA=path/to/tinyshakespeare.txt" >&2
    exit 1
fi
status=0
step() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }

if [ -n "${DRY_RUN:-}" ]; then
    export CHARRNN_FAKE_CUPY=1
    bench_args=(--no-torch --repeats 1 --seconds 0.2 --sample-chars 5 --gpu-rows 0,2)
    agree_args=(--steps 3 --cpu-seconds 5)
else
    "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.txt" 2>&1 || { echo "pip install failed" >&2; cat "$OUT/pip.txt" >&2; }
    nvidia-smi 2>&1 | sed -n 3p | tee -a "$OUT/summary.txt"  # the header: driver and CUDA version
    "$PY" - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import cupy, numpy, sys
n = cupy.cuda.runtime.getDeviceCount()
name = cupy.cuda.runtime.getDeviceProperties(0)["name"] if n else b"-"
print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, cupy {cupy.__version__}, {n} GPU(s): {name.decode()}")
try:
    import torch
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}")
except ImportError:
    print("torch: not installed (bench.py runs with --no-torch)")
EOF
    bench_args=(--repeats 3 --seconds 2 --sample-chars 300)
    "$PY" -c "import torch" 2>/dev/null || bench_args+=(--no-torch)
    agree_args=(--steps 300 --cpu-seconds 60)
fi

if [ -z "${DRY_RUN:-}" ]; then
    step "pytest -m gpu"
    timeout 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider >"$OUT/pytest.txt" 2>&1 || status=1
    tail -3 "$OUT/pytest.txt" | tee -a "$OUT/summary.txt"
fi

step "bench.py --device cuda ${bench_args[*]}"
timeout 200 "$PY" bench/bench.py --device cuda --data "$DATA" "${bench_args[@]}" >"$OUT/bench.json" 2>"$OUT/bench.log" || status=1
cat "$OUT/bench.log" | tee -a "$OUT/summary.txt"

step "gpu_agreement.py ${agree_args[*]}"
timeout 160 "$PY" bench/gpu_agreement.py --data "$DATA" --out "$OUT" "${agree_args[@]}" >"$OUT/agreement.txt" 2>&1 || status=1
cat "$OUT/agreement.txt" | tee -a "$OUT/summary.txt"

step "done, status $status (outputs in $OUT)"
exit $status

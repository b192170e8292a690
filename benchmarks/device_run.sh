#!/usr/bin/env bash
# One device call: CUDA tests, then every benchmark table (used for the numbers in
# benchmarks/README.md).  Run from the repo root: bash benchmarks/device_run.sh
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/nsa-out}; mkdir -p "$OUT"
if [ -d .bench_deps/balltree_erwin ]; then   # optional anchor, built from its sdist
    (cd .bench_deps/balltree_erwin && python3 setup_cpp.py build_ext --inplace -q >/dev/null 2>&1)
    export PYTHONPATH=$PYTHONPATH:$PWD/.bench_deps/balltree_erwin
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4")
timeout 200 python3 -m pytest -q -m cuda tests $XDIST -p no:cacheprovider 2>&1 | tail -4 | tee "$OUT/cuda_tests.txt"
timeout 120 python3 benchmarks/ball_tree.py --speed-only --repeats 3 2>&1 | tee "$OUT/ball_tree.txt" | tail -14
timeout 280 python3 benchmarks/train_step.py --modes eager reduce-overhead --steps 10 --warmup 3 --time-budget 240 2>&1 | tee "$OUT/train_step.txt" | tail -9
timeout 90 python3 benchmarks/attention.py --ref-max 16384 --sizes 16384,16x1024,16x16384 2>&1 | tee "$OUT/attention.txt" | tail -8

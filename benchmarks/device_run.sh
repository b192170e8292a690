#!/usr/bin/env bash
# One device call: the CUDA suite (always), then every benchmark table (mode "all").
# Run from the repo root:
#   COMMIT=$(git rev-parse HEAD) DIRTY=$(git status --porcelain | grep -q . && echo dirty || echo clean) \
#       bash benchmarks/device_run.sh [suite|all]
# COMMIT/DIRTY are read from git when the copy on the device has a .git; the device's copy of
# the tree often has none, so pass them in.  Writes $OUT/cuda_suite.txt: commit hash and
# clean/dirty first, then the card, torch and Triton versions, then pytest's summary line.
# Commit that file as benchmarks/cuda_suite.txt with every change to GPU code.
set -o pipefail
MODE=${1:-all}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/nsa-out}; mkdir -p "$OUT"
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
DIRTY=${DIRTY:-$(git status --porcelain 2>/dev/null | grep -q . && echo dirty || echo clean)}
if [ -d .bench_deps/balltree_erwin ]; then   # optional anchor, built from its sdist
    (cd .bench_deps/balltree_erwin && python3 setup_cpp.py build_ext --inplace -q >/dev/null 2>&1)
    export PYTHONPATH=$PYTHONPATH:$PWD/.bench_deps/balltree_erwin
fi
CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
VERSIONS=$(python3 -c "import torch, triton, torch_geometric as g; print(f'torch {torch.__version__}, triton {triton.__version__}, torch-geometric {g.__version__}')")
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${XDIST_WORKERS:-8}")  # compile-bound: 8 of 16 cores
START=$(date +%s)
timeout 540 python3 -m pytest -q -m cuda tests $XDIST -p no:cacheprovider > "$OUT/cuda_tests.log" 2>&1
RC=$?
SUMMARY=$(grep -E "passed|failed|error" "$OUT/cuda_tests.log" | tail -1)
{
    echo "$COMMIT $DIRTY"
    echo "card: $CARD"
    echo "$VERSIONS"
    echo "command: python3 -m pytest -q -m cuda tests $XDIST (rc $RC, $(( $(date +%s) - START )) s)"
    echo "${SUMMARY:-no summary line (timed out?)}"
} > "$OUT/cuda_suite.txt"
cat "$OUT/cuda_suite.txt"
[ $RC -eq 0 ] || grep -E "^(FAILED|ERROR)" "$OUT/cuda_tests.log" | head -20
[ "$MODE" = suite ] && exit $RC
timeout 120 python3 benchmarks/ball_tree.py --speed-only --repeats 3 2>&1 | tee "$OUT/ball_tree.txt" | tail -14
timeout 280 python3 benchmarks/train_step.py --modes eager reduce-overhead --steps 10 --warmup 3 --time-budget 240 2>&1 | tee "$OUT/train_step.txt" | tail -9
timeout 150 python3 benchmarks/attention.py --ref-max 16384 --sizes 65536,16x4096,1048576,262144,16384 2>&1 | tee "$OUT/attention.txt" | tail -10
exit $RC

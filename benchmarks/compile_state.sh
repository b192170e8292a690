#!/usr/bin/env bash
# One device call: does a process that compiled the ShapeNet-Car step from cold caches run it
# slower than one whose compile hit the caches (benchmarks/README.md, v12; answered in v13: no,
# the cold process was the fastest of three on one machine start)?  On one machine
# start, with `cpp_wrapper` + `combo_kernels`:
#   1. profile_step in a fresh process, cold caches: the step timed, then timed again after
#      Inductor's compile-worker pool is shut down (--retime-without-workers);
#   2. the same again, now on warm caches;
#   3. train_step's isolated row (warm caches), the figure of the target tables.
# Run from the repo root, first thing on a fresh machine (so that 1. is cold):
#   BENCH_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/compile_state.sh
# Writes $OUT/cold.txt, $OUT/warm.txt, $OUT/row.json (+ .txt); about 450 s.
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/nsa-out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( ${BUDGET:-580} - ($(date +%s) - T0) )); }
CPP="--inductor cpp_wrapper=True combo_kernels=True"
for tag in cold warm; do
    timeout $(( $(left) > 260 ? 260 : $(left) )) python3 benchmarks/profile_step.py --mode compile \
        --steps 15 --retime-without-workers $CPP > "$OUT/$tag.txt" 2>&1
    echo "$tag rc $? at $(( $(date +%s) - T0 )) s"
    grep -E "^step wall|^steps" "$OUT/$tag.txt"
done
timeout $(left) python3 benchmarks/train_step.py --isolate --steps 15 --warmup 3 --no-kernel-count \
    --configs shapenet-car --modes compile --only-compiled $CPP --json "$OUT/row.json" \
    > "$OUT/row.txt" 2>&1
echo "row rc $? at $(( $(date +%s) - T0 )) s"
grep -E "^\| shapenet" "$OUT/row.txt"

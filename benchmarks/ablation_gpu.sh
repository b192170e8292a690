#!/usr/bin/env bash
# The ablation of issue 13 item 6 on one GPU, in one device call of at most ~9 minutes:
# every --model (erwin-nsa, local-only, point-transformer, mlp) x 3 seeds on AdK (md.py) and on
# cosmology (cosmology.py), both ablations at once (examples/ablation.py --parallel), then each
# model timed alone, then the tables and figures.
#
# 1. Once, here (a machine with MDAnalysisTests), from the repo root:
#        bash benchmarks/ablation_gpu.sh prepare
#    writes data/adk_npz/adk_dims.npz and adk_dims2.npz (the AdK runs as frame archives that
#    MDTrajectory reads without MDAnalysis; 14 MB; data/ is ignored by git).
# 2. On the device, carrying data/adk_npz (and the cosmology data, see COSMO_FLAGS):
#        COMMIT=<hash> bash benchmarks/ablation_gpu.sh
#    Writes at most 8 files to $OUT/ablation/ (what a device call returns):
#        {md,cosmology}_table.md, {md,cosmology}_curves.png, {md,cosmology}_results.json,
#        runs.tar.gz (every run folder: args, metrics.jsonl, test_metrics, timing, train.log),
#        driver.log
# 3. Here: python examples/ablation_report.py <those results.json> --write (see its --help).
#
# Everything can be overridden from the environment: BUDGET (seconds for the whole script),
# PARALLEL (runs at once per example), SEEDS, MODELS, MD_STEPS, MD_FLAGS, COSMO_STEPS, COSMO_FLAGS,
# EXAMPLES ("md cosmology"), WORK (run folders), PY (the interpreter), DEVICE.
set -o pipefail
MODE=${1:-run}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
ADK=${ADK:-data/adk_npz}

if [ "$MODE" = prepare ]; then
    mkdir -p "$ADK"
    "$PY" - "$ADK" <<'EOF' || exit 1
import sys
from MDAnalysisTests.datafiles import DCD, DCD2, PSF
from torch_geometric_nsa.datasets import trajectory_to_npz
out = sys.argv[1]
for name, dcd in (("adk_dims", DCD), ("adk_dims2", DCD2)):
    print(trajectory_to_npz(f"{out}/{name}.npz", PSF, dcd))
EOF
    du -sh "$ADK"
    exit 0
fi
[ "$MODE" = run ] || { echo "usage: $0 [prepare|run]" >&2; exit 2; }

OUT=${OUT:-/tmp/nsa-out}
DEST=$OUT/ablation
WORK=${WORK:-/tmp/ablation}
BUDGET=${BUDGET:-570}            # seconds for everything; training gets BUDGET - REPORT_S
REPORT_S=${REPORT_S:-120}        # seconds kept for the solo timings, tables and figures
PARALLEL=${PARALLEL:-12}         # runs at once per example (both examples run together)
SEEDS=${SEEDS:-"0 1 2"}
MODELS=${MODELS:-"erwin-nsa local-only point-transformer mlp"}
EXAMPLES=${EXAMPLES:-"md cosmology"}
DEVICE=${DEVICE:-cuda}
TIME_STEPS=${TIME_STEPS:-30}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export COMMIT
# AdK: 93 training windows of 3,341 atoms; 1,500 steps of 4 windows are 65 epochs (the held-out
# curve flattens well before).  Erwin-sized model: width 64, 4 blocks, 4 heads, ball 128,
# compression (and selection) blocks of 32, top-4.  Eager erwin-nsa steps are launch-bound,
# ~30-70 ms alone; shared 24 ways they stay under ~200 ms, so 1,500 steps fit the budget.
MD_STEPS=${MD_STEPS:-1500}
MD_FLAGS=${MD_FLAGS:-"--trajectory $ADK/adk_dims.npz --test-trajectory $ADK/adk_dims2.npz \
--root $WORK/data/md --hidden 64 --layers 4 --heads 4 --ball-size 128 --compress-size 32 \
--topk 4 --batch-size 4 --eval-batch-size 8 --lr 1e-3"}
# Cosmology: the whole Abacus box (carry data/CosmologyHalos, processed here by
#   ABACUS_MINI_N64_L32=<run> python -c "from torch_geometric_nsa.datasets import CosmologyHalos;
#   CosmologyHalos('data/CosmologyHalos')"; 13 MB, loads without the run or abacusnbody),
# random views of 16,384 particles per step (samples are random draws: no --cache-samples),
# trees and radius graph built on the GPU, the same model sizes as AdK.
COSMO=${COSMO:-data/CosmologyHalos}
COSMO_STEPS=${COSMO_STEPS:-1500}
COSMO_FLAGS=${COSMO_FLAGS:-"--root $COSMO --points 16384 --device-graphs --radius 1.5 \
--hidden 64 --layers 4 --heads 4 --ball-size 128 --compress-size 32 --topk 4 --no-cache-samples"}
# every run: no checkpoints (nothing resumes), loading in the training process
# (ablation.py adds --cache-samples unless told --no-cache-samples)
COMMON="--device $DEVICE --ckpt-every 0 --num-workers 0"

mkdir -p "$DEST" "$WORK"
LOG=$DEST/driver.log
exec > >(tee "$LOG") 2>&1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
echo "ablation_gpu.sh: commit $COMMIT, $(date -u +%FT%TZ), budget ${BUDGET}s"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1
"$PY" -c "import torch, torch_geometric as g; print('torch', torch.__version__, '| pyg', g.__version__, '| cuda', torch.cuda.is_available())"

flags_of() {  # the example's flags
    case $1 in
        md) echo "$MD_FLAGS --steps $MD_STEPS" ;;
        cosmology) echo "$COSMO_FLAGS --steps $COSMO_STEPS" ;;
        *) echo "unknown example $1" >&2; return 1 ;;
    esac
}

# the AdK frames are processed once here, not by 12 processes at once
if [[ " $EXAMPLES " == *" md "* ]]; then
    "$PY" - $MD_FLAGS <<'EOF' || echo "AdK data could not be opened (carry $ADK?)"
import sys, examples.md as md
args = md.get_parser().parse_args(sys.argv[1:])
args.model = "mlp"  # no trees: only the frames are processed
task = md.make_task(args)
print(f"AdK: {len(task.train_dataset)} training, {len(task.test_dataset)} test windows")
EOF
fi

# 1. training: both examples at once, every run its own process
TRAIN_S=$(( BUDGET - REPORT_S - $(elapsed) ))
echo "[$(elapsed)s] training, ${TRAIN_S}s at most"
PIDS=()
for ex in $EXAMPLES; do
    # shellcheck disable=SC2046
    timeout -s TERM "$TRAIN_S" "$PY" examples/ablation.py --example "$ex" --seeds $SEEDS --models $MODELS \
        --parallel "$PARALLEL" --out "$WORK/$ex" $(flags_of "$ex") $COMMON \
        > "$WORK/$ex.train.log" 2>&1 &
    PIDS+=($!)
done
for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"; rc=$?
    echo "[$(elapsed)s] training of $(echo $EXAMPLES | cut -d' ' -f$((i + 1))) ended (rc $rc)"
done
for ex in $EXAMPLES; do grep -E "FAILED|started|finished" "$WORK/$ex.train.log" | tail -30; done

# 2. each model alone, one example after the other; then the tables and figures
for ex in $EXAMPLES; do
    LEFT=$(( BUDGET - $(elapsed) - 5 ))
    [ "$LEFT" -gt 20 ] || { echo "no time left for $ex's report"; continue; }
    echo "[$(elapsed)s] $ex: solo timing and report (${LEFT}s at most)"
    # shellcheck disable=SC2046
    timeout -s TERM "$LEFT" "$PY" examples/ablation.py --example "$ex" --seeds $SEEDS --models $MODELS \
        --parallel "$PARALLEL" --out "$WORK/$ex" $(flags_of "$ex") $COMMON \
        --report-only --time-steps "$TIME_STEPS" 2>&1 | tail -25
    for f in table.md curves.png results.json; do
        if [ -f "$WORK/$ex/$f" ]; then cp "$WORK/$ex/$f" "$DEST/${ex}_$f"; fi
    done
done
tar -czf "$DEST/runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='data' . 2>/dev/null
echo "[$(elapsed)s] done; in $DEST:"
ls -la "$DEST"

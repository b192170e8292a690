"""The examples' real training loop, eager against ``--cuda-graphs`` (issue 14,
target 2): real data, real batches, the loop's own timing.

Runs ``examples/md.py`` (AdK) and ``examples/cosmology.py`` (the whole Abacus
box) with the model sizes and data flags of ``benchmarks/ablation_gpu.sh``, each
twice (eager, then ``--cuda-graphs``) for ``--steps`` steps of a 600-step
schedule (``--stop-after``: no test evaluation, no checkpoints, no figures),
and prints one table from every run's ``timing.json`` and ``metrics.jsonl``.

On the device, from the repo root, carrying ``data/adk_npz`` and
``data/CosmologyHalos`` (see ``benchmarks/ablation_gpu.sh`` for both)::

    python3 benchmarks/example_loop.py                     # md, cosmology, cosmology-halo
    python3 benchmarks/example_loop.py --configs md --steps 100

Columns:

* ``median ms``: the median step after 5 warm-up steps (``timing.json``'s
  ``step_s_median``); with ``--cuda-graphs``, the median of the steps that
  replayed a graph (``step_s_median_same_bucket``: the steps that opened a
  bucket -- eager step plus recording -- are left out and counted in
  ``new buckets``);
* ``points/s``: real points (padding excluded) over that median step's
  batches: the median of ``metrics.jsonl``'s ``points_per_s`` over the same
  steps;
* ``all-steps points/s``: every real point of the run over the sum of every
  step's seconds (recordings and warm-up included);
* ``graphs``, ``buckets``, ``padding``: graphs recorded, buckets used, the
  padding's share of the padded points;
* ``loss@1`` and ``loss@N``: the first and last training loss (the first is
  the same batch and weights in both modes; later ones part by rounding).

The rows go to ``OUT/example_loop.json`` too (``--out``, default
``$OUT`` or ``/tmp/nsa-out``).
"""

import argparse
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ADK = "data/adk_npz"
COSMO = "data/CosmologyHalos"
#: model sizes of benchmarks/ablation_gpu.sh
MODEL = "--hidden 64 --layers 4 --heads 4 --ball-size 128 --compress-size 32 --topk 4"
CONFIGS = {
    # 93 AdK windows of 3,341 atoms, 4 per step
    "md": (
        "md.py",
        f"--trajectory {ADK}/adk_dims.npz --test-trajectory {ADK}/adk_dims2.npz "
        f"--root {{work}}/data/md {MODEL} --batch-size 4 --eval-batch-size 8 --lr 1e-3 "
        "--cache-samples",
    ),
    # views of 16,384 particles, trees and radius graph on the GPU (sizes: edges vary)
    "cosmology": (
        "cosmology.py",
        f"--root {COSMO} --points 16384 --device-graphs --radius 1.5 {MODEL}",
    ),
    # the same with periodic images 1 Mpc/h deep: the point count varies from view to view
    "cosmology-halo": (
        "cosmology.py",
        f"--root {COSMO} --points 16384 --halo 1.0 --device-graphs --radius 1.5 {MODEL}",
    ),
}
MODES = ("eager", "cuda-graphs")


def run_one(name, mode, args, work):
    script, flags = CONFIGS[name]
    flags = getattr(args, f"{name.replace('-', '_')}_flags") or flags.format(work=work)
    out = osp.join(work, f"{name}-{mode}")
    cmd = [sys.executable, osp.join(ROOT, "examples", script)] + shlex.split(flags)
    cmd += ["--device", args.device, "--model", args.model, "--out", out]
    cmd += ["--steps", str(args.schedule), "--stop-after", str(args.steps)]
    cmd += ["--ckpt-every", "0", "--no-figures", "--no-progress", "--num-workers", "0"]
    cmd += ["--cuda-graphs"] if mode == "cuda-graphs" else []
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
        return dict(config=name, mode=mode, error=f"exit {proc.returncode}", wall_s=wall)
    return summarise(name, mode, out, wall)


def summarise(name, mode, out, wall):
    with open(osp.join(out, "timing.json")) as f:
        timing = json.load(f)
    with open(osp.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "loss" in r]
    warmup = timing.get("warmup_steps", 5)
    graphs = timing.get("cuda_graphs")
    skip = set(graphs["new_bucket_steps"]) if graphs else set()
    kept = [r for r in rows[warmup:] if r["step"] not in skip] or rows
    median_s = graphs["step_s_median_same_bucket"] if graphs else timing["step_s_median"]
    points = sum(r["points_per_s"] * r["step_s"] for r in rows)
    row = dict(
        config=name,
        mode=mode,
        steps=len(rows),
        median_ms=None if median_s is None else 1e3 * median_s,
        points_per_s=float(np.median([r["points_per_s"] for r in kept])),
        all_steps_points_per_s=points / sum(r["step_s"] for r in rows),
        points_per_step=float(np.median([r["points_per_s"] * r["step_s"] for r in rows])),
        peak_gib=timing.get("peak_gib"),
        loss_first=rows[0]["loss"],
        loss_last=rows[-1]["loss"],
        device=timing.get("device"),
        wall_s=wall,
    )
    if graphs:
        row.update(
            graphs=graphs["num_graphs"],
            buckets=len(graphs["buckets"]),
            new_buckets=len(graphs["new_bucket_steps"]),
            padding=graphs["padding_fraction"],
            bucket_list=graphs["buckets"],
        )
    return row


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results):
    head = (
        "| config | mode | steps | points/step | median ms | points/s | all-steps points/s | "
        "graphs | buckets | padding | peak GiB | loss@1 | loss@N | speed-up |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    eager = {r["config"]: r for r in results if r["mode"] == "eager" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['mode']} | {r['error']} |")
            continue
        base = eager.get(r["config"])
        speed = (
            f"{base['median_ms'] / r['median_ms']:.2f}x"
            if base and r["median_ms"] and base["median_ms"]
            else "-"
        )
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['steps']} | {r['points_per_step']:,.0f} | "
            f"{fmt(r['median_ms'], '.1f')} | {r['points_per_s']:,.0f} | "
            f"{r['all_steps_points_per_s']:,.0f} | {r.get('graphs', '-')} | "
            f"{r.get('buckets', '-')} | "
            f"{fmt(r.get('padding'), '.1%')} | {fmt(r['peak_gib'], '.2f')} | "
            f"{r['loss_first']:.4f} | {r['loss_last']:.4f} | {speed} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=60, help="steps run (--stop-after)")
    parser.add_argument("--schedule", type=int, default=600, help="--steps of the lr schedule")
    parser.add_argument("--model", default="erwin-nsa", choices=["erwin-nsa", "local-only"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per run")
    parser.add_argument("--work", default="/tmp/example_loop", help="run folders")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/nsa-out"))
    for name in CONFIGS:
        parser.add_argument(
            f"--{name}-flags", default=None, help=f"replace the data and model flags of {name}"
        )
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    results = []
    for name in args.configs:
        for mode in args.modes:
            results.append(run_one(name, mode, args, args.work))
            print(json.dumps(results[-1]), flush=True)
    text = table(results)
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, "example_loop.json"), "w") as f:
        json.dump(dict(rows=results, table=text, argv=sys.argv[1:]), f, indent=1)
    return results


if __name__ == "__main__":
    main()

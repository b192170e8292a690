"""Ablation on an example at equal step budgets: erwin-nsa, local-only,
point-transformer and mlp, over several seeds; prints a Markdown table.

    python examples/ablation.py --steps 200 --seeds 0 1 2            # AdK (md.py)
    python examples/ablation.py --example cosmology --steps 300      # any example

Any other flag is passed on to the example (e.g. ``--hidden 64``).  Each run
writes its own folder under ``--out`` (default ``runs/ablation-<example>``);
runs whose ``test_metrics.json`` exists are reused, so an interrupted
ablation resumes where it stopped.
"""

import argparse
import json
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _train import MODELS  # noqa: E402

METRIC = {
    "md": ("rmse", "RMSE next displacement [Å]"),
    "shapenet_car": ("mse_normalised", "MSE (standardised pressure)"),
    "cosmology": ("mse_normalised", "MSE (standardised velocity)"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example", default="md", choices=sorted(METRIC))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    args, rest = parser.parse_known_args(argv)
    example = __import__(args.example)
    out = args.out or osp.join("runs", f"ablation-{args.example}")
    key, label = METRIC[args.example]
    rows = {}
    for seed in args.seeds:
        for model in args.models:
            run = osp.join(out, f"{model}-seed{seed}")
            path = osp.join(run, "test_metrics.json")
            if not osp.isfile(path):
                example.main(
                    rest
                    + [
                        "--model",
                        model,
                        "--seed",
                        str(seed),
                        "--steps",
                        str(args.steps),
                        "--out",
                        run,
                        "--no-figures",
                        "--no-progress",
                    ]
                )
            with open(path) as f:
                rows.setdefault(model, []).append(json.load(f))
    base = next(iter(rows.values()))[0]
    lines = [f"| model | params | {label} | train s / step (CPU) |", "|---|---|---|---|"]
    for model, rs in rows.items():
        v = np.array([r[key] for r in rs])
        t = np.array([r["train_seconds"] / r["steps"] for r in rs])
        pm = f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else ""
        lines.append(
            f"| {model} | {int(rs[0]['params']):,} | {v.mean():.4f}{pm} | {np.median(t):.3f} |"
        )
    for b, name in (
        ("zero_rmse", "zero displacement"),
        ("const_vel_rmse", "constant velocity"),
        ("mean_baseline_rmse", "training mean"),
    ):
        if b in base and key == "rmse":
            lines.append(f"| *{name}* | 0 | {base[b]:.4f} | – |")
    table = "\n".join(lines)
    print(f"\n{len(args.seeds)} seed(s), {args.steps} steps each\n\n{table}")
    with open(osp.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()

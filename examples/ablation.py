"""Ablation of an example at equal step budgets: trains erwin-nsa, local-only,
point-transformer and mlp over several seeds and prints a Markdown table of
the test error (mean and standard deviation over seeds), the parameters and
the training time per step.

    python examples/ablation.py --steps 200 --seeds 0 1 2            # AdK (md.py)
    python examples/ablation.py --example cosmology --steps 300      # any example

Any other flag is passed on to the example (e.g. ``--hidden 64``).  Each run
writes its own folder under ``--out`` (default ``runs/ablation-<example>``).
A finished run is reused only when it was trained with exactly the settings
this ablation asks for (its ``args.json``); after a change of ``--steps`` or of
any other setting it is trained again, so an interrupted ablation resumes
where it stopped and a changed one never mixes old results in.
"""

import argparse
import json
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402

METRIC = {
    "md": ("rmse", "RMSE next displacement [Å]"),
    "shapenet_car": ("mse", "MSE pressure"),
    "cosmology": ("mse_normalised", "MSE (standardised velocity)"),
}


def _reusable(run: str, run_args: dict) -> bool:
    """Whether ``run`` finished with the settings ``run_args``."""
    paths = [osp.join(run, name) for name in ("test_metrics.json", "args.json")]
    if not all(osp.isfile(p) for p in paths):
        return False
    with open(paths[1]) as f:
        old = json.load(f)
    return not _train.setting_differences(old, run_args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_train.HelpFormatter)
    parser.add_argument(
        "--example", default="md", choices=sorted(METRIC), help="the example to ablate"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(_train.MODELS),
        choices=_train.MODELS,
        help="models to compare",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of each model")
    parser.add_argument(
        "--steps", type=_train.positive_int, default=200, help="training steps of every run"
    )
    parser.add_argument(
        "--out", default=None, help="folder of the runs (None: runs/ablation-<example>)"
    )
    args, rest = parser.parse_known_args(argv)
    example = __import__(args.example)
    out = args.out or osp.join("runs", f"ablation-{args.example}")
    key, label = METRIC[args.example]
    rows = {}
    for seed in args.seeds:
        for model in args.models:
            run = osp.join(out, f"{model}-seed{seed}")
            argv_run = rest + [
                "--model", model, "--seed", str(seed), "--steps", str(args.steps),
                "--out", run, "--no-figures", "--no-progress",
            ]  # fmt: skip
            run_args = vars(example.get_parser().parse_args(argv_run))
            if _reusable(run, run_args):
                print(f"reusing {run} (same settings)", flush=True)
            else:
                example.main(argv_run)
            with open(osp.join(run, "test_metrics.json")) as f:
                rows.setdefault(model, []).append(json.load(f))
    base = next(iter(rows.values()))[0]
    lines = [f"| model | params | {label} | train s / step |", "|---|---|---|---|"]
    for model, rs in rows.items():
        v = np.array([r[key] for r in rs])
        t = np.array([r["train_seconds"] / r["steps"] for r in rs])
        pm = f" ± {v.std(ddof=1):.4f}" if len(v) > 1 else ""
        lines.append(
            f"| {model} | {int(rs[0]['params']):,} | {v.mean():.4f}{pm} | {np.median(t):.3f} |"
        )
    baselines = {
        "rmse": (("zero_rmse", "zero displacement"), ("const_vel_rmse", "constant velocity")),
        "mse": (("mean_baseline_mse", "mean pressure"),),
    }
    for b, name in baselines.get(key, ()):
        if b in base:
            lines.append(f"| *{name}* | 0 | {base[b]:.4f} | – |")
    table = "\n".join(lines)
    print(f"\n{len(args.seeds)} seed(s), {args.steps} steps each\n\n{table}")
    with open(osp.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()

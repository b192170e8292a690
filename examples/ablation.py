"""Ablation of an example at equal step budgets: trains erwin-nsa, local-only,
point-transformer and mlp over several seeds, then writes a table of the test
error (mean and standard deviation over seeds), the parameters, the time per
step and the peak GPU memory of every model, and a figure of the training loss
and of the held-out error against the step.

    python examples/ablation.py --steps 200 --seeds 0 1 2            # AdK (md.py)
    python examples/ablation.py --example cosmology --steps 300      # any example
    python examples/ablation.py --steps 3000 --seeds 0 1 2 --parallel 12 \\
        --time-steps 30 --device cuda --batch-size 4                 # on one GPU

Every run is its own process (``python examples/<example>.py ...``, its
output in ``<run>/train.log``); ``--parallel N`` runs N of them at once (each
with ``--threads`` = the CPU cores / N unless given), which fills a GPU with
launch-bound steps.  A failed run is reported with the end of its log; the
others finish and the table is written with what finished.  A model whose runs
stopped early (killed by a time limit) but logged held-out rows in every seed
gets a row of its own: the held-out metric at the last step all its seeds
reached, marked as stopped, and its curves up to there.  Any other flag is
passed on to the example (e.g. ``--hidden 64``).

Runs train with ``--eval-every`` (default: every twentieth of ``--steps``), so
``metrics.jsonl`` holds the held-out error during training: on the
validation split when the example has one, else on the test split (AdK has
no validation run; nothing is chosen from the curves: the step budget is
fixed, there is no early stopping).  Every run keeps its transformed
samples in memory (``--cache-samples``: the ball trees are built once per
sample; the examples' transforms are deterministic).  Times per step under
``--parallel`` share the machine, so ``--time-steps K`` afterwards trains each
model alone for K steps after ``--time-warmup`` steps and the table reports
the median of those.  The peak GPU memory is ``torch.cuda.max_memory_allocated`` of each
training process (per process, so concurrency does not change it).

Output in ``--out`` (default ``runs/ablation-<example>``): a folder per run,
``solo-<model>/`` for the timings, ``table.md`` (with the command, the commit
and the device), ``curves.png`` and ``results.json`` (every number;
``examples/ablation_report.py`` renders the docs' sections from it).  A
finished run is reused only when it was trained with exactly the settings this
ablation asks for (its ``args.json``); after a change of ``--steps`` or of any
other setting it is trained again, so an interrupted ablation resumes where it
stopped and a changed one never mixes old results in.
"""

import argparse
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)
import _train  # noqa: E402

#: the test metric of each example and its label
METRIC = {
    "md": ("rmse", "RMSE next displacement [Å]"),
    "shapenet_car": ("mse", "MSE pressure"),
    "cosmology": ("rmse", "RMSE velocity [km/s]"),
    "long_range": ("rmse", "RMSE (normalised target)"),
}
#: the baselines a table lists (test metrics named ``<baseline>_<metric>``; other such
#: metrics, e.g. ``val_rmse``, are not baselines)
BASELINE_NAMES = {
    "zero": "zero displacement",
    "const_vel": "constant velocity",
    "mean_baseline": "mean of the training targets",
    "zero_baseline": "zero velocity",
    "linear_theory": "linear theory from the positions",
    "zero_target": "zero (the targets' mean)",
    "own_ball": "kernel mean over the own ball (fitted scale)",
}
#: settings of a run that must match for reuse although they are free on ``--resume``
EVAL_SETTINGS = ("eval_every", "eval_samples")


class AblationError(RuntimeError):
    """Some runs of an ablation failed."""


def _reusable(run: str, run_args: dict, done: str = "test_metrics.json") -> bool:
    """Whether ``run`` finished (wrote ``done``) with the settings ``run_args``."""
    paths = [osp.join(run, name) for name in (done, "args.json")]
    if not all(osp.isfile(p) for p in paths):
        return False
    with open(paths[1]) as f:
        old = json.load(f)
    missing = "<not set>"
    if any(old.get(k, missing) != run_args.get(k, missing) for k in EVAL_SETTINGS):
        return False
    return not _train.setting_differences(old, run_args)


def git_commit() -> str:
    """``$COMMIT``, else ``git rev-parse HEAD`` of this checkout, else ``unknown``."""
    if os.environ.get("COMMIT"):
        return os.environ["COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _child_env(threads: Optional[int]) -> Dict[str, str]:
    """The environment of a run: this process's, with the package this process
    imported first on ``PYTHONPATH`` (a run imports the same code)."""
    import torch_geometric_nsa

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = osp.dirname(osp.dirname(osp.abspath(torch_geometric_nsa.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def log_tail(path: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def run_all(jobs: List[Dict[str, Any]], parallel: int, threads: Optional[int]) -> List[str]:
    """Runs ``jobs`` (dicts with ``cmd``, ``run`` and ``name``) as subprocesses,
    ``parallel`` at a time, each writing ``<run>/train.log``; returns a
    message (with the log's tail) for every failed job."""
    pending, running, failures = list(jobs), [], []
    env = _child_env(threads)
    total = len(jobs)
    try:
        _run_all(pending, running, failures, parallel, env, total)
    finally:  # interrupted (Ctrl-C, SIGTERM of a timeout): no orphaned runs
        for _, proc, log, _ in running:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, log, _ in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return failures


def _run_all(pending, running, failures, parallel, env, total) -> None:
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            os.makedirs(job["run"], exist_ok=True)
            log = open(osp.join(job["run"], "train.log"), "w")
            proc = subprocess.Popen(
                job["cmd"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()
            )
            running.append((job, proc, log, time.perf_counter()))
            print(f"[{total - len(pending)}/{total}] started {job['name']}", flush=True)
        time.sleep(0.2)
        still = []
        for job, proc, log, t0 in running:
            rc = proc.poll()
            if rc is None:
                still.append((job, proc, log, t0))
                continue
            log.close()
            seconds = time.perf_counter() - t0
            if rc == 0:
                print(f"finished {job['name']} in {seconds:.0f} s", flush=True)
            else:
                path = osp.join(job["run"], "train.log")
                msg = (
                    f"{job['name']} FAILED (exit code {rc}, after {seconds:.0f} s); "
                    f"the end of {path}:\n{log_tail(path)}"
                )
                print(msg, flush=True)
                failures.append(msg)
        running[:] = still


# ---------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------
def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = (c[window:] - c[:-window]) / window
    return np.concatenate([values[: window - 1].cumsum() / np.arange(1, window), out])


def _band(curves: List[Dict[int, float]], max_points: int = 200) -> Optional[Dict[str, list]]:
    """Mean, min and max over seeds at the steps every seed has (at most
    ``max_points`` of them, evenly spaced)."""
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        return None
    if len(steps) > max_points:
        keep = np.unique(np.linspace(0, len(steps) - 1, max_points).round().astype(int))
        steps = [steps[i] for i in keep]
    v = np.array([[c[s] for s in steps] for c in curves])
    return dict(step=steps, mean=v.mean(0).tolist(), min=v.min(0).tolist(), max=v.max(0).tolist())


def curves_of(runs: List[str], eval_key: str, steps: int) -> Dict[str, Any]:
    """Training loss (running mean over ``steps / 100`` steps) and held-out
    ``eval_key`` against the step, over the seeds' runs."""
    train, held, split, baselines = [], [], None, {}
    window = max(1, steps // 100)
    metric = eval_key[len("eval_") :]
    for run in runs:
        rows = _train.read_jsonl(osp.join(run, "metrics.jsonl"))
        loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        if loss:
            s, v = zip(*loss)
            train.append(dict(zip(s, _smooth(np.asarray(v, float), window).tolist())))
        evals = [r for r in rows if eval_key in r]
        if evals:
            held.append({r["step"]: r[eval_key] for r in evals})
            split = evals[0]["eval_split"]
            # the trivial baselines on the same held-out samples (eval_<name>_<metric>)
            for k, v in evals[-1].items():
                name = k[len("eval_") : -len(metric) - 1]
                if k.startswith("eval_") and k.endswith("_" + metric) and name in BASELINE_NAMES:
                    baselines.setdefault(name, v)
    return dict(
        train=_band(train),
        train_smoothing=window,
        held_out=_band(held),
        held_out_split=split,
        held_out_baselines=baselines,
    )


def stopped_model(runs: List[str], eval_key: str, steps: int) -> Optional[Dict[str, Any]]:
    """A model whose runs stopped before their last step (a time limit) but
    logged held-out rows in every seed: its held-out ``eval_key`` at the last
    step that every seed reached, and its curves (:obj:`None` if a seed has no
    such row)."""
    held = []
    for run in runs:
        path = osp.join(run, "metrics.jsonl")
        rows = _train.read_jsonl(path) if osp.isfile(path) else []
        held.append({r["step"]: r[eval_key] for r in rows if eval_key in r})
    common = set.intersection(*(set(h) for h in held)) if held else set()
    if not common:
        return None
    step = max(common)
    v = np.array([h[step] for h in held], dtype=float)
    return dict(
        step=step,
        values=v.tolist(),
        mean=float(v.mean()),
        std=float(v.std(ddof=1)) if len(v) > 1 else None,
        last_held_out_steps=[max(h) for h in held],
        curves=curves_of(runs, eval_key, steps),
    )


def plot_curves(results: Dict[str, Any], path: str) -> Optional[str]:
    """``curves.png``: training loss and held-out error against the step (and
    the held-out error against the training time alone, when timed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    models = results["models"]
    timed = all(m.get("solo_step_s") for m in models.values())
    stopped = {f"{k} (stopped)": m for k, m in results.get("stopped_models", {}).items()}
    models = {**models, **stopped}  # stopped runs: their curves up to the stop
    has_held = any(m["curves"]["held_out"] for m in models.values())
    n = 1 + has_held + (has_held and timed)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    axes = axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    split = None
    for i, (model, m) in enumerate(models.items()):
        c = colours[i % len(colours)]
        panels = [(axes[0], m["curves"]["train"], 1.0)]
        if has_held and m["curves"]["held_out"]:
            split = m["curves"]["held_out_split"]
            panels.append((axes[1], m["curves"]["held_out"], 1.0))
            if timed and m.get("solo_step_s"):
                panels.append((axes[2], m["curves"]["held_out"], m["solo_step_s"]))
        for ax, band, scale in panels:
            if not band:
                continue
            x = np.asarray(band["step"]) * scale
            ax.plot(x, band["mean"], color=c, lw=1.4, label=model)
            ax.fill_between(x, band["min"], band["max"], color=c, alpha=0.2, lw=0)
    seeds = len(results["seeds"])
    axes[0].set_ylabel(
        f"training loss (normalised MSE, {models[next(iter(models))]['curves']['train_smoothing']}"
        "-step mean)"
    )
    if has_held:
        label = f"{results['metric_label']}, {split} split"
        axes[1].set_ylabel(label)
        base = next((m["curves"]["held_out_baselines"] for m in models.values()), {})
        for k, (name, v) in enumerate(sorted(base.items())):
            for ax in axes[1:]:
                ax.axhline(v, color="grey", ls=("--", ":", "-.")[k % 3], lw=1)
            axes[1].annotate(
                BASELINE_NAMES.get(name, name), (1, v), xycoords=("axes fraction", "data"),
                ha="right", va="bottom", fontsize=7, color="grey",
            )  # fmt: skip
        if timed:
            axes[2].set_xscale("log")
            axes[2].set_xlabel("training time alone [s] (step × solo time per step)")
            axes[2].set_ylabel(label)
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if not ax.get_xlabel():
            ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{results['example']}: mean over {seeds} seed(s), band min–max; "
        f"{results['steps']} steps ({results['device']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _decimals(v: float) -> int:
    """Decimals that show 4 significant digits of ``v`` (at most 4)."""
    a = abs(v)
    return 4 if a == 0 else int(min(4, max(0, 3 - np.floor(np.log10(a)))))


def _fmt(v: float, decimals: Optional[int] = None) -> str:
    if v != 0 and not 1e-3 <= abs(v) < 1e5:
        return f"{v:.3e}"
    return f"{v:.{_decimals(v) if decimals is None else decimals}f}"


def mean_pm_std(mean: float, std: Optional[float]) -> str:
    """``mean ± std`` with the decimals of the mean (and one significant digit
    of a smaller standard deviation)."""
    if std is None:
        return _fmt(mean)
    d = _decimals(mean)
    if 0 < std < 10**-d:
        d = min(6, int(-np.floor(np.log10(std))))
    return f"{_fmt(mean, d)} ± {std:.{d}f}"


def render_table(results: Dict[str, Any]) -> str:
    """The Markdown table of ``results`` (no header lines)."""
    n = len(results["seeds"])
    lines = [
        f"| model | params | {results['metric_label']} (mean ± std, {n} seed(s)) | "
        "ms / step (alone) | peak GiB | steps |",
        "|---|---|---|---|---|---|",
    ]
    for model, m in results["models"].items():
        ms = f"{1000 * m['solo_step_s']:.1f}" if m.get("solo_step_s") else "–"
        peak = f"{m['peak_gib']:.2f}" if m.get("peak_gib") is not None else "–"
        lines.append(
            f"| {model} | {m['params']:,} | {mean_pm_std(m['mean'], m['std'])} | {ms} | {peak} "
            f"| {m['steps']} |"
        )
    for name, v in results["baselines"].items():
        lines.append(f"| *{BASELINE_NAMES.get(name, name)}* | 0 | {_fmt(v)} | – | – | – |")
    for model, m in results.get("stopped_models", {}).items():
        split = m["curves"]["held_out_split"]
        lines.append(
            f"| {model} | – | {mean_pm_std(m['mean'], m['std'])} at step {m['step']} ({split} "
            f"split; stopped before the end) | – | – | {m['step']} of {results['steps']} |"
        )
    for model in results["failed_models"]:
        lines.append(f"| {model} | failed: see its train.log | | | | |")
    return "\n".join(lines)


def render_header(results: Dict[str, Any]) -> str:
    r = results
    held = next((m["curves"] for m in r["models"].values() if m["curves"]["held_out"]), None)
    lines = [
        f"# Ablation of `{r['example']}.py`: {r['steps']} steps, seeds "
        f"{' '.join(map(str, r['seeds']))}",
        "",
        f"- command: `{r['command']}`",
        f"- commit: `{r['commit']}`",
        f"- device: {r['device']}",
        f"- test metric: `{r['metric']}` on the test split after the last step",
    ]
    if held:
        lines.append(
            f"- held-out curves: every {r['eval_every']} steps on the {held['held_out_split']} "
            "split (nothing is chosen from them)"
        )
    if r["time_steps"]:
        lines.append(
            f"- ms / step: median of {r['time_steps']} steps after {r['time_warmup']} warm-up "
            "steps, each model alone (data loading excluded); the runs themselves shared the "
            f"machine {r['parallel']} at a time"
        )
    else:
        lines.append("- ms / step: not timed alone (`--time-steps 0`)")
    lines.append(
        "- peak GiB: `torch.cuda.max_memory_allocated` of training, the largest over the "
        "seeds' processes (– on the CPU)"
    )
    return "\n".join(lines)


def summarise(
    args, example_name: str, rows, runs, solo, failures, eval_key, command
) -> Dict[str, Any]:
    key, label = args.metric, METRIC.get(example_name, (args.metric, args.metric))[1]
    if args.metric != METRIC.get(example_name, (None,))[0]:
        label = args.metric
    models: Dict[str, Any] = {}
    baselines: Dict[str, float] = {}
    device = None
    for model, rs in rows.items():
        if key not in rs[0]:
            raise KeyError(
                f"the runs of {example_name} report no metric '{key}' (they report "
                f"{sorted(k for k, v in rs[0].items() if isinstance(v, float))}): pass --metric"
            )
        v = np.array([r[key] for r in rs], dtype=float)
        peaks = [r["peak_gib"] for r in rs if r.get("peak_gib") is not None]
        timing = solo.get(model)
        models[model] = dict(
            params=int(rs[0]["params"]),
            seeds=[int(r["seed"]) for r in rs],
            values=v.tolist(),
            mean=float(v.mean()),
            std=float(v.std(ddof=1)) if len(v) > 1 else None,
            steps=int(rs[0]["steps"]),
            peak_gib=max(peaks) if peaks else None,
            concurrent_step_s_median=(
                float(np.median([r["step_s_median"] for r in rs]))
                if all(r.get("step_s_median") for r in rs)
                else None
            ),
            train_seconds=[r["train_seconds"] for r in rs],
            final_train_loss=[r.get("final_train_loss") for r in rs],
            solo_step_s=timing["step_s"] if timing else None,
            solo_peak_gib=timing["peak_gib"] if timing else None,
            curves=curves_of(runs[model], eval_key, args.steps),
        )
        device = device or (timing or {}).get("device") or rs[0].get("device")
        for k, val in rs[0].items():
            name = k[: -len(key) - 1]
            if k.endswith("_" + key) and isinstance(val, float) and name in BASELINE_NAMES:
                baselines.setdefault(name, val)
    return dict(
        example=example_name,
        metric=key,
        metric_label=label,
        command=command,
        commit=git_commit(),
        device=device or "unknown",
        steps=args.steps,
        seeds=args.seeds,
        parallel=args.parallel,
        eval_every=args.eval_every,
        time_steps=args.time_steps,
        time_warmup=args.time_warmup,
        models=models,
        baselines=baselines,
        failed_models=[m for m in args.models if m not in models],
        failures=failures,
    )


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def get_parser() -> argparse.ArgumentParser:
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
        "--metric",
        default=None,
        help="test metric of the table (None: the example's: "
        + ", ".join(f"{k} {v[0]}" for k, v in sorted(METRIC.items()))
        + ")",
    )
    parser.add_argument(
        "--eval-every",
        type=_train.non_negative_int,
        default=None,
        help="held-out evaluation every this many steps (None: --steps / 20; 0: off)",
    )
    parser.add_argument(
        "--parallel",
        type=_train.positive_int,
        default=1,
        help="runs at once, each its own process",
    )
    parser.add_argument(
        "--time-steps",
        type=_train.non_negative_int,
        default=0,
        help="afterwards, time this many steps of each model alone (0: no solo timing)",
    )
    parser.add_argument(
        "--time-warmup",
        type=_train.non_negative_int,
        default=5,
        help="steps before the timed ones (Triton compilation, allocator warm-up)",
    )
    parser.add_argument(
        "--cache-samples",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pass --cache-samples to every run (trees built once per sample); turn it off for "
        "examples whose training samples are random draws (cosmology's views)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: time (--time-steps) and tabulate the runs that finished with "
        "these settings; the others are reported as missing",
    )
    parser.add_argument(
        "--out", default=None, help="folder of the runs (None: runs/ablation-<example>)"
    )
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = get_parser().parse_known_args(argv)
    # the one command that trains, times and tabulates all of it (without --report-only)
    command = "python examples/ablation.py " + shlex.join(a for a in argv if a != "--report-only")
    example = __import__(args.example)
    script = osp.join(HERE, f"{args.example}.py")
    out = args.out or osp.join("runs", f"ablation-{args.example}")
    args.metric = args.metric or METRIC[args.example][0]
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 20)
    threads = None
    if "--threads" not in rest and args.parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs, plan, missing = [], [], []
    for seed in args.seeds:
        for model in args.models:
            run = osp.join(out, f"{model}-seed{seed}")
            log = osp.join(run, "train.log")
            argv_run = rest + [
                "--model", model, "--seed", str(seed), "--steps", str(args.steps),
                "--eval-every", str(args.eval_every),
                "--out", run, "--no-figures", "--no-progress",
            ] + (["--cache-samples"] if args.cache_samples else [])  # fmt: skip
            if threads is not None:
                argv_run += ["--threads", str(threads)]
            run_args = vars(example.get_parser().parse_args(argv_run))  # exits on a bad flag
            plan.append((model, seed, run))
            if _reusable(run, run_args):
                print(f"reusing {run} (same settings)", flush=True)
            elif args.report_only:
                missing.append(
                    f"{model} seed {seed} MISSING: no finished run with these settings in {run}"
                    + (f"; the end of its train.log:\n{log_tail(log)}" if osp.isfile(log) else "")
                )
                print(missing[-1], flush=True)
            else:
                cmd = [sys.executable, script] + argv_run
                jobs.append(dict(cmd=cmd, run=run, name=f"{model} seed {seed}"))
    failures = missing + (run_all(jobs, args.parallel, threads) if jobs else [])
    rows: Dict[str, List[dict]] = {}
    runs: Dict[str, List[str]] = {}
    for model, seed, run in plan:
        path = osp.join(run, "test_metrics.json")
        if osp.isfile(path) and not any(f.startswith(f"{model} seed {seed} ") for f in failures):
            with open(path) as f:
                rows.setdefault(model, []).append(dict(json.load(f), seed=seed))
            runs.setdefault(model, []).append(run)
    failed_models = {m for m, _, _ in plan} - set(rows)
    # a model with a failed seed is left out of the table: its mean would mix seeds
    for f in failures:
        model = f.split(" seed ")[0]
        rows.pop(model, None)
        runs.pop(model, None)
        failed_models.add(model)
    solo: Dict[str, Dict[str, Any]] = {}
    if args.time_steps:
        solo = time_alone(args, rest, example, out, list(rows))
    eval_key = f"eval_{args.metric}"
    # runs stopped by a time limit still report their held-out rows
    stopped = {}
    for model in sorted(failed_models):
        s = stopped_model([r for m, _, r in plan if m == model], eval_key, args.steps)
        if s is not None:
            stopped[model] = s
    if not rows and not stopped:
        raise AblationError("every run failed:\n\n" + "\n\n".join(failures))
    results = summarise(args, args.example, rows, runs, solo, failures, eval_key, command)
    results["failed_models"] = sorted(failed_models - set(stopped))
    results["stopped_models"] = stopped
    table = render_table(results)
    with open(osp.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(osp.join(out, "table.md"), "w") as f:
        f.write(render_header(results) + "\n\n" + table + "\n")
    fig = plot_curves(results, osp.join(out, "curves.png"))
    print(f"\n{len(args.seeds)} seed(s), {args.steps} steps each\n\n{table}\n")
    print(f"written: {osp.join(out, 'table.md')}, {osp.join(out, 'results.json')}, {fig}")
    if failures:
        raise AblationError(
            f"{len(failures)} run(s) failed (left out of the table, or in it as stopped at their "
            "last common held-out step):\n\n" + "\n\n".join(failures)
        )
    return table


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_alone(args, rest, example, out, models) -> Dict[str, Dict[str, Any]]:
    """Trains each model alone, in this process, for ``--time-warmup`` +
    ``--time-steps`` steps (seed of the first run) and returns the median
    seconds per timed step and the peak memory of each."""
    solo = {}
    n = args.time_warmup + args.time_steps
    for model in models:
        run = osp.join(out, f"solo-{model}")
        argv_run = rest + [
            "--model", model, "--seed", str(args.seeds[0]), "--steps", str(max(n + 1, args.steps)),
            "--stop-after", str(n), "--eval-every", "0", "--ckpt-every", "0",
            "--log-every", "0", "--out", run, "--no-figures", "--no-progress",
        ] + (["--cache-samples"] if args.cache_samples else [])  # fmt: skip
        run_args = vars(example.get_parser().parse_args(argv_run))
        path = osp.join(run, "timing.json")
        reuse = _reusable(run, run_args, "timing.json")
        if reuse:
            with open(path) as f:
                reuse = len(json.load(f)["step_s"]) == n
        if reuse:
            print(f"reusing the timing of {model} in {run}", flush=True)
        else:
            print(f"timing {model} alone: {n} steps", flush=True)
            _free_memory()  # nothing of the previous model in this one's peak
            example.main(argv_run)
        with open(path) as f:
            t = json.load(f)
        timed = t["step_s"][args.time_warmup :]
        solo[model] = dict(
            step_s=float(np.median(timed)), peak_gib=t["peak_gib"], device=t["device"]
        )
    return solo


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    import signal

    # a SIGTERM (``timeout``) unwinds like Ctrl-C, so run_all stops its runs
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except AblationError as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(1)

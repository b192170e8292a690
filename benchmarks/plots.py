"""Figures of the benchmark results: one PNG and a caption per figure.

    python benchmarks/plots.py out/attention.json out/train_step.json out/ball_tree.json
    python benchmarks/plots.py out/*.json --out docs/_static/bench
    python benchmarks/plots.py a.json b.json --labels "machine 1" "machine 2" --suffix _runs

Files of the same kind are drawn into the same figures (e.g. two ``train_step.py`` runs with
different modes); the caption then lists every run's command.

Reads the ``--json`` files of ``attention.py``, ``train_step.py`` and ``ball_tree.py`` and
writes, for each, PNGs and a caption of the same name (``.txt``, reStructuredText: what was
measured, the card, the command and the commit the file records), the form
``docs/_static/bench/`` takes them in:

- ``attention_vs_n.png``: one layer's attention, forward + backward time and peak memory
  against N in one cloud, log-log, ours vs SDPA vs FlexAttention, the fitted slope of each
  in the legend;
- ``train_step.png``: the training step per config, our modes next to the Erwin reference
  model, with the kernels one step runs;
- ``train_step_varying.png`` (when the run had ``--varying``): points per second on batches
  of varying size, eager vs bucketed CUDA graphs, next to the fixed-size reduce-overhead
  step;
- ``ball_tree_build.png``: tree build time against N, ours (CUDA, CPU) vs balltree-erwin.
"""

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "_static", "bench"
)
DPI = 130
COLORS = {
    "ours": "#1f77b4",
    "sdpa": "#d62728",
    "flex": "#2ca02c",
    "ref": "#7f7f7f",
    "erwin": "#8c8c8c",
}


def number(v):
    """A finite float, or None (missing, ``"oom"``, ``"-"``, NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


#: the slope is fitted over this many of the largest sizes (small sizes are bound by launches)
SLOPE_POINTS = 3


def slope(xs, ys, last=SLOPE_POINTS):
    """Least-squares slope of log(y) against log(x) over the :obj:`last` largest x
    (None below two points)."""
    pts = sorted(zip(xs, ys))[-last:]
    if len(pts) < 2:
        return None
    x, y = zip(*pts)
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def provenance(data):
    """The caption's last paragraph: card, versions, date, commit and command of every run
    the figure draws on, then each run's ``meta["note"]`` (what the file does not say by
    itself, e.g. that its rows were collected from a run's printed output)."""
    runs = data.get("runs") or [data["meta"]]

    def where(meta):
        versions = f"torch {meta.get('torch', '?')}"
        if meta.get("triton"):
            versions += f", triton {meta['triton']}"
        return (
            f"{meta.get('card', 'unknown card')} ({versions}), commit "
            f"``{meta.get('commit', 'unknown')}``"
        )

    places = list(dict.fromkeys(where(m) for m in runs))
    commands = " and ".join(f"``{m.get('command', '?')}``" for m in runs)
    dates = ", ".join(dict.fromkeys(m.get("date", "date unknown") for m in runs))
    notes = "".join(f" {n}" for n in dict.fromkeys(m["note"] for m in runs if m.get("note")))
    labelled = any(m.get("label") for m in runs)
    if len(places) == 1 and not labelled:
        return f"{places[0]}, {dates}: {commands}.{notes}"
    each = "; ".join(
        (f"{m['label']}: " if m.get("label") else "")
        + f"{where(m)}, {m.get('date', '?')}: ``{m.get('command', '?')}``"
        for m in runs
    )
    return each + "." + notes


def save(fig, out, stem, caption):
    """Writes ``out/stem.png`` and ``out/stem.txt``; returns both paths."""
    os.makedirs(out, exist_ok=True)
    png, txt = os.path.join(out, stem + ".png"), os.path.join(out, stem + ".txt")
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
    with open(txt, "w", encoding="utf-8") as f:
        f.write(caption.strip() + "\n")
    return [png, txt]


def short(v):
    """A value label: three significant digits, no exponent."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def fmt_n(n):
    n = int(n)
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


# --------------------------------------------------------------------------- attention
def plot_attention(data, out):
    rows = [r for r in data["rows"] if r.get("clouds") == 1]
    if not rows:
        raise ValueError("attention results hold no single-cloud sizes to plot against N")
    cfg = data.get("config", {})
    cpu = data["meta"].get("device", "cuda") == "cpu"  # a smoke run: reference and math SDPA
    impls = [
        ("ours", "ours (reference ops, CPU)" if cpu else "ours (Erwin NSA kernels)"),
        ("sdpa", "SDPA (dense, math)" if cpu else "SDPA (dense, flash)"),
        ("flex", "FlexAttention (same pattern)"),
    ]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.3))
    for key, label in impls:
        for ax, field, unit in ((ax_t, "fb_ms", "ms"), (ax_m, "peak_gib", "GiB")):
            pts = sorted(
                (r["N"], number(r.get(f"{key}_{field}")))
                for r in rows
                if number(r.get(f"{key}_{field}")) is not None
            )
            if not pts:
                continue
            xs, ys = zip(*pts)
            k = slope(xs, ys)
            span = f" ({fmt_n(xs[-SLOPE_POINTS:][0])}-{fmt_n(xs[-1])})"
            text = label + (f", slope {k:.2f}{span}" if k is not None else "")
            ax.plot(xs, ys, "o-", color=COLORS[key], label=text, lw=1.8, ms=5)
            if key == "ours":
                for x, y in pts:
                    ax.annotate(
                        short(y),
                        (x, y),
                        textcoords="offset points",
                        xytext=(0, -14),
                        ha="center",
                        fontsize=7,
                        color=COLORS[key],
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8),
                    )
    sizes = sorted({r["N"] for r in rows})
    for ax, title, ylabel in (
        (ax_t, "forward + backward time", "time (ms)"),
        (ax_m, "peak memory of a step (inputs included)", "peak memory (GiB)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [fmt_n(n) for n in sizes])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.margins(y=0.1)
        ax.set_xlabel("points N (one cloud)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
        else:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="gray")
    shape = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "dtype")
    sdpa_sizes = [r["N"] for r in rows if number(r.get("sdpa_fb_ms")) is not None]
    sdpa_range = (
        f", measured up to N = {fmt_n(max(sdpa_sizes))}"
        if sdpa_sizes and max(sdpa_sizes) < max(sizes)
        else ""
    )
    fig.suptitle(
        f"One layer's attention, {cfg.get('dtype', '')} ({shape})  -  {data['meta'].get('card', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    caption = f"""
One layer's attention (ball, compressed and selected branches), forward + backward: time and
peak memory against the number of points N in one cloud, log-log; the numbers are ours.
The legend gives the slope of a straight-line fit in log-log over the {SLOPE_POINTS} largest
sizes of each (1: linear in N, 2: quadratic; small sizes are bound by kernel launches).

SDPA is dense attention (flash backend){sdpa_range}; FlexAttention runs the union of the local
balls and the selected blocks (no compressed branch), compiled.  Settings: {cfg.get("dtype", "?")}, {shape}.

{provenance(data)}
"""
    return save(fig, out, "attention_vs_n", caption)


# --------------------------------------------------------------------------- training step
MODE_LABELS = {
    "eager": "eager",
    "compile": "torch.compile",
    "compile-dynamic": "torch.compile, dynamic",
    "reduce-overhead": "reduce-overhead (CUDA graphs)",
    "cuda-graph": "manual CUDA graph",
    "buckets": "bucketed CUDA graphs",
}
MODE_COLORS = {
    "eager": "#9ecae1",
    "compile": "#6baed6",
    "compile-dynamic": "#4292c6",
    "reduce-overhead": "#2171b5",
    "cuda-graph": "#08306b",
    "buckets": "#ff7f0e",
}


def _bars(ax, groups, series, values, colors, hatches=None, labels=None, fmt=short, texts=None):
    """Grouped bars: ``values[(group, series)]`` (None: no bar); value labels on top
    (``texts[(group, series)]`` where given)."""
    width = 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        xs, ys, tags = [], [], []
        for i, g in enumerate(groups):
            v = values.get((g, s))
            if v is not None:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(v)
                tags.append((texts or {}).get((g, s), fmt(v)))
        if not xs:
            continue
        bars = ax.bar(
            xs,
            ys,
            width * 0.92,
            color=colors[s],
            hatch=(hatches or {}).get(s),
            edgecolor="white" if not (hatches or {}).get(s) else "#555555",
            label=(labels or {}).get(s, s),
        )
        for b, y, tag in zip(bars, ys, tags):
            ax.annotate(
                tag,
                (b.get_x() + b.get_width() / 2, y),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=6.5,
            )
    ax.set_xticks(range(len(groups)))


def precision(dtype):
    return "float32" if dtype in (None, "float32") else f"{dtype} autocast"


#: colours of compiled modes with torch._inductor.config settings (train_step.py --inductor)
TUNED_COLORS = ("#54278f", "#807dba", "#bcbddc", "#3f007d")


def series_of(row):
    """A fixed-size row's series: its mode, plus its Inductor settings if any
    (``compile [cpp_wrapper, combo_kernels]``), plus its run's label if the runs have labels
    (``eager (machine 2)``)."""
    return (
        row["mode"]
        + (f" [{row['inductor']}]" if row.get("inductor") else "")
        + (f" ({row['run']})" if row.get("run") else "")
    )


#: hatches (and their names) of the second, third... labelled run (the first has none;
#: Erwin's bars have "//")
RUN_HATCHES = (("..", "dotted"), ("xx", "crossed"), ("--", "striped"), ("oo", "ringed"))


def run_hatch(i):
    """(hatch, its name) of labelled run ``i`` (0: the first, plain bars)."""
    return ("", "plain") if i == 0 else RUN_HATCHES[(i - 1) % len(RUN_HATCHES)]


def plot_train_step(data, out):
    paths = []
    rows = [r for r in data["rows"] if number(r.get("step (ms)")) is not None]
    meta = data["meta"]
    if rows:
        names = list(dict.fromkeys(r["name"] for r in rows))
        configs = {r["name"]: r["config"] for r in rows}
        # series -> (mode, Inductor settings, run label) of the known modes' rows
        known = {
            series_of(r): (r["mode"], r.get("inductor"), r.get("run"))
            for r in rows
            if r["mode"] in MODE_LABELS
        }
        runs = list(dict.fromkeys(r.get("run") for r in rows))
        order = list(MODE_LABELS)  # known modes in their order, each before its tuned variants
        modes = sorted(known, key=lambda m: (order.index(known[m][0]), m))
        values = {}
        for r in rows:  # a later run's row replaces an earlier one (unless labelled apart)
            key = (r["name"], series_of(r))
            if key in values:
                print(
                    f"plots.py: {r['config']}, {series_of(r)}: the later of two rows is drawn "
                    "(--labels keeps runs apart)",
                    file=sys.stderr,
                )
            values[key] = r["step (ms)"]
        erwin = data.get("erwin") or {}
        series = list(modes)
        colors, hatches, labels = {}, {}, {}  # each series sets its own below
        tuned = itertools.cycle(TUNED_COLORS)
        tuned_color = {}  # one colour per Inductor setting, the same in every run
        for m in modes:
            mode, options, run = known[m]
            labels[m] = (
                f"ours, {MODE_LABELS[mode]}"
                + (f" + {options}" if options else "")
                + (f" ({run})" if run else "")
            )
            if options:
                if (mode, options) not in tuned_color:  # (setdefault would draw a colour each time)
                    tuned_color[mode, options] = next(tuned)
                colors[m] = tuned_color[mode, options]
            else:
                colors[m] = MODE_COLORS[mode]
            hatch = run_hatch(runs.index(run))[0]
            if hatch:
                hatches[m] = hatch
        for kind, color in (("eager", "#d9d9d9"), ("compiled", "#969696")):
            key = f"Erwin {kind}"
            if any(kind in erwin.get(n, {}) for n in names):
                series.append(key)
                colors[key], hatches[key] = color, "//"
                labels[key] = f"Erwin, {kind} (fp32, tree per step; issue 14, H200)"
                for n in names:
                    values[(n, key)] = number(erwin.get(n, {}).get(kind))
        kernels = {
            (r["name"], series_of(r)): number(r.get("kernels/step"))
            for r in rows
            if number(r.get("kernels/step")) is not None
        }
        launches = {
            (r["name"], series_of(r)): number(r.get("launches/step"))
            for r in rows
            if number(r.get("launches/step")) is not None
        }
        nrows = 2 if kernels else 1
        fig, axes = plt.subplots(
            nrows,
            1,
            figsize=(11, 3.3 + 2.9 * nrows),
            squeeze=False,
            height_ratios=[1.4, 1][:nrows],
            layout="constrained",
        )
        ax = axes[0, 0]
        _bars(ax, names, series, values, colors, hatches, labels)
        ax.set_xticklabels([configs[n] for n in names])
        ax.set_ylabel("training step (ms, median)")
        ax.set_title(
            f"Training step of ErwinNSA ({precision(rows[0].get('dtype'))}, trees and edges "
            f"precomputed)  -  {meta.get('card', '')}",
            fontsize=10,
        )
        # the legend sits above the bars: two columns for long labels, room for its rows
        ncol = 3 if max(len(labels.get(s, s)) for s in series) <= 55 else 2
        legend_rows = math.ceil(len(series) / ncol)
        top = max(v for v in values.values() if v is not None)
        ax.set_ylim(0, top * (1.2 + 0.1 * legend_rows))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7.5, ncol=ncol, loc="upper center")
        if kernels:
            ax = axes[1, 0]
            texts = {}
            for key, k in kernels.items():
                n = launches.get(key)
                many = n is not None and n < k
                texts[key] = f"{k:.0f}" + (f"\n{n:.0f} launch{'es' * (n != 1)}" if many else "")
            _bars(ax, names, modes, kernels, colors, hatches, labels=labels, texts=texts)
            ax.set_xticklabels([configs[n] for n in names])
            ax.set_ylim(0, max(kernels.values()) * 1.3)
            ax.set_ylabel("CUDA kernels per step")
            ax.set_title(
                "kernels one step runs (torch.profiler); below a CUDA graph's count, its host "
                "launches",
                fontsize=10,
            )
            ax.grid(axis="y", alpha=0.3)
        steps = " or ".join(
            str(n)
            for n in dict.fromkeys(
                s.get("steps", "?") for s in data.get("run_settings") or [data.get("settings", {})]
            )
        )
        below = (
            "; below, the CUDA kernels one step runs (a CUDA graph launches them all at once)"
            if kernels
            else ""
        )
        labelled = (
            "  Runs: " + ", ".join(f"{run} {run_hatch(i)[1]}" for i, run in enumerate(runs)) + "."
            if len(runs) > 1
            else ""
        )
        caption = f"""
Training step of ErwinNSA (forward, backward, AdamW) per config, in every mode measured:
median of {steps} steps{below}.{labelled}

Hatched with //: {data.get("erwin_source", "the Erwin reference model")}, for comparison; not
measured in this run.

{provenance(data)}
"""
        paths += save(fig, out, "train_step", caption)
    varying = [r for r in data.get("varying", []) if number(r.get("points/s")) is not None]
    if varying:
        names = list(dict.fromkeys(r["name"] for r in varying))
        configs = {r["name"]: r["config"] for r in varying}
        values = {(r["name"], r["mode"]): r["points/s"] / 1e6 for r in varying}
        series = [
            m
            for m in ("eager", "compile-dynamic", "buckets")
            if any(r["mode"] == m for r in varying)
        ]
        colors = dict(MODE_COLORS)
        labels = {m: f"varying sizes, {MODE_LABELS[m]}" for m in series}
        fixed = {
            r["name"]: r["fixed reduce-overhead points/s"] / 1e6
            for r in varying
            if number(r.get("fixed reduce-overhead points/s")) is not None
        }
        if fixed:
            series.append("fixed")
            colors["fixed"], labels["fixed"] = (
                MODE_COLORS["reduce-overhead"],
                ("fixed size, reduce-overhead (CUDA graphs)"),
            )
            for n, v in fixed.items():
                values[(n, "fixed")] = v
        fig, ax = plt.subplots(figsize=(10, 4.4))
        _bars(ax, names, series, values, colors, labels=labels, fmt="{:.2f}".format)
        ax.set_xticklabels([configs[n] for n in names])
        ax.set_ylabel("training throughput (million points / s)")
        ax.set_ylim(0, max(v for v in values.values() if v is not None) * 1.2)
        ax.set_title(
            f"Batches of varying size: points per second  -  {meta.get('card', '')}", fontsize=10
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        caption = f"""
Training throughput on batches whose cloud sizes vary as in the real datasets (drawn
log-uniformly from each dataset's range; trees built in the step): eager against bucketed
CUDA graphs (each batch padded to one of a few capacity buckets of ratio
{data.get("settings", {}).get("bucket_ratio", "?")}, one recorded step per bucket), next to
the fixed-size reduce-overhead step of the same run.  Steps that recorded a new graph are
not counted.

{provenance(data)}
"""
        paths += save(fig, out, "train_step_varying", caption)
    if not paths:
        raise ValueError("train_step results hold no timed rows")
    return paths


# --------------------------------------------------------------------------- ball tree
def plot_ball_tree(data, out):
    if not data["rows"]:
        raise ValueError("ball_tree results hold no speed rows (run without --quality-only)")

    def in_sweep(row):
        """The sweep over N: 1 or 16 clouds of 2^k points (the extra configs, a ShapeNet car's
        3,586 points and 32 MD frames of 900, stay in the table)."""
        clouds = row.get("clouds", 1)
        n = row["N"] // clouds
        return clouds in (1, 16) and n & (n - 1) == 0

    rows = [r for r in data["rows"] if in_sweep(r)]
    series = [
        ("ours cuda (ms)", "ours, CUDA", "#1f77b4"),
        ("ours cuda, no sync (ms)", "ours, CUDA, capacity mode (no sync)", "#6baed6"),
        ("ours cpu (ms)", "ours, CPU", "#ff7f0e"),
        ("balltree-erwin (ms)", "balltree-erwin (CPU, OpenMP)", "#7f7f7f"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for key, label, color in series:
        for clouds, style in ((1, "o-"), (16, "s--")):
            pts = sorted(
                (r["N"], number(r.get(key)))
                for r in rows
                if r.get("clouds", 1) == clouds and number(r.get(key)) is not None
            )
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(
                xs,
                ys,
                style,
                color=color,
                lw=1.6,
                ms=4.5,
                label=f"{label}, {clouds} cloud{'s' * (clouds > 1)}",
            )
    sizes = sorted({r["N"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [fmt_n(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("points N in the batch")
    ax.set_ylabel("build time (ms, median)")
    ax.set_title(f"Ball-tree build, ball size 128  -  {data['meta'].get('card', '')}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    threads = data["meta"].get("cpu_threads", "?")
    caption = f"""
Ball-tree build time against the number of points, uniform points in the unit cube, one
cloud (solid) and 16 clouds (dashed); CPU builds on {threads} threads.

{provenance(data)}
"""
    return save(fig, out, "ball_tree_build", caption)


PLOTTERS = {"attention": plot_attention, "train_step": plot_train_step, "ball_tree": plot_ball_tree}


def load(path):
    """One results file, checked to be one."""
    with open(path) as f:
        data = json.load(f)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in PLOTTERS:
        raise ValueError(
            f"{path}: not a benchmark results file (its 'kind' is {kind!r}; expected one of "
            f"{sorted(PLOTTERS)})"
        )
    return data


def merge(datas):
    """Results of one kind from several runs as one: their rows (and varying rows) in
    order, the first run's settings (every run's in ``run_settings``), every run's card,
    commit and command in ``runs``."""
    merged = dict(datas[0])
    merged["runs"] = [d["meta"] for d in datas]
    merged["run_settings"] = [d.get("settings", {}) for d in datas]
    for key in ("rows", "varying"):
        merged[key] = [r for d in datas for r in d.get(key) or []]
    return merged


def label_run(data, label):
    """``data`` with its fixed-size rows (and its meta) tagged as run ``label``: in the
    training-step figure the rows of labelled runs are series of their own, e.g. one machine
    start against another."""
    rows = [dict(r, run=label) for r in data.get("rows") or []]
    return dict(data, meta=dict(data["meta"], label=label), rows=rows)


def plot_files(paths, out, labels=None, suffix=""):
    """The figures of the results files: files of the same kind are drawn together
    (e.g. two train_step runs); ``labels``: one per file, which keeps their rows apart;
    ``suffix``: appended to every figure's name.  Returns the paths written."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} results files")
    kinds = {}
    for i, path in enumerate(paths):
        data = load(path)
        if labels is not None:
            data = label_run(data, labels[i])
        kinds.setdefault(data["kind"], []).append(data)
    # with a suffix, the figures are drawn elsewhere first: the plain names in ``out`` stay
    where = tempfile.mkdtemp() if suffix else out
    written = []
    for kind, datas in kinds.items():
        written += PLOTTERS[kind](merge(datas) if len(datas) > 1 else datas[0], where)
    if suffix:
        os.makedirs(out, exist_ok=True)
        moved = []
        for path in written:
            stem, ext = os.path.splitext(os.path.basename(path))
            moved.append(shutil.move(path, os.path.join(out, stem + suffix + ext)))
        shutil.rmtree(where)
        written = moved
    return written


def plot_file(path, out):
    """The figures of one results file; returns the paths written."""
    return plot_files([path], out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="--json files of the benchmark scripts")
    ap.add_argument(
        "--out", default=DEFAULT_OUT, help="folder of the figures (default: %(default)s)"
    )
    ap.add_argument(
        "--labels",
        nargs="+",
        help="one label per results file (e.g. the machine start): its rows become series of "
        "their own instead of merging with the other files'",
    )
    ap.add_argument("--suffix", default="", help="appended to every figure's name")
    args = ap.parse_args(argv)
    for written in plot_files(args.results, args.out, args.labels, args.suffix):
        print(written)


if __name__ == "__main__":
    sys.exit(main())

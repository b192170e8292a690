"""benchmarks/plots.py turns the benchmark scripts' --json results into PNGs with
captions; the scripts run on the CPU in their smoke configuration and write those files."""

import importlib.util
import json
import os
import subprocess
import sys

import matplotlib.colors
import matplotlib.image
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")

spec = importlib.util.spec_from_file_location("bench_plots", os.path.join(BENCH, "plots.py"))
plots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plots)

META = {
    "card": "Fake GPU 80GB",
    "device": "cuda",
    "torch": "2.11.0",
    "triton": "3.6.0",
    "command": "python benchmarks/x.py --json out.json",
    "commit": "0123abc-dirty",
    "date": "2026-11-30 10:00 UTC",
}


def attention_results():
    rows = []
    for n, ours, sdpa, flex in [
        (4096, 6.5, 0.4, 1.3),
        (16384, 4.1, 4.4, 6.9),
        (65536, 5.3, 70.0, 28.0),
        (262144, 52.0, None, 115.0),
    ]:
        rows.append(
            {
                "clouds": 1,
                "points": n,
                "N": n,
                "ours_fb_ms": ours,
                "ours_peak_gib": n / 2**17,
                "sdpa_fb_ms": sdpa,
                "sdpa_peak_gib": None if sdpa is None else n / 2**18,
                "flex_fb_ms": flex,
                "flex_peak_gib": "oom" if n == 262144 else n / 2**18,
            }
        )
    rows.append({"clouds": 16, "points": 1024, "N": 16384, "ours_fb_ms": 3.5})
    return {"kind": "attention", "meta": META, "rows": rows, "config": {"H": 8, "D": 32}}


def train_step_results():
    rows, varying = [], []
    for name, points in (("shapenet-car", 3586), ("md", 28800)):
        for mode, ms, kernels, launches in (
            ("eager", 42.0, 1800, 1800),
            ("reduce-overhead", 5.5, 700, 3),
            ("compile-dynamic", 30.0, "-", "-"),
        ):
            rows.append(
                {
                    "config": f"{name} ({points} x 1)",
                    "name": name,
                    "mode": mode,
                    "step (ms)": ms,
                    "points/s": points / ms * 1e3,
                    "kernels/step": kernels,
                    "launches/step": launches,
                }
            )
        for mode, rate in (("eager", 1e5), ("buckets", 5e5)):
            varying.append(
                {
                    "config": name,
                    "name": name,
                    "mode": mode,
                    "points/s": rate,
                    "fixed reduce-overhead points/s": 6e5,
                }
            )
    rows.append({"config": "md", "name": "md", "mode": "compile", "error": "skipped"})
    erwin = {"shapenet-car": {"eager": 57.3, "compiled": 29.1}, "md": {"eager": 100.8}}
    return {
        "kind": "train_step",
        "meta": META,
        "rows": rows,
        "varying": varying,
        "erwin": erwin,
        "settings": {"steps": 10, "bucket_ratio": 1.25},
    }


def ball_tree_results():
    rows = [
        {"config": f"{c} x {n}", "clouds": c, "N": c * n, "ours cuda (ms)": 1.0 + c * n / 1e5}
        for c, n in ((1, 1024), (1, 4096), (16, 1024))
    ]
    rows[0]["balltree-erwin (ms)"] = 0.4
    rows[1]["balltree-erwin (ms)"] = 2.7
    return {"kind": "ball_tree", "meta": dict(META, cpu_threads=16), "rows": rows}


def check_figures(paths, stems):
    pngs = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
    assert pngs == sorted(s + ".png" for s in stems)
    for path in paths:
        assert os.path.getsize(path) > 0
        if path.endswith(".png"):
            image = matplotlib.image.imread(path)
            assert image.shape[0] > 300 and image.shape[1] > 600
            caption = open(path[: -len(".png")] + ".txt").read()
            # the caption names the card, the commit and the command
            assert "Fake GPU 80GB" in caption and "``0123abc-dirty``" in caption
            assert "``python benchmarks/x.py --json out.json``" in caption


@pytest.mark.parametrize(
    "results, stems",
    [
        (attention_results, ["attention_vs_n"]),
        (train_step_results, ["train_step", "train_step_varying"]),
        (ball_tree_results, ["ball_tree_build"]),
    ],
)
def test_plots_write_pngs_and_captions(tmp_path, results, stems):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results()))
    out = tmp_path / "figs"
    paths = plots.plot_file(str(path), str(out))
    check_figures(paths, stems)
    assert sorted(os.listdir(out)) == sorted(s + e for s in stems for e in (".png", ".txt"))


def test_runs_of_one_kind_are_drawn_together(tmp_path):
    first = train_step_results()
    second = train_step_results()
    second["rows"] = [dict(r, mode="cuda-graph", **{"step (ms)": 4.0}) for r in first["rows"][:2]]
    second["varying"] = []
    second["meta"] = dict(META, command="python benchmarks/train_step.py --modes cuda-graph")
    paths = []
    for i, data in enumerate((first, second)):
        paths.append(str(tmp_path / f"r{i}.json"))
        (tmp_path / f"r{i}.json").write_text(json.dumps(data))
    written = plots.plot_files(paths, str(tmp_path / "figs"))
    assert sorted(os.path.basename(p) for p in written if p.endswith(".png")) == [
        "train_step.png",
        "train_step_varying.png",
    ]
    caption = open(tmp_path / "figs" / "train_step.txt").read()
    assert "``python benchmarks/x.py --json out.json`` and" in caption
    assert "``python benchmarks/train_step.py --modes cuda-graph``" in caption
    merged = plots.merge([first, second])
    assert len(merged["rows"]) == len(first["rows"]) + 2 and len(merged["runs"]) == 2


def plotted_axes(data, tmp_path, monkeypatch, stem):
    """Draws ``data``'s figures into :obj:`tmp_path`; returns the first axes of figure
    ``stem`` (the figure is closed, its artists stay readable)."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    seen, save = {}, plots.save

    def spy(fig, out, name, caption):
        if name == stem:
            seen["ax"] = fig.axes[0]
        return save(fig, out, name, caption)

    monkeypatch.setattr(plots, "save", spy)
    plots.plot_file(str(path), str(tmp_path))
    return seen["ax"]


def test_compiled_rows_with_inductor_settings_are_their_own_series(tmp_path, monkeypatch):
    data = train_step_results()
    tuned = [
        dict(r, mode="compile", inductor="cpp_wrapper, combo_kernels", **{"step (ms)": 13.0})
        for r in data["rows"][:1]
    ]
    data["rows"] += tuned + [dict(tuned[0], mode="compile", inductor="", **{"step (ms)": 21.0})]
    data["meta"] = dict(META, note="Rows collected from the printed output.")
    ax = plotted_axes(data, tmp_path, monkeypatch, "train_step")
    labels = ax.get_legend_handles_labels()[1]
    # plain compile and the tuned compile are two series, in mode order, each with its bar
    assert labels.index("ours, torch.compile") < labels.index(
        "ours, torch.compile + cpp_wrapper, combo_kernels"
    )
    heights = [round(b.get_height(), 3) for b in ax.patches]
    assert 13.0 in heights and 21.0 in heights
    caption = open(tmp_path / "train_step.txt").read()
    assert caption.rstrip().endswith("Rows collected from the printed output.")


def test_each_inductor_setting_keeps_one_colour_across_runs(tmp_path, monkeypatch):
    """A setting drawn in two labelled runs has one colour; the next setting gets the next
    colour of the cycle (not one further on for every repeat)."""
    row = dict(train_step_results()["rows"][0], mode="compile")
    data = train_step_results()
    data["rows"] = [
        dict(row, inductor="a", run="run 1", **{"step (ms)": 11.0}),
        dict(row, inductor="a", run="run 2", **{"step (ms)": 12.0}),
        dict(row, inductor="b", run="run 1", **{"step (ms)": 13.0}),
    ]
    ax = plotted_axes(data, tmp_path, monkeypatch, "train_step")
    colour = {
        round(b.get_height(), 3): matplotlib.colors.to_hex(b.get_facecolor()) for b in ax.patches
    }
    assert colour[11.0] == colour[12.0] == plots.TUNED_COLORS[0]
    assert colour[13.0] == plots.TUNED_COLORS[1]


def test_slope_is_fitted_over_the_largest_sizes():
    xs = [1, 2, 4, 8, 16]
    ys = [5, 5, 4**2, 8**2, 16**2]  # flat (launch-bound), then quadratic
    assert plots.slope(xs, ys) == pytest.approx(2.0)
    assert plots.slope([4], [3]) is None


def test_attention_legend_gives_slopes(tmp_path, monkeypatch):
    ax = plotted_axes(attention_results(), tmp_path, monkeypatch, "attention_vs_n")
    labels = ax.get_legend_handles_labels()[1]
    assert len(labels) == 3 and all("slope" in label for label in labels)


def test_unknown_results_are_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "something", "rows": []}))
    with pytest.raises(ValueError, match="not a benchmark results file"):
        plots.plot_file(str(path), str(tmp_path))
    path.write_text(json.dumps({"kind": "attention", "meta": META, "rows": []}))
    with pytest.raises(ValueError, match="no single-cloud sizes"):
        plots.plot_file(str(path), str(tmp_path))


def test_isolated_rows_get_the_run_arguments_without_the_parents_own(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import train_step

    argv = ["--isolate", "--json", "a.json", "--steps", "3", "--varying", "--json=b.json"]
    assert train_step.child_argv(argv) == ["--steps", "3"]


def run_script(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, BENCH_COMMIT="smoke123")
    res = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_scripts_smoke_run_on_cpu_and_plot(tmp_path):
    """The exact CPU smoke commands: each writes its JSON, plots.py draws it."""
    att, tree, step = (str(tmp_path / f) for f in ("att.json", "tree.json", "step.json"))
    run_script(
        ["benchmarks/attention.py", "--device", "cpu", "--sizes", "small", "--json", att], tmp_path
    )
    run_script(
        [
            "benchmarks/ball_tree.py",
            "--devices",
            "cpu",
            "--sizes",
            "small",
            "--speed-only",
            "--repeats",
            "1",
            "--json",
            tree,
        ],
        tmp_path,
    )
    out = run_script(
        [
            "benchmarks/train_step.py",
            "--device",
            "cpu",
            "--sizes",
            "small",
            "--configs",
            "md",
            "--dtypes",
            "float32",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--varying-steps",
            "2",
            "--varying-warmup",
            "1",
            "--varying",
            "--isolate",
            "--json",
            step,
        ],
        tmp_path,
    )
    assert "batches of varying size" in out
    data = json.load(open(step))
    # --isolate: the fixed-size row ran in a child process, the varying rows here
    assert [len(r["steps (ms)"]) for r in data["rows"]] == [2]
    assert data["meta"]["commit"] == "smoke123" and data["meta"]["device"] == "cpu"
    assert {r["mode"] for r in data["varying"]} == {"eager", "buckets"}
    assert all("error" not in r for r in data["rows"] + data["varying"])
    figs = str(tmp_path / "figs")
    paths = []
    for f in (att, tree, step):
        paths += plots.plot_file(f, figs)
    names = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
    assert names == [
        "attention_vs_n.png",
        "ball_tree_build.png",
        "train_step.png",
        "train_step_varying.png",
    ]


def test_labelled_runs_are_series_of_their_own(tmp_path, monkeypatch, capsys):
    """--labels keeps two runs of the same rows apart (e.g. two machine starts); unlabelled,
    the later row is drawn and the replacement is reported."""
    first, second = train_step_results(), train_step_results()
    second["rows"] = [
        dict(r, **{"step (ms)": r["step (ms)"] * 1.3}) for r in first["rows"] if "step (ms)" in r
    ]
    second["meta"] = dict(META, command="python benchmarks/train_step.py --isolate")
    second["settings"] = dict(first["settings"], steps=15)
    paths = []
    for i, data in enumerate((first, second)):
        paths.append(str(tmp_path / f"r{i}.json"))
        (tmp_path / f"r{i}.json").write_text(json.dumps(data))
    seen, save = {}, plots.save

    def spy(fig, out, name, caption):
        seen.setdefault(name, fig.axes[0])
        return save(fig, out, name, caption)

    monkeypatch.setattr(plots, "save", spy)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train_step.png").write_bytes(b"an earlier figure")
    written = plots.plot_files(
        paths, str(tmp_path / "a"), labels=["machine 1", "machine 2"], suffix="_runs"
    )
    assert sorted(os.path.basename(p) for p in written if p.endswith(".png")) == [
        "train_step_runs.png",
        "train_step_varying_runs.png",
    ]
    assert all(os.path.dirname(p) == str(tmp_path / "a") for p in written)
    # figures of the plain names in the folder stay as they were
    assert (tmp_path / "a" / "train_step.png").read_bytes() == b"an earlier figure"
    labels = seen["train_step"].get_legend_handles_labels()[1]
    assert "ours, eager (machine 1)" in labels and "ours, eager (machine 2)" in labels
    heights = {round(b.get_height(), 3) for b in seen["train_step"].patches}
    step = first["rows"][0]["step (ms)"]
    assert round(step, 3) in heights and round(step * 1.3, 3) in heights
    caption = open(tmp_path / "a" / "train_step_runs.txt").read()
    assert "machine 1: Fake GPU" in caption and "machine 2: Fake GPU" in caption
    assert "median of 10 or 15 steps" in caption  # each run's own count
    # unlabelled: one series, the later run's bars, and a note on stderr
    seen.clear()
    plots.plot_files(paths, str(tmp_path / "b"))
    heights = {round(b.get_height(), 3) for b in seen["train_step"].patches}
    assert round(step * 1.3, 3) in heights and round(step, 3) not in heights
    assert "the later of two rows is drawn" in capsys.readouterr().err
    with pytest.raises(ValueError, match="1 labels for 2 results files"):
        plots.plot_files(paths, str(tmp_path / "c"), labels=["one"])

"""examples/ablation.py (runs as subprocesses, solo timing, table, curves,
results.json), the held-out rows of the training loop, and
examples/ablation_report.py."""

import json
import os
import os.path as osp

import pytest
from _example_helpers import load_example


def _ablation_args(md_args, out, *extra):
    return [
        "--example", "md", "--seeds", "0", "--steps", "3", "--eval-every", "1",
        "--out", out, "--eval-batch-size", "4", "--ckpt-every", "0", *extra,
    ] + list(md_args)  # fmt: skip


def test_parallel_runs_write_table_curves_and_json(md_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMMIT", "abc123")
    ab = load_example("ablation")
    out = str(tmp_path / "ab")
    argv = _ablation_args(
        md_args, out, "--models", "mlp", "erwin-nsa", "--parallel", "2",
        "--time-steps", "2", "--time-warmup", "1",
    )  # fmt: skip
    table = ab.main(argv)
    text = capsys.readouterr().out
    assert "started mlp seed 0" in text and "started erwin-nsa seed 0" in text
    for model in ("mlp", "erwin-nsa"):
        run = osp.join(out, f"{model}-seed0")
        assert "[md] model=" + model in open(osp.join(run, "train.log")).read()
        rows = [json.loads(line) for line in open(osp.join(run, "metrics.jsonl"))]
        evals = [r for r in rows if "eval_split" in r]
        assert [r["step"] for r in evals] == [1, 2, 3]
        assert all(r["eval_split"] == "test" and r["eval_rmse"] > 0 for r in evals)
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    with open(osp.join(out, "table.md")) as f:
        md = f.read()
    assert md.endswith(table + "\n")
    assert "- commit: `abc123`" in md and "- device: CPU" in md
    assert "python examples/ablation.py --example md" in md
    assert "| mlp |" in table and "| erwin-nsa |" in table and "*zero displacement*" in table
    with open(osp.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(osp.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["commit"] == "abc123" and res["failed_models"] == []
    assert set(res["models"]) == {"mlp", "erwin-nsa"}
    for m in res["models"].values():
        assert len(m["values"]) == 1 and m["std"] is None and m["steps"] == 3
        assert m["solo_step_s"] > 0 and m["peak_gib"] is None  # CPU: no peak
        assert m["curves"]["held_out"]["step"] == [1, 2, 3]
        assert m["curves"]["held_out_split"] == "test"
    # the solo timing: warm-up + timed steps, alone, without evaluation
    with open(osp.join(out, "solo-mlp", "timing.json")) as f:
        assert len(json.load(f)["step_s"]) == 3
    assert not osp.exists(osp.join(out, "solo-mlp", "test_metrics.json"))
    # a second call trains nothing
    ab.main(argv)
    assert capsys.readouterr().out.count("reusing") == 4  # 2 runs + 2 timings
    # erwin-nsa stopped after step 2 (a time limit): in the table at its last held-out step
    run = osp.join(out, "erwin-nsa-seed0")
    os.remove(osp.join(run, "test_metrics.json"))
    rows = [json.loads(line) for line in open(osp.join(run, "metrics.jsonl"))]
    with open(osp.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 2)
    at2 = next(r["eval_rmse"] for r in rows if r["step"] == 2 and "eval_rmse" in r)
    with pytest.raises(ab.AblationError, match="erwin-nsa seed 0 MISSING"):
        ab.main(argv + ["--report-only"])
    with open(osp.join(out, "results.json")) as f:
        res = json.load(f)
    assert set(res["models"]) == {"mlp"} and res["failed_models"] == []
    stopped = res["stopped_models"]["erwin-nsa"]
    assert stopped["step"] == 2 and stopped["values"] == [at2]
    assert stopped["curves"]["held_out"]["step"] == [1, 2]
    table = open(osp.join(out, "table.md")).read()
    assert "| erwin-nsa | – | " in table and "at step 2 (test split; stopped" in table
    assert "| 2 of 3 |" in table


def test_failed_run_is_reported_with_its_log(md_args, tmp_path, capsys):
    ab = load_example("ablation")
    out = str(tmp_path / "ab")
    # an unknown branch fails erwin-nsa when it is built; the mlp ignores --branches
    argv = _ablation_args(
        md_args, out, "--models", "erwin-nsa", "mlp", "--parallel", "2", "--branches", "bogus"
    )
    with pytest.raises(ab.AblationError, match="1 run.s. failed") as e:
        ab.main(argv)
    msg = str(e.value)
    assert "erwin-nsa seed 0 FAILED (exit code 1" in msg
    assert "train.log" in msg and "bogus" in msg  # the end of its log names the problem
    table = open(osp.join(out, "table.md")).read()
    assert "| mlp |" in table and "| erwin-nsa | failed" in table
    with open(osp.join(out, "results.json")) as f:
        assert json.load(f)["failed_models"] == ["erwin-nsa"]


def test_report_only_trains_nothing(md_args, tmp_path):
    ab = load_example("ablation")
    out = str(tmp_path / "ab")
    with pytest.raises(ab.AblationError, match="every run failed") as e:
        ab.main(_ablation_args(md_args, out, "--models", "mlp", "--report-only"))
    assert "mlp seed 0 MISSING" in str(e.value)
    assert not osp.exists(osp.join(out, "mlp-seed0", "metrics.jsonl"))


def test_held_out_rows_do_not_change_training(md_args, tmp_path):
    md = load_example("md")
    common = list(md_args) + ["--model", "erwin-nsa", "--steps", "4", "--no-figures"]
    md.main(common + ["--out", str(tmp_path / "a")])
    res = md.main(
        common
        + ["--out", str(tmp_path / "b"), "--eval-every", "2", "--eval-samples", "3"]
        + ["--cache-samples"]
    )
    rows = {k: [json.loads(x) for x in open(tmp_path / k / "metrics.jsonl")] for k in "ab"}
    assert [r["loss"] for r in rows["a"]] == [r["loss"] for r in rows["b"] if "loss" in r]
    evals = [r for r in rows["b"] if "eval_split" in r]
    assert [(r["step"], r["eval_test_windows"]) for r in evals] == [(2, 3.0), (4, 3.0)]
    assert not any("eval_split" in r for r in rows["a"])
    s = res["scalars"]
    assert s["step_s_median"] > 0 and s["peak_gib"] is None and s["device"].startswith("CPU")
    with open(tmp_path / "b" / "timing.json") as f:
        assert len(json.load(f)["step_s"]) == 4


def test_report_renders_and_writes_the_docs_sections(tmp_path):
    rep = load_example("ablation_report")
    band = dict(step=[1, 2], mean=[1.0, 0.9], min=[1.0, 0.8], max=[1.0, 1.0])
    curves = dict(
        train=band, train_smoothing=1, held_out=band, held_out_split="test", held_out_baselines={}
    )

    def model(mean, std, solo):
        return dict(
            params=10, values=[mean], mean=mean, std=std, steps=2, peak_gib=1.5,
            solo_step_s=solo, curves=curves,
        )  # fmt: skip

    res = dict(
        example="md", metric="rmse", metric_label="RMSE [Å]", command="python x", commit="c" * 40,
        device="NVIDIA H200", steps=2, seeds=[0, 1, 2], parallel=12, eval_every=1,
        time_steps=30, time_warmup=5, baselines={"zero": 0.35}, failed_models=[],
        models={
            "erwin-nsa": model(0.3300, 0.0010, 0.040),
            "local-only": model(0.3305, 0.0010, 0.020),
            "mlp": model(0.3400, 0.0005, 0.002),
        },
    )  # fmt: skip
    path = tmp_path / "md_results.json"
    path.write_text(json.dumps(res))
    (tmp_path / "md_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    md, rst = rep.main([str(path)])
    assert "| erwin-nsa | 10 | 0.3300 ± 0.0010 | 40.0 | 1.50 | 2 |" in md
    assert "do not help on this task: **erwin-nsa** and **local-only** do not differ" in md
    assert "**erwin-nsa** is better than **mlp**" in md
    assert "zero displacement, 0.35) is beaten by 5.7%" in md
    assert ".. figure:: _static/ablation_md_curves.png" in rst
    # --write: into a copy of the two docs files, twice (the second replaces the first)
    root = tmp_path / "repo"
    (root / "examples").mkdir(parents=True)
    (root / "docs" / "_static").mkdir(parents=True)
    (root / "examples" / "README.md").write_text(
        "# Ex\n\n## Ablation\n\nold\n\n## Multi-GPU\n\nx\n"
    )
    (root / "docs" / "benchmarks.rst").write_text(
        "Bench\n=====\n\nHow each benchmark measures\n---------------------------\n"
    )
    for _ in range(2):
        rep.main([str(path), "--write", "--root", str(root)])
    readme = (root / "examples" / "README.md").read_text()
    assert readme.count(rep.MD_HEADING) == 1 and readme.count("| erwin-nsa |") == 1
    assert readme.index(rep.MD_HEADING) < readme.index("## Multi-GPU") and "old" in readme
    bench = (root / "docs" / "benchmarks.rst").read_text()
    assert bench.count(rep.RST_START) == 1
    assert bench.index(rep.RST_END) < bench.index("How each benchmark measures")
    assert (root / "docs" / "_static" / "ablation_md_curves.png").is_file()

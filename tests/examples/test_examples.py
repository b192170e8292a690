import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from _example_helpers import EXAMPLES, TINY, load_example


def _losses(out):
    with open(osp.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.mark.parametrize("model", ["erwin-nsa", "local-only", "point-transformer", "mlp"])
def test_md_smoke(md_args, tmp_path, model):
    md = load_example("md")
    out = str(tmp_path / "run")
    res = md.main(
        md_args
        + ["--model", model, "--steps", "3", "--batch-size", "2", "--out", out]
        + (["--no-figures"] if model != "erwin-nsa" else [])
    )
    s = res["scalars"]
    assert s["steps"] == 3 and res["zero_rmse"] > 0 and res["rmse"] > 0
    assert len(_losses(out)) == 3
    assert osp.isfile(osp.join(out, "ckpt.pt"))
    assert osp.isfile(osp.join(out, "test_metrics.json"))
    if model == "erwin-nsa":
        for name in ("loss_curve.png", "pred_vs_true.png", "per_atom_error.png"):
            assert osp.isfile(osp.join(out, name))


def test_md_resume_matches_uninterrupted(md_args, tmp_path):
    md = load_example("md")
    common = md_args + ["--steps", "6", "--ckpt-every", "2", "--batch-size", "2", "--no-figures"]
    full = str(tmp_path / "full")
    md.main(common + ["--out", full])
    part = str(tmp_path / "part")
    assert md.main(common + ["--out", part, "--stop-after", "3"]) == {}
    # killed after step 3: the checkpoint of step 2 is the one to resume from
    md.main(common + ["--out", part, "--resume"])
    assert _losses(part) == _losses(full)
    assert len(_losses(full)) == 6


def test_shapenet_smoke(shapenet_root, tmp_path):
    ex = load_example("shapenet_car")
    out = str(tmp_path / "run")
    res = ex.main(
        [
            "--root",
            shapenet_root,
            "--split",
            "order",
            "--num-train",
            "3",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--out",
            out,
        ]
        + TINY
    )
    assert res["test_cars"] == 2 and res["rmse"] > 0
    assert osp.isfile(osp.join(out, "car_surface_pressure.png"))


def test_cosmology_smoke(cosmo_root, tmp_path):
    ex = load_example("cosmology")
    out = str(tmp_path / "run")
    res = ex.main(["--root", cosmo_root, "--steps", "3", "--batch-size", "2", "--out", out] + TINY)
    assert res["test_clouds"] == 2 and res["rmse"] > 0
    assert osp.isfile(osp.join(out, "velocity_slab.png"))


def test_md_ddp_gloo(md_args, tmp_path):
    """Two CPU processes (gloo) under torchrun; rank 0 writes the run."""
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            osp.join(EXAMPLES, "md.py"),
        ]
        + md_args
        + ["--steps", "4", "--ckpt-every", "2", "--out", out, "--no-figures", "--device", "cpu"]
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "processes=2" in proc.stdout
    assert len(_losses(out)) == 4
    with open(osp.join(out, "test_metrics.json")) as f:
        assert json.load(f)["processes"] == 2


def test_shapenet_default_is_the_shipped_demo(tmp_path, monkeypatch, capsys):
    """No --root: the four shipped cars, default split and batch size (no
    "need more than num_train" or "too few for batch size")."""
    monkeypatch.setenv("TORCH_GEOMETRIC_NSA_DATA", str(tmp_path / "data"))
    ex = load_example("shapenet_car")
    out = str(tmp_path / "run")
    res = ex.main(["--steps", "2", "--out", out] + TINY)
    text = capsys.readouterr().out
    assert "DEMONSTRATION" in text and "train=3 test=1" in text
    assert res["test_cars"] == 1 and res["demo"]
    # Erwin's metric: MSE of the de-normalised pressure, next to the paper's numbers
    assert res["mse"] > 0 and "Erwin-S (paper)          MSE 15.85" in text
    assert osp.isfile(osp.join(out, "car_surface_pressure.png"))

"""``--cuda-graphs`` in the examples' loop (examples/_train.py).  On the CPU
the padded step of :class:`torch_geometric_nsa.capture.CapturedTrainStep`
runs eagerly, so everything around the graphs is tested here: buckets,
padding, the per-point (masked) loss, the learning-rate schedule, clipping,
device-built edges, evaluation, checkpoints and the refusals.  The graphs
themselves are tested on a GPU in tests/test_capture.py."""

import importlib.util
import json
import os.path as osp
import shlex
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _example_helpers import TINY, load_example

_train = load_example("_train")


def _rows(out):
    with open(osp.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(out):
    return [r["loss"] for r in _rows(out) if "loss" in r]


def _timing(out):
    with open(osp.join(out, "timing.json")) as f:
        return json.load(f)


def test_md_cuda_graphs_trains_like_eager(md_args, tmp_path):
    md = load_example("md")
    common = md_args + ["--steps", "4", "--batch-size", "2", "--no-figures", "--device", "cpu"]
    common += ["--eval-every", "2", "--ckpt-every", "2"]
    eager, graphs = str(tmp_path / "eager"), str(tmp_path / "graphs")
    res_e = md.main(common + ["--out", eager])
    res_g = md.main(common + ["--out", graphs, "--cuda-graphs"])
    le, lg = _losses(eager), _losses(graphs)
    # the first step: same weights, same batch, the loss of the padded batch
    assert lg[0] == pytest.approx(le[0], rel=1e-5)
    # then the same learning rates, clipping and AdamW updates (up to rounding)
    assert len(lg) == 4 and lg == pytest.approx(le, rel=1e-3)
    assert [r["lr"] for r in _rows(graphs) if "loss" in r] == [
        r["lr"] for r in _rows(eager) if "loss" in r
    ]
    # evaluation (eager, after padded steps) and the test metrics
    ev_e = [r["eval_rmse"] for r in _rows(eager) if "eval_rmse" in r]
    ev_g = [r["eval_rmse"] for r in _rows(graphs) if "eval_rmse" in r]
    assert len(ev_g) == 2 and ev_g == pytest.approx(ev_e, rel=1e-3)
    assert res_g["rmse"] == pytest.approx(res_e["rmse"], rel=1e-3)
    # one bucket: every batch holds 2 x 60 atoms, padded to 128 points
    t = _timing(graphs)["cuda_graphs"]
    assert t["recorded"] is False and t["num_graphs"] == 0
    assert [b[0] for b in t["buckets"]] == [128] and t["buckets"][0][1] % 1024 == 0
    assert t["batches_per_bucket"] == [4] and t["new_bucket_steps"] == [1]
    assert t["padding_fraction"] == pytest.approx(1 - 120 / 128)
    assert "cuda_graphs" not in _timing(eager)
    # points per second count the real points only
    row = _rows(graphs)[0]
    assert row["points_per_s"] == pytest.approx(120 / row["step_s"])


def test_md_checkpoints_resume_across_modes(md_args, tmp_path):
    md = load_example("md")
    common = md_args + ["--steps", "4", "--ckpt-every", "2", "--batch-size", "2", "--no-figures"]
    common += ["--device", "cpu"]
    full = str(tmp_path / "full")
    md.main(common + ["--out", full, "--cuda-graphs"])
    part = str(tmp_path / "part")
    assert md.main(common + ["--out", part, "--stop-after", "3", "--cuda-graphs"]) == {}
    ckpt = torch.load(osp.join(part, "ckpt.pt"), weights_only=True)
    assert torch.is_tensor(ckpt["optimizer"]["param_groups"][0]["lr"])
    # a checkpoint of the captured step resumes eagerly (and the other way round)
    md.main(common + ["--out", part, "--resume"])
    assert _losses(part) == pytest.approx(_losses(full), rel=1e-4)
    eager = str(tmp_path / "eager")
    md.main(common + ["--out", eager, "--stop-after", "2"])
    md.main(common + ["--out", eager, "--resume", "--cuda-graphs"])
    assert _losses(eager) == pytest.approx(_losses(full), rel=1e-3)


def test_shapenet_cuda_graphs_trains_like_eager(shapenet_root, tmp_path):
    """Clouds of one size, no edges, targets [N, 1]."""
    ex = load_example("shapenet_car")
    common = ["--root", shapenet_root, "--split", "order", "--num-train", "3"] + TINY
    common += ["--steps", "3", "--batch-size", "2", "--no-figures", "--ckpt-every", "0"]
    eager, graphs = str(tmp_path / "eager"), str(tmp_path / "graphs")
    res_e = ex.main(common + ["--out", eager])
    res_g = ex.main(common + ["--out", graphs, "--cuda-graphs"])
    assert _losses(graphs)[0] == pytest.approx(_losses(eager)[0], rel=1e-5)
    assert _losses(graphs) == pytest.approx(_losses(eager), rel=1e-3)
    assert res_g["rmse"] == pytest.approx(res_e["rmse"], rel=1e-3)
    t = _timing(graphs)["cuda_graphs"]
    assert t["buckets"] == [[256, 0]] and t["edge_capacities"] is None


@pytest.mark.parametrize("device_graphs", [False, True])
def test_cosmology_box_cuda_graphs_masked_loss(fake_box, tmp_path, device_graphs):
    """The masked loss over the training nodes, views of varying size (the
    halo's images), edges from the loader or built on the device."""
    ex = load_example("cosmology")
    common = fake_box + TINY + ["--points", "400", "--halo", "2", "--steps", "3"]
    common += ["--device", "cpu", "--radius", "4", "--no-figures", "--ckpt-every", "0"]
    common += ["--device-graphs"] if device_graphs else []
    eager, graphs = str(tmp_path / "eager"), str(tmp_path / "graphs")
    ex.main(common + ["--out", eager])
    res = ex.main(common + ["--out", graphs, "--cuda-graphs"])
    le, lg = _losses(eager), _losses(graphs)
    assert lg[0] == pytest.approx(le[0], rel=1e-5)
    assert lg == pytest.approx(le, rel=1e-3)
    assert res["test_points"] == res["test_points_covered"] and np.isfinite(res["rmse"])
    t = _timing(graphs)["cuda_graphs"]
    assert sum(t["batches_per_bucket"]) == 3
    assert all(p > 400 and e > 0 for p, e in t["buckets"])  # every view has edges


def test_masked_targets_are_the_masked_loss():
    """The per-point form of cosmology's loss: weighted by the training mask,
    the per-point MSE's mean is masked_mse (against the smoothed targets)."""
    from torch_geometric.data import Data

    from torch_geometric_nsa.capture import mse_per_point

    ex = load_example("cosmology")
    gen = torch.Generator().manual_seed(0)
    pred, y, target = (torch.randn(20, 3, generator=gen) for _ in range(3))
    mask = torch.arange(20) % 3 == 0
    for batch in (Data(y=y, train_mask=mask), Data(y=y, target=target, train_mask=mask)):
        t, w = ex.masked_targets(batch)
        weighted = (mse_per_point(pred, t) * w).sum() / w.sum()
        assert torch.allclose(weighted, ex.masked_mse(pred, batch))


def test_sample_sizes_read_the_stored_sizes_and_restore_the_rng():
    from torch_geometric.data import Data, InMemoryDataset

    class Toy(InMemoryDataset):
        def __init__(self, sizes, transform=None):
            super().__init__(None, transform=transform)
            data = [
                Data(pos=torch.rand(n, 3), edge_index=torch.zeros(2, 2 * n, dtype=torch.long))
                for n in sizes
            ]
            self._data, self.slices = self.collate(data)

    def noisy(d):  # a random transform, like cosmology's views
        d.noise = torch.rand(1)
        return d

    ds = Toy([5, 50, 7, 9, 11, 13, 300], transform=noisy)
    torch.manual_seed(0)
    points, edges = _train.sample_sizes(ds, count=2)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the probe drew nothing from the global RNG
    assert points[:2] == [5, 300] and edges == [10, 600]  # samples 0 and 6, transformed
    # an index_select'ed subset: its own stored sizes, not the parent's
    points, _ = _train.sample_sizes(ds.index_select([1, 2, 3]), count=1)
    assert min(points) == 7 and max(points) == 50


def _args(**kw):
    base = dict(cuda_graphs=True, model="erwin-nsa", compile=False)
    return SimpleNamespace(**{**base, **kw})


def _task(**kw):
    return _train.Task("toy", [], [], 3, 3, evaluate=None, **kw)


@pytest.mark.parametrize(
    "args, env, task, match",
    [
        (_args(model="mlp"), _train.Env(), _task(), "--model mlp is not a tree model"),
        (_args(compile=True), _train.Env(), _task(), "excludes --compile"),
        (_args(), _train.Env(world=2), _task(), "one process only"),
        (_args(), _train.Env(), _task(loss=lambda p, b: p.sum()), "no per-point form"),
    ],
)
def test_unsupported_combinations_are_refused(args, env, task, match):
    with pytest.raises(ValueError, match=f"--cuda-graphs: .*{match}"):
        _train.check_cuda_graphs(args, env, task)
    _train.check_cuda_graphs(_args(), _train.Env(), _task())  # supported: no error
    args.cuda_graphs = False
    _train.check_cuda_graphs(args, env, task)  # without the flag nothing is checked


def test_unsupported_model_fails_at_startup(md_args, tmp_path):
    md = load_example("md")
    with pytest.raises(ValueError, match="--model point-transformer is not a tree model"):
        md.main(md_args + ["--model", "point-transformer", "--cuda-graphs", "--steps", "1"])


def test_fit_optimizer_moves_the_state():
    """A checkpoint's optimiser state in the form either step needs: tensor lr
    and step counters on the parameters' device for CUDA graphs."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    _train.fit_optimizer(opt, capturable=True, tensor_lr=True)
    g = opt.param_groups[0]
    assert g["capturable"] and torch.is_tensor(g["lr"]) and float(g["lr"]) == 0.5
    _train.set_lr(opt, 0.25)
    assert float(g["lr"]) == 0.25 and torch.is_tensor(g["lr"])
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    opt2.load_state_dict(opt.state_dict())  # the saved groups replace the settings
    assert opt2.param_groups[0]["capturable"]
    _train.fit_optimizer(opt2, capturable=False, tensor_lr=False)
    g2 = opt2.param_groups[0]
    assert not g2["capturable"] and g2["lr"] == 0.25 and isinstance(g2["lr"], float)
    steps = [s["step"] for s in opt2.state.values()]
    assert steps and all(s.device.type == "cpu" and float(s) == 1 for s in steps)
    _train.set_lr(opt2, 0.1)
    assert g2["lr"] == 0.1


def test_example_loop_benchmark_runs_both_modes(md_args, tmp_path):
    """benchmarks/example_loop.py, on the CPU and the tiny trajectory."""
    path = osp.join(osp.dirname(__file__), "..", "..", "benchmarks", "example_loop.py")
    spec = importlib.util.spec_from_file_location("example_loop", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    flags = " ".join(shlex.quote(a) for a in md_args) + " --batch-size 2"
    out = tmp_path / "out"
    rows = bench.main(
        ["--configs", "md", "--device", "cpu", "--steps", "3", "--schedule", "6"]
        + ["--work", str(tmp_path / "work"), "--out", str(out), "--md-flags", flags]
    )
    assert [r["mode"] for r in rows] == ["eager", "cuda-graphs"]
    eager, graphs = rows
    assert "error" not in eager and "error" not in graphs
    assert eager["steps"] == graphs["steps"] == 3 and graphs["points_per_step"] == 120
    assert graphs["buckets"] == 1 and graphs["new_buckets"] == 1 and graphs["graphs"] == 0
    assert graphs["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-5)
    assert graphs["median_ms"] > 0 and graphs["points_per_s"] > 0
    with open(out / "example_loop.json") as f:
        saved = json.load(f)
    assert saved["rows"] == rows and "| md | cuda-graphs | 3 | 120 |" in saved["table"]


# --------------------------------------------------------------------------- on a GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
def test_fit_optimizer_resumes_into_capturable_adamw_on_cuda():
    """An eager run's AdamW state (step counters on the CPU) continues as a
    capturable one (counters on the GPU, tensor lr) and back."""
    model = torch.nn.Linear(3, 2).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    x = torch.randn(4, 3, device="cuda")
    model(x).sum().backward()
    opt.step()
    assert all(s["step"].device.type == "cpu" for s in opt.state.values())
    _train.fit_optimizer(opt, capturable=True, tensor_lr=True)
    assert all(s["step"].device.type == "cuda" for s in opt.state.values())
    assert opt.param_groups[0]["lr"].device.type == "cuda"
    _train.set_lr(opt, 0.1)
    model(x).sum().backward()
    opt.step()  # capturable AdamW refuses step counters on another device
    _train.fit_optimizer(opt, capturable=False, tensor_lr=False)
    assert all(s["step"].device.type == "cpu" for s in opt.state.values())
    model(x).sum().backward()
    opt.step()
    assert all(float(s["step"]) == 3 for s in opt.state.values())


@pytest.mark.cuda
@cuda
def test_md_cuda_graphs_on_cuda_records_one_graph(md_args, tmp_path):
    md = load_example("md")
    common = md_args + ["--steps", "6", "--batch-size", "2", "--no-figures", "--device", "cuda"]
    common += ["--no-tf32", "--eval-every", "3", "--ckpt-every", "3"]
    eager, graphs = str(tmp_path / "eager"), str(tmp_path / "graphs")
    res_e = md.main(common + ["--out", eager])
    res_g = md.main(common + ["--out", graphs, "--cuda-graphs"])
    assert _losses(graphs)[0] == pytest.approx(_losses(eager)[0], rel=1e-4)
    assert _losses(graphs) == pytest.approx(_losses(eager), rel=1e-2)
    assert res_g["rmse"] == pytest.approx(res_e["rmse"], rel=1e-2)
    t = _timing(graphs)["cuda_graphs"]
    assert t["recorded"] is True and t["num_graphs"] == 1 and t["batches_per_bucket"] == [6]


@pytest.mark.cuda
@cuda
def test_cosmology_device_graphs_on_cuda(fake_box, tmp_path):
    ex = load_example("cosmology")
    common = fake_box + TINY + ["--points", "400", "--halo", "2", "--steps", "4"]
    common += ["--device", "cuda", "--radius", "4", "--no-figures", "--ckpt-every", "0"]
    common += ["--device-graphs", "--no-tf32"]
    eager, graphs = str(tmp_path / "eager"), str(tmp_path / "graphs")
    ex.main(common + ["--out", eager])
    res = ex.main(common + ["--out", graphs, "--cuda-graphs"])
    assert _losses(graphs)[0] == pytest.approx(_losses(eager)[0], rel=1e-4)
    assert _losses(graphs) == pytest.approx(_losses(eager), rel=1e-2)
    assert np.isfinite(res["rmse"])
    t = _timing(graphs)["cuda_graphs"]
    assert t["recorded"] is True and t["num_graphs"] == len(t["buckets"]) >= 1

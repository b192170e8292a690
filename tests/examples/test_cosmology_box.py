"""The cosmology example's whole-box task on a tiny fake Abacus run (the
reader is replaced; no abacusnbody, no download)."""

import os.path as osp

import numpy as np
import pytest
import torch
from _example_helpers import TINY, load_example


def test_masked_loss_reads_training_nodes_only():
    from torch_geometric.data import Data

    ex = load_example("cosmology")
    y = torch.randn(10, 3)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[:4] = True
    pred = torch.randn(10, 3, requires_grad=True)
    batch = Data(y=y.clone(), train_mask=mask)
    loss = ex.masked_mse(pred, batch)
    assert torch.allclose(loss, (pred[:4] - y[:4]).pow(2).mean())
    loss.backward()
    assert bool((pred.grad[4:] == 0).all()) and bool((pred.grad[:4] != 0).any())
    batch.y[4:] += 100.0  # other nodes' targets do not count ...
    assert torch.allclose(ex.masked_mse(pred, batch), loss)
    batch.y[0] += 1.0  # ... training nodes' do
    assert not torch.allclose(ex.masked_mse(pred, batch), loss)


@pytest.mark.parametrize(
    "model,extra",
    [("erwin-nsa", []), ("mlp", ["--no-figures"]), ("local-only", ["--device-graphs"])],
)
def test_whole_box_end_to_end(fake_box, tmp_path, model, extra):
    ex = load_example("cosmology")
    out = str(tmp_path / "run")
    res = ex.main(
        fake_box
        + TINY
        + ["--model", model, "--points", "400", "--halo", "2", "--steps", "2", "--out", out]
        + ["--device", "cpu", "--radius", "4"]
        + extra
    )
    # every test particle predicted exactly once, over the 4 evaluation views
    assert res["test_points"] == res["test_points_covered"] > 300
    assert np.isfinite(res["rmse"]) and res["rmse"] > 0
    for key in ("mean_baseline_rmse", "zero_baseline_rmse", "linear_theory_rmse", "val_rmse"):
        assert res[key] > 0
    if model == "erwin-nsa":
        assert osp.isfile(osp.join(out, "velocity_slab.png"))
        assert osp.isfile(osp.join(out, "pred_vs_true.png"))


def test_whole_box_views(fake_box):
    """Training views are random subsets (augmented); evaluation views
    partition the box; the halo's images never count."""
    ex = load_example("cosmology")
    args = ex.get_parser().parse_args(fake_box + TINY + ["--points", "400", "--halo", "2"])
    from torch_geometric_nsa.datasets import CosmologyHalos

    ds = CosmologyHalos(args.root, source="abacus", abacus_dir=args.abacus_dir)
    task = ex.box_task(args, ds)
    assert task.in_channels == 24 and task.loss is ex.masked_mse
    a, b = task.train_dataset[0], task.train_dataset[0]
    assert int((~a.is_image).sum()) == 400 and not torch.equal(a.n_id[:400], b.n_id[:400])
    assert a.ball_tree_index.numel() >= a.num_nodes  # the BallTree transform ran last
    assert task.use_edges and a.edge_index.size(1) > 0  # the first layer's radius graph
    (i, j) = a.edge_index
    assert bool(((a.pos[i] - a.pos[j]).norm(dim=1) <= 3.0 + 1e-5).all())
    args = ex.get_parser().parse_args(fake_box + TINY + ["--points", "400", "--device-graphs"])
    a = ex.box_task(args, ds).train_dataset[0]
    assert "ball_tree_index" not in a and "edge_index" not in a  # built by the model
    model = ex.build(args, 24, 3)
    assert isinstance(model, ex.DeviceGraphs) and model.radius == 3.0
    assert model(a.x, a.pos).shape == (400, 3)
    views = [task.test_dataset[i] for i in range(len(task.test_dataset))]
    assert len(views) == 4
    ids = torch.cat([v.n_id[~v.is_image] for v in views])
    assert torch.equal(ids.sort().values, torch.arange(1500))
    tested = torch.cat([v.n_id[v.test_mask] for v in views])
    assert torch.equal(tested.sort().values, ds[0].test_mask.nonzero().view(-1))

"""examples/long_range.py: the synthetic long-range task and its baselines."""

import os.path as osp

import pytest
import torch
from _example_helpers import TINY, load_example
from torch_geometric.data import Batch


def test_clouds_are_fixed_by_index_and_targets_are_the_kernel_mean():
    lr = load_example("long_range")
    ds = lr.ChargeClouds(3, 50, 0.3)
    a, b = ds[1], lr.ChargeClouds(3, 50, 0.3)[1]
    assert torch.equal(a.pos, b.pos) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(ds[0].pos, a.pos)
    assert set(a.x.unique().tolist()) <= {-1.0, 1.0} and a.y.shape == (50, 1)
    # the target by its definition, point by point
    pos, q = a.pos.double(), a.x.double()
    i = 7
    w = torch.exp(-((pos - pos[i]) ** 2).sum(1) / (2 * 0.3**2))
    assert float(a.y[i, 0]) == pytest.approx(
        float((w * q[:, 0]).sum() / w.sum()) / ds.scale, rel=1e-5
    )
    # --position-features: the charge and the centred position, same cloud and target
    c = lr.ChargeClouds(3, 50, 0.3, position_features=True)[1]
    assert c.x.shape == (50, 4) and torch.equal(c.x[:, :1], a.x) and torch.equal(c.y, a.y)
    assert torch.allclose(c.x[:, 1:], a.pos - 0.5, atol=1e-6)
    # test clouds come from other seeds, normalised with the training scale
    test = lr.ChargeClouds(2, 50, 0.3, lr.TEST_SEED, scale=ds.scale)
    assert test.scale == ds.scale and not torch.equal(test[0].pos, ds[0].pos)


def test_own_ball_baseline_is_exact_with_one_ball_per_cloud():
    lr = load_example("long_range")
    ds = lr.ChargeClouds(3, 40, 0.3)
    batch = Batch.from_data_list([ds[i] for i in range(3)])
    whole = lr.own_ball_mean(batch, 0.3, 64, ds.scale)  # every cloud fits one ball of 64
    assert torch.allclose(whole, batch.y, atol=1e-5)
    part = lr.own_ball_mean(batch, 0.3, 8, ds.scale)  # balls of 8: a cruder estimate
    assert (part - batch.y).pow(2).mean() > 1e-3
    assert 0 < lr.own_ball_gain(ds, 8) < 1.5
    # with position features the baseline reads the charge column only
    dp = lr.ChargeClouds(3, 40, 0.3, position_features=True)
    bp = Batch.from_data_list([dp[i] for i in range(3)])
    assert torch.equal(lr.own_ball_mean(bp, 0.3, 8, dp.scale), part)


def test_long_range_smoke(tmp_path):
    lr = load_example("long_range")
    out = str(tmp_path / "run")
    flags = ["--points", "96", "--train-clouds", "6", "--test-clouds", "2", "--steps", "2"]
    res = lr.main(TINY + flags + ["--batch-size", "2", "--out", out, "--ckpt-every", "0"])
    assert res["test_clouds"] == 2 and res["rmse"] > 0
    assert res["zero_target_rmse"] > 0 and res["own_ball_rmse"] > 0
    assert osp.isfile(osp.join(out, "pred_vs_true.png"))
    with pytest.raises(ValueError, match="--sigma"):
        lr.main(["--sigma", "0", "--out", str(tmp_path / "bad")])

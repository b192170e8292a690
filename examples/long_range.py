"""Long range: a synthetic task that attention within balls cannot solve alone.

Every sample is one cloud of ``--points`` points uniform in the unit cube, each
with a random charge :math:`q = \\pm 1`, its only input feature besides its
position.  The target of point :math:`i` is the Gaussian-weighted mean charge
around it at the length scale ``--sigma`` (0.3 of the cube):

.. math::

    y_i = \\frac{\\sum_j q_j\\, e^{-|p_i - p_j|^2 / 2\\sigma^2}}
               {\\sum_j e^{-|p_i - p_j|^2 / 2\\sigma^2}},

normalised by its standard deviation over the training clouds.  A ball of 64
of 1,024 points spans about 0.4 of the cube, so most of the weight of a target
lies outside the point's ball.  The local ball branch sees one ball per block
(a second one through the rotated tree); the compressed branch sees a summary of
every block of the cloud, and the selected branch any four of them in full.
This is the controlled case for the global branches, next to the physical
examples where they do not help yet (``examples/README.md``, results).

Baselines on the test clouds: zero (the targets' mean is 0 by symmetry), and
the same kernel mean restricted to the point's own ball of the plain tree
(``--ball-size``), times the factor that fits it best to the targets on the
training clouds: what one ball of exact attention computes.  A model above the
own-ball baseline uses no more than its ball; a model below it reaches across
balls.

Runs offline, clouds generated from ``--seed``-independent fixed seeds
(training clouds 0.., test clouds from 10^6 on): ``python
examples/long_range.py --model {erwin-nsa,local-only,mlp}``.
"""

import argparse
import os.path as osp
import sys
from typing import Optional

import numpy as np
import torch
from torch_geometric.data import Batch, Data, Dataset

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402
from _models import build_model  # noqa: E402

from torch_geometric_nsa import build_ball_tree  # noqa: E402

#: the first test cloud's seed (training clouds use 0, 1, ...)
TEST_SEED = 10**6


def kernel_mean(pos: torch.Tensor, q: torch.Tensor, sigma: float, mask=None) -> torch.Tensor:
    """``[..., n, 1]``: the Gaussian-weighted mean of ``q`` (``[..., n, 1]``)
    around every point of ``pos`` (``[..., n, D]``), over the points where
    ``mask`` (``[..., n]``, optional) is set."""
    w = torch.exp(-torch.cdist(pos, pos).pow(2) / (2 * sigma**2))
    if mask is not None:
        w = w * mask.unsqueeze(-2).to(w.dtype)
    return (w @ q) / w.sum(-1, keepdim=True)


class ChargeClouds(Dataset):
    """``num_clouds`` clouds of ``points`` charged points (``x``: the charge
    ``[n, 1]``, ``pos`` ``[n, 3]``, ``y``: the normalised kernel-mean charge
    ``[n, 1]``), each drawn from its own seed ``first_seed + idx`` (so the
    same index is the same cloud in every process and epoch)."""

    def __init__(
        self,
        num_clouds: int,
        points: int,
        sigma: float,
        first_seed: int = 0,
        scale: Optional[float] = None,
        transform=None,
        position_features: bool = False,
    ):
        self.num_clouds, self.points, self.sigma = num_clouds, points, sigma
        self.first_seed, self.position_features = first_seed, position_features
        super().__init__(None, transform)
        if scale is None:  # the targets' standard deviation over (up to) 32 clouds
            ys = [self.raw(i)[2] for i in range(min(num_clouds, 32))]
            scale = float(torch.cat(ys).std())
        self.scale = scale

    def raw(self, idx: int):
        g = torch.Generator().manual_seed(self.first_seed + idx)
        pos = torch.rand(self.points, 3, generator=g, dtype=torch.float64)
        q = torch.randint(0, 2, (self.points, 1), generator=g).double() * 2 - 1
        return pos, q, kernel_mean(pos, q, self.sigma)

    def len(self) -> int:
        return self.num_clouds

    def get(self, idx: int) -> Data:
        pos, q, y = self.raw(idx)
        x = torch.cat([q, pos - 0.5], 1) if self.position_features else q
        return Data(x=x.float(), pos=pos.float(), y=(y / self.scale).float())


def own_ball_mean(batch, sigma: float, ball_size: int, scale: float) -> torch.Tensor:
    """The kernel mean over each point's own ball of the plain tree, normalised."""
    layout = build_ball_tree(batch.pos, batch.batch, ball_size=ball_size)
    pos = layout.gather(batch.pos.double()).view(-1, ball_size, 3)
    q = layout.gather(batch.x[:, :1].double()).view(-1, ball_size, 1)
    y = kernel_mean(pos, q, sigma, layout.mask.view(-1, ball_size)).view(-1, 1)
    return (y[layout.inverse] / scale).float()


def own_ball_gain(dataset, ball_size: int, clouds: int = 32) -> float:
    """The least-squares factor from :func:`own_ball_mean` to the target on
    the first training clouds: a mean over fewer points spreads wider, so the
    best estimate from one ball shrinks it."""
    batch = Batch.from_data_list([dataset.get(i) for i in range(min(clouds, len(dataset)))])
    own = own_ball_mean(batch, dataset.sigma, ball_size, dataset.scale).double()
    return float((own * batch.y).sum() / (own * own).sum())


def evaluate(predict, loader):
    ds = loader.dataset
    se = zero = ball = 0.0
    n = 0
    pred_s, true_s, ball_s, cloud = [], [], [], None
    for batch in loader:
        pred = predict(batch).float().cpu()
        y = batch.y
        own = ds.own_ball_gain * own_ball_mean(batch, ds.sigma, ds.ball_size, ds.scale)
        se += (pred - y).double().pow(2).sum().item()
        zero += y.double().pow(2).sum().item()
        ball += (own - y).double().pow(2).sum().item()
        n += y.numel()
        pred_s.append(pred[::5, 0].numpy())
        true_s.append(y[::5, 0].numpy())
        ball_s.append(own[::5, 0].numpy())
        if cloud is None:
            m = batch.batch == 0
            cloud = (batch.pos[m].numpy(), y[m, 0].numpy(), pred[m, 0].numpy(), own[m, 0].numpy())
    return dict(
        rmse=(se / n) ** 0.5,
        zero_target_rmse=(zero / n) ** 0.5,
        own_ball_rmse=(ball / n) ** 0.5,
        test_clouds=len(ds),
        pred=np.concatenate(pred_s),
        true=np.concatenate(true_s),
        own_ball=np.concatenate(ball_s),
        cloud=cloud,
    )


def figures(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    lim = float(np.abs(result["true"]).max())
    for ax, key, name in (
        (axes[0], "pred", f"model (RMSE {result['rmse']:.3f})"),
        (axes[1], "own_ball", f"own-ball kernel mean (RMSE {result['own_ball_rmse']:.3f})"),
    ):
        ax.hexbin(result["true"], result[key], gridsize=50, bins="log", cmap="viridis",
                  extent=(-lim, lim, -lim, lim))  # fmt: skip
        ax.plot([-lim, lim], [-lim, lim], "w--", lw=0.8)
        ax.set_xlabel("true target")
        ax.set_ylabel(name)
    pos, true, pred, _ = result["cloud"]
    slab = np.abs(pos[:, 2] - 0.5) < 0.1
    for ax, vals, name in ((axes[2], true, "true"), (axes[3], pred, "model")):
        sc = ax.scatter(pos[slab, 0], pos[slab, 1], c=vals[slab], s=12, cmap="coolwarm",
                        vmin=-lim, vmax=lim)  # fmt: skip
        ax.set_aspect("equal")
        ax.set_title(f"{name}, slab |z - 0.5| < 0.1 of a test cloud", fontsize=9)
        fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.suptitle("long range: kernel-mean charge at sigma = 0.3 of the cube (normalised)")
    fig.tight_layout()
    return [_train.save_figure(fig, out, "pred_vs_true.png")]


def summary(result):
    s = result["scalars"]
    return "\n".join(
        [
            f"\nTest clouds: {result['test_clouds']}; RMSE of the normalised target",
            f"  {s['model']:<36s} {result['rmse']:.4f}",
            f"  {'own-ball kernel mean (one ball)':<36s} {result['own_ball_rmse']:.4f}",
            f"  {'zero (the targets mean)':<36s} {result['zero_target_rmse']:.4f}",
            f"  the model {'reaches' if result['rmse'] < result['own_ball_rmse'] else 'does NOT reach'}"
            " beyond its own ball",
        ]
    )


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=_train.HelpFormatter
    )
    g = parser.add_argument_group("data")
    g.add_argument("--points", type=_train.positive_int, default=1024, help="points per cloud")
    g.add_argument(
        "--sigma", type=float, default=0.3, help="length scale of the target's kernel (cube = 1)"
    )
    g.add_argument("--train-clouds", type=_train.positive_int, default=512, help="training clouds")
    g.add_argument("--test-clouds", type=_train.positive_int, default=32, help="test clouds")
    g.add_argument(
        "--position-features",
        action="store_true",
        help="also give the positions (centred in the cube) as input features, so that "
        "content attention (the compressed and selected branches) can weigh distance",
    )
    _train.add_common_args(
        parser,
        hidden=32,
        layers=2,
        heads=2,
        ball_size=64,
        compress_size=16,
        topk=4,
        steps=300,
        lr=3e-3,
        batch_size=4,
        ckpt_every=100,
        eval_batch_size=4,
    )
    return parser


def make_task(args):
    if not args.sigma > 0:
        raise ValueError(f"--sigma must be positive (got {args.sigma})")
    tree = _train.tree_transform(args)
    kw = dict(transform=tree, position_features=args.position_features)
    train = ChargeClouds(args.train_clouds, args.points, args.sigma, **kw)
    test = ChargeClouds(args.test_clouds, args.points, args.sigma, TEST_SEED, train.scale, **kw)
    test.ball_size = args.ball_size
    test.own_ball_gain = own_ball_gain(train, args.ball_size)
    channels = 4 if args.position_features else 1
    return _train.Task("long_range", train, test, channels, 1, evaluate, figures, summary)


def main(argv=None):
    args = get_parser().parse_args(argv)
    result = _train.main(args, make_task(args), build_model)
    _train.cleanup()
    return result


if __name__ == "__main__":
    main()

"""Cosmology: predict particle (or halo) velocities from positions.

With no arguments it trains on real data offline: the small Abacus N-body run
``Mini_N64_L32`` (262,144 particles, 32 Mpc/h periodic box, z = 0) from the
``abacusutils`` source distribution, read with ``abacusnbody`` (GPL, installed
separately, never copied), cut into 4x4x4 sub-boxes (506 to 20,815 particles:
the particles cluster; the x = last column of sub-boxes is the test split).
Once, with access to PyPI::

    pip install abacusutils                            # the readers
    python -m torch_geometric_nsa.datasets.abacus_mini  # the run, ~4 MB

(``--abacus-dir`` or ``$ABACUS_MINI_N64_L32`` point at a copy elsewhere.)
This small default does not give a model much to learn: see the examples'
README for why.

The benchmark of Balla et al. 2024 (``halos_{train,val,test}_*.tfrecord``,
5,000 halos per cloud, read without TensorFlow) works with
``--root <folder with raw/halos_*.tfrecord>``.  ``--subdivisions 1`` makes the
whole Abacus box one 262k-point cloud (for scale runs on a GPU).

Target: velocities standardised with training statistics; inputs: positions
scaled to the (sub-)box.  Metrics: MSE (standardised), RMSE in km/s, next to the
trivial baseline predicting the training mean velocity.  Figures: loss curve,
predicted vs true velocity, a slab of one test box coloured by v_x.
"""

import argparse
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402
from _models import build_model  # noqa: E402

from torch_geometric_nsa.datasets import CosmologyHalos  # noqa: E402


def evaluate(predict, loader):
    dataset = loader.dataset
    nse = se = se_mean = 0.0
    n = 0
    preds, trues, first = [], [], None
    for batch in loader:
        out = predict(batch).float().cpu()
        nse += (out - batch.y).pow(2).sum().item()
        pred = dataset.denormalize(out)
        se += (pred - batch.vel).double().pow(2).sum().item()
        se_mean += (dataset.stats["vel_mean"] - batch.vel).double().pow(2).sum().item()
        n += batch.vel.numel()
        if first is None:
            m = batch.batch == 0
            first = (batch.pos[m].numpy(), batch.vel[m].numpy(), pred[m].numpy())
        stride = max(1, batch.num_nodes // 20000)
        preds.append(pred[::stride].numpy())
        trues.append(batch.vel[::stride].numpy())
    return dict(
        mse_normalised=nse / n,
        rmse=(se / n) ** 0.5,
        mean_baseline_rmse=(se_mean / n) ** 0.5,
        test_clouds=len(dataset),
        cloud=first,
        pred=np.concatenate(preds),
        true=np.concatenate(trues),
    )


def figures(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for i, ax in enumerate(axes):
        t, p = result["true"][:, i], result["pred"][:, i]
        lo, hi = np.percentile(t, [0.5, 99.5])
        ax.hexbin(t, p, gridsize=60, bins="log", extent=(lo, hi, lo, hi))
        ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
        ax.set_xlabel(f"true v{'xyz'[i]} [km/s]")
        ax.set_ylabel(f"predicted v{'xyz'[i]}")
    fig.tight_layout()
    paths.append(_train.save_figure(fig, out, "pred_vs_true.png"))
    pos, true, pred = result["cloud"]
    z = pos[:, 2]
    m = np.abs(z - np.median(z)) < 0.15 * (z.max() - z.min())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    vmin, vmax = np.percentile(true[:, 0], [2, 98])
    for ax, vals, title in zip(axes, (true, pred), ("true v_x", "predicted v_x")):
        sc = ax.scatter(
            pos[m, 0], pos[m, 1], c=vals[m, 0], s=3, cmap="coolwarm", vmin=vmin, vmax=vmax
        )
        ax.set_title(title + " (slab of one test cloud)")
        ax.set_aspect("equal")
    fig.colorbar(sc, ax=axes, shrink=0.8)
    paths.append(_train.save_figure(fig, out, "velocity_slab.png"))
    return paths


def summary(result):
    s = result["scalars"]
    return "\n".join(
        [
            f"\nTest: {result['test_clouds']} clouds; velocity error",
            f"  {s['model']:<24s} MSE (standardised) {result['mse_normalised']:.4f}  "
            f"RMSE {result['rmse']:.1f} km/s",
            f"  {'mean velocity':<24s} RMSE {result['mean_baseline_rmse']:.1f} km/s",
        ]
    )


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_train.HelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--root", default=None, help="CosmologyHalos folder")
    g.add_argument(
        "--source",
        default="auto",
        choices=["auto", "tfrecord", "abacus"],
        help="benchmark tfrecords or the Abacus run (auto: tfrecords when under --root)",
    )
    g.add_argument(
        "--abacus-dir",
        default=None,
        help="the Mini_N64_L32 folder (None: $ABACUS_MINI_N64_L32)",
    )
    g.add_argument(
        "--subdivisions",
        type=_train.positive_int,
        default=4,
        help="cut the Abacus box into this many sub-boxes per axis",
    )
    g.add_argument(
        "--box-size",
        type=float,
        default=None,
        help="box edge of the tfrecord halos (None: from the data)",
    )
    _train.add_common_args(
        parser,
        hidden=32,
        layers=2,
        heads=2,
        ball_size=64,
        compress_size=16,
        steps=300,
        batch_size=2,
        ckpt_every=100,
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    kw = dict(
        source=args.source,
        abacus_dir=args.abacus_dir,
        subdivisions=args.subdivisions,
        box_size=args.box_size,
        # every sample carries the ball trees the model reads
        transform=_train.tree_transform(args),
    )
    with _train.rank0_first(args.device):
        train = CosmologyHalos(args.root, "train", **kw)
        test = CosmologyHalos(args.root, "test", **kw)
    task = _train.Task("cosmology", train, test, 3, 3, evaluate, figures, summary, use_edges=False)
    result = _train.main(args, task, build_model)
    _train.cleanup()
    return result


if __name__ == "__main__":
    main()

"""ShapeNet-Car: predict the surface pressure of a car from its surface points.

Data (not downloadable at run time): Umetani & Bickel 2018, either the raw
``param{0..8}/<id>/quadpress_smpl.vtk`` + ``press.npy`` folders or Erwin's
preprocessed ``mesh_points.th`` + ``pressure.th`` folders, under
``<root>/raw`` (see :class:`torch_geometric_nsa.datasets.ShapeNetCar`)::

    python examples/shapenet_car.py --root /data/shapenet_car

Split: the first 700 cars (sorted by path) for training, the remaining 189 for
testing (``--num-train``).  Inputs: standardised positions; target: pressure,
standardised with training statistics.  Metrics: MSE of the standardised
pressure (Erwin's number), RMSE and relative L2 in pressure units, next to the
trivial baseline predicting the training mean pressure.  Figures: loss curve,
predicted vs true pressure, pressure on the car surface (true, predicted,
error) for one test car.
"""

import argparse
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402
from _models import build_model  # noqa: E402

from torch_geometric_nsa.datasets import ShapeNetCar  # noqa: E402


def evaluate(predict, dataset, device, batch_size):
    se = se_mean = nse = 0.0
    n = 0
    rel = []
    first = None
    preds, trues = [], []
    for batch in _train.iterate_batches(dataset, batch_size):
        out = predict(batch).float().cpu()
        nse += (out - batch.y).pow(2).sum().item()
        pred = dataset.denormalize(out).view(-1)
        true = batch.press.view(-1)
        se += (pred - true).double().pow(2).sum().item()
        se_mean += (dataset.stats["press_mean"] - true).double().pow(2).sum().item()
        n += true.numel()
        for b in range(batch.num_graphs):
            m = batch.batch == b
            rel.append(((pred[m] - true[m]).norm() / true[m].norm().clamp_min(1e-12)).item())
        if first is None:
            m = batch.batch == 0
            first = (batch.pos[m].numpy(), true[m].numpy(), pred[m].numpy())
        preds.append(pred[::5].numpy())
        trues.append(true[::5].numpy())
    return dict(
        mse_normalised=nse / n,
        rmse=(se / n) ** 0.5,
        mean_baseline_rmse=(se_mean / n) ** 0.5,
        rel_l2=float(np.mean(rel)),
        test_cars=len(rel),
        car=first,
        pred=np.concatenate(preds),
        true=np.concatenate(trues),
    )


def figures(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    t, p = result["true"], result["pred"]
    lo, hi = np.percentile(t, [0.5, 99.5])
    ax.hexbin(t, p, gridsize=60, bins="log", extent=(lo, hi, lo, hi))
    ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
    ax.set_xlabel("true pressure")
    ax.set_ylabel("predicted pressure")
    ax.set_title(f"test cars (rel. L2 {result['rel_l2']:.3f})")
    fig.tight_layout()
    paths.append(_train.save_figure(fig, out, "pred_vs_true.png"))
    pos, true, pred = result["car"]
    fig = plt.figure(figsize=(13, 4))
    vmin, vmax = np.percentile(true, [1, 99])
    for j, (vals, title) in enumerate(
        [(true, "true pressure"), (pred, "predicted"), (np.abs(pred - true), "|error|")]
    ):
        ax = fig.add_subplot(1, 3, j + 1, projection="3d")
        kw = dict(vmin=vmin, vmax=vmax, cmap="coolwarm") if j < 2 else dict(cmap="magma")
        sc = ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], c=vals, s=2, **kw)
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(sc, ax=ax, shrink=0.6)
    fig.tight_layout()
    paths.append(_train.save_figure(fig, out, "car_surface_pressure.png"))
    return paths


def summary(result):
    s = result["scalars"]
    return "\n".join(
        [
            f"\nTest: {result['test_cars']} cars",
            f"  {s['model']:<24s} MSE (standardised) {result['mse_normalised']:.4f}  "
            f"RMSE {result['rmse']:.4f}  rel. L2 {result['rel_l2']:.4f}",
            f"  {'mean pressure':<24s} RMSE {result['mean_baseline_rmse']:.4f}",
        ]
    )


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = parser.add_argument_group("data")
    g.add_argument("--root", default=None, help="ShapeNetCar folder (data under <root>/raw)")
    g.add_argument("--layout", default="auto", choices=["auto", "raw", "preprocessed"])
    g.add_argument("--num-train", type=int, default=700)
    _train.add_common_args(
        parser,
        hidden=64,
        layers=4,
        heads=4,
        ball_size=128,
        compress_size=32,
        steps=5000,
        batch_size=4,
        ckpt_every=500,
    )
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    with _train.rank0_first(args.device):
        train = ShapeNetCar(args.root, "train", args.layout, args.num_train)
        test = ShapeNetCar(args.root, "test", args.layout, args.num_train)
    task = _train.Task("shapenet_car", train, test, 3, 1, evaluate, figures, summary)
    result = _train.main(args, task, build_model)
    _train.cleanup()
    return result


if __name__ == "__main__":
    main()

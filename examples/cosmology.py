"""Cosmology: predict particle velocities from positions, in a whole periodic box.

With no arguments it trains on real data offline: the small Abacus N-body run
``Mini_N64_L32`` (262,144 particles, 32 Mpc/h periodic box, z = 0) from the
``abacusutils`` source distribution, read with ``abacusnbody`` (GPL, installed
separately, never copied).  Once, with access to PyPI::

    pip install abacusutils                            # the readers
    python -m torch_geometric_nsa.datasets.abacus_mini  # the run, ~4 MB

(``--abacus-dir`` or ``$ABACUS_MINI_N64_L32`` point at a copy elsewhere; a
processed ``--root`` folder carried to another machine loads there without the
run and without ``abacusnbody``.)

The task is transductive, like node classification on PyG's Planetoid: one
graph, the whole box, every position an input; ``train_mask``, ``val_mask`` and
``test_mask`` select whose velocities are targets (test: the slab x >= 24
Mpc/h; validation: 16 <= x < 24; training: the rest).  The loss reads
training nodes only.  Velocities follow from the whole box's density field
(linear theory: v(k) ~ i f a H delta(k) k / k^2), a non-local integral: the
case for the compressed and selected branches.  Each step trains on a view:
``--points`` random particles of the box (a subsample is also augmentation),
randomly shifted (periodically) and turned by one of the 48 cube symmetries,
velocities turned with the positions; ``--halo`` adds context-only periodic
images across the faces.  Node features are periodic Fourier features of the
positions (``--fourier``); the first layer passes messages over a radius graph
(``--radius``, Erwin's embedding).  The loss targets are, by default, the mean
velocity of each training particle's 32 nearest training particles
(``--target-knn``: less virial noise; only training velocities are read).
Evaluation covers every test particle once: a fixed random partition of the
box into views of ``--points`` particles.  Metrics:
RMSE (km/s) on the test slab, next to predicting the training mean velocity,
predicting zero, and linear theory (density smoothed by 2 Mpc/h, amplitude
fitted on the training nodes).  Figures: loss curve, predicted vs true
velocity, a slice of the box coloured by v_x (true, model, linear theory).

On a GPU (no CPU work per step but drawing the view)::

    python examples/cosmology.py --device cuda --device-graphs --num-workers 8
        --points 65536 --radius 1.5 --steps 2000 --hidden 64 --layers 4 --heads 4
        (one line)

``--subdivisions 4`` gives the former task (4x4x4 sub-boxes as samples, the
last x column tested; no model beats the mean there, the examples' README says
why).  The benchmark of Balla et al. 2024 (``halos_{train,val,test}_*.tfrecord``,
5,000 halos per cloud, read without TensorFlow) works with
``--root <folder with raw/halos_*.tfrecord>``.
"""

import argparse
import os.path as osp
import sys

import numpy as np
import torch
from torch_geometric.transforms import Compose

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402
from _models import build_model  # noqa: E402

from torch_geometric_nsa.datasets import CosmologyHalos  # noqa: E402
from torch_geometric_nsa.datasets.cosmology_halos import (  # noqa: E402
    BoxFeatures,
    PeriodicHalo,
    RandomBoxView,
    box_partition,
    linear_velocity,
)

#: smoothing (Mpc/h) of the linear-theory reference (best of 1-6 on training nodes)
LINEAR_SMOOTHING = 2.0


class Views(torch.utils.data.Dataset):
    """``length`` items, each ``transform(graphs[i % len(graphs)])``: random
    training views of one box (``graphs = [box]``), or the fixed views of an
    evaluation partition."""

    def __init__(self, graphs, transform=None, length=None):
        self.graphs, self.transform = list(graphs), transform
        self.length = len(self.graphs) if length is None else length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        d = self.graphs[i % len(self.graphs)]
        return self.transform(d) if self.transform is not None else d


class RadiusEdges:
    """Transform: ``edge_index`` of the radius graph of ``pos`` (the local
    message passing of the models' first layer reads it)."""

    def __init__(self, r: float, max_num_neighbors: int = 32):
        self.r, self.max_num_neighbors = r, max_num_neighbors

    def __call__(self, data):
        from torch_geometric_nsa.nn import radius_graph

        data.edge_index = radius_graph(data.pos, self.r, max_num_neighbors=self.max_num_neighbors)
        return data

    def __repr__(self):
        return f"RadiusEdges(r={self.r}, max_num_neighbors={self.max_num_neighbors})"


class DeviceGraphs(torch.nn.Module):
    """A tree model that builds its ball trees and its radius graph itself,
    on its device, in every call (``--device-graphs``: no :class:`BallTree`
    and no radius-graph transform in the loader, whose CPU work for a
    65k-point view would bound a GPU step)."""

    def __init__(self, model, radius: float = 0.0, max_num_neighbors: int = 32):
        super().__init__()
        self.model, self.radius, self.max_num_neighbors = model, radius, max_num_neighbors

    def graph(self, pos, batch=None):
        """The radius graph of the first layer (:obj:`None` without a radius);
        ``--cuda-graphs`` computes it with this, eagerly, before the recorded step."""
        if not self.radius > 0:
            return None
        from torch_geometric_nsa.nn import radius_graph

        return radius_graph(pos, self.radius, batch, max_num_neighbors=self.max_num_neighbors)

    def forward(self, x, pos, batch=None, edge_index=None):
        if edge_index is None:
            edge_index = self.graph(pos, batch)
        return self.model(x, pos, batch, edge_index)


def build(args, in_channels, out_channels):
    model = build_model(args, in_channels, out_channels)
    if getattr(args, "device_graphs", False) and args.model in _train.TREE_MODELS:
        return DeviceGraphs(model, args.radius)
    return model


def masked_mse(pred, batch):
    """MSE over the training nodes only (``batch.train_mask``), against
    ``batch.target`` (the smoothed targets of ``--target-knn``) when the batch
    has them, else ``batch.y``."""
    target, m = masked_targets(batch)
    return torch.nn.functional.mse_loss(pred[m], target[m])


def masked_targets(batch):
    """:func:`masked_mse` per point (``--cuda-graphs``): its targets, and the
    training mask as the loss weights (the weighted mean is the masked mean)."""
    return (batch.target if "target" in batch else batch.y), batch.train_mask


def knn_targets(box, k: int, box_size: float) -> torch.Tensor:
    """``[N, 3]``: for every training node the mean normalised velocity of its
    ``k`` nearest training nodes (itself included; periodic distances), zero
    elsewhere.  Only training velocities are read."""
    from scipy.spatial import cKDTree

    m = box.train_mask
    pos = box.pos[m].double().numpy()
    tree = cKDTree(pos, boxsize=box_size)
    _, idx = tree.query(pos, k=k)
    y = box.y[m]
    out = torch.zeros_like(box.y)
    out[m] = y[torch.from_numpy(idx).view(-1, k)].mean(1)
    return out


def box_task(args, dataset):
    """The transductive whole-box task: training views, evaluation views
    covering every node once, the masked loss."""
    box = dataset[0]
    L = float(dataset.stats["box_size"])
    if args.target_knn > 1:
        box.target = knn_targets(box, args.target_knn, L)
    points = args.points or None
    feats = BoxFeatures(L, args.fourier)
    tail = ([PeriodicHalo(L, args.halo)] if args.halo > 0 else []) + [feats]
    # the first layer's radius graph and the ball trees, for the models that
    # read them: built in the loader, or on the model's device (--device-graphs)
    graphs = args.model in _train.TREE_MODELS and not args.device_graphs
    edges = graphs and args.radius > 0
    tail += [RadiusEdges(args.radius)] if edges else []
    tree = _train.tree_transform(args) if graphs else None
    tail += [tree] if tree is not None else []
    view = RandomBoxView(
        L,
        points,
        shift=not args.no_augment,
        symmetry=not args.no_augment,
        vector_keys=("vel", "y", "target"),
    )
    train = Views([box], Compose([view] + tail), length=max(1024, 8 * args.batch_size))
    test = Views(box_partition(box, points or box.num_nodes, seed=0), Compose(tail))
    train.stats = test.stats = dataset.stats
    test.box = box
    task = _train.Task(
        "cosmology",
        train,
        test,
        feats.num_features,
        3,
        evaluate_box,
        figures_box,
        summary_box,
        loss=masked_mse,
        use_edges=edges,
        loss_targets=masked_targets,
    )
    return task


def rmse(se, n):
    return float((se / max(n, 1)) ** 0.5)


def evaluate_box(predict, loader):
    """RMSE (km/s, over the three components) on the test and validation
    nodes of every evaluation view (images excluded), with the baselines."""
    dataset = loader.dataset
    box, stats = dataset.box, dataset.stats
    n = box.num_nodes
    pred_all = torch.full((n, 3), float("nan"))
    seen = torch.zeros(n, dtype=torch.long)
    nse = 0.0
    for batch in loader:
        out = predict(batch).float().cpu()
        m = batch.test_mask
        nse += (out[m] - batch.y[m]).pow(2).sum().item()
        real = ~batch.is_image if "is_image" in batch else torch.ones_like(m)
        ids = batch.n_id[real]
        pred_all[ids] = out[real] * stats["vel_std"] + stats["vel_mean"]
        seen.index_add_(0, ids, torch.ones_like(ids))
    vel = box.vel.double()
    masks = dict(test=box.test_mask, val=box.val_mask)
    # linear theory from all positions, amplitude (and offset) fitted on training nodes
    L = float(stats["box_size"])
    u = linear_velocity(box.pos.numpy(), L, smoothing=LINEAR_SMOOTHING)
    tr = box.train_mask.numpy()
    v = vel.numpy()
    amp = float((u[tr] * v[tr]).sum() / (u[tr] ** 2).sum())
    lin = torch.from_numpy(amp * u)
    res = dict(
        test_points=int(box.test_mask.sum()),
        test_points_covered=int((seen[box.test_mask] == 1).sum()),
        mse_normalised=nse / max(1, 3 * int(box.test_mask.sum())),
        linear_amplitude=amp,
    )
    for name, m in masks.items():
        k = 3 * int(m.sum())
        res[f"{name}_rmse" if name != "test" else "rmse"] = rmse(
            (pred_all[m].double() - vel[m]).pow(2).sum().item(), k
        )
        pre = "" if name == "test" else "val_"
        res[pre + "mean_baseline_rmse"] = rmse(
            (stats["train_vel_mean"].double() - vel[m]).pow(2).sum().item(), k
        )
        res[pre + "zero_baseline_rmse"] = rmse(vel[m].pow(2).sum().item(), k)
        res[pre + "linear_theory_rmse"] = rmse((lin[m] - vel[m]).pow(2).sum().item(), k)
    m = box.test_mask
    stride = max(1, int(m.sum()) // 20000)
    res.update(
        pred=pred_all[m][::stride].numpy(),
        true=box.vel[m][::stride].numpy(),
        slice=(box.pos.numpy(), box.vel.numpy(), pred_all.numpy(), lin.numpy(), L),
    )
    return res


def figures_box(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [_pred_vs_true(result, out, plt)]
    pos, true, pred, lin, L = result["slice"]
    m = np.abs(pos[:, 2] - L / 2) < L / 16  # a slice of L / 8 through the box
    vmin, vmax = np.percentile(true[m, 0], [2, 98])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    shown = np.isfinite(pred[:, 0]) & m
    for ax, vals, sel, title in zip(
        axes,
        (true, pred, lin),
        (m, shown, m),
        ("true v_x", "model v_x", f"linear theory v_x (R = {LINEAR_SMOOTHING:g} Mpc/h)"),
    ):
        sc = ax.scatter(
            pos[sel, 0], pos[sel, 1], c=vals[sel, 0], s=2, cmap="coolwarm", vmin=vmin, vmax=vmax
        )
        ax.axvline(0.75 * L, color="k", lw=0.8, ls="--")
        ax.text(0.875 * L, 0.97 * L, "test", ha="center", va="top", fontsize=9)
        ax.set(title=title, xlabel="x [Mpc/h]", ylabel="y [Mpc/h]", xlim=(0, L), ylim=(0, L))
        ax.set_aspect("equal")
    fig.colorbar(sc, ax=axes, shrink=0.8, label="v_x [km/s]")
    paths.append(_train.save_figure(fig, out, "velocity_slab.png"))
    return paths


def _pred_vs_true(result, out, plt):
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for i, ax in enumerate(axes):
        t, p = result["true"][:, i], result["pred"][:, i]
        lo, hi = np.percentile(t, [0.5, 99.5])
        ax.hexbin(t, p, gridsize=60, bins="log", extent=(lo, hi, lo, hi))
        ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
        ax.set_xlabel(f"true v{'xyz'[i]} [km/s]")
        ax.set_ylabel(f"predicted v{'xyz'[i]}")
    fig.tight_layout()
    return _train.save_figure(fig, out, "pred_vs_true.png")


def summary_box(result):
    s = result["scalars"]
    return "\n".join(
        [
            f"\nTest slab: {result['test_points']:,} particles "
            f"({result['test_points_covered']:,} predicted once); velocity RMSE [km/s]",
            f"  {s['model']:<30s} {result['rmse']:.1f}   (validation {result['val_rmse']:.1f})",
            f"  {'training mean velocity':<30s} {result['mean_baseline_rmse']:.1f}",
            f"  {'zero velocity':<30s} {result['zero_baseline_rmse']:.1f}",
            f"  {'linear theory (reference)':<30s} {result['linear_theory_rmse']:.1f}",
        ]
    )


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

    paths = [_pred_vs_true(result, out, plt)]
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
        default=1,
        help="1: the whole Abacus box with node masks; k > 1: k^3 sub-boxes as samples",
    )
    g.add_argument(
        "--points",
        type=_train.non_negative_int,
        default=2048,
        help="whole box: particles per training and evaluation view (0: all 262,144)",
    )
    g.add_argument(
        "--halo",
        type=float,
        default=0.0,
        help="whole box: width (Mpc/h) of context-only periodic images across the faces",
    )
    g.add_argument(
        "--fourier",
        type=_train.non_negative_int,
        default=4,
        help="whole box: Fourier frequencies per axis of the node features "
        "(0: positions scaled to the box)",
    )
    g.add_argument(
        "--radius",
        type=float,
        default=3.0,
        help="whole box: radius (Mpc/h) of the graph of the first layer's message passing "
        "(erwin-nsa, local-only; 0: none)",
    )
    g.add_argument(
        "--target-knn",
        type=_train.non_negative_int,
        default=32,
        help="whole box: train on the mean velocity of each training particle's k nearest "
        "training particles (0, 1: its own velocity); evaluation always uses its own",
    )
    g.add_argument(
        "--device-graphs",
        action="store_true",
        help="whole box: the model builds its ball trees and radius graph on its device (for "
        "GPUs) instead of the loader's transforms",
    )
    g.add_argument(
        "--no-augment",
        action="store_true",
        help="whole box: no random periodic shifts and cube symmetries",
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
        layers=4,
        heads=2,
        ball_size=64,
        compress_size=16,
        steps=300,
        lr=3e-3,
        batch_size=1,
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
    )
    with _train.rank0_first(args.device):
        train = CosmologyHalos(args.root, "train", **kw)
        if train.whole_box:
            task = box_task(args, train)
        else:
            # every sample carries the ball trees the model reads
            kw["transform"] = train.transform = _train.tree_transform(args)
            test = CosmologyHalos(args.root, "test", **kw)
            task = _train.Task(
                "cosmology", train, test, 3, 3, evaluate, figures, summary, use_edges=False
            )
    result = _train.main(args, task, build)
    _train.cleanup()
    return result


if __name__ == "__main__":
    main()

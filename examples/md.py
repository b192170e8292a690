"""Molecular dynamics: predict every atom's next displacement.

Run ``python examples/md.py`` with no arguments to train on real data offline:
the adenylate kinase (AdK, 3,341 atoms) runs shipped in the PyPI package
``MDAnalysisTests`` -- ``adk_dims.dcd`` (98 frames) for training and
``adk_dims2.dcd`` (102 frames), a separate run, held out for testing.  Any
topology + trajectory pair MDAnalysis reads works with ``--topology`` and
``--trajectory`` (and optionally ``--test-trajectory``).

The task, and why it is honest
------------------------------
Target: the next displacement :math:`\\mathbf{d}_t = \\mathbf{p}_{t+1} -
\\mathbf{p}_t` of every atom (Å per frame), normalised by the training run's
mean and standard deviation.  Inputs per atom: the last ``--window`` (4)
displacements :math:`\\mathbf{d}_{t-1}, \\ldots, \\mathbf{d}_{t-4}`
(normalised the same way), a one-hot of the CHARMM atom type, the positions
:math:`\\mathbf{p}_t` (the model's geometry) and the bonds (embedding graph).
We predict the displacement rather than the acceleration because the frames
are saved 1 ps apart, far longer than the ~10 fs over which atomic velocities
stay correlated: successive displacements are nearly independent (lag-1
correlation -0.30, lag-2 ~0), so the acceleration of finite differences is
dominated by noise and the displacement is the quantity one can predict and
compare with trivial baselines on the same scale.  The two baselines are
computed on the same held-out windows:

* zero displacement (:math:`\\hat{\\mathbf{d}}_t = 0`): RMSE 0.349 Å;
* constant velocity (:math:`\\hat{\\mathbf{d}}_t = \\mathbf{d}_{t-1}`): RMSE
  0.564 Å, worse, because displacements 1 ps apart are anti-correlated.

What a model can learn beyond them: atoms oscillate about slowly moving
positions, so the next displacement partly undoes the recent ones
(a least-squares linear predictor over the 4 past displacements reaches about
0.330 Å, 5% below the zero baseline), and it depends on atom type (hydrogens
move more) and on neighbours (bonded atoms and the collective motion of the
domains).  The held-out run is a different trajectory, so the figure is an
honest generalisation error, not an interpolation.

Output: ``runs/md-<model>/`` with ``metrics.jsonl``, ``test_metrics.json``,
``ckpt.pt`` and figures (loss curve, predicted vs true displacement, per-atom
error on the protein).  Multi-GPU: ``torchrun --nproc_per_node=2 examples/md.py``.
"""

import argparse
import os.path as osp
import sys

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _train  # noqa: E402
from _models import build_model  # noqa: E402

from torch_geometric_nsa.datasets import MDTrajectory  # noqa: E402


def evaluate(predict, loader):
    dataset = loader.dataset
    err2 = zero2 = cv2 = 0.0
    n = 0
    per_atom = torch.zeros(dataset.num_atoms, dtype=torch.float64)
    per_atom_zero = torch.zeros_like(per_atom)
    sample_pred, sample_true = [], []
    pos0 = None
    for batch in loader:
        pred = dataset.denormalize(predict(batch).float().cpu())
        true = batch.disp
        e = (pred - true).double().pow(2)
        err2 += e.sum().item()
        zero2 += true.double().pow(2).sum().item()
        cv2 += (batch.last_disp - true).double().pow(2).sum().item()
        n += true.numel()
        per_atom += e.sum(-1).view(-1, dataset.num_atoms).sum(0)
        per_atom_zero += true.double().pow(2).sum(-1).view(-1, dataset.num_atoms).sum(0)
        if pos0 is None:
            pos0 = batch.pos[: dataset.num_atoms].numpy()
        sample_pred.append(pred[::7].numpy())
        sample_true.append(true[::7].numpy())
    frames = n // (3 * dataset.num_atoms)
    return dict(
        rmse=(err2 / n) ** 0.5,
        zero_rmse=(zero2 / n) ** 0.5,
        const_vel_rmse=(cv2 / n) ** 0.5,
        test_windows=frames,
        per_atom_rmse=(per_atom / frames).sqrt().numpy(),
        per_atom_zero_rmse=(per_atom_zero / frames).sqrt().numpy(),
        atom_type=dataset._store["atom_type"].numpy(),
        pos=pos0,
        pred=np.concatenate(sample_pred),
        true=np.concatenate(sample_true),
    )


def figures(result, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # predicted vs true
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for i, ax in enumerate(axes):
        t, p = result["true"][:, i], result["pred"][:, i]
        ax.hexbin(t, p, gridsize=60, bins="log", extent=(-2, 2, -2, 2), cmap="viridis")
        ax.plot([-2, 2], [-2, 2], "w--", lw=0.8)
        ax.set_xlabel(f"true d{'xyz'[i]} [Å]")
        ax.set_ylabel(f"predicted d{'xyz'[i]} [Å]")
    fig.suptitle(f"next displacement, held-out run (RMSE {result['rmse']:.3f} Å)")
    fig.tight_layout()
    paths.append(_train.save_figure(fig, out, "pred_vs_true.png"))
    # per-atom error on the protein
    pos, err = result["pos"], result["per_atom_rmse"]
    rel = err / np.maximum(result["per_atom_zero_rmse"], 1e-6)
    fig = plt.figure(figsize=(12, 4.8))
    for j, (vals, title, cmap) in enumerate(
        [
            (err, "per-atom RMSE [Å]", "magma"),
            (rel, "per-atom RMSE / zero-baseline RMSE", "coolwarm"),
        ]
    ):
        ax = fig.add_subplot(1, 3, j + 1, projection="3d")
        kw = dict(vmin=0.8, vmax=1.2) if j == 1 else {}
        sc = ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], c=vals, s=3, cmap=cmap, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.colorbar(sc, ax=ax, shrink=0.6)
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(err, lw=0.4, label="model")
    ax.plot(result["per_atom_zero_rmse"], lw=0.4, alpha=0.6, label="zero baseline")
    ax.set_xlabel("atom index (sequence order)")
    ax.set_ylabel("RMSE [Å]")
    ax.legend(fontsize=8)
    fig.suptitle("AdK, held-out run: error of the next-displacement prediction per atom")
    fig.tight_layout()
    paths.append(_train.save_figure(fig, out, "per_atom_error.png"))
    return paths


def summary(result):
    best = min(result["zero_rmse"], result["const_vel_rmse"])
    gain = 100 * (best - result["rmse"]) / best
    s = result["scalars"]
    lines = [
        f"\nHeld-out test run: {result['test_windows']} windows; RMSE of the next "
        "displacement [Å per frame, per component]",
        f"  {s['model']:<30s} {result['rmse']:.4f}",
        f"  {'zero displacement':<30s} {result['zero_rmse']:.4f}",
        f"  {'constant velocity':<30s} {result['const_vel_rmse']:.4f}",
        f"  model vs best baseline: {gain:+.1f}% "
        f"({'beats' if result['rmse'] < best else 'does NOT beat'} it)",
        f"  ({s['steps']} steps in {s['train_seconds']:.0f} s, "
        f"{s.get('points_per_s', float('nan')):,.0f} points/s)",
    ]
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(
        # the docstring up to its first section
        description=__doc__.split("\nThe task, and why")[0],
        formatter_class=_train.HelpFormatter,
    )
    g = parser.add_argument_group("data")
    g.add_argument("--root", default=None, help="folder for the processed trajectory")
    g.add_argument("--topology", default=None, help="topology file MDAnalysis reads (None: AdK)")
    g.add_argument(
        "--trajectory", nargs="+", default=None, help="training trajectory file(s) (None: AdK)"
    )
    g.add_argument(
        "--test-trajectory",
        nargs="+",
        default=None,
        help="held-out trajectory file(s) (None: AdK's second run)",
    )
    g.add_argument(
        "--window", type=_train.positive_int, default=4, help="past displacements per input"
    )
    g.add_argument(
        "--stride", type=_train.positive_int, default=1, help="use every this many frames"
    )
    # defaults sized for the demo: <= 5 minutes on 2 CPU cores
    _train.add_common_args(
        parser,
        hidden=32,
        layers=2,
        heads=2,
        ball_size=64,
        compress_size=16,
        topk=4,
        steps=150,
        lr=3e-3,
        ckpt_every=50,
        eval_batch_size=1,
    )
    return parser


def make_task(args):
    kw = dict(
        root=args.root,
        topology=args.topology,
        trajectory=args.trajectory,
        test_trajectory=args.test_trajectory,
        window=args.window,
        stride=args.stride,
        # every sample carries the ball trees the model reads
        transform=_train.tree_transform(args),
    )
    with _train.rank0_first(args.device):
        train = MDTrajectory(split="train", **kw)
        test = MDTrajectory(split="test", **kw)
    return _train.Task("md", train, test, train.num_node_features, 3, evaluate, figures, summary)


def main(argv=None):
    args = get_parser().parse_args(argv)
    task = make_task(args)
    result = _train.main(args, task, build_model)
    _train.cleanup()
    return result


if __name__ == "__main__":
    main()

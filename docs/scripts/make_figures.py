"""Draws the figures of the documentation from real data and the package's own code.

Usage (from the repository root; needs the ``examples`` extra for MDAnalysis)::

    python docs/scripts/make_figures.py            # writes docs/_static/*.png

Figures:

* ``docs/_static/balltree_adk.png`` -- the ball tree of the adenylate-kinase
  protein (3,341 atoms, first frame of ``adk_dims.dcd`` from MDAnalysisTests)
  built by :func:`torch_geometric_nsa.build_ball_tree`, coloured by ball at
  three levels of the same layout.
* ``docs/_static/branches.png`` -- which atoms one query atom of AdK sees in
  each branch (local ball, compressed blocks, selected blocks), computed with
  the package's ops (``torch_geometric_nsa.ops``) on hand-made queries/keys.
* ``docs/_static/layout.png`` -- the packed slot layout (``perm``, ``mask``,
  ``ptr``, balls) of a toy batch of three clouds built by ``build_ball_tree``.

The outputs are committed; rerun the script after changing the tree or the ops.
"""

import argparse
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from torch_geometric_nsa.tree import build_ball_tree  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(HERE, os.pardir, "_static")


def load_adk():
    """First frame of the real AdK trajectory: positions [3341, 3] (Å) and
    residue names [3341]."""
    import MDAnalysis as mda
    from MDAnalysisTests.datafiles import DCD, PSF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = mda.Universe(PSF, DCD)
        u.trajectory[0]
        pos = u.atoms.positions.astype(np.float64).copy()
    return pos, np.asarray(u.atoms.resnames)


def project(pos, dims=2):
    """Coordinates along the principal axes of the cloud (the first two give
    a faithful 2-D view of 3-D, the third is the depth)."""
    centred = pos - pos.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def palette(num, seed=0):
    """``num`` distinct colours (tab10 when they fit, else shuffled tab20)."""
    if num <= 10:
        return plt.get_cmap("tab10")(np.arange(num))
    base = plt.get_cmap("tab20")(np.arange(20))
    rng = np.random.default_rng(seed)
    return base[rng.permutation(np.arange(num) % 20)]


def figure_balltree(pos, out):
    """Zooming into the nested balls of one layout: the whole protein by
    balls of 512 slots, one of them by its balls of 128, one of those by its
    balls of 32 (3-D scatter in the principal-axes frame)."""
    ball_size = 512
    tree = build_ball_tree(torch.from_numpy(pos), ball_size=ball_size)
    xyz = project(pos, 3)
    perm = tree.perm.numpy()
    mask = tree.mask.numpy()
    slot = np.arange(tree.num_slots)
    levels = [(None, 512), (512, 128), (128, 32)]
    # zoom into the ball around the protein's centre at every level
    centre_slot = int(tree.inverse[int(np.argmin(np.linalg.norm(xyz, axis=1)))])
    fig = plt.figure(figsize=(13.5, 4.9))
    for k, (parent, size) in enumerate(levels):
        ax = fig.add_subplot(1, 3, k + 1, projection="3d")
        inside = mask.copy()
        if parent is not None:
            inside &= slot // parent == centre_slot // parent
        ball = slot // size
        uniq = np.unique(ball[inside])
        colours = palette(len(uniq), seed=size)
        colour = colours[np.searchsorted(uniq, ball[inside])]
        p = xyz[perm[inside]]
        lo, hi = p.min(0), p.max(0)
        lo, hi = lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo)
        q = xyz[perm[mask & ~inside]]
        q = q[((q >= lo) & (q <= hi)).all(1)]
        ax.scatter(q[:, 0], q[:, 1], q[:, 2], s=2, c="0.75", alpha=0.35, linewidths=0)
        ax.scatter(
            p[:, 0],
            p[:, 1],
            p[:, 2],
            s=3 if parent is None else 9,
            c=colour,
            linewidths=0,
            depthshade=False,
        )
        what = "the whole protein" if parent is None else f"zoom: one ball of {parent}"
        ax.set_title(f"{what}: {len(uniq)} balls of {size}", fontsize=10)
        ax.view_init(elev=20, azim=-60)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
        ax.set_box_aspect(tuple(hi - lo), zoom=1.35)
        ax.set_axis_off()
    pads = int((~mask).sum())
    fig.suptitle(
        f"Ball tree of adenylate kinase (AdK, {pos.shape[0]} atoms, "
        f"ball_size={ball_size}: {tree.num_slots} slots, {pads} pads "
        f"at the end); one layout read at three levels",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def _reference_select(q, kc, block_mask, block_size, select_size, topk, scale):
    """Selection of one query, as specified in docs/design/contracts.md
    (used only if ``torch_geometric_nsa.ops`` is not importable)."""
    s = scale * (kc[:, 0] @ q[0])  # [S//c]
    s = s.masked_fill(~block_mask, -float("inf"))
    p = torch.softmax(s, 0)
    per = select_size // block_size
    imp = p.view(-1, per).sum(1)
    valid = block_mask.view(-1, per).any(1)
    imp = imp.masked_fill(~valid, -float("inf"))
    k = min(topk, int(valid.sum()))
    return torch.sort(torch.topk(imp, k).indices).values


def figure_branches(pos, resnames, out):
    """One query atom (the side-chain nitrogen of a lysine) of AdK: its local
    ball, all compressed blocks, and the blocks its compressed scores select.

    Queries and keys are hand-made so that the picture is readable: keys are
    one-hot residue names, the query is a scaled one-hot of its own residue
    name, so compressed scores measure how many atoms of the query's residue
    type a block holds.  A trained layer learns its own queries and keys; the
    sets of points a query can see are the same.
    """
    m, c, s, k = 256, 16, 16, 6
    tree = build_ball_tree(torch.from_numpy(pos), ball_size=m)
    names = sorted(set(resnames.tolist()))
    onehot = torch.zeros(len(resnames), len(names), dtype=torch.float64)
    onehot[torch.arange(len(resnames)), torch.tensor([names.index(r) for r in resnames])] = 1.0
    perm, mask = tree.perm, tree.mask
    num_slots = tree.num_slots
    # choose a lysine atom near the middle of the protein as the query
    xy = project(pos)
    lys = np.flatnonzero(resnames == "LYS")
    query_atom = int(lys[np.argmin(np.linalg.norm(xy[lys], axis=1))])
    qi = int(tree.inverse[query_atom])

    kk = onehot[perm].unsqueeze(1)  # [S, 1, D]
    scale = 8.0
    q = torch.zeros_like(kk)
    q[:] = onehot[query_atom]  # same query everywhere
    w = mask.view(-1, c, 1, 1).double()
    kc = (kk.view(-1, c, 1, kk.size(-1)) * w).sum(1) / w.sum(1).clamp(min=1)
    block_mask = mask.view(-1, c).any(1)
    try:
        from torch_geometric_nsa import ops

        _, lse = ops.compressed_attention(q, kc, kc, block_mask, tree.ptr, c, scale=scale)
        idx = ops.select_blocks(q, kc, lse, block_mask, mask, tree.ptr, c, s, 1, k, scale=scale)
        chosen = idx[qi]
        chosen = chosen[chosen >= 0]
        how = "torch_geometric_nsa.ops"
    except (ImportError, AttributeError):
        chosen = _reference_select(q[qi], kc, block_mask, c, s, k, scale)
        how = "the contract (ops not importable)"
    print(f"  selection computed with {how}: blocks {chosen.tolist()}")

    slot = torch.arange(num_slots)
    p_slot = xy[perm.numpy()]
    real = mask.numpy()
    in_ball = (slot // m == qi // m).numpy() & real
    in_sel = torch.isin(slot // s, chosen).numpy() & real
    cent = np.stack(
        [
            p_slot[b * c : (b + 1) * c][real[b * c : (b + 1) * c]].mean(0)
            for b in range(num_slots // c)
            if block_mask[b]
        ]
    )

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.8))
    grey = dict(s=2, c="0.85", linewidths=0)
    titles = [
        f"local: its ball ({m} slots)",
        f"compressed: one summary per block of {c}",
        f"selected: top-{k} blocks of {s}",
    ]
    for ax, title in zip(axes, titles):
        ax.scatter(p_slot[real, 0], p_slot[real, 1], **grey)
        ax.set_title(title)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].scatter(p_slot[in_ball, 0], p_slot[in_ball, 1], s=4, c="tab:blue", linewidths=0)
    axes[1].scatter(cent[:, 0], cent[:, 1], s=14, c="tab:orange", edgecolors="k", linewidths=0.3)
    axes[2].scatter(p_slot[in_sel, 0], p_slot[in_sel, 1], s=5, c="tab:green", linewidths=0)
    qx = xy[query_atom]
    for ax in axes:
        ax.scatter(
            [qx[0]], [qx[1]], marker="*", s=220, c="red", edgecolors="k", linewidths=0.6, zorder=5
        )
    fig.suptitle(
        "What one query atom (red star, a lysine of AdK) sees; keys: "
        'residue names, query: "lysine"',
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def figure_layout(out):
    sizes = (11, 5, 14)
    ball_size = 4
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(sum(sizes), 2, generator=gen)
    batch = torch.cat([torch.full((n,), b) for b, n in enumerate(sizes)])
    tree = build_ball_tree(pos, batch, ball_size=ball_size)
    perm, mask, ptr = tree.perm.tolist(), tree.mask.tolist(), tree.ptr.tolist()
    num_slots = tree.num_slots
    colours = ["#8fb8de", "#f4b183", "#a9d18e"]

    fig, ax = plt.subplots(figsize=(13.5, 3.3))
    for i in range(num_slots):
        b = int(tree.slot_batch[i])
        face = colours[b] if mask[i] else "white"
        ax.add_patch(
            Rectangle(
                (i, 1),
                1,
                1,
                facecolor=face,
                edgecolor="k",
                hatch=None if mask[i] else "///",
                lw=0.8,
            )
        )
        ax.text(
            i + 0.5,
            1.5,
            str(perm[i]),
            ha="center",
            va="center",
            fontsize=9,
            color="k" if mask[i] else "0.35",
            bbox=None if mask[i] else dict(facecolor="white", lw=0, pad=0.5),
        )
        ax.add_patch(
            Rectangle(
                (i, 0.35), 1, 0.45, facecolor="0.2" if mask[i] else "white", edgecolor="k", lw=0.5
            )
        )
    for i in range(0, num_slots, ball_size):
        ax.plot([i + 0.1, i + ball_size - 0.1], [2.2, 2.2], c="k", lw=1)
        ax.text(
            i + ball_size / 2, 2.3, f"ball {i // ball_size}", ha="center", va="bottom", fontsize=8
        )
    for b, p in enumerate(ptr):
        ax.plot([p, p], [0.2, 2.9], c="crimson", lw=2)
        ax.text(p, 3.0, f"ptr[{b}]={p}", ha="center", va="bottom", fontsize=9, color="crimson")
    for b, n in enumerate(sizes):
        ax.text(
            (ptr[b] + ptr[b + 1]) / 2,
            -0.25,
            f"cloud {b}: {n} points, {ptr[b + 1] - ptr[b]} slots",
            ha="center",
            va="top",
            fontsize=9,
        )
    ax.text(-0.3, 1.5, "perm", ha="right", va="center", fontsize=10)
    ax.text(-0.3, 0.575, "mask", ha="right", va="center", fontsize=10)
    ax.set_xlim(-2.5, num_slots + 0.5)
    ax.set_ylim(-0.8, 3.6)
    ax.axis("off")
    ax.set_title(
        f"TreeLayout of a batch of clouds with {sizes} points, "
        f"ball_size={ball_size}: real slots first, pads (hatched, "
        f"mask False) at the end of each cloud",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=STATIC, help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    pos, resnames = load_adk()
    figure_balltree(pos, os.path.join(args.out, "balltree_adk.png"))
    figure_branches(pos, resnames, os.path.join(args.out, "branches.png"))
    figure_layout(os.path.join(args.out, "layout.png"))


if __name__ == "__main__":
    main()

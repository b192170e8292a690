import math
from typing import Callable, Optional

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from .._checks import MAX_BALL_SIZE, TREE_MISMATCH, check_pow2, check_tree, device_assert
from ..tree import TreeLayout, build_ball_tree

#: Attribute names the transform writes.  ``*_index`` names make PyG's collation offset the
#: stored point indices by ``num_nodes``.  Every stored tensor has ``S + 2`` entries for a
#: cloud of ``N <= S`` points, so PyG never takes it for per-node data (``FixedPoints``,
#: ``subgraph`` and friends leave it alone, and the checks then see the change).
PERM_KEY = "ball_tree_index"
ROT_PERM_KEY = "ball_tree_rot_index"
KEY_KEY = "ball_tree_key"


@functional_transform("nsa_ball_tree")
class BallTree(BaseTransform):
    r"""Partitions the points of a :class:`~torch_geometric.data.Data` object
    into a ball tree (functional name: :obj:`nsa_ball_tree`), as used by
    `Erwin <https://arxiv.org/abs/2502.17019>`_ and Erwin NSA.

    The transform stores the :class:`~torch_geometric_nsa.tree.TreeLayout` of
    :func:`~torch_geometric_nsa.tree.build_ball_tree` and what it depends on, under names
    that collate: for a cloud of :math:`N` points in :math:`S` slots,

    * ``data.ball_tree_index`` (``[S + 2]`` int64): the slot permutation, then :math:`N` and
      the ``ball_size`` (offset by ``num_nodes`` when batched, like ``edge_index``);
    * ``data.ball_tree_key`` (``[S + 2]`` float64): a fingerprint of the position in every
      slot (NaN for pads), then a separator (``inf``) and the ``rotate`` angle (NaN without);
    * with :obj:`rotate`, ``data.ball_tree_rot_index`` (``[S + 2]``): the rotated tree.

    None of them has :math:`N` rows, so PyG never treats them as per-node data.  A
    :class:`~torch_geometric.data.Batch` of transformed objects holds exactly the layout
    :func:`build_ball_tree` builds on the batch; read it back with :meth:`BallTree.layout`,
    which checks it against the points it is read with: a transform that moves, drops or
    reorders points *after* this one (``RandomRotate``, ``FixedPoints``, ...) makes it raise
    "the tree does not match these points".  Put ``BallTree`` last, or give it the
    transforms that must run before it as :obj:`first`.

    Args:
        ball_size (int, optional): the ball size :math:`m`, a power of two.
            (default: :obj:`128`)
        rotate (float, optional): also store the tree of the points rotated by
            this angle in degrees.  (default: :obj:`None`)
        first (Callable, optional): a transform applied to the data before the tree is built
            (e.g. an augmentation), so the tree always comes last; it is part of the
            ``repr``, which PyG compares for ``pre_transform``.  (default: :obj:`None`)
    """

    def __init__(
        self,
        ball_size: int = 128,
        rotate: Optional[float] = None,
        first: Optional[Callable] = None,
    ):
        # Validate eagerly so a bad transform fails at construction.
        check_pow2(ball_size, "ball_size", MAX_BALL_SIZE)
        if rotate is not None and (
            isinstance(rotate, bool)
            or not isinstance(rotate, (int, float))
            or not math.isfinite(rotate)
        ):
            raise ValueError(f"'rotate' must be a finite angle in degrees or None (got {rotate!r})")
        if first is not None and not callable(first):
            raise TypeError(f"'first' must be a transform (got {type(first).__name__})")
        self.ball_size = ball_size
        self.rotate = None if rotate is None else float(rotate)
        self.first = first

    def forward(self, data: Data) -> Data:
        """Stores the layout of ``data.pos`` on :obj:`data` (after :obj:`first`)."""
        if self.first is not None:
            data = self.first(data)
        pos = getattr(data, "pos", None)
        if pos is None:
            raise ValueError("BallTree needs 'data.pos'")
        if isinstance(data, Batch) or getattr(data, "batch", None) is not None:
            raise ValueError(
                "BallTree transforms one cloud: apply it to every Data before batching"
            )
        layout = build_ball_tree(pos, ball_size=self.ball_size)
        tail = torch.tensor([pos.size(0), self.ball_size], device=pos.device)
        angle = math.nan if self.rotate is None else self.rotate
        data[PERM_KEY] = torch.cat([layout.perm, tail])
        data[KEY_KEY] = torch.cat(
            [layout.key, torch.tensor([math.inf, angle], dtype=torch.float64, device=pos.device)]
        )
        if self.rotate is not None:
            rot = build_ball_tree(pos, ball_size=self.ball_size, rotate=self.rotate)
            data[ROT_PERM_KEY] = torch.cat([rot.perm, tail])
        return data

    @staticmethod
    def layout(
        data: Data, ball_size: int, rotate: Optional[float] = None, check: bool = True
    ) -> TreeLayout:
        r"""Reads the :class:`TreeLayout` stored on a transformed
        :class:`~torch_geometric.data.Data` or :class:`~torch_geometric.data.Batch`, and
        checks it against ``data.pos`` and ``data.batch`` (no host synchronisation; on CUDA
        a failed check is a device-side assert).

        Args:
            data (Data or Batch): the transformed data.
            ball_size (int): the ball size it was built with (checked).
            rotate (float, optional): read the rotated tree, built with this angle
                (checked).  (default: :obj:`None`, the plain tree)
            check (bool): check the tree against ``data.pos`` and ``data.batch``.
                (default: :obj:`True`)

        Raises:
            ValueError: when the data holds no tree, or one of another size.
            RuntimeError: "the tree does not match these points" when a transform after
                :class:`BallTree` changed the points, or the stored ``ball_size`` or
                ``rotate`` differs.
        """
        if isinstance(rotate, bool):
            raise TypeError("'rotate' is the angle the rotated tree was built with, not a flag")
        if getattr(data, PERM_KEY, None) is None or getattr(data, KEY_KEY, None) is None:
            raise ValueError(f"data has no '{PERM_KEY}': apply the BallTree transform first")
        if rotate is not None and getattr(data, ROT_PERM_KEY, None) is None:
            raise ValueError(
                f"data has no '{ROT_PERM_KEY}': apply the BallTree transform with rotate={rotate}"
            )
        num_clouds = data.num_graphs if isinstance(data, Batch) else 1
        perm = None if rotate is None else data[ROT_PERM_KEY]
        layout = layout_from_parts(
            data[PERM_KEY], data[KEY_KEY], num_clouds, data.num_nodes, ball_size, rotate, perm
        )
        if check and getattr(data, "pos", None) is not None:
            check_tree(layout, data.pos, getattr(data, "batch", None))
        return layout

    def __repr__(self) -> str:
        first = "" if self.first is None else f", first={self.first!r}"
        return f"{self.__class__.__name__}(ball_size={self.ball_size}, rotate={self.rotate}{first})"


def layout_from_parts(
    index: Tensor,
    key: Tensor,
    num_clouds: int,
    num_points: int,
    ball_size: int,
    rotate: Optional[float] = None,
    rot_index: Optional[Tensor] = None,
) -> TreeLayout:
    """Rebuilds a :class:`TreeLayout` from the (collated) tensors :class:`BallTree` stores:
    the plain tree, or with :obj:`rotate` the rotated one (:obj:`rot_index`).  Checks the
    stored point count, ``ball_size`` and angle on the device."""
    check_pow2(ball_size, "ball_size", MAX_BALL_SIZE)
    if index.dim() != 1 or key.shape != index.shape or key.dtype != torch.float64:
        raise ValueError(
            f"'{PERM_KEY}' and '{KEY_KEY}' must be 1-D of equal length (key float64): "
            "was the data made by another version of BallTree?"
        )
    if rot_index is not None and rot_index.shape != index.shape:
        raise ValueError(f"'{ROT_PERM_KEY}' and '{PERM_KEY}' differ in length")
    B = num_clouds
    num_slots = index.numel() - 2 * B
    if num_slots < num_points:
        raise ValueError(
            f"{TREE_MISMATCH}: the stored trees have {num_slots} slots in {B} clouds for "
            f"{num_points} points"
        )
    device = index.device
    at = torch.arange(index.numel(), device=device)
    marker = key == math.inf
    count = marker.long().cumsum(0)  # separators up to here, inclusive
    device_assert(count[-1] == B, f"{TREE_MISMATCH}: the stored trees are not of {B} clouds")
    # separator of cloud b at position ptr[b + 1] + 2 b
    ptr = torch.zeros(B + 2, dtype=torch.long, device=device).scatter_(
        0, torch.where(marker & (count <= B), count, B + 1), at - 2 * (count - 1)
    )[: B + 1]
    tail = ptr[1:] + 2 * torch.arange(B, device=device)  # separator positions
    node_ptr = torch.cat([ptr.new_zeros(1), index[tail]])
    stored_m = index[tail + 1] - node_ptr[:-1]
    device_assert(
        node_ptr[-1] == num_points,
        f"{TREE_MISMATCH}: the stored trees hold another number of points than {num_points}",
    )
    device_assert(
        (stored_m == ball_size).all(),
        f"the stored tree was built with another ball_size than {ball_size}",
    )
    slot = torch.arange(num_slots, device=device)
    slot_batch = torch.searchsorted(ptr[1:], slot, right=True).clamp_(max=B - 1)
    src = slot + 2 * slot_batch
    counts = node_ptr.diff()
    mask = (slot - ptr[slot_batch]) < counts[slot_batch]
    perm = index[src].clamp(0, max(num_points - 1, 0))
    slot_key = key[src]
    if rotate is not None:
        angle = key[tail + 1]
        device_assert(
            (angle == float(rotate)).all(),
            f"the stored rotated tree was built with another angle than rotate={rotate}",
        )
        # the key of the point in every rotated slot, through the plain tree's inverse
        target = torch.where(mask, perm, torch.full_like(perm, num_points))
        inverse = torch.zeros(num_points + 1, dtype=torch.long, device=device)
        inverse.scatter_(0, target, slot)
        perm = rot_index[src].clamp(0, max(num_points - 1, 0))
        slot_key = slot_key[inverse[perm]].masked_fill(~mask, math.nan)
    return TreeLayout.from_slots(
        perm,
        mask,
        ptr,
        num_points,
        ball_size,
        slot_batch=slot_batch,
        key=slot_key,
        rotate=None if rotate is None else float(rotate),
    )

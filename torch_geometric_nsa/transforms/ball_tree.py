from typing import Optional

import torch
from torch_geometric.data import Data
from torch_geometric.data.datapipes import functional_transform
from torch_geometric.transforms import BaseTransform

from ..tree import TreeLayout, build_ball_tree

#: Attribute names the transform writes.  ``*_index`` names make PyG's
#: collation offset the stored point indices by ``num_nodes``.
PERM_KEY = "ball_tree_index"
ROT_PERM_KEY = "ball_tree_rot_index"
MASK_KEY = "ball_tree_mask"
SLOTS_KEY = "ball_tree_num_slots"


@functional_transform("nsa_ball_tree")
class BallTree(BaseTransform):
    r"""Partitions the points of a :class:`~torch_geometric.data.Data` object
    into a ball tree (functional name: :obj:`nsa_ball_tree`), as used by
    `Erwin <https://arxiv.org/abs/2502.17019>`_ and Erwin NSA.

    The transform stores the :class:`~torch_geometric_nsa.tree.TreeLayout` of
    :func:`~torch_geometric_nsa.tree.build_ball_tree` under names that collate:
    ``data.ball_tree_index`` (``[S]``, the slot permutation; offset by
    ``num_nodes`` when batched), ``data.ball_tree_mask`` (``[S]``),
    ``data.ball_tree_num_slots`` (``[1]``) and, with :obj:`rotate`,
    ``data.ball_tree_rot_index`` (``[S]``, the rotated tree).  A
    :class:`~torch_geometric.data.Batch` of transformed objects holds exactly the
    layout :func:`build_ball_tree` builds on the batch; read it back with
    :meth:`BallTree.layout`.

    Args:
        ball_size (int, optional): the ball size :math:`m`, a power of two.
            (default: :obj:`128`)
        rotate (float, optional): also store the tree of the points rotated by
            this angle in degrees.  (default: :obj:`None`)
    """

    def __init__(self, ball_size: int = 128, rotate: Optional[float] = None):
        # Validate eagerly so a bad transform fails at construction.
        from ..tree.layout import _check_pow2

        _check_pow2(ball_size, "ball_size")
        self.ball_size = ball_size
        self.rotate = None if rotate is None else float(rotate)

    def forward(self, data: Data) -> Data:
        """Stores the layout of ``data.pos`` on :obj:`data`."""
        if getattr(data, "pos", None) is None:
            raise ValueError("BallTree needs 'data.pos'")
        layout = build_ball_tree(data.pos, ball_size=self.ball_size)
        data[PERM_KEY] = layout.perm
        data[MASK_KEY] = layout.mask
        data[SLOTS_KEY] = layout.ptr[1:].clone()
        if self.rotate is not None:
            data[ROT_PERM_KEY] = build_ball_tree(
                data.pos, ball_size=self.ball_size, rotate=self.rotate
            ).perm
        return data

    @staticmethod
    def layout(data: Data, ball_size: int, rotated: bool = False) -> TreeLayout:
        r"""Reads the :class:`TreeLayout` stored on a transformed
        :class:`~torch_geometric.data.Data` or
        :class:`~torch_geometric.data.Batch` (no host synchronisation).

        Args:
            data (Data or Batch): the transformed data.
            ball_size (int): the ball size it was built with.
            rotated (bool): read the rotated tree.  (default: :obj:`False`)
        """
        key = ROT_PERM_KEY if rotated else PERM_KEY
        if getattr(data, key, None) is None:
            raise ValueError(
                f"data has no '{key}': apply the BallTree "
                f"transform{' with rotate=' if rotated else ''} "
                f"first"
            )
        return layout_from_parts(
            data[key], data[MASK_KEY], data[SLOTS_KEY], data.num_nodes, ball_size
        )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(ball_size={self.ball_size}, rotate={self.rotate})"


def layout_from_parts(
    perm: torch.Tensor, mask: torch.Tensor, num_slots: torch.Tensor, num_points: int, ball_size: int
) -> TreeLayout:
    """Rebuilds a :class:`TreeLayout` from its stored parts."""
    if perm.shape != mask.shape or perm.dim() != 1:
        raise ValueError("ball-tree index and mask must be 1-D and of equal length")
    if perm.numel() % ball_size:
        raise ValueError(
            f"the stored layout has {perm.numel()} slots, not a "
            f"multiple of ball_size={ball_size}: was it built "
            f"with another ball size?"
        )
    slots = num_slots.view(-1).long()
    ptr = torch.cat([slots.new_zeros(1), slots.cumsum(0)])
    return TreeLayout.from_slots(perm, mask, ptr, num_points, ball_size)

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear

from ..._checks import check_channels, check_no_pos_grad, check_tree, pos_dtype
from ...tree import TreeLayout, build_ball_tree
from ..conv import (
    BRANCHES,
    ErwinNSAConv,
    SlotGeometry,
    check_feature_dtype,
    default_heads,
    slot_geometry,
)
from ..embedding import MPNNEmbedding
from ..neighbors import radius_graph


class RMSNorm(torch.nn.RMSNorm):
    """:class:`torch.nn.RMSNorm` that casts its weight to the input's dtype, so
    that inputs in a lower precision than the weight (bf16 activations of an
    fp32 model under autocast) take PyTorch's fused kernel (one kernel forward,
    one backward) instead of its composite of element-wise ops."""

    def forward(self, x: Tensor) -> Tensor:
        """``[*, C] -> [*, C]``."""
        w = self.weight
        if w is not None and w.dtype != x.dtype:
            w = w.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


class SwiGLU(torch.nn.Module):
    r"""The gated MLP :math:`\mathbf{W}_3(\mathrm{SiLU}(\mathbf{W}_1\mathbf{x})
    \odot \mathbf{W}_2\mathbf{x})`."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.w12 = Linear(channels, 2 * hidden)
        self.w3 = Linear(hidden, channels)

    def reset_parameters(self):
        """Resets all learnable parameters."""
        self.w12.reset_parameters()
        self.w3.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``[*, C] -> [*, C]``."""
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class ErwinNSABlock(torch.nn.Module):
    """Pre-norm attention + residual, pre-norm SwiGLU + residual."""

    def __init__(self, channels: int, heads: int, mlp_ratio: int, **kwargs):
        super().__init__()
        self.norm1 = RMSNorm(channels)
        self.attn = ErwinNSAConv(channels, heads=heads, **kwargs)
        self.norm2 = RMSNorm(channels)
        self.mlp = SwiGLU(channels, mlp_ratio * channels)

    def reset_parameters(self):
        """Resets all learnable parameters."""
        for module in (self.norm1, self.attn, self.norm2, self.mlp):
            module.reset_parameters()

    def forward(
        self, x: Tensor, pos: Tensor, tree: TreeLayout, geometry: Optional[SlotGeometry] = None
    ) -> Tensor:
        """``x [N, C]``, ``pos [N, P]``, the layout (and its
        :class:`~torch_geometric_nsa.nn.conv.SlotGeometry`) -> ``[N, C]``."""
        x = x + self.attn(self.norm1(x), pos, tree=tree, geometry=geometry)
        return x + self.mlp(self.norm2(x))


class ErwinNSA(torch.nn.Module):
    r"""The Erwin NSA model: an :class:`~torch_geometric_nsa.nn.MPNNEmbedding`,
    :obj:`num_layers` transformer blocks of
    :class:`~torch_geometric_nsa.nn.ErwinNSAConv` (pre-RMSNorm attention and
    SwiGLU MLP, each with a residual; every second block on the rotated tree so
    that balls mix), and a linear head.  The trees are built once per forward
    (or taken from the arguments, e.g. from the
    :class:`~torch_geometric_nsa.transforms.BallTree` transform) and shared by
    all blocks.  Positions enter only relatively, so the model is translation
    invariant.

    Positions are constants: no gradient flows to :obj:`pos` (forces as
    :math:`-\partial E / \partial \mathbf{p}` need another model), and a :obj:`pos` that
    requires grad raises.

    Args:
        in_channels (int): input features per point.
        hidden_channels (int): model width :math:`C`.
        num_layers (int): transformer blocks.
        out_channels (int, optional): outputs per point.  (default: :obj:`None`,
            :obj:`hidden_channels`)
        heads (int, optional): attention heads.  (default: :obj:`None`, the most heads (at
            most 8) of at least 16 channels: 4 for :math:`C = 64`)
        ball_size, compress_size, select_size, group_size, topk, branches, compressed_bias:
            see :class:`~torch_geometric_nsa.nn.ErwinNSAConv`.
        rotate (float, optional): angle (degrees) of the rotated tree used by
            every second block; :obj:`None` disables it.  (default: :obj:`45.`)
        radius (float, optional): radius of the embedding's graph when no
            :obj:`edge_index` is given; :obj:`None` embeds without messages.
            (default: :obj:`None`)
        max_num_neighbors (int): neighbour cap of that graph.
            (default: :obj:`32`)
        mp_steps (int): message-passing rounds of the embedding.
            (default: :obj:`1`)
        mlp_ratio (int): SwiGLU hidden size over :math:`C`.  (default: :obj:`4`)
        pos_dim (int): spatial dimension.  (default: :obj:`3`)

    Shapes:
        - **input:** features :math:`(N, F_{in})`, positions :math:`(N, P)`,
          batch :math:`(N)` *(optional)*, edge index :math:`(2, E)`
          *(optional)*
        - **output:** :math:`(N, F_{out})` in input order
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_layers: int,
        out_channels: Optional[int] = None,
        *,
        heads: Optional[int] = None,
        ball_size: int = 128,
        compress_size: int = 32,
        select_size: Optional[int] = None,
        group_size: Optional[int] = None,
        topk: int = 4,
        branches: Sequence[str] = BRANCHES,
        compressed_bias: bool = False,
        rotate: Optional[float] = 45.0,
        radius: Optional[float] = None,
        max_num_neighbors: int = 32,
        mp_steps: int = 1,
        mlp_ratio: int = 4,
        pos_dim: int = 3,
    ):
        super().__init__()
        check_channels("in_channels", in_channels)
        check_channels("hidden_channels", hidden_channels)
        check_channels("num_layers", num_layers)
        out_channels = hidden_channels if out_channels is None else out_channels
        check_channels("out_channels", out_channels)
        heads = default_heads(hidden_channels) if heads is None else heads
        if rotate is not None and (
            isinstance(rotate, bool)
            or not isinstance(rotate, (int, float))
            or not math.isfinite(rotate)
        ):
            raise ValueError(f"'rotate' must be a finite angle in degrees or None (got {rotate!r})")
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.out_channels, self.num_layers = out_channels, num_layers
        self.heads = heads
        self.ball_size, self.rotate = ball_size, None if rotate is None else float(rotate)
        self.compress_size = compress_size
        self.radius, self.max_num_neighbors = radius, max_num_neighbors
        self.embedding = MPNNEmbedding(in_channels, hidden_channels, pos_dim, steps=mp_steps)
        self.blocks = torch.nn.ModuleList(
            [
                ErwinNSABlock(
                    hidden_channels,
                    heads,
                    mlp_ratio,
                    ball_size=ball_size,
                    compress_size=compress_size,
                    select_size=select_size,
                    group_size=group_size,
                    topk=topk,
                    branches=branches,
                    compressed_bias=compressed_bias,
                    pos_dim=pos_dim,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = RMSNorm(hidden_channels)
        self.head = Linear(hidden_channels, out_channels)

    def reset_parameters(self):
        """Resets all learnable parameters."""
        self.embedding.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.head.reset_parameters()

    @property
    def uses_rotation(self) -> bool:
        """Whether odd blocks run on the rotated tree."""
        return self.rotate is not None and self.num_layers > 1

    def build_trees(
        self, pos: Tensor, batch: Optional[Tensor] = None, batch_size: Optional[int] = None
    ):
        """The (plain, rotated) layouts the blocks use."""
        return (
            self._build_tree(pos, batch, None, batch_size),
            self._build_tree(pos, batch, self.rotate, batch_size) if self.uses_rotation else None,
        )

    def _build_tree(self, pos, batch, rotate, batch_size=None) -> TreeLayout:
        return build_ball_tree(
            pos, batch, ball_size=self.ball_size, rotate=rotate, batch_size=batch_size
        )

    def trees_from_data(self, data):
        """The (plain, rotated) layouts stored on a :class:`Data`/:class:`Batch`
        by the :class:`~torch_geometric_nsa.transforms.BallTree` transform, checked to
        have been built with this model's ``ball_size`` and ``rotate`` and against
        ``data.pos`` and ``data.batch``."""
        from ...transforms import BallTree

        tree = BallTree.layout(data, self.ball_size)
        tree_rot = (
            BallTree.layout(data, self.ball_size, rotate=self.rotate)
            if self.uses_rotation
            else None
        )
        return tree, tree_rot

    def _check(self, x, pos, batch, tree, tree_rot) -> None:
        if not isinstance(x, Tensor) or not isinstance(pos, Tensor):
            raise TypeError("'x' and 'pos' must be tensors")
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(
                f"'x' must have shape [num_points, {self.in_channels}] (got {tuple(x.shape)})"
            )
        if pos.dim() != 2 or pos.size(0) != x.size(0):
            raise ValueError(
                f"'pos' must have shape [{x.size(0)}, pos_dim] (got {tuple(pos.shape)})"
            )
        if not x.is_floating_point() or not pos.is_floating_point():
            raise TypeError(f"'x' and 'pos' must be floating point (got {x.dtype} and {pos.dtype})")
        if batch is not None and (batch.dim() != 1 or batch.numel() != x.size(0)):
            raise ValueError(f"'batch' must have shape [{x.size(0)}] (got {tuple(batch.shape)})")
        check_feature_dtype(x, self.embedding.lin.weight, "model")
        check_no_pos_grad(pos)
        for name, t, angle in (("tree", tree, None), ("tree_rot", tree_rot, self.rotate)):
            if t is None or (name == "tree_rot" and not self.uses_rotation):
                continue
            if not isinstance(t, TreeLayout):
                raise TypeError(f"'{name}' must be a TreeLayout (got {type(t).__name__})")
            if t.rotate != angle:
                raise ValueError(
                    f"'{name}' was built with rotate={t.rotate} but the model needs rotate={angle}"
                )
            if t.ball_size < self.ball_size:
                raise ValueError(
                    f"'{name}' was built with ball_size={t.ball_size} < the model's "
                    f"{self.ball_size}"
                )
            check_tree(t, pos, batch)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        tree: Optional[TreeLayout] = None,
        tree_rot: Optional[TreeLayout] = None,
    ) -> Tensor:
        """Runs the model.

        Args:
            x (torch.Tensor): ``[N, F_in]`` point features.
            pos (torch.Tensor): ``[N, P]`` positions (no gradient flows to them).
            batch (torch.Tensor, optional): ``[N]`` sorted cloud index.
            edge_index (torch.Tensor, optional): ``[2, E]`` graph of the
                embedding (else a radius graph if :obj:`radius` is set).
            tree, tree_rot (TreeLayout, optional): precomputed layouts, checked against
                :obj:`pos`, :obj:`batch` and the model's ``rotate`` (see
                :meth:`~torch_geometric_nsa.nn.ErwinNSAConv.forward`).

        Returns:
            torch.Tensor: ``[N, F_out]``.
        """
        self._check(x, pos, batch, tree, tree_rot)
        if tree is None:
            tree = self._build_tree(pos, batch, None)
        if tree_rot is None and self.uses_rotation:
            tree_rot = self._build_tree(pos, batch, self.rotate)
        if edge_index is None and self.radius is not None:
            edge_index = radius_graph(
                pos, self.radius, batch, max_num_neighbors=self.max_num_neighbors
            )
        h = self.embedding(x, pos, edge_index)
        # what the blocks derive from a tree and the positions alone (slot
        # positions, ball/block centres, block masks) is computed once here
        dtype = pos_dtype(h.dtype)
        geo = slot_geometry(tree, pos, self.ball_size, self.compress_size, dtype)
        geo_rot = (
            slot_geometry(tree_rot, pos, self.ball_size, self.compress_size, dtype)
            if self.uses_rotation
            else None
        )
        for i, block in enumerate(self.blocks):
            if i % 2 and self.uses_rotation:
                h = block(h, pos, tree_rot, geo_rot)
            else:
                h = block(h, pos, tree, geo)
        return self.head(self.norm(h))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, "
            f"{self.hidden_channels}, num_layers={self.num_layers}, "
            f"out_channels={self.out_channels})"
        )

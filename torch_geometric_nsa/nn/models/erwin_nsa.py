from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, RMSNorm

from ...tree import TreeLayout, build_ball_tree
from ..conv import BRANCHES, ErwinNSAConv, SlotGeometry, _pos_dtype
from ..embedding import MPNNEmbedding
from ..neighbors import radius_graph


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
        self.attn = ErwinNSAConv(channels, heads, **kwargs)
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

    Args:
        in_channels (int): input features per point.
        hidden_channels (int): model width :math:`C`.
        out_channels (int): outputs per point.
        num_layers (int): transformer blocks.  (default: :obj:`4`)
        heads (int): attention heads.  (default: :obj:`4`)
        ball_size, compress_size, select_size, group_size, topk, branches:
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
        out_channels: int,
        num_layers: int = 4,
        heads: int = 4,
        *,
        ball_size: int = 128,
        compress_size: int = 32,
        select_size: Optional[int] = None,
        group_size: Optional[int] = None,
        topk: int = 4,
        branches: Sequence[str] = BRANCHES,
        rotate: Optional[float] = 45.0,
        radius: Optional[float] = None,
        max_num_neighbors: int = 32,
        mp_steps: int = 1,
        mlp_ratio: int = 4,
        pos_dim: int = 3,
    ):
        super().__init__()
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.out_channels, self.num_layers = out_channels, num_layers
        self.ball_size, self.rotate = ball_size, rotate
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
        by the :class:`~torch_geometric_nsa.transforms.BallTree` transform
        (built with this model's ``ball_size`` and ``rotate``)."""
        from ...transforms import BallTree

        tree = BallTree.layout(data, self.ball_size)
        tree_rot = (
            BallTree.layout(data, self.ball_size, rotated=True) if self.uses_rotation else None
        )
        return tree, tree_rot

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
            pos (torch.Tensor): ``[N, P]`` positions.
            batch (torch.Tensor, optional): ``[N]`` sorted cloud index.
            edge_index (torch.Tensor, optional): ``[2, E]`` graph of the
                embedding (else a radius graph if :obj:`radius` is set).
            tree, tree_rot (TreeLayout, optional): precomputed layouts.

        Returns:
            torch.Tensor: ``[N, F_out]``.
        """
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
        geo = self.blocks[0].attn.geometry(pos, tree, _pos_dtype(h.dtype))
        geo_rot = (
            self.blocks[0].attn.geometry(pos, tree_rot, _pos_dtype(h.dtype))
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
            f"{self.hidden_channels}, {self.out_channels}, "
            f"num_layers={self.num_layers})"
        )

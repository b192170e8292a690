"""The four models the examples compare, behind one call signature
``model(x, pos, batch=None, edge_index=None) -> [N, out_channels]``.

* ``erwin-nsa``: :class:`torch_geometric_nsa.nn.models.ErwinNSA` with the
  branches of ``--branches`` (compressed, selected, local);
* ``local-only``: the same model with the local ball branch only (the
  Erwin-style ablation);
* ``point-transformer``: a residual stack of PyG's
  :class:`~torch_geometric.nn.conv.PointTransformerConv` on a kNN graph;
* ``mlp``: a per-point MLP (no interaction between points).

``erwin-nsa`` and ``local-only`` also take ``tree`` and ``tree_rot``: the
layouts that the :class:`~torch_geometric_nsa.transforms.BallTree` transform
stored on the batch (``_train.forward`` reads them with
:meth:`~torch_geometric_nsa.nn.models.ErwinNSA.trees_from_data`).
"""

import torch
from torch.nn import GELU, LayerNorm, Linear, Sequential
from torch_geometric.nn import MLP as PyGMLP

from torch_geometric_nsa.nn import knn_graph


class MLP(torch.nn.Module):
    """Per-point MLP baseline: PyG's :class:`~torch_geometric.nn.models.MLP`
    (``num_layers + 1`` linear layers, GELU, LayerNorm) behind the common call
    signature."""

    def __init__(
        self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 4
    ):
        super().__init__()
        self.net = PyGMLP(
            in_channels=in_channels,
            hidden_channels=hidden_channels,
            out_channels=out_channels,
            num_layers=num_layers + 1,
            act="gelu",
            norm="layer_norm",
        )

    def forward(self, x, pos, batch=None, edge_index=None):
        return self.net(x)


class PointTransformer(torch.nn.Module):
    """A residual stack of :class:`~torch_geometric.nn.conv.PointTransformerConv`
    (pre-LayerNorm, then a per-point MLP) on the kNN graph of the points."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 4,
        k: int = 16,
    ):
        super().__init__()
        from torch_geometric.nn import PointTransformerConv

        self.k = k
        self.lin_in = Linear(in_channels, hidden_channels)
        self.convs = torch.nn.ModuleList()
        self.mlps = torch.nn.ModuleList()
        self.norms = torch.nn.ModuleList()
        for _ in range(num_layers):
            pos_nn = Sequential(
                Linear(3, hidden_channels), GELU(), Linear(hidden_channels, hidden_channels)
            )
            attn_nn = Sequential(
                Linear(hidden_channels, hidden_channels),
                GELU(),
                Linear(hidden_channels, hidden_channels),
            )
            self.convs.append(
                PointTransformerConv(
                    hidden_channels, hidden_channels, pos_nn=pos_nn, attn_nn=attn_nn
                )
            )
            self.mlps.append(
                Sequential(
                    LayerNorm(hidden_channels),
                    Linear(hidden_channels, 2 * hidden_channels),
                    GELU(),
                    Linear(2 * hidden_channels, hidden_channels),
                )
            )
            self.norms.append(LayerNorm(hidden_channels))
        self.lin_out = Linear(hidden_channels, out_channels)

    def forward(self, x, pos, batch=None, edge_index=None):
        graph = knn_graph(pos, self.k, batch, loop=False)
        h = self.lin_in(x)
        for conv, mlp, norm in zip(self.convs, self.mlps, self.norms):
            h = h + conv(norm(h), pos, graph)
            h = h + mlp(h)
        return self.lin_out(h)


def build_model(args, in_channels: int, out_channels: int) -> torch.nn.Module:
    """The model named by ``args.model`` with the sizes of ``args``."""
    if args.model == "mlp":
        return MLP(in_channels, args.hidden, out_channels, args.layers)
    if args.model == "point-transformer":
        return PointTransformer(in_channels, args.hidden, out_channels, args.layers, k=args.knn)
    from torch_geometric_nsa.nn.models import ErwinNSA

    if args.model == "local-only":
        branches = ("local",)
    else:
        branches = tuple(b.strip() for b in args.branches.split(",") if b.strip())
    # keyword arguments only: valid under both the old and PyG's argument order
    return ErwinNSA(
        in_channels=in_channels,
        hidden_channels=args.hidden,
        out_channels=out_channels,
        num_layers=args.layers,
        heads=args.heads,
        ball_size=args.ball_size,
        compress_size=args.compress_size,
        select_size=args.select_size,
        topk=args.topk,
        branches=branches,
        compressed_bias=getattr(args, "compressed_bias", False) and args.model == "erwin-nsa",
        rotate=args.rotate,
    )

from typing import Optional

import torch
from torch import Tensor
from torch.nn import Linear, Sequential, SiLU
from torch_geometric.nn import MessagePassing


class MPNNEmbedding(MessagePassing):
    r"""Point embedding by message passing over relative positions, as in Erwin's first layer.

    It computes

    .. math::
        \mathbf{h}_i = \mathbf{W}\mathbf{x}_i, \qquad
        \mathbf{h}_i \leftarrow \mathbf{h}_i + \phi_u\Big(\mathbf{h}_i,
        \frac{1}{|\mathcal{N}(i)|}\sum_{j \in \mathcal{N}(i)}
        \phi_m\big(\mathbf{h}_i, \mathbf{h}_j, \mathbf{p}_i - \mathbf{p}_j
        \big)\Big)

    repeated :obj:`steps` times over given edges (bonds, mesh edges, a
    dataset's graph) or a radius graph
    (:func:`~torch_geometric_nsa.nn.radius_graph`).  Only relative positions
    enter, so the embedding is translation invariant.

    Args:
        in_channels (int): input features.
        out_channels (int): embedding size.
        pos_dim (int): spatial dimension.  (default: :obj:`3`)
        steps (int): message-passing rounds.  (default: :obj:`1`)

    Shapes:
        - **input:** features :math:`(N, F_{in})`, positions :math:`(N, P)`,
          edge index :math:`(2, E)`
        - **output:** :math:`(N, F_{out})`
    """

    def __init__(self, in_channels: int, out_channels: int, pos_dim: int = 3, steps: int = 1):
        super().__init__(aggr="mean")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.pos_dim, self.steps = pos_dim, steps
        self.lin = Linear(in_channels, out_channels)
        self.message_mlps = torch.nn.ModuleList(
            [
                Sequential(
                    Linear(2 * out_channels + pos_dim, out_channels),
                    SiLU(),
                    Linear(out_channels, out_channels),
                )
                for _ in range(steps)
            ]
        )
        self.update_mlps = torch.nn.ModuleList(
            [
                Sequential(
                    Linear(2 * out_channels, out_channels),
                    SiLU(),
                    Linear(out_channels, out_channels),
                )
                for _ in range(steps)
            ]
        )
        self.reset_parameters()

    def reset_parameters(self):
        """Resets all learnable parameters."""
        super().reset_parameters()
        self.lin.reset_parameters()
        for mlp in list(self.message_mlps) + list(self.update_mlps):
            for layer in mlp:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()

    def forward(self, x: Tensor, pos: Tensor, edge_index: Optional[Tensor] = None) -> Tensor:
        """``x [N, F_in]``, ``pos [N, P]``, ``edge_index [2, E]`` (optional:
        without edges only the linear embedding runs) -> ``[N, F_out]``."""
        h = self.lin(x)
        if edge_index is None or self.steps == 0:
            return h
        for msg, upd in zip(self.message_mlps, self.update_mlps):
            agg = self.propagate(edge_index, h=h, pos=pos, mlp=msg)
            h = h + upd(torch.cat([h, agg], dim=-1))
        return h

    def message(
        self, h_i: Tensor, h_j: Tensor, pos_i: Tensor, pos_j: Tensor, mlp: torch.nn.Module
    ) -> Tensor:
        """The message :math:`\\phi_m(\\mathbf{h}_i, \\mathbf{h}_j,
        \\mathbf{p}_i - \\mathbf{p}_j)`."""
        return mlp(torch.cat([h_i, h_j, (pos_i - pos_j).to(h_i.dtype)], -1))

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, "
            f"{self.out_channels}, steps={self.steps})"
        )

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter
from torch_geometric.nn import Linear as LazyLinear

from .. import ops
from .._checks import (
    MAX_BALL_SIZE,
    check_channels,
    check_no_pos_grad,
    check_pow2,
    check_tree,
    pos_dtype,
)
from ..tree import TreeLayout, build_ball_tree

BRANCHES = ("compressed", "selected", "local")


def masked_block_mean(src: Tensor, mask: Tensor, size: int) -> Tensor:
    """Mean of the real slots of every block of :obj:`size` slots.

    Args:
        src (torch.Tensor): ``[S, ...]`` slot values.
        mask (torch.Tensor): ``[S]`` real slots.

    Returns:
        torch.Tensor: ``[S / size, ...]`` (zero for blocks of pads only).
    """
    shape = (-1, size) + src.shape[1:]
    w = mask.to(src.dtype).view((-1, size) + (1,) * (src.dim() - 1))
    total = (src.view(shape) * w).sum(1)
    return total / w.sum(1).clamp(min=1)


def offset_from_block_centre(
    pos: Tensor, mask: Tensor, size: int, centre: Optional[Tensor] = None
) -> Tensor:
    """``[S, P]`` position of every slot relative to the centroid of the real
    slots of its block of :obj:`size` slots (:obj:`centre`, ``[S / size, P]``,
    when already computed)."""
    S, P = pos.shape
    if centre is None:
        centre = masked_block_mean(pos, mask, size)
    return (pos.view(-1, size, P) - centre.unsqueeze(1)).view(S, P)


class SlotGeometry(NamedTuple):
    r"""What every :class:`ErwinNSAConv` derives from a layout and the
    positions alone, computed once per forward and shared by all layers on
    that layout (see :meth:`ErwinNSAConv.geometry`)."""

    #: ``[S, P]`` slot positions, detached, float32 (float64 for float64
    #: models): distances of a low-precision cloud keep their low bits.
    pos: Tensor
    #: ``[S, P]`` positions relative to the centroid of their ball of
    #: :attr:`ball_size` slots (the input of ``pos_proj``).
    ball_offset: Tensor
    #: ``[S, P]`` positions relative to the centroid of their compression
    #: block of :attr:`compress_size` slots (the input of ``phi_pos``).
    block_offset: Tensor
    #: ``[S / c, P]`` centroid of the real slots of every compression block
    #: (the compressed distance bias measures from it).
    block_centre: Tensor
    #: ``[S / c]`` bool, compression blocks holding a real slot.
    block_mask: Tensor
    #: ``[S / c, c, 1]`` the real-slot indicator (dtype of :attr:`pos`).
    block_weight: Tensor
    #: ``[S / c, 1]`` real slots per block, at least 1 (dtype of :attr:`pos`).
    block_count: Tensor
    ball_size: int
    compress_size: int


def slot_geometry(
    tree: TreeLayout,
    pos: Tensor,
    ball_size: int,
    compress_size: int,
    dtype: torch.dtype = torch.float32,
) -> SlotGeometry:
    """The :class:`SlotGeometry` of :obj:`tree` for input-order positions
    ``pos [N, P]`` (no host synchronisation; a handful of small ops)."""
    tree.check_ball_size(ball_size)
    tree.check_ball_size(compress_size)
    return slot_geometry_of_slots(
        tree.gather(pos.detach()), tree.mask, ball_size, compress_size, dtype
    )


def slot_geometry_of_slots(
    ps: Tensor, mask: Tensor, ball_size: int, compress_size: int, dtype: torch.dtype = torch.float32
) -> SlotGeometry:
    """:func:`slot_geometry` from slot-ordered positions ``ps [S, P]`` and
    the ``[S]`` mask."""
    ps = ps.detach().to(dtype)
    c = compress_size
    w = mask.to(dtype).view(-1, c, 1)
    centre = masked_block_mean(ps, mask, c)
    return SlotGeometry(
        pos=ps,
        ball_offset=offset_from_block_centre(ps, mask, ball_size),
        block_offset=offset_from_block_centre(ps, mask, c, centre),
        block_centre=centre,
        block_mask=mask.view(-1, c).any(1),
        block_weight=w,
        block_count=w.sum(1).clamp(min=1),
        ball_size=ball_size,
        compress_size=c,
    )


def small_linear(x: Tensor, linear: Linear, dtype: torch.dtype) -> Tensor:
    """``linear(x)`` in :obj:`dtype` for inputs of a few features (positions, K = P).

    Under ``torch.compile`` it is written as element-wise products, which Inductor fuses
    into their consumer (and the weight gradient into one reduction) instead of launching
    a GEMM of K = 3 forward and backward; eager mode keeps the one ``addmm``."""
    if not torch.compiler.is_compiling():
        return linear(x.to(dtype))
    w = linear.weight
    y = sum(x[:, i : i + 1].to(w.dtype) * w[:, i] for i in range(x.size(1)))
    if linear.bias is not None:
        y = y + linear.bias
    return y.to(dtype)


def default_heads(channels: int) -> int:
    """The default number of attention heads for a width of :obj:`channels`: the most heads,
    at most 8, that divide it into heads of at least 16 channels (1 below 32 channels)."""
    for heads in range(8, 0, -1):
        if channels % heads == 0 and channels // heads >= 16:
            return heads
    return 1


def check_feature_dtype(x: Tensor, weight: Tensor, what: str) -> None:
    """Raises up front when features and parameters differ in dtype outside autocast."""
    if x.dtype == weight.dtype or weight.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    ):
        return
    try:
        autocast = torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4
        autocast = torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    if autocast:
        return
    raise TypeError(
        f"'x' is {x.dtype} but the {what}'s parameters are {weight.dtype}: convert one of them "
        f"(e.g. x.to({weight.dtype}) or module.to({x.dtype})), or run under torch.autocast"
    )


class ErwinNSAConv(torch.nn.Module):
    r"""The Erwin NSA attention layer: natively trainable sparse attention
    (`Yuan et al., 2025 <https://arxiv.org/abs/2502.11089>`_) over the balls
    of a ball tree (`Zhdanov et al., 2025 <https://arxiv.org/abs/2502.17019>`_).

    Points are read into ball-tree slot order
    (:class:`~torch_geometric_nsa.tree.TreeLayout`); each point first gets
    :math:`\mathbf{x}_i \leftarrow \mathbf{x}_i + \mathbf{W}_{\mathrm{pe}}
    (\mathbf{p}_i - \bar{\mathbf{p}}_{\mathrm{ball}(i)})` and then attends
    through up to three branches per head, mixed by learned gates:

    .. math::
        \mathbf{o}_i = \sum_{b \in \{\mathrm{cmp}, \mathrm{slc},
        \mathrm{loc}\}} \sigma(\mathbf{w}_{b,h}^\top \mathbf{x}_i)\,
        \mathbf{o}_i^{b}

    * **compressed**: every block :math:`\beta` of :math:`c` slots is
      summarised by :math:`\tilde{\mathbf{k}}_\beta = \mathrm{MLP}_k\big(
      \mathrm{mean}_{j \in \beta}\, \mathrm{GELU}(\mathbf{A}_k\mathbf{k}_j +
      \mathbf{B}_k(\mathbf{p}_j - \bar{\mathbf{p}}_\beta))\big)` (likewise
      :math:`\tilde{\mathbf{v}}_\beta`); queries attend to all blocks of their
      cloud: :math:`\mathbf{o}^{\mathrm{cmp}}_i = \sum_\beta
      \mathrm{softmax}_\beta(\mathbf{q}_i^\top\tilde{\mathbf{k}}_\beta /
      \sqrt{d})\, \tilde{\mathbf{v}}_\beta`;
    * **selected**: the compressed probabilities, summed over the heads and
      the queries of a group (a ball of :math:`g` slots), rank the selection
      blocks (:math:`s` slots) of the cloud; the group attends at full
      resolution to the real points of its top-:math:`k` blocks;
    * **local**: dense attention inside the query's ball of :math:`m` slots
      with a learned per-head distance bias:
      :math:`\mathrm{softmax}_j(\mathbf{q}_i^\top\mathbf{k}_j / \sqrt{d} +
      \sigma_h \|\mathbf{p}_i - \mathbf{p}_j\|)`.

    Pads are never keys and no attention crosses a cloud boundary.

    Positions are constants: the layer gives no gradient with respect to :obj:`pos` (the
    tree is discrete, and the kernels do not differentiate the distance bias), and raises
    when ``pos.requires_grad`` is set rather than return a silently incomplete gradient.

    Args:
        in_channels (int): input channels; :obj:`-1` infers them at the first call.
        out_channels (int, optional): output channels :math:`C`, the width the attention
            runs at; the input is projected to it when the two differ.
            (default: :obj:`None`, :obj:`in_channels`)
        heads (int, optional): attention heads; :math:`C / H \ge 8`.
            (default: :obj:`None`, the most heads (at most 8) of at least 16 channels)
        ball_size (int): local ball size :math:`m`.  (default: :obj:`128`)
        compress_size (int): compression block size :math:`c`.
            (default: :obj:`32`)
        select_size (int, optional): selection block size :math:`s`, a
            multiple of :math:`c`.  (default: :obj:`None`, :math:`\max(c, 16)`
            capped at :math:`m`: the Triton kernels take :math:`s \ge 16`)
        group_size (int, optional): query group size :math:`g` sharing one
            selection (:obj:`1` selects per query).  (default: :obj:`None`,
            :math:`s`)
        topk (int): selected blocks per group.  (default: :obj:`4`)
        branches (Sequence[str]): the branches to use, a subset of
            :obj:`('compressed', 'selected', 'local')`; :obj:`('local',)` is
            the Erwin-style baseline.  (default: all three)
        pos_dim (int): spatial dimension of :obj:`pos`.  (default: :obj:`3`)
        dist_bias_init (float): initial :math:`\sigma_h` (and :math:`\tau_h`).  (default:
            :obj:`-1.0`)
        compressed_bias (bool): add a learned per-head distance bias
            :math:`\tau_h \lVert \mathbf{p}_i - \bar{\mathbf{p}}_\beta \rVert` (query to the
            block's centroid) to the compressed scores, which the selection then ranks by
            (:class:`~torch_geometric_nsa.ops.DistanceBias`).  Without it a query cannot
            weight blocks by distance: keys know positions only relative to their block's
            centroid.  (default: :obj:`False`)

    Shapes:
        - **input:** node features :math:`(N, F_{in})`, positions :math:`(N, P)`,
          batch vector :math:`(N)` *(optional)*, a
          :class:`~torch_geometric_nsa.tree.TreeLayout` *(optional)*
        - **output:** node features :math:`(N, C)` in input order
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Optional[int] = None,
        *,
        heads: Optional[int] = None,
        ball_size: int = 128,
        compress_size: int = 32,
        select_size: Optional[int] = None,
        group_size: Optional[int] = None,
        topk: int = 4,
        branches: Sequence[str] = BRANCHES,
        pos_dim: int = 3,
        dist_bias_init: float = -1.0,
        compressed_bias: bool = False,
    ):
        super().__init__()
        check_channels("in_channels", in_channels, allow_lazy=True)
        if out_channels is None:
            if in_channels == -1:
                raise ValueError("'out_channels' must be given when in_channels=-1 (lazy)")
            out_channels = in_channels
        check_channels("out_channels", out_channels)
        channels = out_channels
        heads = default_heads(channels) if heads is None else heads
        if select_size is None:  # the smallest block the kernels take (16), at least c, at most m
            select_size = min(max(compress_size, 16), ball_size)
        group_size = select_size if group_size is None else group_size
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise ValueError(f"'heads' must be a positive int (got {heads!r})")
        if channels % heads:
            raise ValueError(f"out_channels={channels} must be divisible by heads={heads}")
        if channels // heads < 8:
            raise ValueError(
                f"head dim out_channels/heads = {channels // heads} is below the minimum of 8"
            )
        for name, v in (
            ("ball_size", ball_size),
            ("compress_size", compress_size),
            ("select_size", select_size),
            ("group_size", group_size),
        ):
            check_pow2(v, name, MAX_BALL_SIZE)
            if v > ball_size:
                raise ValueError(f"{name}={v} must not exceed ball_size={ball_size}")
        if select_size % compress_size:
            raise ValueError(
                f"select_size={select_size} must be a multiple of compress_size={compress_size}"
            )
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive int (got {topk!r})")
        branches = tuple(branches)
        if (
            not branches
            or any(b not in BRANCHES for b in branches)
            or len(set(branches)) != len(branches)
        ):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES} (got {branches})")
        check_channels("pos_dim", pos_dim)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels, self.heads = channels, heads
        self.head_dim = channels // heads
        self.ball_size, self.compress_size = ball_size, compress_size
        self.select_size, self.group_size = select_size, group_size
        self.topk, self.pos_dim = topk, pos_dim
        self.branches = tuple(b for b in BRANCHES if b in branches)
        self.dist_bias_init = dist_bias_init

        if in_channels != out_channels:
            # PyG's Linear: in_channels=-1 initialises lazily at the first call
            self.lin_in = LazyLinear(in_channels, channels)
        else:
            self.register_module("lin_in", None)
        self.pos_proj = Linear(pos_dim, channels)
        self.qkv = Linear(channels, 3 * channels)
        self.gate = Linear(channels, len(self.branches) * heads)
        self.out = Linear(channels, channels)
        # qkv and gate run as one GEMM; zero rows pad its outputs to a multiple of 8 so
        # that the rows of every slice of it stay 16-byte aligned (fast GEMM paths)
        pad = -(3 * channels + self.gate.out_features) % 8
        self.register_buffer("qkvg_pad_weight", torch.zeros(pad, channels), persistent=False)
        self.register_buffer("qkvg_pad_bias", torch.zeros(pad), persistent=False)
        if "local" in self.branches:
            self.sigma = Parameter(torch.empty(heads))
        else:
            self.register_parameter("sigma", None)
        if compressed_bias and self.needs_compression:
            self.sigma_cmp = Parameter(torch.empty(heads))
        elif compressed_bias:
            raise ValueError("compressed_bias needs the 'compressed' or 'selected' branch")
        else:
            self.register_parameter("sigma_cmp", None)
        if self.needs_compression:
            # DeepSets summary phi of a block (keys and values together)
            self.phi_in = Linear(2 * channels, 2 * channels)
            self.phi_pos = Linear(pos_dim, 2 * channels, bias=False)
            self.phi_out_k = Linear(channels, channels)
            self.phi_out_v = Linear(channels, channels)
        self.reset_parameters()

    @property
    def needs_compression(self) -> bool:
        """Whether a branch needs the block summaries (compressed or
        selected)."""
        return "compressed" in self.branches or "selected" in self.branches

    def reset_parameters(self):
        """Resets all learnable parameters (:math:`\\sigma_h` to
        :obj:`dist_bias_init`)."""
        for module in self.children():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for sigma in (self.sigma, self.sigma_cmp):
            if sigma is not None:
                with torch.no_grad():
                    sigma.fill_(self.dist_bias_init)

    def _check(
        self, x: Tensor, pos: Tensor, batch: Optional[Tensor], tree: Optional[TreeLayout]
    ) -> None:
        if not isinstance(x, Tensor) or not isinstance(pos, Tensor):
            raise TypeError("'x' and 'pos' must be tensors")
        width = self.in_channels
        if x.dim() != 2 or (width != -1 and x.size(1) != width):
            shape = f"[num_points, {width}]" if width != -1 else "[num_points, in_channels]"
            raise ValueError(f"'x' must have shape {shape} (got {tuple(x.shape)})")
        if pos.dim() != 2 or pos.size(1) != self.pos_dim:
            raise ValueError(
                f"'pos' must have shape [num_points, {self.pos_dim}] (got {tuple(pos.shape)})"
            )
        if pos.size(0) != x.size(0):
            raise ValueError(f"'x' has {x.size(0)} points but 'pos' has {pos.size(0)}")
        if batch is not None and batch.numel() != x.size(0):
            raise ValueError(f"'batch' has {batch.numel()} entries but 'x' has {x.size(0)} points")
        if not x.is_floating_point() or not pos.is_floating_point():
            raise TypeError(f"'x' and 'pos' must be floating point (got {x.dtype} and {pos.dtype})")
        if x.device != pos.device or (batch is not None and batch.device != x.device):
            raise ValueError("'x', 'pos' and 'batch' must be on one device")
        check_feature_dtype(x, self.qkv.weight, "layer")
        check_no_pos_grad(pos)
        if tree is not None:
            if not isinstance(tree, TreeLayout):
                raise TypeError(f"'tree' must be a TreeLayout (got {type(tree).__name__})")
            if tree.num_points != x.size(0):
                raise ValueError(
                    f"the tree does not match these points: it holds {tree.num_points} "
                    f"points but 'x' has {x.size(0)}"
                )
            if tree.ball_size < self.ball_size:
                raise ValueError(
                    f"the tree was built with ball_size="
                    f"{tree.ball_size} < the layer's "
                    f"{self.ball_size}"
                )
            if tree.device != x.device:
                raise ValueError(f"the tree is on {tree.device} but x on {x.device}")

    def geometry(
        self, pos: Tensor, tree: TreeLayout, dtype: torch.dtype = torch.float32
    ) -> SlotGeometry:
        """The :class:`SlotGeometry` of this layer's ball and block sizes on
        :obj:`tree`; layers of equal sizes on one layout share it (the model
        computes it once per forward and tree).  :obj:`dtype` is the position
        dtype: float32, or float64 for float64 models."""
        return slot_geometry(tree, pos, self.ball_size, self.compress_size, dtype)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        tree: Optional[TreeLayout] = None,
        geometry: Optional[SlotGeometry] = None,
    ) -> Tensor:
        """Runs the layer.

        Args:
            x (torch.Tensor): ``[N, F_in]`` point features.
            pos (torch.Tensor): ``[N, P]`` positions (no gradient flows to them).
            batch (torch.Tensor, optional): ``[N]`` sorted cloud index.
            tree (TreeLayout, optional): a precomputed layout with
                ``ball_size >= self.ball_size`` (built from :obj:`pos` and
                :obj:`batch` when omitted).  It is checked against :obj:`pos` and
                :obj:`batch`: a tree of other points, clouds or positions raises "the tree
                does not match these points" (on CUDA a device-side assert).
            geometry (SlotGeometry, optional): :meth:`geometry` of
                :obj:`pos` on :obj:`tree`, if already computed.  The caller vouches
                for the tree then: it is not checked again
                (:class:`~torch_geometric_nsa.nn.models.ErwinNSA` checks its trees once
                per forward).

        Returns:
            torch.Tensor: ``[N, C]`` in input order.
        """
        self._check(x, pos, batch, tree)
        if tree is None:
            if geometry is not None:
                raise ValueError("a 'geometry' needs the 'tree' it was computed on")
            tree = build_ball_tree(pos, batch, ball_size=self.ball_size)
        elif geometry is None:
            check_tree(tree, pos, batch)
        if geometry is None:
            geometry = self.geometry(pos, tree, pos_dtype(x.dtype))
        xs = tree.gather(x, zero_pads=True)  # pads are never read: the gradient is a plain gather
        return tree.scatter(self.forward_slots(xs, geometry.pos, tree, geometry))

    def forward_slots(
        self, xs: Tensor, ps: Tensor, tree: TreeLayout, geometry: Optional[SlotGeometry] = None
    ) -> Tensor:
        """The layer on slot-ordered inputs ``[S, F_in]``, ``[S, P]``; returns
        ``[S, C]`` (pad rows are unspecified).  :obj:`ps` is ignored when
        :obj:`geometry` is given."""
        if self.lin_in is not None:
            xs = self.lin_in(xs)
        S, H, D, C = xs.size(0), self.heads, self.head_dim, self.channels
        mask = tree.mask
        m, c = self.ball_size, self.compress_size
        if geometry is None:
            geometry = slot_geometry_of_slots(ps, mask, m, c, pos_dtype(xs.dtype))
        elif (geometry.ball_size, geometry.compress_size) != (m, c):
            raise ValueError(
                f"the geometry was computed for ball_size="
                f"{geometry.ball_size}, compress_size="
                f"{geometry.compress_size}, the layer uses "
                f"{m}, {c}"
            )
        # positions stay in at least float32 (distances of a bf16 cloud
        # would lose their low bits); features enter in the model's dtype
        xs = xs + small_linear(geometry.ball_offset, self.pos_proj, xs.dtype)
        # q, k, v and the gate logits from one GEMM (one launch forward, two backward)
        weight = torch.cat([self.qkv.weight, self.gate.weight, self.qkvg_pad_weight])
        qkvg = F.linear(xs, weight, torch.cat([self.qkv.bias, self.gate.bias, self.qkvg_pad_bias]))
        qkv, gate_logits = qkvg[:, : 3 * C], qkvg[:, 3 * C : 3 * C + self.gate.out_features]
        # one copy makes q, k and v contiguous (the kernels need them so)
        q, k, v = qkv.view(S, 3, H, D).transpose(0, 1).contiguous().unbind(0)
        outs = []
        if self.needs_compression:
            kc, vc = self.compress(qkv[:, C:], geometry)
            block_mask = geometry.block_mask
            bias = None
            if self.sigma_cmp is not None:
                bias = ops.DistanceBias(self.sigma_cmp, geometry.pos, geometry.block_centre)
            o_cmp, lse = ops.compressed_attention(q, kc, vc, block_mask, tree.ptr, c, bias=bias)
            if "compressed" in self.branches:
                outs.append(o_cmp)
            if "selected" in self.branches:
                idx = ops.select_blocks(
                    q,
                    kc,
                    lse,
                    block_mask,
                    mask,
                    tree.ptr,
                    c,
                    self.select_size,
                    self.group_size,
                    self.topk,
                    bias=bias,
                )
                outs.append(
                    ops.selected_attention(q, k, v, mask, idx, self.select_size, self.group_size)
                )
        if "local" in self.branches:
            outs.append(ops.ball_attention(q, k, v, geometry.pos, mask, self.sigma.to(q.dtype), m))
        gates = torch.sigmoid(gate_logits).view(S, len(outs), H, 1)
        o = (torch.stack(outs, 1) * gates).sum(1)
        return self.out(o.view(S, C))

    def compress(self, kv: Tensor, geometry: SlotGeometry) -> Tuple[Tensor, Tensor]:
        r"""The block summaries :math:`\phi`: ``[S/c, H, D]`` keys and values
        from ``kv [S, 2C]`` (keys then values of every slot)."""
        H, D = self.heads, self.head_dim
        c = self.compress_size
        h = self.phi_in(kv)
        h = F.gelu(h + small_linear(geometry.block_offset, self.phi_pos, h.dtype))
        w = geometry.block_weight.to(h.dtype)
        h = (h.view(-1, c, h.size(-1)) * w).sum(1) / geometry.block_count.to(h.dtype)
        # phi_out_k on the key half, phi_out_v on the value half: one batched GEMM
        k_out, v_out = self.phi_out_k, self.phi_out_v
        weight = torch.stack([k_out.weight, v_out.weight]).transpose(1, 2)
        bias = torch.stack([k_out.bias, v_out.bias]).unsqueeze(1)
        kc, vc = torch.baddbmm(bias, h.view(-1, 2, self.channels).transpose(0, 1), weight)
        return kc.view(-1, H, D), vc.view(-1, H, D)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, ball_size={self.ball_size}, "
            f"compress_size={self.compress_size}, "
            f"select_size={self.select_size}, topk={self.topk}, "
            f"branches={self.branches}"
            + (", compressed_bias=True" if self.sigma_cmp is not None else "")
            + ")"
        )

r"""Attention ops of Erwin NSA (Natively trainable Sparse Attention over ball trees).

Four functions over packed point clouds in ball-tree slot order (see
:class:`torch_geometric_nsa.tree.TreeLayout`): the local :func:`ball_attention`, the
:func:`compressed_attention` over block summaries, the top-k :func:`select_blocks` and the
block-sparse :func:`selected_attention`. They combine the three branches of NSA
(`Yuan et al., "Native Sparse Attention" <https://arxiv.org/abs/2502.11089>`_) with the ball
attention of Erwin (`Zhdanov et al., "Erwin: A Tree-based Hierarchical Transformer for
Large-scale Physical Systems" <https://arxiv.org/abs/2502.17019>`_).

All tensors are in slot order: ``S`` slots, ``H`` heads, head dim ``D`` (``>= 8``), ``P``
spatial dims. Sizes are powers of two: block size ``c`` divides ball size ``m``; select size
``s`` is a multiple of ``c`` and divides ``m``; group size ``g`` divides ``m``. ``scale``
defaults to ``1 / sqrt(D)``.

Each public function validates shapes (cheaply, without host synchronisation) and then
dispatches to a backend:

* ``"auto"`` (default): the Triton kernels of :mod:`torch_geometric_nsa.kernels` for CUDA
  tensors when they are importable, otherwise the pure-PyTorch reference;
* ``"triton"``: always the kernels (CPU tensors need ``TRITON_INTERPRET=1``);
* ``"reference"``: always :mod:`torch_geometric_nsa.ops.reference`.

Select it with :func:`set_backend` or, temporarily, with the :func:`use_backend` context manager.
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from . import reference  # noqa: F401 -- ops.reference, the specification
from ._checks import (
    check_bias,
    check_device,
    check_divides,
    check_dtype,
    check_ptr,
    check_qkv,
    check_scale,
    check_shape,
    check_size,
)
from ._dispatch import BACKENDS, _impl, get_backend, set_backend, use_backend
from .reference import DistanceBias

__all__ = [
    "DistanceBias",
    "ball_attention",
    "compressed_attention",
    "select_blocks",
    "selected_attention",
    "set_backend",
    "get_backend",
    "use_backend",
    "BACKENDS",
]


# --------------------------------------------------------------------------------------------
def ball_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    mask: Tensor,
    sigma: Tensor,
    ball_size: int,
    scale: Optional[float] = None,
) -> Tensor:
    r"""Local attention inside each ball of the tree, with Erwin's distance bias
    (`Erwin <https://arxiv.org/abs/2502.17019>`_, the "sliding" branch of
    `NSA <https://arxiv.org/abs/2502.11089>`_ replaced by the ball).

    Query :math:`i` in ball :math:`b = \lfloor i / m \rfloor` attends to the real keys of its ball:

    .. math::
        s_{ij} = \text{scale} \cdot \langle q_i, k_j \rangle
                 + \sigma_h \, \lVert p_i - p_j \rVert_2, \qquad
        o_i = \sum_{j \in b,\ \text{mask}_j} \operatorname{softmax}_j(s_{ij}) \, v_j .

    Rows without a real key give :math:`o_i = 0`. Differentiable in ``q``, ``k``, ``v``,
    ``sigma``; ``pos`` is treated as a constant.

    Args:
        q (torch.Tensor): queries ``[S, H, D]``.
        k (torch.Tensor): keys ``[S, H, D]``.
        v (torch.Tensor): values ``[S, H, D]``.
        pos (torch.Tensor): slot positions ``[S, P]``.
        mask (torch.Tensor): ``[S]`` bool, ``True`` for real slots, ``False`` for pads.
        sigma (torch.Tensor): per-head distance weight ``[H]``.
        ball_size (int): ball size ``m`` (power of two dividing ``S``).
        scale (float, optional): score scale. (default: ``1 / sqrt(D)``)

    Returns:
        torch.Tensor: ``o [S, H, D]`` in the dtype of ``q``.
    """
    fn = "ball_attention"
    check_qkv(fn, q, ("k", k), ("v", v))
    S, H, D = q.shape
    check_shape(fn, "k", k, (S, H, D), "[S, H, D]")
    check_shape(fn, "v", v, (S, H, D), "[S, H, D]")
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[0] != S or pos.shape[1] < 1:
        raise ValueError(
            f"{fn}: 'pos' must have shape [S, P] with S = {S}, P >= 1 "
            f"(got {list(pos.shape) if isinstance(pos, Tensor) else pos!r})"
        )
    check_dtype(fn, "pos", pos, "float")
    check_shape(fn, "mask", mask, (S,), "[S]")
    check_dtype(fn, "mask", mask, "bool")
    check_shape(fn, "sigma", sigma, (H,), "[H]")
    check_dtype(fn, "sigma", sigma, "float")
    check_size("ball_size", ball_size)
    check_divides("ball_size", ball_size, "S", S)
    check_scale(fn, scale)
    check_device(fn, q, ("k", k), ("v", v), ("pos", pos), ("mask", mask), ("sigma", sigma))
    return _impl(fn, q, ball_size=ball_size)(q, k, v, pos, mask, sigma, ball_size, scale)


def compressed_attention(
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    block_mask: Tensor,
    ptr: Tensor,
    block_size: int,
    scale: Optional[float] = None,
    *,
    bias: Optional[DistanceBias] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Attention of every query to the compressed blocks of its own cloud (the "compressed"
    branch of `NSA <https://arxiv.org/abs/2502.11089>`_, non-causal, one cloud per segment).

    Block :math:`\beta` covers slots :math:`[\beta c, (\beta + 1) c)`; query :math:`i` of cloud
    :math:`b` attends to the blocks :math:`\beta \in [\text{ptr}_b / c, \text{ptr}_{b+1} / c)`
    with ``block_mask[beta]``:

    .. math::
        o_i = \sum_\beta \operatorname{softmax}_\beta
              (\text{scale} \cdot \langle q_i, \tilde k_\beta \rangle) \, \tilde v_\beta ,
        \qquad
        \text{lse}_i = \log \sum_\beta \exp(\text{scale} \cdot \langle q_i, \tilde k_\beta \rangle).

    With a :class:`DistanceBias` ``bias = (sigma, pos, centre)`` every score gains
    :math:`\sigma_h \lVert p_i - c_\beta \rVert` (query position to a point of the block,
    e.g. its centroid), so that queries can weight blocks by distance, as the local branch
    does inside a ball (computed in the kernels, distances in float32).

    Rows without a valid block (also tail slots ``i >= ptr[B]`` of a capacity layout) give
    :math:`o_i = 0`, :math:`\text{lse}_i = -\infty`. Differentiable in ``q``, ``kc``, ``vc``
    (and ``bias.sigma``); ``lse`` is not differentiable.

    Args:
        q (torch.Tensor): queries ``[S, H, D]``.
        kc (torch.Tensor): compressed keys ``[S // c, H, D]``.
        vc (torch.Tensor): compressed values ``[S // c, H, D]``.
        block_mask (torch.Tensor): ``[S // c]`` bool, ``True`` for blocks holding a real slot.
        ptr (torch.Tensor): slot offsets of the clouds ``[B + 1]`` (int64).
        block_size (int): compression block size ``c`` (power of two dividing ``S``).
        scale (float, optional): score scale. (default: ``1 / sqrt(D)``)
        bias (DistanceBias, optional): ``(sigma [H], pos [S, P], centre [S // c, P])``, a
            distance bias on the scores. (default: :obj:`None`)

    Returns:
        (torch.Tensor, torch.Tensor): ``o [S, H, D]`` in the dtype of ``q`` and
        ``lse [S, H]`` (``float32``; ``float64`` for ``float64`` inputs).
    """
    fn = "compressed_attention"
    check_qkv(fn, q, ("kc", kc), ("vc", vc))
    S, H, D = q.shape
    check_size("block_size", block_size)
    check_divides("block_size", block_size, "S", S)
    nc = S // block_size
    check_shape(fn, "kc", kc, (nc, H, D), "[S // block_size, H, D]")
    check_shape(fn, "vc", vc, (nc, H, D), "[S // block_size, H, D]")
    check_shape(fn, "block_mask", block_mask, (nc,), "[S // block_size]")
    check_dtype(fn, "block_mask", block_mask, "bool")
    check_ptr(fn, ptr)
    check_scale(fn, scale)
    check_device(fn, q, ("kc", kc), ("vc", vc), ("block_mask", block_mask), ("ptr", ptr))
    check_bias(fn, bias, q, nc)
    if bias is None:
        return _impl(fn, q)(q, kc, vc, block_mask, ptr, block_size, scale)
    return _impl(fn, q)(q, kc, vc, block_mask, ptr, block_size, scale, bias=DistanceBias(*bias))


def select_blocks(
    q: Tensor,
    kc: Tensor,
    lse: Tensor,
    block_mask: Tensor,
    mask: Tensor,
    ptr: Tensor,
    block_size: int,
    select_size: int,
    group_size: int,
    topk: int,
    scale: Optional[float] = None,
    *,
    bias: Optional[DistanceBias] = None,
) -> Tensor:
    r"""Top-k selection blocks per query group, scored by the compressed attention
    probabilities (the blockwise selection of `NSA <https://arxiv.org/abs/2502.11089>`_, with
    spatial query groups in place of GQA groups).

    .. math::
        p_{i,h,\beta} = \exp(\text{scale} \cdot \langle q_i, \tilde k_\beta \rangle
                             - \text{lse}_{i,h}), \qquad
        \text{imp}(G, \gamma) = \sum_{i \in G,\ \text{mask}_i} \sum_h
                               \sum_{\beta \subseteq \gamma} p_{i,h,\beta},

    over the valid blocks :math:`\beta` of :math:`i`'s cloud (as in
    :func:`compressed_attention`); group :math:`G = \lfloor i / g \rfloor`, selection block
    :math:`\gamma` covers slots :math:`[\gamma s, (\gamma + 1) s)`. The candidates of
    :math:`G` are the selection blocks of its cloud holding at least one real slot.
    ``idx[G]`` holds the ``topk`` candidates of largest importance (ties go to the smaller
    :math:`\gamma`) as *global* selection-block indices, sorted ascending, then ``-1`` padding
    when there are fewer than ``topk`` candidates. Groups without a real query are all ``-1``.
    Not differentiable.

    Args:
        q (torch.Tensor): queries ``[S, H, D]``.
        kc (torch.Tensor): compressed keys ``[S // c, H, D]``.
        lse (torch.Tensor): ``[S, H]`` log-sum-exp returned by :func:`compressed_attention`.
        block_mask (torch.Tensor): ``[S // c]`` bool, compressed blocks holding a real slot.
        mask (torch.Tensor): ``[S]`` bool, real slots.
        ptr (torch.Tensor): slot offsets of the clouds ``[B + 1]`` (int64).
        block_size (int): compression block size ``c``.
        select_size (int): selection block size ``s`` (a multiple of ``c``).
        group_size (int): query group size ``g`` (``1`` = per-query selection).
        topk (int): number of selected blocks per group (may exceed the number of candidates).
        scale (float, optional): score scale. (default: ``1 / sqrt(D)``)
        bias (DistanceBias, optional): the distance bias the compressed scores were computed
            with (:func:`compressed_attention`); the probabilities are those of the biased
            scores. (default: :obj:`None`)

    Returns:
        torch.Tensor: ``idx [S // g, topk]`` int64.
    """
    fn = "select_blocks"
    check_qkv(fn, q, ("kc", kc))
    S, H, D = q.shape
    for name, val in (
        ("block_size", block_size),
        ("select_size", select_size),
        ("group_size", group_size),
    ):
        check_size(name, val)
        check_divides(name, val, "S", S)
    check_divides("block_size", block_size, "select_size", select_size)
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ValueError(f"{fn}: 'topk' must be a positive int (got {topk!r})")
    nc = S // block_size
    check_shape(fn, "kc", kc, (nc, H, D), "[S // block_size, H, D]")
    check_shape(fn, "lse", lse, (S, H), "[S, H]")
    check_dtype(fn, "lse", lse, "float")
    check_shape(fn, "block_mask", block_mask, (nc,), "[S // block_size]")
    check_dtype(fn, "block_mask", block_mask, "bool")
    check_shape(fn, "mask", mask, (S,), "[S]")
    check_dtype(fn, "mask", mask, "bool")
    check_ptr(fn, ptr)
    check_scale(fn, scale)
    check_device(
        fn, q, ("kc", kc), ("lse", lse), ("block_mask", block_mask), ("mask", mask), ("ptr", ptr)
    )
    check_bias(fn, bias, q, nc)
    args = (q, kc, lse, block_mask, mask, ptr, block_size, select_size, group_size, topk, scale)
    if bias is None:
        return _impl(fn, q)(*args)
    return _impl(fn, q)(*args, bias=DistanceBias(*bias))


def selected_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    idx: Tensor,
    select_size: int,
    group_size: int,
    scale: Optional[float] = None,
) -> Tensor:
    r"""Block-sparse attention of every query group to its selected blocks (the "selected"
    branch of `NSA <https://arxiv.org/abs/2502.11089>`_).

    Query :math:`i` in group :math:`G = \lfloor i / g \rfloor` attends to the real keys of the
    selection blocks listed in ``idx[G]`` (entries ``>= 0``):

    .. math::
        o_i = \sum_{j:\ \lfloor j / s \rfloor \in \text{idx}_G,\ \text{mask}_j}
              \operatorname{softmax}_j(\text{scale} \cdot \langle q_i, k_j \rangle) \, v_j .

    Rows without a valid key give :math:`o_i = 0`. Differentiable in ``q``, ``k``, ``v``.
    ``idx`` entries should be distinct (as :func:`select_blocks` returns them).

    Args:
        q (torch.Tensor): queries ``[S, H, D]``.
        k (torch.Tensor): keys ``[S, H, D]``.
        v (torch.Tensor): values ``[S, H, D]``.
        mask (torch.Tensor): ``[S]`` bool, real slots.
        idx (torch.Tensor): ``[S // g, topk]`` int64 global selection-block indices, ``-1`` = none.
        select_size (int): selection block size ``s``.
        group_size (int): query group size ``g``.
        scale (float, optional): score scale. (default: ``1 / sqrt(D)``)

    Returns:
        torch.Tensor: ``o [S, H, D]`` in the dtype of ``q``.
    """
    fn = "selected_attention"
    check_qkv(fn, q, ("k", k), ("v", v))
    S, H, D = q.shape
    check_shape(fn, "k", k, (S, H, D), "[S, H, D]")
    check_shape(fn, "v", v, (S, H, D), "[S, H, D]")
    check_shape(fn, "mask", mask, (S,), "[S]")
    check_dtype(fn, "mask", mask, "bool")
    for name, val in (("select_size", select_size), ("group_size", group_size)):
        check_size(name, val)
        check_divides(name, val, "S", S)
    if (
        not isinstance(idx, Tensor)
        or idx.dim() != 2
        or idx.shape[0] != S // group_size
        or idx.shape[1] < 1
    ):
        raise ValueError(
            f"{fn}: 'idx' must have shape [S // group_size, topk] = "
            f"[{S // group_size}, topk >= 1] "
            f"(got {list(idx.shape) if isinstance(idx, Tensor) else idx!r})"
        )
    check_dtype(fn, "idx", idx, "int")
    check_scale(fn, scale)
    check_device(fn, q, ("k", k), ("v", v), ("mask", mask), ("idx", idx))
    return _impl(fn, q, select_size=select_size)(q, k, v, mask, idx, select_size, group_size, scale)

r"""Pure-PyTorch reference of the Erwin NSA attention branches: the specification.

Every function here is the executable form of ``docs/design/contracts.md`` ("Attention ops");
the Triton kernels in :mod:`torch_geometric_nsa.kernels` are tested against it. The code favours
readability over speed but keeps three promises:

* **float64-capable**: everything works (and is gradchecked) in double precision;
* **no host synchronisation**: no ``.item()``, ``.tolist()``, ``nonzero`` or boolean-mask
  indexing; every shape is a function of input *shapes* only, so
  ``torch.compile(fullgraph=True)`` traces each function;
* **bounded memory**: never an ``[S, S]`` tensor. Work is chunked over balls / queries / query
  groups with Python-int chunk sizes so that each chunk's largest intermediate holds at most
  :data:`MAX_CHUNK_ELEMENTS` elements.

Conventions shared by all functions (``S`` slots, ``H`` heads, ``D`` head dim, tree/slot order):

* Masking uses :func:`_masked_softmax`: invalid keys get probability exactly ``0``; a row without
  any valid key gets all-zero probabilities (so its output is exactly ``0``) and ``lse = -inf``,
  with finite gradients in backward (no ``NaN``), also in fully-masked rows.
* Precision: by default scores, softmax and the weighted sum are computed in the input dtype
  (this is the "reference in the same dtype" that kernel errors are compared to). With
  ``upcast=True`` they are computed in ``float32`` (``float64`` inputs stay ``float64``). The
  output is returned in the dtype of ``q``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "DistanceBias",
    "ball_attention",
    "compressed_attention",
    "select_blocks",
    "selected_attention",
    "MAX_CHUNK_ELEMENTS",
]

#: Upper bound on the number of elements of a chunk's largest intermediate (score tensor,
#: gathered keys, ...). Tests lower it to exercise chunk boundaries.
MAX_CHUNK_ELEMENTS: int = 2**25


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _chunk(elements_per_item: int, num_items: int) -> int:
    """Number of items per chunk so that a chunk holds at most ``MAX_CHUNK_ELEMENTS``."""
    return max(1, min(num_items, MAX_CHUNK_ELEMENTS // max(1, elements_per_item)))


def _compute_dtype(dtype: torch.dtype, upcast: bool) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32) if upcast else dtype


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of statistics (lse, importance): float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked_softmax(scores: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Softmax over the last dim restricted to ``valid`` entries.

    Returns ``(probs, lse)``: ``probs`` has the shape of ``scores`` and is exactly ``0`` at
    invalid entries and in rows without any valid entry; ``lse`` (``scores.shape[:-1]``,
    detached) is the natural log of the softmax denominator, ``-inf`` for empty rows.

    The row maximum is detached (softmax is shift invariant, so this leaves the gradient
    unchanged) and replaced by ``0`` in empty rows, so ``exp(-inf - 0) = 0`` and the backward
    pass never sees ``inf - inf`` or ``0 / 0``.
    """
    scores = scores.masked_fill(~valid, float("-inf"))
    row_max = scores.detach().amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    nonempty = denom > 0
    probs = e / torch.where(nonempty, denom, torch.ones_like(denom))
    d = denom.detach()
    lse = torch.where(
        nonempty,
        row_max + torch.log(torch.where(nonempty, d, torch.ones_like(d))),
        torch.full_like(d, float("-inf")),
    )
    return probs, lse.squeeze(-1)


def _slot_cloud_bounds(ptr: Tensor, num_slots: int) -> Tuple[Tensor, Tensor, Tensor]:
    """For every slot: ``(in_cloud [S] bool, start [S] long, end [S] long)``.

    ``start``/``end`` are the slot offsets ``ptr[b]``, ``ptr[b+1]`` of the slot's cloud ``b``
    (found with :func:`torch.searchsorted`, no host sync). Slots outside ``[ptr[0], ptr[B])``
    (tail slots of a capacity layout) have ``in_cloud = False`` and an empty range.
    """
    ptr = ptr.to(torch.long).contiguous()
    num_clouds = ptr.numel() - 1
    slots = torch.arange(num_slots, device=ptr.device, dtype=torch.long)
    cloud = torch.searchsorted(ptr, slots, right=True) - 1  # in [-1, B]
    in_cloud = (cloud >= 0) & (cloud < num_clouds)
    cloud = cloud.clamp(0, max(num_clouds - 1, 0))
    start = torch.where(in_cloud, ptr[cloud], torch.zeros_like(cloud))
    end = torch.where(in_cloud, ptr[cloud + 1], torch.zeros_like(cloud))
    return in_cloud, start, end


class DistanceBias(NamedTuple):
    r"""A per-head distance bias on the compressed scores: block :math:`\beta` gets
    :math:`\sigma_h \lVert p_i - c_\beta \rVert` added to query :math:`i`'s score in head
    :math:`h` (:func:`compressed_attention`, and the same scores in :func:`select_blocks`).

    ``sigma [H]`` is differentiable; ``pos [S, P]`` (slot positions) and ``centre [S // c, P]``
    (a point of every compression block, e.g. the centroid of its real slots) are constants.
    """

    sigma: Tensor
    pos: Tensor
    centre: Tensor


def _bias_slice(bias: Optional[DistanceBias], a: int, b: int, c: int) -> Optional[DistanceBias]:
    """The bias of the slots ``[a, b)`` (and their blocks)."""
    if bias is None:
        return None
    return DistanceBias(bias.sigma, bias.pos[a:b], bias.centre[a // c : b // c])


def _add_bias(scores: Tensor, bias: Optional[DistanceBias], rows: slice) -> Tensor:
    """``scores [Q, H, nc]`` of the query slots ``rows`` plus the distance bias (the distance in
    the positions' dtype, then in the scores' dtype, as :func:`ball_attention`)."""
    if bias is None:
        return scores
    pos, centre = bias.pos.detach()[rows], bias.centre.detach()
    dist = (pos[:, None, :] - centre[None, :, :]).square().sum(-1).sqrt().to(scores.dtype)
    return scores + bias.sigma.to(scores.dtype).view(1, -1, 1) * dist[:, None, :]


# --------------------------------------------------------------------------------------------
# 1. local ball attention
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
    *,
    upcast: bool = False,
) -> Tensor:
    r"""Reference of the local (ball) branch.

    Specification: ``docs/design/contracts.md`` ("Attention ops"); formula and arguments in
    :func:`torch_geometric_nsa.ops.ball_attention`.

    Shapes: ``q, k, v [S, H, D]``, ``pos [S, P]``, ``mask [S]``, ``sigma [H]`` -> ``o [S, H, D]``.
    ``pos`` is a constant (detached). The distance is computed in ``pos.dtype`` and then cast
    to the compute dtype.
    """
    S, H, D = q.shape
    m = ball_size
    nb = S // m
    P = pos.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = _compute_dtype(q.dtype, upcast)

    qb = q.to(cdt).reshape(nb, m, H, D)
    kb = k.to(cdt).reshape(nb, m, H, D)
    vb = v.to(cdt).reshape(nb, m, H, D)
    pb = pos.detach().reshape(nb, m, P)
    key_valid = mask.reshape(nb, 1, 1, m)  # [nb, 1 (head), 1 (query), m (key)]
    sig = sigma.to(cdt).reshape(1, H, 1, 1)

    per_ball = m * m * max(H, P) + m * H * D
    cb = _chunk(per_ball, nb)
    outs = []
    for b0 in range(0, nb, cb):
        sl = slice(b0, b0 + cb)
        scores = torch.einsum("bihd,bjhd->bhij", qb[sl], kb[sl]) * scale  # [cb, H, m, m]
        diff = pb[sl, :, None, :] - pb[sl, None, :, :]  # [cb, m, m, P]
        dist = diff.square().sum(-1).sqrt().to(cdt)  # [cb, m, m]
        scores = scores + sig * dist[:, None, :, :]
        probs, _ = _masked_softmax(scores, key_valid[sl])
        outs.append(torch.einsum("bhij,bjhd->bihd", probs, vb[sl]))  # [cb, m, H, D]
    return torch.cat(outs, dim=0).reshape(S, H, D).to(q.dtype)


# --------------------------------------------------------------------------------------------
# 2. compressed attention
# --------------------------------------------------------------------------------------------
def _cloud_ranges(ptr: Tensor, q: Tensor):
    """Slot ranges of the clouds when it pays to handle them one by one: eager
    CPU calls on several clouds (reading ``ptr`` costs no device sync there).
    The masked all-clouds form costs O(S^2 / c) over the whole batch instead of
    per cloud; both give the same numbers."""
    if q.is_cuda or ptr.numel() <= 2 or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    return ptr.tolist()


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
    upcast: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""Reference of the compressed branch.

    Specification: ``docs/design/contracts.md`` ("Attention ops"); formula and arguments in
    :func:`torch_geometric_nsa.ops.compressed_attention`.

    Shapes: ``q [S, H, D]``, ``kc, vc [S // c, H, D]``, ``block_mask [S // c]``, ``ptr [B + 1]``
    -> ``o [S, H, D]`` (dtype of ``q``), ``lse [S, H]`` (``float64`` for ``float64`` inputs,
    else ``float32``; detached). Rows without a valid block (also tail slots ``i >= ptr[B]``):
    ``o = 0``, ``lse = -inf``.
    """
    ranges = _cloud_ranges(ptr, q)
    if ranges is None:
        return _compressed_attention(
            q, kc, vc, block_mask, ptr, block_size, scale, bias=bias, upcast=upcast
        )
    c = block_size
    o = torch.zeros_like(q)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=_stat_dtype(q.dtype), device=q.device)
    for a, b in zip(ranges[:-1], ranges[1:]):
        if b > a:
            local = torch.tensor([0, b - a], device=ptr.device)
            o[a:b], lse[a:b] = _compressed_attention(
                q[a:b],
                kc[a // c : b // c],
                vc[a // c : b // c],
                block_mask[a // c : b // c],
                local,
                c,
                scale,
                bias=_bias_slice(bias, a, b, c),
                upcast=upcast,
            )
    return o, lse


def _compressed_attention(
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    block_mask: Tensor,
    ptr: Tensor,
    block_size: int,
    scale: Optional[float] = None,
    *,
    bias: Optional[DistanceBias] = None,
    upcast: bool = False,
) -> Tuple[Tensor, Tensor]:
    """All clouds at once, other clouds masked (static shapes: compile-friendly)."""
    S, H, D = q.shape
    c = block_size
    nc = kc.shape[0]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = _compute_dtype(q.dtype, upcast)

    in_cloud, start, end = _slot_cloud_bounds(ptr, S)
    beta = torch.arange(nc, device=q.device)
    qc = q.to(cdt)
    kcc = kc.to(cdt)
    # Non-finite values stay in their cloud: a masked probability is exactly 0, but 0 * NaN is
    # NaN, so every other cloud's row would pick them up in the weighted sum.  They enter the sum
    # as 0 and mark, instead, the rows that really attend to them (output NaN).
    v_bad = ~torch.isfinite(vc).all(-1)  # [nc, H]
    vcc = torch.where(v_bad[..., None], torch.zeros((), dtype=cdt, device=q.device), vc.to(cdt))

    cq = _chunk(H * nc + H * D + (0 if bias is None else nc * bias.pos.shape[-1]), S)
    outs, lses = [], []
    for i0 in range(0, S, cq):
        sl = slice(i0, i0 + cq)
        valid = (
            in_cloud[sl, None]
            & (beta[None, :] >= start[sl, None] // c)
            & (beta[None, :] < end[sl, None] // c)
            & block_mask[None, :]
        )  # [cq, nc]
        scores = torch.einsum("ihd,jhd->ihj", qc[sl], kcc) * scale  # [cq, H, nc]
        scores = _add_bias(scores, bias, sl)
        probs, lse = _masked_softmax(scores, valid[:, None, :])
        o = torch.einsum("ihj,jhd->ihd", probs, vcc)
        attends_bad = (valid.float() @ v_bad.float()) > 0  # [cq, H]
        outs.append(torch.where(attends_bad[..., None], float("nan"), o))
        lses.append(lse)
    o = torch.cat(outs, dim=0).to(q.dtype)
    lse = torch.cat(lses, dim=0).to(_stat_dtype(q.dtype)).detach()
    return o, lse


# --------------------------------------------------------------------------------------------
# 3. block selection
# --------------------------------------------------------------------------------------------
@torch.no_grad()
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
    r"""Reference of the top-k block selection.

    Specification: ``docs/design/contracts.md`` ("Attention ops"); formula and arguments in
    :func:`torch_geometric_nsa.ops.select_blocks`.

    Shapes: ``q [S, H, D]``, ``kc [S // c, H, D]``, ``lse [S, H]``, ``block_mask [S // c]``,
    ``mask [S]``, ``ptr [B + 1]`` -> ``idx [S // g, topk]`` (int64).

    Computed in ``float32`` (``float64`` for ``float64`` inputs), whatever the input dtype.
    Candidates of group ``G`` are the selection blocks of its cloud holding a real slot (and
    only if ``G`` holds a real query). They are ranked by a stable descending sort of the
    importance (ties -> smaller ``gamma``); the first ``min(topk, #candidates)`` are returned
    sorted ascending, followed by ``-1`` padding. ``p`` is ``0`` for invalid blocks and where
    ``lse`` is not finite.
    """
    args = (block_size, select_size, group_size, topk, scale)
    ranges = _cloud_ranges(ptr, q)
    if ranges is None:
        return _select_blocks(q, kc, lse, block_mask, mask, ptr, *args, bias=bias)
    c, s, g = block_size, select_size, group_size
    idx = torch.full((q.shape[0] // g, topk), -1, dtype=torch.long, device=q.device)
    for a, b in zip(ranges[:-1], ranges[1:]):
        if b > a:
            local = torch.tensor([0, b - a], device=ptr.device)
            part = _select_blocks(
                q[a:b],
                kc[a // c : b // c],
                lse[a:b],
                block_mask[a // c : b // c],
                mask[a:b],
                local,
                *args,
                bias=_bias_slice(bias, a, b, c),
            )
            idx[a // g : b // g] = torch.where(part >= 0, part + a // s, part)
    return idx


def _select_blocks(
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
    """All clouds at once, other clouds masked (static shapes: compile-friendly)."""
    S, H, D = q.shape
    c, s, g = block_size, select_size, group_size
    nc, ns, ng = S // c, S // s, S // g
    r = s // c  # compressed blocks per selection block
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    adt = _stat_dtype(q.dtype)
    dev = q.device

    in_cloud, start, end = _slot_cloud_bounds(ptr, S)
    beta = torch.arange(nc, device=dev)
    gamma = torch.arange(ns, device=dev)
    sel_has_real = mask.reshape(ns, s).any(dim=1)  # [ns]
    group_has_real = mask.reshape(ng, g).any(dim=1)  # [ng]
    # cloud of a group = cloud of its first slot (g divides the ball size, so groups never
    # straddle clouds)
    g_in, g_start, g_end = in_cloud[::g], start[::g], end[::g]

    qa = q.to(adt)
    kca = kc.to(adt)
    lsea = lse.to(adt)
    k_out = min(topk, ns)

    P = 0 if bias is None else bias.pos.shape[-1]
    cg = _chunk(g * H * nc + g * H * D + ns + g * nc * P, ng)
    outs = []
    for g0 in range(0, ng, cg):
        gs = slice(g0, g0 + cg)
        qs = slice(g0 * g, (g0 + cg) * g)
        valid = (
            in_cloud[qs, None]
            & (beta[None, :] >= start[qs, None] // c)
            & (beta[None, :] < end[qs, None] // c)
            & block_mask[None, :]
        )  # [Qc, nc]
        scores = torch.einsum("ihd,jhd->ihj", qa[qs], kca) * scale  # [Qc, H, nc]
        scores = _add_bias(scores, bias, qs)
        lse_c = lsea[qs, :, None]
        keep = valid[:, None, :] & torch.isfinite(lse_c)
        p = torch.where(keep, torch.exp(scores - lse_c), torch.zeros_like(scores))
        w = p.sum(dim=1) * mask[qs, None].to(adt)  # [Qc, nc], real queries only
        num_g = w.shape[0] // g
        imp = w.reshape(num_g, g, ns, r).sum(dim=(1, 3))  # [Gc, ns]

        cand = (
            (g_in[gs] & group_has_real[gs])[:, None]
            & (gamma[None, :] >= g_start[gs, None] // s)
            & (gamma[None, :] < g_end[gs, None] // s)
            & sel_has_real[None, :]
        )  # [Gc, ns]
        key = torch.where(cand, imp, torch.full_like(imp, float("-inf")))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k_out]
        chosen = torch.where(cand.gather(1, order), order, torch.full_like(order, ns))
        chosen = torch.sort(chosen, dim=1).values  # ascending, sentinel ns last
        outs.append(torch.where(chosen == ns, torch.full_like(chosen, -1), chosen))
    idx = torch.cat(outs, dim=0)
    if topk > k_out:
        pad = torch.full((ng, topk - k_out), -1, dtype=idx.dtype, device=dev)
        idx = torch.cat([idx, pad], dim=1)
    return idx


# --------------------------------------------------------------------------------------------
# 4. selected attention
# --------------------------------------------------------------------------------------------
def selected_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    idx: Tensor,
    select_size: int,
    group_size: int,
    scale: Optional[float] = None,
    *,
    upcast: bool = False,
) -> Tensor:
    r"""Reference of the selected branch.

    Specification: ``docs/design/contracts.md`` ("Attention ops"); formula and arguments in
    :func:`torch_geometric_nsa.ops.selected_attention`.

    Shapes: ``q, k, v [S, H, D]``, ``mask [S]``, ``idx [S // g, topk]`` -> ``o [S, H, D]``.
    Entries of ``idx`` outside ``[0, S // s)`` (the ``-1`` padding) are ignored. Entries are
    expected to be distinct (a repeated block would be counted twice).
    """
    S, H, D = q.shape
    s, g = select_size, group_size
    ns, ng = S // s, S // g
    kk = idx.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cdt = _compute_dtype(q.dtype, upcast)
    dev = q.device

    idx = idx.to(torch.long)
    blk_valid = (idx >= 0) & (idx < ns)  # [ng, kk]
    blk = idx.clamp(0, max(ns - 1, 0))
    slots = (blk[:, :, None] * s + torch.arange(s, device=dev)).reshape(ng, kk * s)
    key_valid = blk_valid.repeat_interleave(s, dim=1) & mask[slots]  # [ng, kk * s]

    qg = q.to(cdt).reshape(ng, g, H, D)
    kcd = k.to(cdt)
    vcd = v.to(cdt)

    cg = _chunk(kk * s * H * max(g, D), ng)
    outs = []
    for g0 in range(0, ng, cg):
        sl = slice(g0, g0 + cg)
        sel = slots[sl]  # [Gc, kk * s]
        ks = kcd[sel]  # [Gc, kk * s, H, D]
        # the -1 padding gathers some other block, maybe of another cloud: its values enter as 0
        # (a probability of exactly 0 times a non-finite value would still be NaN)
        vs = torch.where(
            key_valid[sl][:, :, None, None], vcd[sel], torch.zeros((), dtype=cdt, device=dev)
        )
        scores = torch.einsum("gqhd,gkhd->ghqk", qg[sl], ks) * scale  # [Gc, H, g, kk * s]
        probs, _ = _masked_softmax(scores, key_valid[sl][:, None, None, :])
        outs.append(torch.einsum("ghqk,gkhd->gqhd", probs, vs))  # [Gc, g, H, D]
    return torch.cat(outs, dim=0).reshape(S, H, D).to(q.dtype)

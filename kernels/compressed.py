"""Compressed attention: varlen flash attention of queries against their cloud's compressed blocks.

Query ``i`` in cloud ``b`` attends to the compressed keys ``beta`` in ``[ptr[b]//c, ptr[b+1]//c)``
with ``block_mask[beta]``.  The cloud range of every slot is looked up in a per-slot table
(``lo``/``hi`` in compressed-block units) built with ``torch.searchsorted`` (no host sync).  A tile
whose rows all lie in one cloud (the common case) masks with one additive 0 / ``-inf`` bias per key;
only a tile that straddles clouds masks every row by its own range.  Returns ``o`` and the
natural-log LSE (float32; ``-inf`` and ``o = 0`` for rows without a valid block).  The backward
recomputes the probabilities: dQ per query tile (it also writes ``delta = rowsum(dO * O)``),
dKc/dVc per compressed-key tile on transposed ``[keys, queries]`` tiles, looping over the queries of
that key's cloud; no atomics, deterministic.

Non-finite values stay in their cloud: every tile reads the compressed values with their
non-finite blocks zeroed (a probability of 0 times NaN would otherwise reach every row of a tile
that spans clouds), and a row whose own cloud has such a real block is written as NaN, read from
a cumulative count of those blocks (two loads per row after the loop; the loop is unchanged).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._common import LOG2E as _LOG2E
from ._common import (
    as_u8,
    bias_tensors,
    check_float_inputs,
    cloud_block_ranges,
    custom_ops_with_eager_path,
    dot_precision,
    head_block,
    launch,
    num_pos,
)
from ._tl import (
    LOG2E,
    M_INIT,
    dkdv_step,
    key_bias,
    lse2,
    pair_dist,
    softmax_step,
    store_softmax,
)


@triton.jit
def _row_ranges(LO, HI, rows, rmask, NC):
    """Per-row cloud range ``[lo, hi)`` of a tile, its union ``[blo, bhi)`` and whether the rows
    differ in range (``mixed``): a tile of one cloud needs only a per-column mask."""
    lo = tl.load(LO + rows, mask=rmask, other=NC)
    hi = tl.load(HI + rows, mask=rmask, other=0)
    blo = tl.min(lo, 0)
    bhi = tl.max(hi, 0)
    mixed = (blo != tl.max(lo, 0)) | (bhi != tl.min(hi, 0))
    return lo, hi, blo, bhi, mixed


@triton.jit
def _cmp_fwd_kernel(
    Q,
    KC,
    VC_SAFE,
    BAD_CS,
    BMASK,
    LO,
    HI,
    POS,
    CPOS,
    SIGMA,
    O,
    LSE,
    S,
    NC,
    H,
    D,
    qk_scale,
    P: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
    FOLD: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < S
    lo, hi, blo, bhi, mixed = _row_ranges(LO, HI, rows, rmask, NC)
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    q = tl.load(
        Q + rows[:, None] * stride + h * D + d[None, :],
        mask=rmask[:, None] & dmask[None, :],
        other=0.0,
    )
    m_i = tl.full([BM], M_INIT, dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    if P > 0:  # the distance bias, in the base-2 units of the scaled scores
        sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    for bstart in range(blo, bhi, BN):
        cols = bstart + tl.arange(0, BN)
        cmask = cols < bhi
        kv_off = cols.to(tl.int64)[:, None] * stride + h * D + d[None, :]
        kvm = cmask[:, None] & dmask[None, :]
        k = tl.load(KC + kv_off, mask=kvm, other=0.0)
        v = tl.load(VC_SAFE + kv_off, mask=kvm, other=0.0)
        # column mask as an additive bias (0 / -inf); the row ranges only where rows differ
        cbias = key_bias(BMASK, cols, cmask)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        if P > 0:  # scaled here (the bias is added to scaled scores), masks after the scale
            s = s * qk_scale + sig * pair_dist(POS, rows, CPOS, cols, rmask, cmask, P)
        s += cbias[None, :]
        if mixed:
            s = tl.where(
                (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), s, float("-inf")
            )
        if P > 0:
            m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, 1.0, PREC, True)
        else:  # raw scores
            m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, qk_scale, PREC, FOLD)
    # The values are read with non-finite blocks zeroed (a probability of 0 times a non-finite
    # value of another cloud would still be NaN); a row whose own cloud has such a real block
    # attends to it and becomes NaN: BAD_CS [H, NC] counts those blocks cumulatively.
    n_hi = tl.load(BAD_CS + h * NC + hi - 1, mask=rmask & (hi > 0), other=0)
    n_lo = tl.load(BAD_CS + h * NC + lo - 1, mask=rmask & (lo > 0), other=0)
    acc = tl.where((n_hi > n_lo)[:, None], float("nan"), acc)
    store_softmax(O, LSE, rows, rmask, h, H, D, d, dmask, m_i, l_i, acc)


@triton.jit
def _cmp_bwd_dq_kernel(
    Q,
    KC,
    VC,
    BMASK,
    LO,
    HI,
    POS,
    CPOS,
    SIGMA,
    O,
    DO,
    LSE,
    DELTA,
    DQ,
    DSIG,
    S,
    NC,
    H,
    D,
    qk_scale,
    scale,
    P: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    # delta = rowsum(dO * O) in fp32, written for the dK/dV kernel (runs first)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < S
    lo, hi, blo, bhi, mixed = _row_ranges(LO, HI, rows, rmask, NC)
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    q_off = rows[:, None] * stride + h * D + d[None, :]
    qm = rmask[:, None] & dmask[None, :]
    q = tl.load(Q + q_off, mask=qm, other=0.0)
    do = tl.load(DO + q_off, mask=qm, other=0.0)
    lse = lse2(LSE, rows, rmask, h, H)
    o = tl.load(O + q_off, mask=qm, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + rows * H + h, delta, mask=rmask)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    # dsigma of a row is sum_b P dS dist = sum P dP dist - (sum P dP)(sum P dist): the
    # covariance form, free of delta, whose rounding (O is stored in 16 bits) would otherwise be
    # multiplied by the row's mean distance, which is large and of one sign
    pdp_dist = tl.zeros([BM], dtype=tl.float32)
    pdp = tl.zeros([BM], dtype=tl.float32)
    p_dist = tl.zeros([BM], dtype=tl.float32)
    if P > 0:
        sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    for bstart in range(blo, bhi, BN):
        cols = bstart + tl.arange(0, BN)
        cmask = cols < bhi
        kv_off = cols.to(tl.int64)[:, None] * stride + h * D + d[None, :]
        kvm = cmask[:, None] & dmask[None, :]
        k = tl.load(KC + kv_off, mask=kvm, other=0.0)
        v = tl.load(VC + kv_off, mask=kvm, other=0.0)
        cbias = key_bias(BMASK, cols, cmask)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale + cbias[None, :]
        if P > 0:
            dist = pair_dist(POS, rows, CPOS, cols, rmask, cmask, P)
            s += sig * dist
        if mixed:
            s = tl.where(
                (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None]), s, float("-inf")
            )
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        if P > 0:
            pdp_dist += tl.sum(p * dp * dist, 1)
            pdp += tl.sum(p * dp, 1)
            p_dist += tl.sum(p * dist, 1)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=qm)
    if P > 0:  # one partial per (query tile, head); summed on the host (deterministic)
        tl.store(DSIG + pid * H + h, tl.sum(pdp_dist - pdp * p_dist, 0))


@triton.jit
def _cmp_bwd_dkdv_kernel(
    Q,
    KC,
    VC,
    BMASK,
    LO,
    HI,
    POS,
    CPOS,
    SIGMA,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    S,
    NC,
    H,
    D,
    C,
    qk_scale,
    scale,
    P: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    # Transposed tiles ([keys, queries]): P^T and dS^T feed the dK/dV dots as they are, with no
    # register transpose.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    cols = pid.to(tl.int64) * BN + tl.arange(0, BN)
    cmask = cols < NC
    # query range of each key's cloud: slots [lo*C, hi*C) of the key's first slot
    _, _, kblo, kbhi, mixed = _row_ranges(LO, HI, cols * C, cmask, NC)
    qlo = kblo.to(tl.int64) * C
    qhi = kbhi.to(tl.int64) * C
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    kv_off = cols[:, None] * stride + h * D + d[None, :]
    kvm = cmask[:, None] & dmask[None, :]
    k = tl.load(KC + kv_off, mask=kvm, other=0.0)
    v = tl.load(VC + kv_off, mask=kvm, other=0.0)
    kbias = key_bias(BMASK, cols, cmask)
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    if P > 0:
        sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    for qstart in range(qlo, qhi, BM):
        rows = qstart + tl.arange(0, BM)
        rmask = rows < qhi
        q_off = rows[:, None] * stride + h * D + d[None, :]
        qm = rmask[:, None] & dmask[None, :]
        q = tl.load(Q + q_off, mask=qm, other=0.0)
        do = tl.load(DO + q_off, mask=qm, other=0.0)
        lse = lse2(LSE, rows, rmask, h, H)
        delta = tl.load(DELTA + rows * H + h, mask=rmask, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale + kbias[:, None]
        if P > 0:
            st += sig * pair_dist(CPOS, cols, POS, rows, cmask, rmask, P)
        if mixed:  # keys of several clouds: every query row keeps its own cloud's keys
            lo = tl.load(LO + rows, mask=rmask, other=NC)
            hi = tl.load(HI + rows, mask=rmask, other=0)
            st = tl.where(
                (cols[:, None] >= lo[None, :]) & (cols[:, None] < hi[None, :]), st, float("-inf")
            )
        pt = tl.exp2(st - lse[None, :])
        dk, dv, _dst = dkdv_step(pt, q, do, v, delta, dk, dv, PREC)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kvm)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kvm)


def _cmp_fwd_impl(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    block_mask: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pos: torch.Tensor,
    centre: torch.Tensor,
    sigma: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    NC = kc.shape[0]
    o = torch.empty_like(q)
    lse = torch.empty((S, H), device=q.device, dtype=torch.float32)
    if S == 0:
        return o, lse
    cfg = _config.for_tensor("cmp_fwd", q, block_m, block_n, num_warps, num_stages)
    # non-finite compressed values: zeroed for the kernel, counted per real block (see the kernel)
    vc_bad = (block_mask != 0).unsqueeze(-1) > torch.isfinite(vc).all(-1)  # [NC, H]
    vc_safe = vc.masked_fill(vc_bad.unsqueeze(-1), 0)
    # counted along the blocks as [H, NC]: a scan over the inner dim (over the outer dim of
    # [NC, H], CUDA's scan runs one thread per head through all NC blocks, ~0.2 ms at 64k)
    bad_cs = vc_bad.t().cumsum(-1, dtype=torch.int32).contiguous()
    launch(_cmp_fwd_kernel, (triton.cdiv(S, cfg["BM"]), H))(
        q,
        kc,
        vc_safe,
        bad_cs,
        block_mask,
        lo,
        hi,
        pos,
        centre,
        sigma,
        o,
        lse,
        S,
        NC,
        H,
        D,
        scale * _LOG2E,
        P=num_pos(pos),
        BM=cfg["BM"],
        BN=cfg["BN"],
        BD=head_block(D),
        PREC=dot_precision(q.dtype),
        FOLD=scale > 0,
        **_config.launch_meta(cfg),
    )
    return o, lse


def _cmp_fwd_fake(
    q,
    kc,
    vc,
    block_mask,
    lo,
    hi,
    pos,
    centre,
    sigma,
    scale,
    block_m,
    block_n,
    num_warps,
    num_stages,
):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def _cmp_bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    block_mask: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pos: torch.Tensor,
    centre: torch.Tensor,
    sigma: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    NC = kc.shape[0]
    do = do.contiguous()
    dq = torch.empty_like(q)
    P = num_pos(pos)
    if S == 0 or NC == 0:
        return dq.zero_(), torch.zeros_like(kc), torch.zeros_like(vc), torch.zeros_like(sigma)
    C = S // NC
    delta = torch.empty((S, H), device=q.device, dtype=torch.float32)  # written by the dq kernel
    common = dict(BD=head_block(D), PREC=dot_precision(q.dtype), P=P)
    cfg = _config.for_tensor("cmp_bwd_dq", q, block_m, block_n, num_warps, num_stages)
    tiles = triton.cdiv(S, cfg["BM"])
    dsig = torch.empty((tiles, H) if P else (0,), device=q.device, dtype=torch.float32)
    launch(_cmp_bwd_dq_kernel, (tiles, H))(
        q,
        kc,
        vc,
        block_mask,
        lo,
        hi,
        pos,
        centre,
        sigma,
        o,
        do,
        lse,
        delta,
        dq,
        dsig,
        S,
        NC,
        H,
        D,
        scale * _LOG2E,
        scale,
        BM=cfg["BM"],
        BN=cfg["BN"],
        **common,
        **_config.launch_meta(cfg),
    )
    cfg = _config.for_tensor("cmp_bwd_dkdv", q, block_m, block_n, num_warps, num_stages)
    dk, dv = torch.empty_like(kc), torch.empty_like(vc)
    launch(_cmp_bwd_dkdv_kernel, (triton.cdiv(NC, cfg["BN"]), H))(
        q,
        kc,
        vc,
        block_mask,
        lo,
        hi,
        pos,
        centre,
        sigma,
        do,
        lse,
        delta,
        dk,
        dv,
        S,
        NC,
        H,
        D,
        C,
        scale * _LOG2E,
        scale,
        BM=cfg["BM"],
        BN=cfg["BN"],
        **common,
        **_config.launch_meta(cfg),
    )
    dsigma = dsig.sum(0).to(sigma.dtype) if P else torch.zeros_like(sigma)
    return dq, dk, dv, dsigma


def _cmp_bwd_fake(
    do,
    q,
    kc,
    vc,
    block_mask,
    lo,
    hi,
    pos,
    centre,
    sigma,
    o,
    lse,
    scale,
    block_m,
    block_n,
    num_warps,
    num_stages,
):
    return (
        torch.empty_like(q),
        torch.empty_like(kc),
        torch.empty_like(vc),
        torch.empty_like(sigma),
    )


def _cmp_setup(ctx, inputs, output):
    q, kc, vc, block_mask, lo, hi, pos, centre, sigma = inputs[:9]
    o, lse = output
    ctx.save_for_backward(q, kc, vc, block_mask, lo, hi, pos, centre, sigma, o, lse)
    ctx.args = inputs[9:]  # scale and the launch options
    ctx.mark_non_differentiable(lse)


compressed_attention_fwd, compressed_attention_bwd, _cmp_fwd = custom_ops_with_eager_path(
    "tgnsa::compressed_attention_fwd",
    _cmp_fwd_impl,
    _cmp_fwd_fake,
    bwd_impl=_cmp_bwd_impl,
    bwd_fake=_cmp_bwd_fake,
    setup_context=_cmp_setup,
    grad_inputs=(0, 1, 2, 8),  # q, kc, vc, sigma
)


def compressed_attention(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    block_mask: torch.Tensor,
    ptr: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    *,
    bias=None,
    block_m: int = 0,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Attention of every query to the compressed blocks of its own cloud, Triton kernels.

    Args:
        q: ``[S, H, D]``.
        kc, vc: ``[S // c, H, D]`` compressed keys / values.
        block_mask: ``[S // c]`` bool, block holds at least one real slot.
        ptr: ``[B + 1]`` int64 slot offsets of the clouds.
        block_size: ``c``.
        scale: default ``1/sqrt(D)``.
        bias: optional ``(sigma [H], pos [S, P], centre [S // c, P])``
            (:class:`torch_geometric_nsa.ops.DistanceBias`): every score gains
            ``sigma_h * ||pos_i - centre_beta||`` (distances in float32); differentiable in sigma.
        block_m, block_n, num_warps, num_stages: launch options of every kernel (0: from the
            config table, ``torch_geometric_nsa.kernels._config``).

    Returns:
        ``(o [S, H, D], lse [S, H] float32)``; ``lse`` is not differentiable.
    """
    check_float_inputs(q, kc, vc)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    S = q.shape[0]
    lo, hi = cloud_block_ranges(ptr, S, int(block_size))
    return _cmp_fwd(
        q.contiguous(),
        kc.contiguous(),
        vc.contiguous(),
        as_u8(block_mask),
        lo,
        hi,
        *bias_tensors(bias, q),
        float(scale),
        int(block_m),
        int(block_n),
        int(num_warps),
        int(num_stages),
    )

"""Local ball attention with the in-kernel distance bias (forward and backward).

Query ``i`` in ball ``b = i // m`` attends to the real keys of its ball with the score
``scale * <q_i, k_j> + sigma_h * ||pos_i - pos_j||``.  A program handles a tile of ``BM`` queries of
one ball and one head and streams over the ball's keys in tiles of ``BN`` (online softmax).  The bias
is computed from positions in registers; no ``[m, m]`` tensor is ever written.  The backward runs two
kernels (dK/dV per key tile, dQ per query tile), both closed over the ball, so no atomics are used;
``dsigma`` is reduced from per-program partials with a deterministic torch sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._common import LOG2E as _LOG2E
from ._common import (
    as_u8,
    check_float_inputs,
    check_sizes,
    custom_ops_with_eager_path,
    dot_precision,
    head_block,
    launch,
)
from ._tl import LOG2E, M_INIT, dq_step, key_bias, lse2, pair_dist, softmax_step, store_softmax


@triton.jit
def _ball_fwd_kernel(
    Q,
    K,
    V,
    POS,
    MASK,
    SIGMA,
    O,
    LSE,
    S,
    H,
    D,
    BALL,
    qk_scale,
    P: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = pid.to(tl.int64) * BM
    ball_start = (start // BALL) * BALL
    rows = start + tl.arange(0, BM)
    rmask = rows < S
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    q = tl.load(
        Q + rows[:, None] * stride + h * D + d[None, :],
        mask=rmask[:, None] & dmask[None, :],
        other=0.0,
    )
    sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    m_i = tl.full([BM], M_INIT, dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    for kstart in range(0, BALL, BN):
        cols = ball_start + kstart + tl.arange(0, BN)
        cmask = cols < S
        kv_off = cols[:, None] * stride + h * D + d[None, :]
        kvm = cmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvm, other=0.0)
        v = tl.load(V + kv_off, mask=kvm, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s += sig * pair_dist(POS, rows, POS, cols, rmask, cmask, P)
        s += key_bias(MASK, cols, cmask)[None, :]
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, 1.0, PREC, True)  # s is scaled
    store_softmax(O, LSE, rows, rmask, h, H, D, d, dmask, m_i, l_i, acc)


@triton.jit
def _ball_bwd_dkdv_kernel(
    Q,
    K,
    V,
    POS,
    MASK,
    SIGMA,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    DSIG,
    S,
    H,
    D,
    BALL,
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
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = pid.to(tl.int64) * BN
    ball_start = (start // BALL) * BALL
    cols = start + tl.arange(0, BN)
    cmask = cols < S
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    kv_off = cols[:, None] * stride + h * D + d[None, :]
    kvm = cmask[:, None] & dmask[None, :]
    k = tl.load(K + kv_off, mask=kvm, other=0.0)
    v = tl.load(V + kv_off, mask=kvm, other=0.0)
    kbias = key_bias(MASK, cols, cmask)
    sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    dsig = tl.zeros([BN], dtype=tl.float32)
    for qstart in range(0, BALL, BM):
        rows = ball_start + qstart + tl.arange(0, BM)
        rmask = rows < S
        q_off = rows[:, None] * stride + h * D + d[None, :]
        qm = rmask[:, None] & dmask[None, :]
        q = tl.load(Q + q_off, mask=qm, other=0.0)
        do = tl.load(DO + q_off, mask=qm, other=0.0)
        lse = lse2(LSE, rows, rmask, h, H)
        delta = tl.load(DELTA + rows * H + h, mask=rmask, other=0.0)
        dist = pair_dist(POS, cols, POS, rows, cmask, rmask, P)  # [keys, queries]
        st = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale + sig * dist + kbias[:, None]
        pt = tl.exp2(st - lse[None, :])
        # inline, not dkdv_step: dsig before the dK dot keeps `dist` out of the dK dot's live
        # range (the helper's order made the kernel 1.3x slower on an H100)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
        dst = pt * (dpt - delta[None, :])
        dsig += tl.sum(dst * dist, 1)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kvm)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kvm)
    tl.store(DSIG + pid.to(tl.int64) * H + h, tl.sum(dsig, 0))


@triton.jit
def _ball_bwd_dq_kernel(
    Q,
    K,
    V,
    POS,
    MASK,
    SIGMA,
    DO,
    LSE,
    DELTA,
    DQ,
    S,
    H,
    D,
    BALL,
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
    # Two passes over the ball's keys: first delta_i = sum_j p_ij dp_ij (exact, in fp32, instead
    # of rowsum(dO * O) with a rounded O: dsigma is a cancellation-heavy sum that needs it),
    # written for the dK/dV kernel; then dq.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    start = pid.to(tl.int64) * BM
    ball_start = (start // BALL) * BALL
    rows = start + tl.arange(0, BM)
    rmask = rows < S
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    q_off = rows[:, None] * stride + h * D + d[None, :]
    qm = rmask[:, None] & dmask[None, :]
    q = tl.load(Q + q_off, mask=qm, other=0.0)
    do = tl.load(DO + q_off, mask=qm, other=0.0)
    lse = lse2(LSE, rows, rmask, h, H)
    sig = tl.load(SIGMA + h).to(tl.float32) * LOG2E
    delta = tl.zeros([BM], dtype=tl.float32)
    for kstart in range(0, BALL, BN):
        cols = ball_start + kstart + tl.arange(0, BN)
        cmask = cols < S
        kv_off = cols[:, None] * stride + h * D + d[None, :]
        kvm = cmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvm, other=0.0)
        v = tl.load(V + kv_off, mask=kvm, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s += sig * pair_dist(POS, rows, POS, cols, rmask, cmask, P)
        s += key_bias(MASK, cols, cmask)[None, :]
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        delta += tl.sum(p * dp, 1)
    tl.store(DELTA + rows * H + h, delta, mask=rmask)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    for kstart in range(0, BALL, BN):
        cols = ball_start + kstart + tl.arange(0, BN)
        cmask = cols < S
        kv_off = cols[:, None] * stride + h * D + d[None, :]
        kvm = cmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvm, other=0.0)
        v = tl.load(V + kv_off, mask=kvm, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s += sig * pair_dist(POS, rows, POS, cols, rmask, cmask, P)
        s += key_bias(MASK, cols, cmask)[None, :]
        p = tl.exp2(s - lse[:, None])
        dq = dq_step(p, do, v, k, delta, dq, PREC)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=qm)


# ----------------------------------------------------------------------------------------------
# launchers + custom ops
# ----------------------------------------------------------------------------------------------


def _tiles(kernel: str, m: int, q: torch.Tensor, *options: int):
    """``(BM, BN, launch keywords)`` of a ball kernel: the config's tiles, at most a ball."""
    cfg = _config.for_tensor(kernel, q, *options)
    return min(m, cfg["BM"]), min(m, cfg["BN"]), _config.launch_meta(cfg)


def _ball_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor,
    ball_size: int,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((S, H), device=q.device, dtype=torch.float32)
    if S == 0:
        return o, lse
    BM, BN, meta = _tiles("ball_fwd", ball_size, q, block_m, block_n, num_warps, num_stages)
    grid = (triton.cdiv(S, BM), H)
    launch(_ball_fwd_kernel, grid)(
        q,
        k,
        v,
        pos,
        mask,
        sigma,
        o,
        lse,
        S,
        H,
        D,
        ball_size,
        scale * _LOG2E,
        P=pos.shape[1],
        BM=BM,
        BN=BN,
        BD=head_block(D),
        PREC=dot_precision(q.dtype),
        **meta,
    )
    return o, lse


def _ball_fwd_fake(
    q, k, v, pos, mask, sigma, ball_size, scale, block_m, block_n, num_warps, num_stages
):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def _ball_bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    ball_size: int,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    do = do.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if S == 0:
        return dq, dk, dv, torch.zeros_like(sigma)
    delta = torch.empty((S, H), device=q.device, dtype=torch.float32)  # written by the dq kernel
    common = dict(P=pos.shape[1], BD=head_block(D), PREC=dot_precision(q.dtype))
    BM, BN, meta = _tiles("ball_bwd_dq", ball_size, q, block_m, block_n, num_warps, num_stages)
    launch(_ball_bwd_dq_kernel, (triton.cdiv(S, BM), H))(
        q,
        k,
        v,
        pos,
        mask,
        sigma,
        do,
        lse,
        delta,
        dq,
        S,
        H,
        D,
        ball_size,
        scale * _LOG2E,
        scale,
        BM=BM,
        BN=BN,
        **common,
        **meta,
    )
    BM, BN, meta = _tiles("ball_bwd_dkdv", ball_size, q, block_m, block_n, num_warps, num_stages)
    nkt = triton.cdiv(S, BN)
    dsig_part = torch.empty((nkt, H), device=q.device, dtype=torch.float32)
    launch(_ball_bwd_dkdv_kernel, (nkt, H))(
        q,
        k,
        v,
        pos,
        mask,
        sigma,
        do,
        lse,
        delta,
        dk,
        dv,
        dsig_part,
        S,
        H,
        D,
        ball_size,
        scale * _LOG2E,
        scale,
        BM=BM,
        BN=BN,
        **common,
        **meta,
    )
    dsigma = dsig_part.sum(0).to(sigma.dtype)
    return dq, dk, dv, dsigma


def _ball_bwd_fake(
    do, q, k, v, pos, mask, sigma, o, lse, ball_size, scale, block_m, block_n, num_warps, num_stages
):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(sigma)


def _ball_setup(ctx, inputs, output):
    q, k, v, pos, mask, sigma, ball_size, scale, block_m, block_n, num_warps, num_stages = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, pos, mask, sigma, o, lse)
    ctx.args = (ball_size, scale, block_m, block_n, num_warps, num_stages)
    ctx.mark_non_differentiable(lse)


ball_attention_fwd, ball_attention_bwd, _ball_fwd = custom_ops_with_eager_path(
    "tgnsa::ball_attention_fwd",
    _ball_fwd_impl,
    _ball_fwd_fake,
    bwd_impl=_ball_bwd_impl,
    bwd_fake=_ball_bwd_fake,
    setup_context=_ball_setup,
    grad_inputs=(0, 1, 2, 5),  # q, k, v, sigma
)


def ball_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    sigma: torch.Tensor,
    ball_size: int,
    scale: float | None = None,
    *,
    block_m: int = 0,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
) -> torch.Tensor:
    r"""Local ball attention with the distance bias, Triton kernels.

    Args:
        q, k, v: ``[S, H, D]`` in slot (tree) order, float32/float16/bfloat16.
        pos: ``[S, P]`` positions (a constant: no gradient).
        mask: ``[S]`` bool, real slot.
        sigma: ``[H]`` per-head bias weight (differentiable).
        ball_size: ``m`` (divides ``S``).
        scale: softmax scale, default ``1/sqrt(D)``.
        block_m, block_n: query / key tile sizes (0: from the config table, clipped to ``m``).
        num_warps, num_stages: launch options of every kernel (0: from the config table,
            ``torch_geometric_nsa.kernels._config``).

    Returns:
        ``o`` ``[S, H, D]`` (0 for rows with no real key in their ball).
    """
    check_float_inputs(q, k, v)
    check_sizes(ball_size=int(ball_size))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    o, _ = _ball_fwd(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        pos.detach().float().contiguous(),
        as_u8(mask),
        sigma.contiguous(),
        int(ball_size),
        float(scale),
        int(block_m),
        int(block_n),
        int(num_warps),
        int(num_stages),
    )
    return o

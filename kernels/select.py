"""Selection scoring + top-k per query group, fused and streaming (never an ``[S, S/c]`` matrix).

A program owns one query group ``G`` (``g`` slots).  It streams over the compressed blocks of the
group's cloud in chunks of ``BN`` blocks (whole selection blocks), recomputes for every head the
compressed-attention probabilities ``exp(scale <q_i, kc_beta> - lse_ih)`` of the group's real queries,
sums them over queries, heads and the compressed blocks of each selection block, and merges the
chunk's selection blocks into a running top-k held in registers.  The order is exact: every candidate
is a 64-bit key ``(float bits of the importance) << 32 | (2^31 - 1 - gamma)``, so equal importances
prefer the smaller ``gamma`` (the contract's tie rule).  Memory is O(S/g * topk).
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
    cloud_block_ranges,
    custom_ops_with_eager_path,
    dot_precision,
    group_block,
    head_block,
    launch,
    next_pow2,
    num_pos,
)
from ._tl import LOG2E, key_bias, lse2, pair_dist


@triton.jit
def _chunk_keys(imp, bstart, hi, SELVALID, R: tl.constexpr, NT: tl.constexpr):
    """Candidate keys of a chunk's selection blocks from the importances of
    its compressed blocks: ``bits(importance) << 32 | (2^31 - 1 - gamma)``,
    ``-1`` for invalid blocks."""
    simp = tl.sum(tl.reshape(imp, [NT, R]), 1)
    gam = bstart // R + tl.arange(0, NT)
    sv = (tl.load(SELVALID + gam, mask=gam < hi // R, other=0) != 0) & (gam < hi // R)
    bits = tl.cast(simp, tl.int32, bitcast=True).to(tl.int64)
    return tl.where(sv, (bits << 32) | (2147483647 - gam.to(tl.int64)), -1)


@triton.jit
def _merge_topk(top, ck, TOPK: tl.constexpr, KP: tl.constexpr):
    """The running top-k keys (descending in lanes < TOPK) merged with a chunk's candidates;
    merged only if a candidate beats the k-th best held (-1 while fewer than TOPK are held):
    the same result, and most chunks skip the TOPK reductions."""
    kk = tl.arange(0, KP)
    if tl.max(ck, 0) > tl.min(tl.where(kk < TOPK, top, 9223372036854775807), 0):
        new = tl.full([KP], -1, dtype=tl.int64)
        for t in tl.static_range(TOPK):
            mx = tl.maximum(tl.max(top, 0), tl.max(ck, 0))
            new = tl.where(kk == t, mx, new)
            top = tl.where(top == mx, -1, top)
            ck = tl.where(ck == mx, -1, ck)
        top = new
    return top


@triton.jit
def _select_kernel(
    Q,
    KC,
    LSE,
    BMASK,
    MASK,
    SELVALID,
    LO,
    HI,
    POS,
    CPOS,
    SIGMA,
    OUT,
    S,
    H,
    D,
    GS,
    qk_scale,
    P: tl.constexpr,
    R: tl.constexpr,
    TOPK: tl.constexpr,
    KP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
):
    """One query group per program, heads one after another.  (Scoring all heads in one
    batched ``[H, g, D] x [H, D, BN]`` dot per chunk was correct but 1.6x slower on an H100.)"""
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    G = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, BM)
    rows = G * GS + r
    rmask = r < GS
    qreal = (tl.load(MASK + rows, mask=rmask, other=0) != 0) & rmask
    any_real = tl.max(qreal.to(tl.int32), 0) > 0
    lo = tl.load(LO + G * GS)
    hi = tl.load(HI + G * GS)
    hi_eff = tl.where(any_real, hi, lo)
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    NT: tl.constexpr = BN // R
    top = tl.full([KP], -1, dtype=tl.int64)
    for bstart in range(lo, hi_eff, BN):
        cols = bstart + tl.arange(0, BN)
        cmask = cols < hi
        # masks as additive biases: -inf for blocks without a real slot (columns) and +inf in the
        # subtracted LSE of pad queries and of rows without any block, so such p exp2 to 0
        cbias = key_bias(BMASK, cols, cmask)
        if P > 0:  # the compressed branch's distance bias, per head below
            dist = pair_dist(POS, rows, CPOS, cols, rmask, cmask, P)
        pacc = tl.zeros([BM, BN], dtype=tl.float32)  # summed over heads, then rows
        for h in range(H):
            q = tl.load(
                Q + rows[:, None] * stride + h * D + d[None, :],
                mask=rmask[:, None] & dmask[None, :],
                other=0.0,
            )
            k = tl.load(
                KC + cols.to(tl.int64)[:, None] * stride + h * D + d[None, :],
                mask=cmask[:, None] & dmask[None, :],
                other=0.0,
            )
            lse = lse2(LSE, rows, qreal, h, H)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale + cbias[None, :]
            if P > 0:
                s += (tl.load(SIGMA + h).to(tl.float32) * LOG2E) * dist
            pacc += tl.exp2(s - lse[:, None])
        top = _merge_topk(top, _chunk_keys(tl.sum(pacc, 0), bstart, hi, SELVALID, R, NT), TOPK, KP)
    tl.store(OUT + G * KP + tl.arange(0, KP), top)


def _select_impl(
    q: torch.Tensor,
    kc: torch.Tensor,
    lse: torch.Tensor,
    block_mask: torch.Tensor,
    mask: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    pos: torch.Tensor,
    centre: torch.Tensor,
    sigma: torch.Tensor,
    block_size: int,
    select_size: int,
    group_size: int,
    topk: int,
    scale: float,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    S, H, D = q.shape
    NG = S // group_size
    KP = next_pow2(max(topk, 1))
    if NG == 0 or topk == 0:
        return torch.full((NG, topk), -1, dtype=torch.int64, device=q.device)
    R = select_size // block_size
    BM = group_block(group_size)
    cfg = _config.for_tensor("select", q, 0, block_n, num_warps, num_stages)
    BN = max(cfg["BN"], R)
    selvalid = as_u8(mask.view(-1, select_size).any(1))
    keys = torch.empty((NG, KP), dtype=torch.int64, device=q.device)
    launch(_select_kernel, (NG,))(
        q,
        kc,
        lse,
        block_mask,
        mask,
        selvalid,
        lo,
        hi,
        pos,
        centre,
        sigma,
        keys,
        S,
        H,
        D,
        group_size,
        scale * _LOG2E,
        P=num_pos(pos),
        R=R,
        TOPK=topk,
        KP=KP,
        BM=BM,
        BN=BN,
        BD=head_block(D),
        PREC=dot_precision(q.dtype),
        **_config.launch_meta(cfg),
    )
    keys = keys[:, :topk]
    gam = torch.where(keys >= 0, 2147483647 - (keys & 0xFFFFFFFF), torch.iinfo(torch.int64).max)
    gam = gam.sort(1).values
    return torch.where(gam == torch.iinfo(torch.int64).max, -1, gam)


def _select_fake(
    q,
    kc,
    lse,
    block_mask,
    mask,
    lo,
    hi,
    pos,
    centre,
    sigma,
    block_size,
    select_size,
    group_size,
    topk,
    scale,
    block_n,
    num_warps,
    num_stages,
):
    return q.new_empty((q.shape[0] // group_size, topk), dtype=torch.int64)


select_blocks_op, _, _select = custom_ops_with_eager_path(
    "tgnsa::select_blocks", _select_impl, _select_fake
)


def select_blocks(
    q: torch.Tensor,
    kc: torch.Tensor,
    lse: torch.Tensor,
    block_mask: torch.Tensor,
    mask: torch.Tensor,
    ptr: torch.Tensor,
    block_size: int,
    select_size: int,
    group_size: int,
    topk: int,
    scale: float | None = None,
    *,
    bias=None,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
) -> torch.Tensor:
    r"""Top-k selection blocks per query group from the compressed-attention probabilities.

    Args:
        q: ``[S, H, D]``.
        kc: ``[S // c, H, D]`` compressed keys.
        lse: ``[S, H]`` float32, from compressed attention.
        block_mask: ``[S // c]`` bool, block holds at least one real slot.
        mask: ``[S]`` bool, real slot.
        ptr: ``[B + 1]`` int64 slot offsets of the clouds.
        block_size: ``c``.
        select_size: ``s``.
        group_size: ``g``.
        topk: ``k``.
        scale: default ``1/sqrt(D)``.
        bias: the compressed branch's distance bias ``(sigma, pos, centre)``, if it had one.
        block_n: compressed blocks per streamed chunk (0: from the config table).
        num_warps, num_stages: launch options (0: from the config table,
            ``torch_geometric_nsa.kernels._config``).

    Returns:
        ``idx`` ``[S // g, topk]`` int64 global selection-block indices, ascending, ``-1``-padded
        (no gradient).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    lo, hi = cloud_block_ranges(ptr, q.shape[0], int(block_size))
    with torch.no_grad():
        return _select(
            q.detach().contiguous(),
            kc.detach().contiguous(),
            lse.detach().float().contiguous(),
            as_u8(block_mask),
            as_u8(mask),
            lo,
            hi,
            *(t.detach() for t in bias_tensors(bias, q)),
            int(block_size),
            int(select_size),
            int(group_size),
            int(topk),
            float(scale),
            int(block_n),
            int(num_warps),
            int(num_stages),
        )

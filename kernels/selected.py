"""Selected (block-sparse) attention over the top-k selection blocks of each query group.

Forward / dQ: a program holds one query group (``g`` slots as the M rows, padded to 16) and one head
and streams over the group's ``topk`` selection blocks (``s`` slots each), gathering several blocks
into one key tile of ``BN`` rows.  dK/dV: a program holds one selection block (or a ``BN``-row piece
of it) and one head and loops over the query groups that chose the block, read from an inverse map
(CSR: blocks -> groups) built with a stable sort; several groups are gathered into one M tile.  Every
output element is written by exactly one program: no atomics, deterministic.
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
    group_block,
    head_block,
    launch,
    next_pow2,
    wide_offsets,
)
from ._tl import M_INIT, dkdv_step, dq_step, key_bias, lse2, softmax_step, store_softmax


@triton.jit
def _index(x, I64: tl.constexpr):
    """An index for offset arithmetic: int64 when ``I64`` (some tensor has 2**31 elements or
    more), else int32, whose address arithmetic is cheaper (3-5% on the selected forward)."""
    return x.to(tl.int64) if I64 else x.to(tl.int32)


@triton.jit
def _gather_keys(IDX, MASK, G, n0, TOPK, SEL, BN: tl.constexpr, I64: tl.constexpr):
    nl = n0 + tl.arange(0, BN)
    t = nl // SEL
    blk = tl.load(IDX + G * TOPK + t, mask=t < TOPK, other=-1)
    cols = _index(blk, I64) * SEL + nl % SEL
    ok = blk >= 0
    valid = ok & (tl.load(MASK + cols, mask=ok, other=0) != 0)
    return cols, ok, valid


@triton.jit
def _sel_fwd_kernel(
    Q,
    K,
    V,
    MASK,
    IDX,
    O,
    LSE,
    S,
    H,
    D,
    TOPK,
    SEL,
    GS,
    qk_scale,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
    FOLD: tl.constexpr,
    I64: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    G = _index(tl.program_id(0), I64)
    h = tl.program_id(1)
    r = tl.arange(0, BM)
    rows = G * GS + r
    rmask = r < GS
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
    for n0 in range(0, TOPK * SEL, BN):
        cols, ok, valid = _gather_keys(IDX, MASK, G, n0, TOPK, SEL, BN, I64)
        kv_off = cols[:, None] * stride + h * D + d[None, :]
        kvm = ok[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvm, other=0.0)
        v = tl.load(V + kv_off, mask=kvm, other=0.0)
        s = tl.where(valid[None, :], tl.dot(q, tl.trans(k), input_precision=PREC), float("-inf"))
        m_i, l_i, acc = softmax_step(s, v, m_i, l_i, acc, qk_scale, PREC, FOLD)
    store_softmax(O, LSE, rows, rmask, h, H, D, d, dmask, m_i, l_i, acc)


@triton.jit
def _sel_bwd_dq_kernel(
    Q,
    K,
    V,
    MASK,
    IDX,
    O,
    DO,
    LSE,
    DELTA,
    DQ,
    S,
    H,
    D,
    TOPK,
    SEL,
    GS,
    qk_scale,
    scale,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
    I64: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    G = _index(tl.program_id(0), I64)
    h = tl.program_id(1)
    r = tl.arange(0, BM)
    rows = G * GS + r
    rmask = r < GS
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    q_off = rows[:, None] * stride + h * D + d[None, :]
    qm = rmask[:, None] & dmask[None, :]
    q = tl.load(Q + q_off, mask=qm, other=0.0)
    do = tl.load(DO + q_off, mask=qm, other=0.0)
    lse = lse2(LSE, rows, rmask, h, H)
    o = tl.load(O + q_off, mask=qm, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # for the dK/dV kernel (runs next)
    tl.store(DELTA + rows * H + h, delta, mask=rmask)
    dq = tl.zeros([BM, BD], dtype=tl.float32)
    for n0 in range(0, TOPK * SEL, BN):
        cols, ok, valid = _gather_keys(IDX, MASK, G, n0, TOPK, SEL, BN, I64)
        kv_off = cols[:, None] * stride + h * D + d[None, :]
        kvm = ok[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvm, other=0.0)
        v = tl.load(V + kv_off, mask=kvm, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s += tl.where(valid, 0.0, float("-inf"))[None, :]
        p = tl.exp2(s - lse[:, None])
        dq = dq_step(p, do, v, k, delta, dq, PREC)
    tl.store(DQ + q_off, (dq * scale).to(DQ.dtype.element_ty), mask=qm)


@triton.jit
def _sel_bwd_dkdv_kernel(
    Q,
    K,
    V,
    MASK,
    OFF,
    GRP,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    S,
    H,
    D,
    SEL,
    GS,
    qk_scale,
    scale,
    GPI: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    PREC: tl.constexpr,
    I64: tl.constexpr,
):
    # float arguments arrive as fp32, fp64 or constexpr: kernels/_tl.py
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    pid = _index(tl.program_id(0), I64)  # key tile of BN rows (BN divides SEL)
    h = tl.program_id(1)
    cols = pid * BN + tl.arange(0, BN)
    gamma = (pid * BN) // SEL
    kbias = key_bias(MASK, cols, cols >= 0)
    d = tl.arange(0, BD)
    dmask = d < D
    stride = H * D
    kv_off = cols[:, None] * stride + h * D + d[None, :]
    kvm = dmask[None, :] & (cols[:, None] >= 0)
    k = tl.load(K + kv_off, mask=kvm, other=0.0)
    v = tl.load(V + kv_off, mask=kvm, other=0.0)
    e_lo = tl.load(OFF + gamma)
    e_hi = tl.load(OFF + gamma + 1)
    r = tl.arange(0, BM)
    dk = tl.zeros([BN, BD], dtype=tl.float32)
    dv = tl.zeros([BN, BD], dtype=tl.float32)
    for e0 in range(e_lo, e_hi, GPI):
        e = e0 + r // GS
        rmask = (e < e_hi) & (r < GPI * GS)
        grp = _index(tl.load(GRP + e, mask=rmask, other=0), I64)
        rows = grp * GS + r % GS
        q_off = rows[:, None] * stride + h * D + d[None, :]
        qm = rmask[:, None] & dmask[None, :]
        q = tl.load(Q + q_off, mask=qm, other=0.0)
        do = tl.load(DO + q_off, mask=qm, other=0.0)
        lse = lse2(LSE, rows, rmask, h, H)
        delta = tl.load(DELTA + rows * H + h, mask=rmask, other=0.0)
        # transposed tiles ([keys, queries]): no register transpose before the dK/dV dots
        st = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale + kbias[:, None]
        pt = tl.exp2(st - lse[None, :])
        dk, dv, _ = dkdv_step(pt, q, do, v, delta, dk, dv, PREC)
    tl.store(DK + kv_off, (dk * scale).to(DK.dtype.element_ty), mask=kvm)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kvm)


def inverse_map(idx: torch.Tensor, num_blocks: int):
    """CSR of the groups that chose each selection block: ``(off [num_blocks+1] int32, grp [E] int32)``.

    Built with a stable sort (groups ascending inside a block), no host sync.  ``-1`` entries are
    sorted to the end, past ``off[num_blocks]``.
    """
    NG, K = idx.shape
    flat = idx.reshape(-1)
    key = torch.where(flat >= 0, flat, num_blocks)
    skey, order = torch.sort(key, stable=True)
    grp = (order // max(K, 1)).to(torch.int32)
    off = torch.searchsorted(
        skey, torch.arange(num_blocks + 1, device=idx.device, dtype=skey.dtype)
    ).to(torch.int32)
    return off, grp


def _key_tile(block_n: int, s: int, topk: int) -> int:
    """Gathered key rows per step of the forward / dQ kernels (whole blocks when it exceeds s)."""
    return min(block_n, max(16, next_pow2(topk) * s))


def _sel_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    idx: torch.Tensor,
    select_size: int,
    group_size: int,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((S, H), device=q.device, dtype=torch.float32)
    NG, TOPK = idx.shape
    if S == 0 or NG == 0:
        return o, lse
    BM = group_block(group_size)
    cfg = _config.for_tensor("sel_fwd", q, 0, block_n, num_warps, num_stages, rows=BM)
    launch(_sel_fwd_kernel, (NG, H))(
        q,
        k,
        v,
        mask,
        idx,
        o,
        lse,
        S,
        H,
        D,
        TOPK,
        select_size,
        group_size,
        scale * _LOG2E,
        BM=BM,
        BN=_key_tile(cfg["BN"], select_size, TOPK),
        BD=head_block(D),
        PREC=dot_precision(q.dtype),
        FOLD=scale > 0,
        I64=wide_offsets(q, idx),
        **_config.launch_meta(cfg),
    )
    return o, lse


def _sel_fwd_fake(
    q, k, v, mask, idx, select_size, group_size, scale, block_m, block_n, num_warps, num_stages
):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def _sel_bwd_impl(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    idx: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    select_size: int,
    group_size: int,
    scale: float,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    S, H, D = q.shape
    NG, TOPK = idx.shape
    do = do.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if S == 0 or NG == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty((S, H), device=q.device, dtype=torch.float32)  # written by the dq kernel
    common = dict(BD=head_block(D), PREC=dot_precision(q.dtype), I64=wide_offsets(q, idx))
    BMG = group_block(group_size)
    cfg = _config.for_tensor("sel_bwd_dq", q, 0, block_n, num_warps, num_stages, rows=BMG)
    launch(_sel_bwd_dq_kernel, (NG, H))(
        q,
        k,
        v,
        mask,
        idx,
        o,
        do,
        lse,
        delta,
        dq,
        S,
        H,
        D,
        TOPK,
        select_size,
        group_size,
        scale * _LOG2E,
        scale,
        BM=BMG,
        BN=_key_tile(cfg["BN"], select_size, TOPK),
        **common,
        **_config.launch_meta(cfg),
    )
    off, grp = inverse_map(idx, S // select_size)
    # dK/dV: the key tile divides the selection block; the M tile gathers whole groups
    cfg = _config.for_tensor("sel_bwd_dkdv", q, block_m, 0, num_warps, num_stages)
    BNK = max(16, min(select_size, cfg["BN"]))
    BMK = max(BMG, cfg["BM"])
    launch(_sel_bwd_dkdv_kernel, (S // BNK, H))(
        q,
        k,
        v,
        mask,
        off,
        grp,
        do,
        lse,
        delta,
        dk,
        dv,
        S,
        H,
        D,
        select_size,
        group_size,
        scale * _LOG2E,
        scale,
        GPI=max(1, BMK // group_size),
        BM=BMK,
        BN=BNK,
        **common,
        **_config.launch_meta(cfg),
    )
    return dq, dk, dv


def _sel_bwd_fake(
    do,
    q,
    k,
    v,
    mask,
    idx,
    o,
    lse,
    select_size,
    group_size,
    scale,
    block_m,
    block_n,
    num_warps,
    num_stages,
):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _sel_setup(ctx, inputs, output):
    (
        q,
        k,
        v,
        mask,
        idx,
        select_size,
        group_size,
        scale,
        block_m,
        block_n,
        num_warps,
        num_stages,
    ) = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, mask, idx, o, lse)
    ctx.args = (select_size, group_size, scale, block_m, block_n, num_warps, num_stages)
    ctx.mark_non_differentiable(lse)


selected_attention_fwd, selected_attention_bwd, _sel_fwd = custom_ops_with_eager_path(
    "tgnsa::selected_attention_fwd",
    _sel_fwd_impl,
    _sel_fwd_fake,
    bwd_impl=_sel_bwd_impl,
    bwd_fake=_sel_bwd_fake,
    setup_context=_sel_setup,
)


def selected_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    idx: torch.Tensor,
    select_size: int,
    group_size: int,
    scale: float | None = None,
    *,
    block_m: int = 0,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
) -> torch.Tensor:
    r"""Block-sparse attention of each query group to its selected blocks, Triton kernels.

    Args:
        q, k, v: ``[S, H, D]``.
        mask: ``[S]`` bool (real slots; pads are never keys).
        idx: ``[S // g, topk]`` int64 global selection-block indices, ``-1`` = none.
        select_size: ``s``; group_size: ``g``.
        scale: default ``1/sqrt(D)``.
        block_m: M tile of the dK/dV kernel (groups gathered per step); block_n: key tile of the
            forward / dQ kernels (several selected blocks gathered); 0: from the config table.
        num_warps, num_stages: launch options of every kernel (0: from the config table,
            ``torch_geometric_nsa.kernels._config``).

    Returns:
        ``o`` ``[S, H, D]`` (0 for queries with no valid key).  Backward is deterministic, no atomics.
    """
    check_float_inputs(q, k, v)
    check_sizes(select_size=int(select_size))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return _sel_fwd(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        as_u8(mask),
        idx.to(torch.int64).contiguous(),
        int(select_size),
        int(group_size),
        float(scale),
        int(block_m),
        int(block_n),
        int(num_warps),
        int(num_stages),
    )[0]

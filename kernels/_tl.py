"""Triton helpers shared by the kernels (private).

Float arguments (``qk_scale``, ``sigma``...): Triton's own launcher passes Python floats as
fp32, Inductor (launching the ops' kernels under ``torch.compile``) as fp64, and its mutation
analysis as constexprs.  Every kernel therefore starts with ``x = tl.cast(x, tl.float32)``:
``tl.cast`` takes all three, and the loops see one type.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common

#: the launchers' constants as Triton constexprs (defined once, in ``_common``)
LOG2E = tl.constexpr(_common.LOG2E)
LN2 = tl.constexpr(_common.LN2)


@triton.jit
def lse2(LSE, rows, rmask, h, H):
    """Base-2 LSE ``[BM]`` of head ``h`` of the rows (``LSE`` is ``[S, H]``, natural log), and
    ``+inf`` for masked rows and rows without any key: subtracted from a score, every probability
    of such a row then exp2s to exactly 0, with no extra mask on the ``[BM, BN]`` tile."""
    lse = tl.load(LSE + rows * H + h, mask=rmask, other=float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


@triton.jit
def key_bias(MASK, cols, cmask):
    """Additive score bias ``[BN]`` of key columns: 0 for keys that count, ``-inf`` for masked
    ones (``MASK`` is a uint8 vector), so ``exp2`` gives them weight exactly 0."""
    return tl.where(tl.load(MASK + cols, mask=cmask, other=0) != 0, 0.0, float("-inf"))


#: initial running max of the forward's online softmax: the lowest finite float32, so a row whose
#: keys are all masked so far needs no ``-inf - (-inf)`` guard
M_INIT = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def softmax_step(s, v, m_i, l_i, acc, qk_scale, PREC: tl.constexpr, FOLD: tl.constexpr):
    """One key tile of the forward's online softmax (base 2) over ``qk_scale * s``: raw scores
    ``s [BM, BN]`` (``-inf`` = masked), values ``v [BN, BD]``; returns the updated running max
    (scaled units, starts at :data:`M_INIT`), sum and output.  ``FOLD`` (needs ``qk_scale > 0``):
    the max is taken on the raw scores and the scale folded into the exponent's FMA, one
    multiply per score less; else the scores are scaled first (any sign, masks kept)."""
    if FOLD:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    else:
        s = tl.where(s == float("-inf"), float("-inf"), s * qk_scale)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def store_softmax(O, LSE, rows, rmask, h, H, D, d, dmask, m_i, l_i, acc):
    """Normalise and store the forward's output tile (``O [S, H, D]``, head ``h``, columns ``d``)
    and its natural-log LSE (``LSE [S, H]``); rows without any key get ``o = 0``, ``lse = -inf``."""
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(
        O + rows[:, None] * (H * D) + h * D + d[None, :],
        o.to(O.dtype.element_ty),
        mask=rmask[:, None] & dmask[None, :],
    )
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2, float("-inf"))
    tl.store(LSE + rows * H + h, lse, mask=rmask)


@triton.jit
def dq_step(p, do, v, k, delta, dq, PREC: tl.constexpr):
    """One key tile of a dQ kernel: probabilities ``p [BM, BN]``, ``dq += (p * (dO V^T - delta)) K``
    (unscaled)."""
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)


@triton.jit
def dkdv_step(pt, q, do, v, delta, dk, dv, PREC: tl.constexpr):
    """One query tile of a dK/dV kernel on transposed tiles (``pt = P^T [BN, BM]``, keys as rows),
    which feed the dots with no register transpose; returns ``dk`` (unscaled), ``dv`` and
    ``dS^T``."""
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
    dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
    return dk, dv, dst


@triton.jit
def pair_dist(PA, rows, PB, cols, rmask, cmask, P: tl.constexpr):
    """``||PA[rows] - PB[cols]||`` ``[len(rows), len(cols)]`` in float32 (``PA``, ``PB``: float32
    ``[*, P]`` positions), for a distance bias."""
    d2 = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.float32)
    for p in tl.static_range(P):
        a = tl.load(PA + rows * P + p, mask=rmask, other=0.0)
        b = tl.load(PB + cols * P + p, mask=cmask, other=0.0)
        diff = a[:, None] - b[None, :]
        d2 += diff * diff
    return tl.sqrt(d2)

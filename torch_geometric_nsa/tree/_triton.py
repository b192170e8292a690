"""Triton version of the level loop of :func:`build._tree_order` (CUDA).

Per level: one kernel before the sort (split axis of every node, sort key),
``torch.argsort(key, stable=True)``, one kernel after it (gathers the point
order and sort bits by the permutation, moves every position to its child
node and accumulates the children's bounding boxes with int64 atomics on the
order-preserving bits).  The result is bitwise the one of the torch loop.

Bounding boxes live in two ``[N, 2 * D]`` int64 buffers (min bits, then max
bits, indexed by node id = the node's first position).  Level ``k`` reads
buffer ``k % 2``, accumulates level ``k + 1`` into the other one and resets
the entries it read (one store per node), so no fill op runs per level.
"""
import math
import os

import torch
from torch import Tensor

import triton
import triton.language as tl

#: opt in with ``TORCH_GEOMETRIC_NSA_TREE_TRITON=1``: this path is bitwise
#: equal to the torch loop under the Triton interpreter but has not been
#: compiled or timed on a GPU yet, so the torch loop stays the CUDA default
ENABLED = os.environ.get('TORCH_GEOMETRIC_NSA_TREE_TRITON', '0') == '1'
#: bounding boxes by a segmented in-block reduction (one atomic per node,
#: block and axis); ``TORCH_GEOMETRIC_NSA_TREE_SEGMENTED=0``: one atomic per
#: element and axis, except blocks of a single node (reduced in registers)
SEGMENTED = os.environ.get('TORCH_GEOMETRIC_NSA_TREE_SEGMENTED', '1') != '0'

_BLOCK = 1024
_LO_EMPTY = 2**32       # above any ordered bits
_HI_EMPTY = -1          # below any ordered bits


@triton.jit
def _bits_to_float(b):
    # inverse of build._ordered_bits: b in [0, 2^32) -> float32
    i32 = tl.where(b < 2147483648, ~b, b - 2147483648).to(tl.int32)
    return i32.to(tl.float32, bitcast=True)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _accumulate(mm_ptr, node, offs, b, mask, uniform, nid,
                D: tl.constexpr, d: tl.constexpr, SEGMENTED: tl.constexpr,
                BLOCK: tl.constexpr):
    # min/max of the ordered bits b of axis d into row `node` of mm; the
    # node ids of a block are nondecreasing (positions are sorted by node)
    if SEGMENTED:
        # Reverse max-scan of ((2^31 - 1 - node) << 32) | value: lane i gets
        # the max over lanes j >= i of its own node (later lanes hold larger
        # nodes, hence smaller keys), so the first lane of every node in the
        # block (offs == max(node, block start)) holds the node's reduction.
        tag = (2147483647 - node) << 32
        kmax = tl.where(mask, tag | b, -1)
        kmin = tl.where(mask, tag | (4294967295 - b), -1)
        kmax = tl.associative_scan(kmax, 0, _max_combine, reverse=True)
        kmin = tl.associative_scan(kmin, 0, _max_combine, reverse=True)
        block_start = tl.program_id(0).to(tl.int64) * BLOCK
        lead = mask & (offs == tl.maximum(node, block_start))
        row = mm_ptr + node * (2 * D)
        tl.atomic_min(row + d, 4294967295 - (kmin & 4294967295), mask=lead,
                      sem='relaxed')
        tl.atomic_max(row + D + d, kmax & 4294967295, mask=lead,
                      sem='relaxed')
    else:
        if uniform:   # one node in the whole block: reduce in registers
            bmin = tl.min(tl.where(mask, b, 4294967296), axis=0)
            bmax = tl.max(tl.where(mask, b, -1), axis=0)
            row = mm_ptr + nid * (2 * D)
            tl.atomic_min(row + d, bmin, sem='relaxed')
            tl.atomic_max(row + D + d, bmax, sem='relaxed')
        else:
            row = mm_ptr + node * (2 * D)
            tl.atomic_min(row + d, b, mask=mask, sem='relaxed')
            tl.atomic_max(row + D + d, b, mask=mask, sem='relaxed')


@triton.jit
def _init_kernel(node_ptr, bits_ptr, mm_ptr, N, D: tl.constexpr,
                 SEGMENTED: tl.constexpr, BLOCK: tl.constexpr):
    """Bounding boxes of the root nodes (node = first position of a cloud)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    nmin = tl.min(tl.where(mask, node, 2**62), axis=0)
    nmax = tl.max(tl.where(mask, node, -1), axis=0)
    uniform = nmin == nmax
    for d in tl.static_range(D):
        b = tl.load(bits_ptr + offs * D + d, mask=mask, other=0)
        _accumulate(mm_ptr, node, offs, b, mask, uniform, nmin, D, d,
                    SEGMENTED, BLOCK)


@triton.jit
def _pre_kernel(node_ptr, bits_ptr, mm_ptr, key_ptr, N, D: tl.constexpr,
                BLOCK: tl.constexpr):
    """key = (node << 32) | bits[axis], axis = argmax over (hi - lo)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    row = mm_ptr + node * (2 * D)
    lo = _bits_to_float(tl.load(row, mask=mask, other=2147483648))
    hi = _bits_to_float(tl.load(row + D, mask=mask, other=2147483648))
    best = hi - lo
    axis = tl.zeros([BLOCK], dtype=tl.int64)
    for d in tl.static_range(1, D):
        lo = _bits_to_float(tl.load(row + d, mask=mask, other=2147483648))
        hi = _bits_to_float(tl.load(row + D + d, mask=mask, other=2147483648))
        s = hi - lo
        # torch.argmax: first maximum, NaN counts as the maximum
        take = (s > best) | ((s != s) & (best == best))
        best = tl.where(take, s, best)
        axis = tl.where(take, d, axis)
    b = tl.load(bits_ptr + offs * D + axis, mask=mask, other=0)
    tl.store(key_ptr + offs, (node << 32) | b, mask=mask)


@triton.jit
def _post_kernel(perm_ptr, order_in, order_out, bits_in, bits_out, node_ptr,
                 len_ptr, mm_cur, mm_next, N, D: tl.constexpr,
                 LAST: tl.constexpr, SEGMENTED: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Gather by the permutation, split the nodes, next level's boxes."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    p = tl.load(perm_ptr + offs, mask=mask, other=0)
    tl.store(order_out + offs, tl.load(order_in + p, mask=mask), mask=mask)
    if not LAST:
        node = tl.load(node_ptr + offs, mask=mask, other=0)
        length = tl.load(len_ptr + offs, mask=mask, other=1)
        # the node's first position resets the entry of mm_cur it owns
        first = mask & (offs == node)
        for d in tl.static_range(D):
            tl.store(mm_cur + node * (2 * D) + d,
                     tl.full([BLOCK], 4294967296, tl.int64), mask=first)
            tl.store(mm_cur + node * (2 * D) + D + d,
                     tl.full([BLOCK], -1, tl.int64), mask=first)
        # half: largest power of two below length (length / 2 for a power
        # of two), i.e. the top bit of max(length - 1, 1)
        v = tl.maximum(length - 1, 1)
        v = v | (v >> 1)
        v = v | (v >> 2)
        v = v | (v >> 4)
        v = v | (v >> 8)
        v = v | (v >> 16)
        v = v | (v >> 32)
        half = v - (v >> 1)
        right = ((offs - node) >= half) & (length > 1)
        node = tl.where(right, node + half, node)
        length = tl.where(right, length - half, tl.minimum(length, half))
        tl.store(node_ptr + offs, node, mask=mask)
        tl.store(len_ptr + offs, length, mask=mask)
        nmin = tl.min(tl.where(mask, node, 2**62), axis=0)
        nmax = tl.max(tl.where(mask, node, -1), axis=0)
        uniform = nmin == nmax
        for d in tl.static_range(D):
            b = tl.load(bits_in + p * D + d, mask=mask, other=0)
            tl.store(bits_out + offs * D + d, b, mask=mask)
            _accumulate(mm_next, node, offs, b, mask, uniform, nmin, D, d,
                        SEGMENTED, BLOCK)


def tree_order_triton(posf: Tensor, batch: Tensor, slots: Tensor,
                      node_ptr: Tensor, max_slots: int) -> Tensor:
    """Same contract and bitwise the same result as
    :func:`torch_geometric_nsa.tree.build._tree_order`."""
    from .build import _canonical_order

    num_points, dim = posf.shape
    device = posf.device
    order, bits = _canonical_order(posf, batch)  # canonical start (torch)
    bits = bits.contiguous()

    node = node_ptr[batch].contiguous()       # node id: its first position
    length = slots[batch].contiguous()        # node's slot count
    mm = torch.empty(2, num_points, 2 * dim, dtype=torch.long, device=device)
    mm[:, :, :dim] = _LO_EMPTY
    mm[:, :, dim:] = _HI_EMPTY
    order_buf = torch.empty_like(order)
    bits_buf = torch.empty_like(bits)
    key = torch.empty_like(order)

    grid = (triton.cdiv(num_points, _BLOCK),)
    _init_kernel[grid](node, bits, mm[0], num_points, D=dim,
                       SEGMENTED=SEGMENTED, BLOCK=_BLOCK, num_warps=8)
    num_levels = max(1, math.ceil(math.log2(max(max_slots, 2))))
    for level in range(num_levels):
        cur, nxt = mm[level % 2], mm[(level + 1) % 2]
        _pre_kernel[grid](node, bits, cur, key, num_points, D=dim,
                          BLOCK=_BLOCK, num_warps=8)
        perm = torch.argsort(key, stable=True)
        _post_kernel[grid](perm, order, order_buf, bits, bits_buf, node,
                           length, cur, nxt, num_points, D=dim,
                           LAST=level == num_levels - 1, SEGMENTED=SEGMENTED,
                           BLOCK=_BLOCK,
                           num_warps=8)
        order, order_buf = order_buf, order
        bits, bits_buf = bits_buf, bits
    return order

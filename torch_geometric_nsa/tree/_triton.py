"""The level loop of :func:`build._tree_order` on CUDA, without a sort per level.

Presorted median splits: after the initial sorts every cloud's points are
listed ``D`` times, sorted along each axis (:func:`build._axis_lists`).  Every
tree node owns the same run of positions in all ``D`` lists, sorted along each
axis, so

* its bounding box along axis ``a`` is ``coord[a]`` of the first and last
  entries of its run in list ``a`` (no reduction),
* its left child is the first ``P`` entries of its run in the list of its
  split axis (no sort, no selection),
* a stable partition carries all ``D`` lists to the next level: one prefix
  sum of the "goes left" flags per list.

Per level: ``_flag_kernel`` (split axis of every node, flags written in list
order), ``torch.cumsum`` over the ``[D, N]`` flags, ``_partition_kernel``
(moves every entry of every list to its child's run).  Three launches and
:math:`O(N D)` int32 traffic per level, no host synchronisation.  The result
is bitwise the one of the torch loop.
"""
import math
import os

import torch
from torch import Tensor

import triton
import triton.language as tl

#: ``TORCH_GEOMETRIC_NSA_TREE_TRITON=0`` turns this path off (the torch level
#: loop, one sort per level, then runs on CUDA too)
ENABLED = os.environ.get('TORCH_GEOMETRIC_NSA_TREE_TRITON', '1') != '0'

_BLOCK = 1024


@triton.jit
def _split(node_ptr, len_ptr, offs, mask):
    # the node (its first position) and slot count of every position, the
    # left child's slot count and the position within the node
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    # half: the top bit of max(length - 1, 1) (build._split_size)
    v = tl.maximum(length - 1, 1)
    v = v | (v >> 1)
    v = v | (v >> 2)
    v = v | (v >> 4)
    v = v | (v >> 8)
    v = v | (v >> 16)
    half = v - (v >> 1)
    return node, length, half, offs - node


@triton.jit
def _flag_kernel(lists_ptr, where_ptr, coord_ptr, node_ptr, len_ptr, end_ptr,
                 flag_ptr, N, D: tl.constexpr, BLOCK: tl.constexpr):
    """flag[d, where[d, p]] = 1 if point p goes to the left child."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node, length, half, rel = _split(node_ptr, len_ptr, offs, mask)
    last = tl.minimum(node + length, tl.load(end_ptr + offs, mask=mask,
                                             other=1)) - 1
    # split axis: the largest spread, the lowest axis on ties; a NaN spread
    # counts as the largest (torch.argmax)
    best = tl.full([BLOCK], float('-inf'), tl.float32)
    axis = tl.zeros([BLOCK], dtype=tl.int32)
    for d in tl.static_range(D):
        row = lists_ptr + d * N
        lo = tl.load(coord_ptr + d * N + tl.load(row + node, mask=mask,
                                                 other=0),
                     mask=mask, other=0.0)
        hi = tl.load(coord_ptr + d * N + tl.load(row + last, mask=mask,
                                                 other=0),
                     mask=mask, other=0.0)
        s = hi - lo
        if d == 0:
            best = s
        else:
            take = (s > best) | ((s != s) & (best == best))
            best = tl.where(take, s, best)
            axis = tl.where(take, d, axis)
    p = tl.load(lists_ptr + axis * N + offs, mask=mask, other=0)
    f = ((rel < half) | (length <= 1)).to(tl.int32)
    for d in tl.static_range(D):
        w = tl.load(where_ptr + d * N + p, mask=mask, other=0)
        tl.store(flag_ptr + d * N + w, f, mask=mask)


@triton.jit
def _partition_kernel(lists_in, lists_out, where_ptr, flag_ptr, csum_ptr,
                      node_ptr, len_ptr, N, D: tl.constexpr,
                      LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Stable partition of every node's run in every list; next level's
    nodes."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node, length, half, rel = _split(node_ptr, len_ptr, offs, mask)
    for d in tl.static_range(D):
        if (not LAST) or d == 0:  # the last level only needs list 0
            p = tl.load(lists_in + d * N + offs, mask=mask, other=0)
            f = tl.load(flag_ptr + d * N + offs, mask=mask, other=0)
            c = tl.load(csum_ptr + d * N + offs, mask=mask, other=0)
            c0 = (tl.load(csum_ptr + d * N + node, mask=mask, other=0)
                  - tl.load(flag_ptr + d * N + node, mask=mask, other=0))
            before = c - f - c0           # entries of the node before going left
            dest = tl.where(f != 0, node + before, node + half + rel - before)
            tl.store(lists_out + d * N + dest, p, mask=mask)
            if not LAST:
                tl.store(where_ptr + d * N + p, dest, mask=mask)
    if not LAST:
        right = (rel >= half) & (length > 1)
        tl.store(node_ptr + offs, tl.where(right, node + half, node),
                 mask=mask)
        tl.store(len_ptr + offs,
                 tl.where(right, length - half, tl.minimum(length, half)),
                 mask=mask)


def tree_order_triton(posf: Tensor, batch: Tensor, slots: Tensor,
                      node_ptr: Tensor, max_slots: int) -> Tensor:
    """Same contract and bitwise the same result as
    :func:`torch_geometric_nsa.tree.build._tree_order` (``N * D < 2^31``)."""
    from .build import _axis_lists, _canonical_order

    num_points, dim = posf.shape
    device = posf.device
    order, bits = _canonical_order(posf, batch)
    lists64 = _axis_lists(bits, batch)
    ar = torch.arange(num_points, device=device, dtype=torch.int32)
    lists = lists64.int()
    where = torch.empty_like(lists).scatter_(1, lists64, ar.expand(dim, -1))
    coord = posf[order].T.contiguous()
    node = node_ptr[batch].int()               # node's first position
    length = slots[batch].int()                # node's slot count
    end = node_ptr[batch + 1].int()            # end of the cloud's positions
    lists_buf = torch.empty_like(lists)
    flag = torch.empty_like(lists)
    csum = torch.empty_like(lists)

    grid = (triton.cdiv(num_points, _BLOCK),)
    num_levels = max(1, math.ceil(math.log2(max(max_slots, 2))))
    for level in range(num_levels):
        _flag_kernel[grid](lists, where, coord, node, length, end, flag,
                           num_points, D=dim, BLOCK=_BLOCK, num_warps=8)
        torch.cumsum(flag, dim=1, dtype=torch.int32, out=csum)
        _partition_kernel[grid](lists, lists_buf, where, flag, csum, node,
                                length, num_points, D=dim,
                                LAST=level == num_levels - 1, BLOCK=_BLOCK,
                                num_warps=8)
        lists, lists_buf = lists_buf, lists
    return order[lists[0].long()]

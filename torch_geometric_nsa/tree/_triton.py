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

Levels whose nodes span more than ``_BLOCK`` slots take three launches each:
``_flag_kernel``, one ``torch.cumsum`` over the flattened ``[D, N]`` flags and
``_partition_kernel``.  A node of at most ``_BLOCK`` slots lies inside one
aligned ``_BLOCK``-slot block of its cloud (a node of ``L`` slots starts at a
multiple of the power of two ``>= L``), so one launch of ``_subtree_kernel``
runs all remaining levels, one program per block, its prefix sums in
registers and the lists in (L2-resident) global scratch between CTA barriers.
:math:`O(N D)` int32 traffic per level, no host synchronisation; the result
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
def _half(length):
    # slots of the left child: the top bit of max(length - 1, 1)
    # (build._split_size)
    v = tl.maximum(length - 1, 1)
    v = v | (v >> 1)
    v = v | (v >> 2)
    v = v | (v >> 4)
    v = v | (v >> 8)
    v = v | (v >> 16)
    return v - (v >> 1)


@triton.jit
def _flags(lists, where, coord, flag, offs, mask, node, length, last, N,
           D: tl.constexpr):
    """flag[d, where[d, p]] = 1 if point p goes to the left child."""
    # split axis: the largest spread, the lowest axis on ties; a NaN spread
    # counts as the largest (torch.argmax)
    best = tl.zeros(offs.shape, dtype=tl.float32)
    axis = tl.zeros(offs.shape, dtype=tl.int32)
    for d in tl.static_range(D):
        row = lists + d * N
        lo = tl.load(coord + d * N + tl.load(row + node, mask=mask, other=0,
                                             cache_modifier='.cg'),
                     mask=mask, other=0.0)
        hi = tl.load(coord + d * N + tl.load(row + last, mask=mask, other=0,
                                             cache_modifier='.cg'),
                     mask=mask, other=0.0)
        s = hi - lo
        if d == 0:
            best = s
        else:
            take = (s > best) | ((s != s) & (best == best))
            best = tl.where(take, s, best)
            axis = tl.where(take, d, axis)
    p = tl.load(lists + axis * N + offs, mask=mask, other=0,
                cache_modifier='.cg')
    f = ((offs - node < _half(length)) | (length <= 1)).to(tl.int32)
    for d in tl.static_range(D):
        w = tl.load(where + d * N + p, mask=mask, other=0,
                    cache_modifier='.cg')
        tl.store(flag + d * N + w, f, mask=mask)


@triton.jit
def _partition(lists_in, lists_out, where, flag, csum, offs, mask, node,
               length, N, D: tl.constexpr):
    """Moves every entry of every list to its child's run (stable); ``csum``
    holds inclusive prefix sums of ``flag`` that restart at most at node
    boundaries.  Returns the next level's node and slot count."""
    half = _half(length)
    rel = offs - node
    for d in tl.static_range(D):
        p = tl.load(lists_in + d * N + offs, mask=mask, other=0,
                    cache_modifier='.cg')
        f = tl.load(flag + d * N + offs, mask=mask, other=0,
                    cache_modifier='.cg')
        c = tl.load(csum + d * N + offs, mask=mask, other=0,
                    cache_modifier='.cg')
        c0 = (tl.load(csum + d * N + node, mask=mask, other=0,
                      cache_modifier='.cg')
              - tl.load(flag + d * N + node, mask=mask, other=0,
                        cache_modifier='.cg'))
        before = c - f - c0           # entries of the node before, going left
        dest = tl.where(f != 0, node + before, node + half + rel - before)
        tl.store(lists_out + d * N + dest, p, mask=mask)
        tl.store(where + d * N + p, dest, mask=mask)
    right = (rel >= half) & (length > 1)
    return (tl.where(right, node + half, node),
            tl.where(right, length - half, tl.minimum(length, half)))


@triton.jit
def _flag_kernel(lists, where, coord, flag, node_ptr, len_ptr, end_ptr, N,
                 D: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    last = tl.minimum(node + length,
                      tl.load(end_ptr + offs, mask=mask, other=1)) - 1
    _flags(lists, where, coord, flag, offs, mask, node, length, last, N, D)


@triton.jit
def _partition_kernel(lists_in, lists_out, where, flag, csum, node_ptr,
                      len_ptr, N, D: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    node, length = _partition(lists_in, lists_out, where, flag, csum, offs,
                              mask, node, length, N, D)
    tl.store(node_ptr + offs, node, mask=mask)
    tl.store(len_ptr + offs, length, mask=mask)


@triton.jit
def _subtree_kernel(lists_a, lists_b, where, coord, flag, csum, node_ptr,
                    len_ptr, unit_cloud, unit_ptr, cloud_ptr, N, B, LEVELS,
                    D: tl.constexpr, BLOCK: tl.constexpr):
    """All remaining levels of one aligned ``BLOCK``-slot block of a cloud
    (every node already fits in one block); the lists ping-pong between
    ``lists_a`` and ``lists_b``."""
    pid = tl.program_id(0)
    b = tl.load(unit_cloud + pid)
    last_cloud = b >= B                     # past the last block: idle
    b = tl.minimum(b, B - 1)
    first = tl.load(cloud_ptr + b)
    end = tl.where(last_cloud, first, tl.load(cloud_ptr + b + 1))
    j = pid - tl.load(unit_ptr + b)
    offs = first + j * BLOCK + tl.arange(0, BLOCK)
    mask = offs < end
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    cur = lists_a
    nxt = lists_b
    for _ in range(LEVELS):
        last = tl.minimum(node + length, end) - 1
        _flags(cur, where, coord, flag, offs, mask, node, length, last, N, D)
        tl.debug_barrier()
        for d in tl.static_range(D):
            f = tl.load(flag + d * N + offs, mask=mask, other=0,
                        cache_modifier='.cg')
            tl.store(csum + d * N + offs, tl.cumsum(f, 0), mask=mask)
        tl.debug_barrier()
        node, length = _partition(cur, nxt, where, flag, csum, offs, mask,
                                  node, length, N, D)
        tl.debug_barrier()
        cur, nxt = nxt, cur


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
    lists_buf = torch.empty_like(lists)
    flag = torch.empty_like(lists)
    csum = torch.empty_like(lists)

    num_levels = max(1, math.ceil(math.log2(max(max_slots, 2))))
    fused = min(num_levels, int(math.log2(_BLOCK)))
    if num_levels > fused:   # levels with nodes of more than _BLOCK slots
        end = node_ptr[batch + 1].int()        # end of the cloud's positions
        grid = (triton.cdiv(num_points, _BLOCK),)
        for _ in range(num_levels - fused):
            _flag_kernel[grid](lists, where, coord, flag, node, length, end,
                               num_points, D=dim, BLOCK=_BLOCK, num_warps=8)
            # one flat scan: row offsets cancel in the partition
            torch.cumsum(flag.view(-1), 0, dtype=torch.int32,
                         out=csum.view(-1))
            _partition_kernel[grid](lists, lists_buf, where, flag, csum,
                                    node, length, num_points, D=dim,
                                    BLOCK=_BLOCK, num_warps=8)
            lists, lists_buf = lists_buf, lists

    # one program per aligned block of _BLOCK slots holding real points
    counts = node_ptr.diff()
    unit_ptr = torch.cat([counts.new_zeros(1),
                          ((counts + _BLOCK - 1) // _BLOCK).cumsum(0)])
    num_units = triton.cdiv(num_points, _BLOCK) + counts.numel()  # bound
    unit_cloud = torch.searchsorted(
        unit_ptr[1:], torch.arange(num_units, device=device), right=True)
    _subtree_kernel[(num_units,)](
        lists, lists_buf, where, coord, flag, csum, node, length, unit_cloud,
        unit_ptr, node_ptr, num_points, counts.numel(), fused, D=dim,
        BLOCK=_BLOCK, num_warps=8)
    if fused % 2:
        lists = lists_buf
    return order[lists[0].long()]

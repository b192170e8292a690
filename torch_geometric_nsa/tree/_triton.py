"""The ball-tree build on CUDA (:func:`build.build_ball_tree`), without a sort
per level; bitwise the layout of the CPU build (the torch level loop of
:func:`build._tree_order`, one sort per level).

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
:math:`O(N D)` int32 traffic per level, no host synchronisation.  Around the
levels: one scan kernel for the input checks and the layout's size (the one
read-back), one for the per-cloud offsets, the sort keys, ``D // 2 + D`` torch
sorts (canonical order, axis lists), a prologue kernel and one kernel that
assembles the layout: about 40 launches for any batch.

Batches of small clouds (at most 4,096 slots each, e.g. molecules, MD frames, a
ShapeNet car) skip all of that after the offsets: one ``_small_kernel`` program
per cloud moves the cloud to its corner, sorts its points in registers
(``tl.sort`` of ``(coordinate bits << log2 BLOCK) | position`` keys, stable by
construction), runs every level and writes the cloud's slots of the layout and
their position keys: three launches in all (the scan, the offsets, the build),
for a build that is otherwise bound by the host time of its torch ops and
launches.  Its level loop runs on 32 warps with plain (L1-cached) loads: within
one CTA a barrier is all the visibility the lists need, and the loop is bound
by the latency of its gathers, not by bandwidth.

Both paths read the positions as given (any float dtype) and write the layout's
position keys in their last kernel (``_position_key``), so the build runs no
torch op on the points outside its kernels (the general path and rotated trees
still make their float32 coordinates with torch ops, ``build._build_coordinates``).
"""

import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._checks import (
    KEY_C0,
    KEY_C_STEP,
    KEY_W_STEP,
    MAX_COORD,
    check_flags,
    check_layout_size,
)
from .layout import TreeLayout

#: ``TORCH_GEOMETRIC_NSA_TREE_TRITON=0`` turns this path off (the torch level
#: loop, one sort per level, then runs on CUDA too)
ENABLED = os.environ.get("TORCH_GEOMETRIC_NSA_TREE_TRITON", "1") != "0"

_BLOCK = 1024
#: block sizes of ``_small_kernel``, which builds batches whose clouds all fit the largest (one
#: program per cloud, three launches for the whole build instead of about 40) in the smallest
#: that holds the largest cloud; few, since every one is a compilation of its sorting networks
#: (~10-50 s, then cached by Triton)
_SMALL_BLOCKS = (1024, 4096)
#: warps of a ``_small_kernel`` program, by block size
_SMALL_WARPS = {1024: 32, 4096: 32}
#: cache modifier of the level loop's loads in ``_small_kernel`` (one CTA per cloud: a
#: barrier makes the CTA's global writes visible to its own loads, through L1 or not)
_SMALL_CACHE = ""

# _checks.position_key's weights, as float64 constants of the kernels
_KEY_W_STEP = tl.constexpr(KEY_W_STEP)
_KEY_C0 = tl.constexpr(KEY_C0)
_KEY_C_STEP = tl.constexpr(KEY_C_STEP)
_MAX_COORD = tl.constexpr(MAX_COORD)


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
def _flags(
    lists,
    where,
    coord,
    flag,
    offs,
    mask,
    node,
    length,
    last,
    N,
    D: tl.constexpr,
    CACHE: tl.constexpr,
):
    """flag[d, where[d, p]] = 1 if point p goes to the left child."""
    # split axis: the largest spread, the lowest axis on ties; a NaN spread
    # counts as the largest (torch.argmax)
    best = tl.zeros(offs.shape, dtype=tl.float32)
    axis = tl.zeros(offs.shape, dtype=tl.int32)
    for d in tl.static_range(D):
        row = lists + d * N
        lo = tl.load(
            coord + d * N + tl.load(row + node, mask=mask, other=0, cache_modifier=CACHE),
            mask=mask,
            other=0.0,
        )
        hi = tl.load(
            coord + d * N + tl.load(row + last, mask=mask, other=0, cache_modifier=CACHE),
            mask=mask,
            other=0.0,
        )
        s = hi - lo
        if d == 0:
            best = s
        else:
            take = (s > best) | ((s != s) & (best == best))
            best = tl.where(take, s, best)
            axis = tl.where(take, d, axis)
    p = tl.load(lists + axis * N + offs, mask=mask, other=0, cache_modifier=CACHE)
    f = ((offs - node < _half(length)) | (length <= 1)).to(tl.int32)
    for d in tl.static_range(D):
        w = tl.load(where + d * N + p, mask=mask, other=0, cache_modifier=CACHE)
        tl.store(flag + d * N + w, f, mask=mask)


@triton.jit
def _partition(
    lists_in,
    lists_out,
    where,
    flag,
    csum,
    offs,
    mask,
    node,
    length,
    N,
    D: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Moves every entry of every list to its child's run (stable); ``csum``
    holds inclusive prefix sums of ``flag`` that restart at most at node
    boundaries.  Returns the next level's node and slot count."""
    half = _half(length)
    rel = offs - node
    for d in tl.static_range(D):
        p = tl.load(lists_in + d * N + offs, mask=mask, other=0, cache_modifier=CACHE)
        f = tl.load(flag + d * N + offs, mask=mask, other=0, cache_modifier=CACHE)
        c = tl.load(csum + d * N + offs, mask=mask, other=0, cache_modifier=CACHE)
        c0 = tl.load(csum + d * N + node, mask=mask, other=0, cache_modifier=CACHE) - tl.load(
            flag + d * N + node, mask=mask, other=0, cache_modifier=CACHE
        )
        before = c - f - c0  # entries of the node before, going left
        dest = tl.where(f != 0, node + before, node + half + rel - before)
        tl.store(lists_out + d * N + dest, p, mask=mask)
        tl.store(where + d * N + p, dest, mask=mask)
    right = (rel >= half) & (length > 1)
    return (
        tl.where(right, node + half, node),
        tl.where(right, length - half, tl.minimum(length, half)),
    )


@triton.jit
def _flag_kernel(
    lists, where, coord, flag, node_ptr, len_ptr, end_ptr, N, D: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    last = tl.minimum(node + length, tl.load(end_ptr + offs, mask=mask, other=1)) - 1
    _flags(lists, where, coord, flag, offs, mask, node, length, last, N, D, ".cg")


@triton.jit
def _partition_kernel(
    lists_in,
    lists_out,
    where,
    flag,
    csum,
    node_ptr,
    len_ptr,
    N,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    node, length = _partition(
        lists_in, lists_out, where, flag, csum, offs, mask, node, length, N, D, ".cg"
    )
    tl.store(node_ptr + offs, node, mask=mask)
    tl.store(len_ptr + offs, length, mask=mask)


@triton.jit
def _lower_bound(arr, value, n, mask, STEPS: tl.constexpr):
    """The first index i in [0, n] with arr[i] >= value (arr[:n] nondecreasing),
    by a branch-free binary search of STEPS >= bit_length(n) + 1 steps; the
    last index with arr[i] <= v is _lower_bound(arr, v + 1, ...) - 1."""
    lo = tl.zeros(value.shape, dtype=tl.int64)
    hi = lo + n
    for _ in range(STEPS):
        active = mask & (lo < hi)
        mid = (lo + hi) // 2
        go = active & (tl.load(arr + mid, mask=active, other=0) < value)
        lo = tl.where(go, mid + 1, lo)
        hi = tl.where(active & ~go, mid, hi)
    return lo


@triton.jit
def _subtree_kernel(
    lists_a,
    lists_b,
    where,
    coord,
    flag,
    csum,
    node_ptr,
    len_ptr,
    unit_ptr,
    cloud_ptr,
    N,
    B,
    LEVELS: tl.constexpr,
    SEARCH: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """All remaining levels of one aligned ``BLOCK``-slot block of a cloud
    (every node already fits in one block); the lists ping-pong between
    ``lists_a`` and ``lists_b``.  Blocks are numbered cloud by cloud
    (``unit_ptr``); programs past the last block idle."""
    pid = tl.program_id(0).to(tl.int64)
    b = _lower_bound(unit_ptr, pid + 1, B, pid >= 0, SEARCH) - 1
    first = tl.load(cloud_ptr + b)
    end = tl.where(pid < tl.load(unit_ptr + b + 1), tl.load(cloud_ptr + b + 1), first)
    offs = first + (pid - tl.load(unit_ptr + b)) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < end
    node = tl.load(node_ptr + offs, mask=mask, other=0)
    length = tl.load(len_ptr + offs, mask=mask, other=1)
    _levels(
        lists_a,
        lists_b,
        where,
        coord,
        flag,
        csum,
        offs,
        mask,
        node,
        length,
        end,
        N,
        LEVELS,
        D,
        ".cg",
    )


@triton.jit
def _levels(
    cur,
    nxt,
    where,
    coord,
    flag,
    csum,
    offs,
    mask,
    node,
    length,
    end,
    N,
    LEVELS,
    D: tl.constexpr,
    CACHE: tl.constexpr,
):
    """``LEVELS`` levels of nodes that all lie inside this program's block
    ``offs``; the lists ping-pong between ``cur`` and ``nxt`` (the last level
    writes ``nxt`` if ``LEVELS`` is odd, else ``cur``)."""
    for _ in range(LEVELS):
        last = tl.minimum(node + length, end) - 1
        _flags(cur, where, coord, flag, offs, mask, node, length, last, N, D, CACHE)
        tl.debug_barrier()
        for d in tl.static_range(D):
            f = tl.load(flag + d * N + offs, mask=mask, other=0, cache_modifier=CACHE)
            tl.store(csum + d * N + offs, tl.cumsum(f, 0), mask=mask)
        tl.debug_barrier()
        node, length = _partition(
            cur, nxt, where, flag, csum, offs, mask, node, length, N, D, CACHE
        )
        tl.debug_barrier()
        cur, nxt = nxt, cur


@triton.jit
def _scan_kernel(pos, batch, out, N, m, D: tl.constexpr, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """The input checks and the layout's size in one pass: out = [any
    non-finite position, batch unsorted, any negative id, last id + 1, total
    slots, largest cloud's slots]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    bad = tl.zeros([BLOCK], dtype=tl.int1)
    for d in tl.static_range(D):
        x = tl.load(pos + offs * D + d, mask=mask, other=0.0)
        bad = bad | (x != x) | (tl.abs(x) == float("inf")) | (tl.abs(x) > _MAX_COORD)
    b = tl.load(batch + offs, mask=mask, other=0)
    prev = tl.load(batch + offs - 1, mask=mask & (offs > 0), other=-1)
    tl.atomic_max(out, tl.max(bad.to(tl.int64), 0))
    tl.atomic_max(out + 1, tl.max((mask & (offs > 0) & (b < prev)).to(tl.int64), 0))
    tl.atomic_max(out + 2, tl.max((mask & (b < 0)).to(tl.int64), 0))
    tl.atomic_max(out + 3, tl.max(tl.where(mask, b + 1, 0), 0))
    # every cloud's first point finds the cloud's end
    start = mask & (b != prev)
    size = _lower_bound(batch, b + 1, N, start, STEPS) - offs
    size = tl.where(start, (size + m - 1) // m * m, 0)
    tl.atomic_add(out + 4, tl.sum(size, 0))
    tl.atomic_max(out + 5, tl.max(size, 0))


@triton.jit
def _cloud_kernel(
    batch,
    node_ptr,
    ptr,
    unit_ptr,
    slots,
    N,
    B,
    m,
    UNIT: tl.constexpr,
    STEPS: tl.constexpr,
    CHUNKS: tl.constexpr,
    CB: tl.constexpr,
):
    """Per cloud (one program): offsets of its points (node_ptr) and slots
    (ptr), its slot count and the numbering of its UNIT-slot blocks."""
    carry_slots = tl.sum(tl.zeros([CB], dtype=tl.int64), 0)
    carry_units = carry_slots
    for chunk in range(CHUNKS):
        b = chunk * CB + tl.arange(0, CB).to(tl.int64)
        valid = b <= B
        start = _lower_bound(batch, b, N, valid, STEPS)
        count = tl.where(b < B, _lower_bound(batch, b + 1, N, valid, STEPS) - start, 0)
        s = (count + m - 1) // m * m
        u = (count + UNIT - 1) // UNIT
        tl.store(node_ptr + b, start, mask=valid)
        tl.store(ptr + b, carry_slots + tl.cumsum(s, 0) - s, mask=valid)
        tl.store(unit_ptr + b, carry_units + tl.cumsum(u, 0) - u, mask=valid)
        tl.store(slots + b, s, mask=b < B)
        carry_slots += tl.sum(s, 0)
        carry_units += tl.sum(u, 0)


@triton.jit
def _keys_kernel(posf, batch, keys, lsd, N, D: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):
    """Sort keys: keys[d] = (cloud << 32) | ordered bits of coordinate d, and
    the least significant keys of the canonical order, two coordinates per
    int64 (axes D-2, D-1 first)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    b = tl.load(batch + offs, mask=mask, other=0)
    for d in tl.static_range(D):
        tl.store(keys + d * N + offs, (b << 32) | _ordered(posf + offs * D + d, mask), mask=mask)
    for j in tl.static_range(NP):
        lo = _ordered(posf + offs * D + (D - 1 - 2 * j), mask)
        if D - 2 - 2 * j >= 1:
            hi = _ordered(posf + offs * D + (D - 2 - 2 * j), mask)
            lo = ((hi - 2147483648) << 32) | lo
        tl.store(lsd + j * N + offs, lo, mask=mask)


@triton.jit
def _ordered(ptr, mask):
    # build._ordered_bits: float32 -> int64 in [0, 2^32), order preserving,
    # -0.0 as +0.0
    x = tl.load(ptr, mask=mask, other=0.0) + 0.0
    i = x.to(tl.int32, bitcast=True).to(tl.int64)
    return tl.where(i < 0, ~i, i + 2147483648)


@triton.jit
def _prologue_kernel(
    rows,
    order,
    posf,
    batch,
    node_ptr,
    slots,
    lists,
    where,
    coord,
    node,
    length,
    end,
    N,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """int32 lists (row 0: the canonical order itself) and their inverse,
    coordinates by canonical rank, and the root node of every position."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    src = tl.load(order + offs, mask=mask, other=0)
    for d in tl.static_range(D):
        if d == 0:
            q = offs
        else:
            q = tl.load(rows + (d - 1) * N + offs, mask=mask, other=0)
        tl.store(lists + d * N + offs, q, mask=mask)
        tl.store(where + d * N + q, offs, mask=mask)
        tl.store(coord + d * N + offs, tl.load(posf + src * D + d, mask=mask), mask=mask)
    b = tl.load(batch + offs, mask=mask, other=0)
    tl.store(node + offs, tl.load(node_ptr + b, mask=mask), mask=mask)
    tl.store(length + offs, tl.load(slots + b, mask=mask), mask=mask)
    tl.store(end + offs, tl.load(node_ptr + b + 1, mask=mask), mask=mask)


@triton.jit
def _position_key(pos, p, real, D: tl.constexpr):
    """``_checks.position_key`` of the points ``p`` (float64 arithmetic, NaN where
    not ``real``): the fingerprint a layout keeps of every slot's point."""
    key = tl.zeros(p.shape, dtype=tl.float64)
    for d in tl.static_range(D):
        x = tl.load(pos + p * D + d, mask=real, other=0.0).to(tl.float64)
        w = 1.0 + d * tl.full([], _KEY_W_STEP, tl.float64)
        c = tl.full([], _KEY_C0, tl.float64) + d * tl.full([], _KEY_C_STEP, tl.float64)
        key += tl.abs(x + c) * w
    return tl.where(real, key, float("nan"))


@triton.jit
def _layout_kernel(
    final,
    order,
    ptr,
    node_ptr,
    pos,
    perm,
    mask_out,
    slot_batch,
    inverse,
    key_out,
    S,
    N,
    B,
    D: tl.constexpr,
    SEARCH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The slots of the layout (build._assemble and TreeLayout.from_slots):
    cloud of every slot, real slots in tree order, pads repeating the
    cloud's last real point, the inverse map and the position keys."""
    slot = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = slot < S
    # tail slots of a capacity layout and slots past an empty trailing cloud
    # get cloud B - 1 (searchsorted(ptr[1:], slot, right=True), clamped)
    b = _lower_bound(ptr, slot + 1, B, slot >= 0, SEARCH) - 1
    first = tl.load(node_ptr + b, mask=valid, other=0)
    count = tl.load(node_ptr + b + 1, mask=valid, other=0) - first
    local = slot - tl.load(ptr + b, mask=valid, other=0)
    real = valid & (local < count)
    src = first + tl.minimum(local, count - 1)
    src = tl.minimum(tl.maximum(src, 0), N - 1)
    p = tl.load(order + tl.load(final + src, mask=valid, other=0), mask=valid, other=0)
    tl.store(perm + slot, p, mask=valid)
    tl.store(mask_out + slot, real.to(tl.int8), mask=valid)
    tl.store(slot_batch + slot, b, mask=valid)
    tl.store(inverse + p, slot, mask=real)
    tl.store(key_out + slot, _position_key(pos, p, real, D), mask=valid)


#: larger than every sort key of ``_small_kernel`` (44 bits at most): lanes past the cloud
_PAST = tl.constexpr(2**62)


@triton.jit
def _small_kernel(
    pos,
    posf,
    order,
    lists_a,
    lists_b,
    where,
    coord,
    flag,
    csum,
    node_ptr,
    ptr,
    slots,
    perm,
    mask_out,
    slot_batch,
    inverse,
    key_out,
    N,
    LEVELS: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    SHIFT: tl.constexpr,
    CENTER: tl.constexpr,
    CACHE: tl.constexpr,
):
    """The whole build of one cloud of at most ``BLOCK`` slots, one program
    per cloud: the canonical order and the axis lists by sorts in registers
    (``_canonical``'s torch sorts and ``_prologue_kernel``), every level
    (``_levels``) and the cloud's slots of the layout (``_layout_kernel``).

    A sort key is ``(ordered bits << SHIFT) | position``: the position makes
    every key distinct, so the (unstable) bitonic ``tl.sort`` orders ties by
    position, i.e. stably, and the sorted key's low bits say where each entry
    came from.  The canonical order takes ``D`` such sorts, least significant
    axis first; the list of axis ``d >= 1`` one more.

    With ``CENTER`` it first writes the cloud's build coordinates to ``posf``
    (``build._build_coordinates`` without rotation: the float64 positions ``pos``
    less the cloud's lower corner, rounded to float32); else ``posf`` holds them.
    Last, the position key of every slot (``_position_key``)."""
    b = tl.program_id(0).to(tl.int64)
    first = tl.load(node_ptr + b)
    n = tl.load(node_ptr + b + 1) - first
    i = tl.arange(0, BLOCK).to(tl.int64)
    mask = i < n
    offs = first + i
    if CENTER:
        for d in tl.static_range(D):
            x = tl.load(pos + offs * D + d, mask=mask, other=0.0).to(tl.float64)
            corner = tl.min(tl.where(mask, x, float("inf")), 0)
            tl.store(posf + offs * D + d, (x - corner).to(tl.float32), mask=mask)
        tl.debug_barrier()
    src = offs  # the point at canonical position i, so far
    for j in range(D):  # run-time loops: one copy of the sorting network each
        key = (_ordered(posf + src * D + (D - 1 - j), mask) << SHIFT) | i
        key = tl.sort(tl.where(mask, key, _PAST))
        tl.store(order + offs, src, mask=mask)
        tl.debug_barrier()
        src = tl.load(order + first + (key & (BLOCK - 1)), mask=mask, other=0)
        tl.debug_barrier()
    tl.store(order + offs, src, mask=mask)
    for d in tl.static_range(D):
        tl.store(coord + d * N + offs, tl.load(posf + src * D + d, mask=mask), mask=mask)
    tl.store(lists_a + offs, offs.to(tl.int32), mask=mask)  # list 0: the canonical order
    tl.store(where + offs, offs.to(tl.int32), mask=mask)
    for d in range(1, D):
        key = (_ordered(posf + src * D + d, mask) << SHIFT) | i
        key = tl.sort(tl.where(mask, key, _PAST))
        q = first + (key & (BLOCK - 1))
        tl.store(lists_a + d * N + offs, q.to(tl.int32), mask=mask)
        tl.store(where + d * N + q, offs.to(tl.int32), mask=mask)
    tl.debug_barrier()
    count = tl.load(slots + b)
    node = tl.zeros([BLOCK], dtype=tl.int32) + first.to(tl.int32)
    length = tl.zeros([BLOCK], dtype=tl.int32) + count.to(tl.int32)
    _levels(
        lists_a,
        lists_b,
        where,
        coord,
        flag,
        csum,
        offs,
        mask,
        node,
        length,
        first + n,
        N,
        LEVELS,
        D,
        CACHE,
    )
    tl.debug_barrier()
    if LEVELS % 2 == 1:
        final = lists_b
    else:
        final = lists_a
    # the cloud's slots: real points in tree order, pads repeating the last one
    slot = tl.load(ptr + b) + i
    used = i < count
    p = tl.load(
        order + tl.load(final + first + tl.minimum(i, n - 1), mask=used, other=0),
        mask=used,
        other=0,
    )
    tl.store(perm + slot, p, mask=used)
    tl.store(mask_out + slot, mask.to(tl.int8), mask=used)
    tl.store(slot_batch + slot, b + 0 * i, mask=used)
    tl.store(inverse + p, slot, mask=mask)
    tl.store(key_out + slot, _position_key(pos, p, mask, D), mask=used)


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def build_layout_triton(
    pos: Tensor,
    batch: Tensor,
    ball_size: int,
    batch_size: Optional[int],
    num_slots: Optional[int],
    rotate: Optional[float] = None,
) -> TreeLayout:
    """:func:`build.build_ball_tree` on CUDA after the argument checks, from the
    positions as given (any float dtype) and a sorted int64 ``batch``: the same
    layout, bitwise, with its position keys, in about 40 launches for any batch
    (3 for small clouds), with one read-back (none in capacity mode)."""
    from .build import _build_coordinates

    pos = pos.detach().contiguous()
    num_points, dim = pos.shape
    device = pos.device
    i64 = dict(dtype=torch.long, device=device)
    grid = (triton.cdiv(num_points, _BLOCK),)
    lb_steps = _bits(num_points) + 1
    capacity = num_slots is not None
    if not capacity:  # checks and sizes: the one read-back
        out = torch.zeros(6, **i64)
        _scan_kernel[grid](
            pos,
            batch,
            out,
            num_points,
            ball_size,
            D=dim,
            STEPS=lb_steps,
            BLOCK=_BLOCK,
            num_warps=4,
        )
        flags = out.tolist()
        batch_size = check_flags(flags[:4], batch_size, num_points)
        num_slots, max_slots = flags[4], flags[5]
        check_layout_size(num_slots, batch_size, num_points, ball_size)
    else:
        max_slots = num_slots
    clouds = torch.empty(4, batch_size + 1, **i64)
    node_ptr, ptr, unit_ptr, slots = clouds
    _cloud_kernel[(1,)](
        batch,
        node_ptr,
        ptr,
        unit_ptr,
        slots,
        num_points,
        batch_size,
        ball_size,
        UNIT=_BLOCK,
        STEPS=lb_steps,
        CHUNKS=triton.cdiv(batch_size + 1, 1024),
        CB=1024,
        num_warps=4,
    )
    if capacity:
        torch._assert_async(ptr[-1] <= num_slots, "num_slots is smaller than the layout needs")
    elif _SMALL_BLOCKS and max_slots <= _SMALL_BLOCKS[-1]:
        # the coordinates are made in the kernel, unless rotated (a float64 matmul here)
        posf = None if rotate is None else _build_coordinates(pos, batch, rotate)
        return _build_small(pos, posf, node_ptr, ptr, slots, ball_size, num_slots, max_slots)
    posf = _build_coordinates(pos, batch, rotate).contiguous()
    order, final = _tree_lists(posf, batch, slots[:-1], node_ptr, unit_ptr, max_slots)
    layout = _empty_layout(num_points, num_slots, ptr, ball_size)
    _layout_kernel[(triton.cdiv(num_slots, _BLOCK),)](
        final,
        order,
        ptr,
        node_ptr,
        pos,
        layout.perm,
        layout.mask.view(torch.int8),
        layout.slot_batch,
        layout.inverse,
        layout.key,
        num_slots,
        num_points,
        batch_size,
        D=dim,
        SEARCH=_bits(batch_size) + 1,
        BLOCK=_BLOCK,
        num_warps=4,
    )
    return layout


def _empty_layout(num_points: int, num_slots: int, ptr: Tensor, ball_size: int) -> TreeLayout:
    """A layout of uninitialised tensors, for a kernel to fill."""
    perm = torch.empty(num_slots, dtype=torch.long, device=ptr.device)
    return TreeLayout(
        perm=perm,
        mask=torch.empty(num_slots, dtype=torch.bool, device=ptr.device),
        ptr=ptr,
        inverse=torch.empty(num_points, dtype=torch.long, device=ptr.device),
        slot_batch=torch.empty_like(perm),
        ball_size=ball_size,
        key=torch.empty(num_slots, dtype=torch.float64, device=ptr.device),
    )


def _num_levels(max_slots: int) -> int:
    return max(1, math.ceil(math.log2(max(max_slots, 2))))


def _build_small(
    pos: Tensor,
    posf: Optional[Tensor],
    node_ptr: Tensor,
    ptr: Tensor,
    slots: Tensor,
    ball_size: int,
    num_slots: int,
    max_slots: int,
) -> TreeLayout:
    """The layout of a batch whose clouds fit ``_small_kernel``'s largest block:
    one ``_small_kernel`` program per cloud (every slot belongs to a cloud:
    no capacity tail).  ``posf``: the build coordinates, or ``None`` to have
    the kernel make them from ``pos``."""
    num_points, dim = pos.shape
    device = pos.device
    block = min(b for b in _SMALL_BLOCKS if b >= max_slots)
    # int32 scratch: five [D, N] lists, then (as float32) the coordinates by canonical
    # rank and, when the kernel makes them, the build coordinates
    scratch = torch.empty(7, dim, num_points, dtype=torch.int32, device=device)
    lists_a, lists_b, where, flag, csum = scratch[:5]
    coord = scratch[5].view(torch.float32)
    center = posf is None
    posf = scratch[6].view(torch.float32).view(num_points, dim) if center else posf.contiguous()
    order = torch.empty(num_points, dtype=torch.long, device=device)
    layout = _empty_layout(num_points, num_slots, ptr, ball_size)
    _small_kernel[(node_ptr.numel() - 1,)](
        pos,
        posf,
        order,
        lists_a,
        lists_b,
        where,
        coord,
        flag,
        csum,
        node_ptr,
        ptr,
        slots,
        layout.perm,
        layout.mask.view(torch.int8),
        layout.slot_batch,
        layout.inverse,
        layout.key,
        num_points,
        LEVELS=_num_levels(max_slots),
        D=dim,
        BLOCK=block,
        SHIFT=int(math.log2(block)),
        CENTER=center,
        CACHE=_SMALL_CACHE,
        num_warps=_SMALL_WARPS.get(block, 4),
    )
    return layout


def _canonical(posf: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`build._canonical_order` and :func:`build._axis_lists` rows 1.."""
    num_points, dim = posf.shape
    keys = torch.empty(dim, num_points, dtype=torch.long, device=posf.device)
    lsd = torch.empty(max(dim // 2, 1), num_points, dtype=torch.long, device=posf.device)
    _keys_kernel[(triton.cdiv(num_points, _BLOCK),)](
        posf, batch, keys, lsd, num_points, D=dim, NP=dim // 2, BLOCK=_BLOCK, num_warps=4
    )
    order = None
    for j in range(dim // 2):  # least significant coordinates first
        key = lsd[j] if order is None else lsd[j][order]
        perm = torch.argsort(key, stable=True)
        order = perm if order is None else order[perm]
    key = keys[0] if order is None else keys[0][order]
    perm = torch.argsort(key, stable=True)
    order = perm if order is None else order[perm]
    if dim == 1:
        return order, order.view(1, -1)  # rows unused
    keys = keys[1:].index_select(1, order)
    rows = torch.stack([torch.argsort(k, stable=True) for k in keys])
    return order, rows


def _tree_lists(
    posf: Tensor, batch: Tensor, slots: Tensor, node_ptr: Tensor, unit_ptr: Tensor, max_slots: int
) -> Tuple[Tensor, Tensor]:
    """The canonical order and the final list (canonical ranks in tree
    order, int32)."""
    num_points, dim = posf.shape
    device = posf.device
    order, rows = _canonical(posf, batch)
    lists = torch.empty(dim, num_points, dtype=torch.int32, device=device)
    where, lists_buf = torch.empty_like(lists), torch.empty_like(lists)
    flag, csum = torch.empty_like(lists), torch.empty_like(lists)
    coord = torch.empty(dim, num_points, dtype=torch.float32, device=device)
    node, length, end = torch.empty(3, num_points, dtype=torch.int32, device=device)
    grid = (triton.cdiv(num_points, _BLOCK),)
    _prologue_kernel[grid](
        rows,
        order,
        posf,
        batch,
        node_ptr,
        slots,
        lists,
        where,
        coord,
        node,
        length,
        end,
        num_points,
        D=dim,
        BLOCK=_BLOCK,
        num_warps=4,
    )

    num_levels = _num_levels(max_slots)
    fused = min(num_levels, int(math.log2(_BLOCK)))
    for _ in range(num_levels - fused):  # nodes of more than _BLOCK slots
        _flag_kernel[grid](
            lists,
            where,
            coord,
            flag,
            node,
            length,
            end,
            num_points,
            D=dim,
            BLOCK=_BLOCK,
            num_warps=8,
        )
        # one flat scan: row offsets cancel in the partition
        torch.cumsum(flag.view(-1), 0, dtype=torch.int32, out=csum.view(-1))
        _partition_kernel[grid](
            lists,
            lists_buf,
            where,
            flag,
            csum,
            node,
            length,
            num_points,
            D=dim,
            BLOCK=_BLOCK,
            num_warps=8,
        )
        lists, lists_buf = lists_buf, lists

    batch_size = node_ptr.numel() - 1
    _subtree_kernel[(triton.cdiv(num_points, _BLOCK) + batch_size,)](
        lists,
        lists_buf,
        where,
        coord,
        flag,
        csum,
        node,
        length,
        unit_ptr,
        node_ptr,
        num_points,
        batch_size,
        LEVELS=fused,
        SEARCH=_bits(batch_size) + 1,
        D=dim,
        BLOCK=_BLOCK,
        num_warps=8,
    )
    return order, (lists_buf if fused % 2 else lists)[0]

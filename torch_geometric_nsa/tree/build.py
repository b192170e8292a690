"""Ball-tree construction on the device the points live on, all clouds at once."""

import dataclasses
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import (
    MAX_BALL_SIZE,
    MAX_COORD,
    check_flags,
    check_layout_size,
    check_pow2,
    position_key,
)
from .layout import TreeLayout


def rotation_matrix(dim: int, angle: float, dtype=torch.float32, device=None) -> Tensor:
    r"""The fixed rotation used for the rotated tree: the product of plane
    rotations by :obj:`angle` degrees in the planes :math:`(0, 1), (1, 2),
    \dots, (D - 2, D - 1)`.  For :math:`D = 1` it is the identity.

    Returns:
        torch.Tensor: ``[D, D]`` orthogonal matrix ``R``; rotated points are
        ``pos @ R.T``.
    """
    rot = torch.eye(dim, dtype=torch.float64)
    theta = math.radians(angle)
    c, s = math.cos(theta), math.sin(theta)
    for i in range(dim - 1):
        g = torch.eye(dim, dtype=torch.float64)
        g[i, i], g[i, i + 1], g[i + 1, i], g[i + 1, i + 1] = c, -s, s, c
        rot = g @ rot
    return rot.to(dtype=dtype, device=device)


#: float64 rotation matrices already on a device, per ``(dim, angle, device)``: a build with
#: ``rotate`` then copies nothing from the host, so it can be recorded in a CUDA graph
_ROTATIONS: dict = {}


def _device_rotation(dim: int, angle: float, device: torch.device) -> Tensor:
    key = (dim, angle, torch.device(device))
    if key not in _ROTATIONS:
        _ROTATIONS[key] = rotation_matrix(dim, angle, dtype=torch.float64, device=device)
    return _ROTATIONS[key]


def _ordered_bits(x: Tensor) -> Tensor:
    """Maps float32 values to int64 in [0, 2^32) preserving their order."""
    bits = (x.float() + 0.0).view(torch.int32).to(torch.int64)  # -0.0 -> +0.0
    return torch.where(bits < 0, ~bits, bits + 2**31)


def _split_size(length: Tensor) -> Tensor:
    r"""Slots of the left child of a node owning ``length >= 2`` slots: half if
    ``length`` is a power of two, else the largest power of two below it, i.e.
    :math:`2^{\lfloor \log_2(L - 1) \rfloor}` (1 for ``length <= 2``)."""
    _, exp = torch.frexp((length - 1).clamp(min=1).double())  # exact
    return torch.ones_like(length) << (exp.long() - 1)


def _check_inputs(
    pos: Tensor,
    batch: Optional[Tensor],
    ball_size: int,
    rotate: Optional[float],
    batch_size: Optional[int],
    num_slots: Optional[int],
) -> None:
    if not isinstance(pos, Tensor):
        raise TypeError(f"'pos' must be a tensor (got {type(pos).__name__})")
    if pos.dim() != 2:
        raise ValueError(f"'pos' must have shape [num_points, dim] (got shape {tuple(pos.shape)})")
    if pos.size(0) == 0:
        raise ValueError("'pos' is empty: a ball tree needs at least one point")
    if pos.size(1) == 0:
        raise ValueError("'pos' has zero spatial dimensions")
    if not pos.is_floating_point():
        raise TypeError(f"'pos' must be floating point (got {pos.dtype})")
    check_pow2(ball_size, "ball_size", MAX_BALL_SIZE)
    if rotate is not None and (
        not isinstance(rotate, (int, float))
        or isinstance(rotate, bool)
        or not math.isfinite(rotate)
    ):
        raise ValueError(f"'rotate' must be a finite angle in degrees or None (got {rotate!r})")
    if batch is not None:
        if not isinstance(batch, Tensor):
            raise TypeError("'batch' must be a tensor")
        if batch.dim() != 1 or batch.numel() != pos.size(0):
            raise ValueError(
                f"'batch' must have shape [{pos.size(0)}] to match 'pos' (got {tuple(batch.shape)})"
            )
        if batch.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"'batch' must be an integer tensor (got {batch.dtype})")
        if batch.device != pos.device:
            raise ValueError(f"'batch' is on {batch.device} but 'pos' is on {pos.device}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"'batch_size' must be a positive int (got {batch_size!r})")
    if num_slots is not None:
        if batch_size is None and batch is not None:
            raise ValueError("'num_slots' (capacity mode) needs 'batch_size'")
        if not isinstance(num_slots, int) or num_slots % ball_size:
            raise ValueError(
                f"'num_slots' must be a multiple of ball_size={ball_size} (got {num_slots!r})"
            )


def slot_capacity(num_points: int, batch_size: int, ball_size: int) -> int:
    """An upper bound on the slots of any batch of :obj:`batch_size` clouds
    with :obj:`num_points` points in total: pass it as ``num_slots`` to
    :func:`build_ball_tree` for layouts of static size (no host
    synchronisation; CUDA graphs)."""
    return -(-(num_points + batch_size * (ball_size - 1)) // ball_size) * ball_size


@torch.compiler.disable  # reads sizes back to the host: it runs eagerly inside compiled code
def build_ball_tree(
    pos: Tensor,
    batch: Optional[Tensor] = None,
    *,
    ball_size: int = 128,
    rotate: Optional[float] = None,
    batch_size: Optional[int] = None,
    num_slots: Optional[int] = None,
) -> TreeLayout:
    r"""Builds the ball tree of every cloud of a batch at once and returns its
    :class:`TreeLayout`.

    Each cloud of :math:`n` points gets :math:`\lceil n/m \rceil m` slots.  A
    tree node owning :math:`L` slots and :math:`r` real points splits along
    its axis of largest spread: the left child gets :math:`P` slots
    (:math:`L/2` if :math:`L` is a power of two, else the largest power of two
    below :math:`L`) and the :math:`\min(P, r)` points of smallest coordinate,
    the right child the rest.  Hence every aligned run of :math:`2^j` slots is
    a subtree (a ball) and the at most :math:`m - 1` pads of a cloud sit at its
    end, instead of padding every cloud to the next power of two.

    The tree is built level by level for all clouds together (no Python loop
    over clouds), on the device of :obj:`pos`: on the CPU with one sort per
    level, on CUDA without sorting in the level loop (presorted median splits,
    Triton kernels, bitwise the same layout); :math:`O(N)` memory.

    Coordinates: every cloud is moved to the lower corner of its bounding box in
    float64 (then rotated, with :obj:`rotate`) and rounded to float32, so the tree of a
    float64 cloud far from the origin is that of the cloud at the origin.

    Determinism: the result is a function of the input only.  Points are first
    ordered lexicographically by these float32 coordinates and
    ranked along every axis with ties broken by that order, and splits compare
    these ranks, so for distinct points the layout does not depend on the
    order of the points within a cloud; coordinate ties along a split axis are
    broken by the lexicographic order.  The split axis is the one of largest
    spread, the lowest axis on ties.

    Under :func:`torch.compile` the build runs eagerly (a graph break), so a compiled
    model that builds its trees in ``forward`` compiles.

    Host synchronisation: by default the number of slots (and, without
    :obj:`batch_size`, the number of clouds) is read back together with the
    input checks (once on CUDA).  Given :obj:`batch_size` *and* :obj:`num_slots` (see
    :func:`slot_capacity`) the build never synchronises; the layout then ends
    with unused tail slots and data-dependent input checks are skipped.

    Args:
        pos (torch.Tensor): ``[N, D]`` positions, any float dtype, :math:`D
            \ge 1`.
        batch (torch.Tensor, optional): ``[N]`` sorted cloud index of every
            point (PyG's ``batch`` vector).  Clouds with no points (gaps in the
            ids) are allowed and get zero slots.  (default: :obj:`None`, one
            cloud)
        ball_size (int): the largest ball size :math:`m`, a power of two.
            (default: :obj:`128`)
        rotate (float, optional): build the tree of the points rotated by this
            angle in degrees (see :func:`rotation_matrix`); the layout has the
            same :obj:`ptr` and :obj:`mask` as the unrotated one.
            (default: :obj:`None`)
        batch_size (int, optional): the number of clouds :math:`B` (PyG's
            ``num_graphs``).  (default: :obj:`None`, ``batch[-1] + 1``)
        num_slots (int, optional): static number of slots (capacity mode).
            (default: :obj:`None`)

    Returns:
        TreeLayout: the layout, on the device of :obj:`pos`.
    """
    _check_inputs(pos, batch, ball_size, rotate, batch_size, num_slots)
    device, num_points = pos.device, pos.size(0)
    rotate = None if rotate is None else float(rotate)
    if _use_triton(pos):  # the level loop without sorts: ~40 launches, 3 for small clouds
        from ._triton import build_layout_triton

        if batch is None:
            batch, batch_size = torch.zeros(num_points, dtype=torch.long, device=device), 1
        layout = build_layout_triton(pos, batch.long(), ball_size, batch_size, num_slots, rotate)
    else:
        posf = _build_coordinates(pos, batch, rotate)
        if batch is None:
            batch, batch_size = torch.zeros(num_points, dtype=torch.long, device=device), 1
        layout = _build_torch(pos, posf, batch.long(), ball_size, batch_size, num_slots)
        key = position_key(pos).index_select(0, layout.perm)
        layout = dataclasses.replace(layout, key=key.masked_fill(~layout.mask, math.nan))
    return dataclasses.replace(layout, rotate=rotate)


def _build_coordinates(pos: Tensor, batch: Optional[Tensor], rotate: Optional[float]) -> Tensor:
    """The float32 coordinates the tree is built on: every cloud relative to the lower
    corner of its bounding box (subtracted in float64, so float64 clouds far from the origin
    keep their resolution), rotated by :obj:`rotate` degrees."""
    p = pos.detach().double()
    if batch is None:
        corner = p.amin(0, keepdim=True)
    else:  # the first position of every point's cloud (batch is sorted; checked later)
        idx = torch.arange(p.size(0), device=p.device)
        first = torch.ones_like(batch, dtype=torch.bool)
        first[1:] = batch[1:] != batch[:-1]
        start = torch.where(first, idx, 0).cummax(0).values
        corner = torch.full_like(p, math.inf).scatter_reduce_(
            0, start.unsqueeze(1).expand_as(p), p, "amin"
        )[start]
    p = p - corner
    if rotate is not None:
        p = p @ _device_rotation(p.size(1), rotate, p.device).T
    return p.float()


def _build_torch(
    pos: Tensor,
    posf: Tensor,
    batch: Tensor,
    ball_size: int,
    batch_size: Optional[int],
    num_slots: Optional[int],
) -> TreeLayout:
    """The build with torch ops (CPU, and CUDA without Triton): one sort per level."""
    device, num_points = posf.device, posf.size(0)
    if num_slots is None:
        # One read-back carries the input checks (and the cloud count).
        batch_size = check_flags(
            torch.stack(
                [
                    (~torch.isfinite(pos) | (pos.abs() > MAX_COORD)).any().long(),
                    (batch[1:] < batch[:-1]).any().long(),
                    (batch[0] < 0).long(),
                    batch[-1] + 1,
                ]
            ).tolist(),
            batch_size,
            num_points,
        )

    # offsets of every cloud's real points (batch is sorted; no atomics)
    node_ptr = torch.searchsorted(batch, torch.arange(batch_size + 1, device=device))
    counts = node_ptr.diff()
    slots = (counts + ball_size - 1) // ball_size * ball_size
    ptr = torch.cat([counts.new_zeros(1), slots.cumsum(0)])

    if num_slots is None:
        # the layout's size and the depth of the tree: the second read-back
        num_slots, max_slots = torch.stack([ptr[-1], slots.max()]).tolist()
        check_layout_size(num_slots, batch_size, num_points, ball_size)
    else:
        torch._assert_async(ptr[-1] <= num_slots, "num_slots is smaller than the layout needs")
        max_slots = num_slots

    order = _tree_order(posf, batch, slots, node_ptr, max_slots=max_slots)
    return _assemble(order, counts, ptr, node_ptr, num_slots, ball_size)


def _use_triton(pos: Tensor) -> bool:
    if not pos.is_cuda or pos.numel() >= 2**31:
        return False
    try:
        from ._triton import ENABLED
    except ImportError:
        return False
    return ENABLED


def _canonical_order(posf: Tensor, batch: Tensor) -> Tuple[Tensor, Tensor]:
    """The canonical start of the build: points ordered lexicographically by
    their coordinates within each cloud (clouds in order).  Returns the order
    and the ``[N, D]`` order-preserving coordinate bits in that order."""
    bits = _ordered_bits(posf)
    order = torch.arange(posf.size(0), device=posf.device)
    for d in range(posf.size(1) - 1, 0, -1):
        # 32-bit keys: half the radix passes of int64 keys
        key = (bits[order, d] - 2**31).int()
        order = order[torch.argsort(key, stable=True)]
    key = (batch[order] << 32) | bits[order, 0]
    order = order[torch.argsort(key, stable=True)]
    return order, bits[order]


def _axis_lists(bits: Tensor, batch: Tensor) -> Tensor:
    """``[D, N]``: row ``a`` lists the canonical ranks of every cloud's points
    sorted by coordinate ``a`` (ties by canonical rank), clouds in order.  Row
    0 is the canonical order itself."""
    num_points, dim = bits.shape
    rows = [torch.arange(num_points, device=bits.device)]
    for d in range(1, dim):
        rows.append(torch.argsort((batch << 32) | bits[:, d], stable=True))
    return torch.stack(rows)


def _tree_order(
    posf: Tensor, batch: Tensor, slots: Tensor, node_ptr: Tensor, max_slots: int
) -> Tensor:
    r"""Real points in tree order (cloud by cloud); see :func:`build_ball_tree`.

    Every point carries its rank along each axis within its cloud (from
    :func:`_axis_lists`, ties by canonical rank), so a split compares ranks:
    the left child of a node gets its :math:`P` points of smallest rank along
    the split axis.  This torch loop sorts by ``(node, rank)`` once per level;
    the CUDA path (``_triton.py``) gives the same result without sorting in
    the level loop (presorted lists and stable partitions).
    """
    num_points, dim = posf.shape
    device = posf.device
    order, bits = _canonical_order(posf, batch)
    lists = _axis_lists(bits, batch)
    rank = (
        torch.empty_like(lists)
        .scatter_(1, lists, torch.arange(num_points, device=device).expand(dim, -1))
        .T
    )
    x = posf[order]  # kept in the current order

    # After the canonical sort position p holds a point of cloud batch[p].
    first = node_ptr[batch]  # first position of the cloud
    local = torch.arange(num_points, device=device) - first
    start = torch.zeros_like(local)  # node's first slot (cloud-local)
    length = slots[batch]  # node's slot count
    lo, hi = torch.empty_like(x), torch.empty_like(x)
    num_levels = max(1, math.ceil(math.log2(max(max_slots, 2))))
    for _ in range(num_levels):
        node = first + start  # node id: its first position
        idx = node.unsqueeze(1).expand(-1, dim)
        lo.fill_(math.inf).scatter_reduce_(0, idx, x, "amin")
        hi.fill_(-math.inf).scatter_reduce_(0, idx, x, "amax")
        axis = (hi - lo).index_select(0, node).argmax(dim=1, keepdim=True)
        perm = torch.argsort((node << 32) | rank.gather(1, axis).squeeze(1))
        order, x, rank = order[perm], x[perm], rank[perm]
        half = _split_size(length)
        right = (local - start >= half) & (length > 1)
        start = start + half * right
        length = torch.where(right, length - half, torch.minimum(length, half))
    return order


def _assemble(
    order: Tensor, counts: Tensor, ptr: Tensor, node_ptr: Tensor, num_slots: int, ball_size: int
) -> TreeLayout:
    device = order.device
    num_points, batch_size = order.numel(), counts.numel()
    slot = torch.arange(num_slots, device=device)
    slot_batch = torch.searchsorted(ptr[1:], slot, right=True)
    slot_batch = slot_batch.clamp_(max=batch_size - 1)
    local = slot - ptr[slot_batch]
    mask = local < counts[slot_batch]
    # Pads repeat the last real point of their cloud.
    src = node_ptr[slot_batch] + torch.minimum(local, counts[slot_batch] - 1)
    perm = order[src.clamp_(0, num_points - 1)]
    return TreeLayout.from_slots(perm, mask, ptr, num_points, ball_size, slot_batch=slot_batch)


def ball_radius(layout: TreeLayout, pos: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    r"""Radius of every ball of :obj:`size` slots: the largest distance of its
    real points from their centroid.

    Returns:
        (torch.Tensor, torch.Tensor): ``[S / size]`` radii and ``[S / size]``
        bool, whether the ball holds a real point.
    """
    layout.check_ball_size(size)
    p = layout.gather(pos.double()).view(-1, size, pos.size(1))
    m = layout.mask.view(-1, size, 1).double()
    cnt = m.sum(1)
    centre = (p * m).sum(1) / cnt.clamp(min=1)
    dist = (p - centre.unsqueeze(1)).norm(dim=-1) * m.squeeze(-1)
    return dist.amax(1), cnt.squeeze(-1) > 0

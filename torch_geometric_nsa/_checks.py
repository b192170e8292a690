"""The package's own input checks, shared by ``tree``, ``transforms``, ``nn`` and ``ops``.

A leaf module: it imports nothing from the package, so every floor can use it (and
``tree/build.py`` and ``tree/_triton.py`` no longer import each other for it).

Two kinds of checks live here:

* argument checks on Python values and shapes (free: no tensor is read);
* data checks on tensor values.  On the CPU they cost a pass over the data.  On CUDA they
  never synchronise with the host: they are enqueued with :func:`torch._assert_async`
  (a failed check is a device-side assert; its message is printed by the device, and the
  CUDA context cannot be used afterwards: rerun on the CPU to get the Python exception).
"""

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

#: The largest ball (and block) size accepted anywhere: every cloud is padded to a multiple
#: of it, so an absurd value (``2**30``) would allocate gigabytes for ten points.
MAX_BALL_SIZE = 2**20

#: A layout, and the number of clouds of a batch, may hold at most
#: ``max(LAYOUT_FACTOR * N, LAYOUT_FLOOR)`` entries for ``N`` points: more means mostly
#: padding or empty clouds, i.e. a wrong ``ball_size`` or a wrong batch id.
LAYOUT_FACTOR = 16
LAYOUT_FLOOR = 2**24

#: The message of every failed tree-to-points check.
TREE_MISMATCH = "the tree does not match these points (a transform after BallTree changed them?)"


def is_pow2(x) -> bool:
    """Whether :obj:`x` is a positive power of two (and a Python int, not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and (x & (x - 1)) == 0


def check_pow2(value, name: str, upper: Optional[int] = None) -> None:
    """Raises :class:`ValueError` unless :obj:`value` is a positive power of two (at most
    :obj:`upper`, if given)."""
    if not is_pow2(value):
        raise ValueError(f"'{name}' must be a positive power of two (got {value!r})")
    if upper is not None and value > upper:
        raise ValueError(f"'{name}' must be at most {upper} (got {value})")


def pos_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype positions are computed in for features of :obj:`dtype`: float64 for
    float64 models, else float32 (distances of a low-precision cloud keep their low
    bits)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def max_layout_entries(num_points: int) -> int:
    """The largest number of slots (and of clouds) a layout of :obj:`num_points` points may
    have; see :data:`LAYOUT_FACTOR`."""
    return max(LAYOUT_FACTOR * num_points, LAYOUT_FLOOR)


#: the largest coordinate magnitude the tree build takes (2**120, about 1.3e36, exact in
#: float32): a cloud's span then fits float32, rotated too (for fewer than ~28,000 dims)
MAX_COORD = 2.0**120


def check_flags(flags: Sequence[int], batch_size: Optional[int], num_points: int) -> int:
    """Raises on the data-dependent input checks of the tree build, read back from the
    device in one transfer: ``[non-finite pos, unsorted batch, negative id, last id + 1]``;
    returns the number of clouds."""
    nonfinite, unsorted, negative, num_clouds = (int(f) for f in flags[:4])
    if nonfinite:
        raise ValueError(
            "'pos' contains NaN or infinite values, or coordinates beyond +-2**120 (~1.3e36)"
        )
    if unsorted:
        raise ValueError(
            "'batch' must be sorted (points of one cloud contiguous, clouds in increasing order)"
        )
    if negative:
        raise ValueError("'batch' contains negative cloud indices")
    if batch_size is not None:
        if num_clouds > batch_size:
            raise ValueError(
                f"'batch' holds cloud index {num_clouds - 1} but batch_size={batch_size}"
            )
        num_clouds = batch_size
    check_num_clouds(num_clouds, num_points)
    return num_clouds


def check_num_clouds(num_clouds: int, num_points: int, name: str = "batch") -> None:
    """Raises when :obj:`num_clouds` clouds (each costs memory, empty or not) are far more
    than :obj:`num_points` points can fill."""
    limit = max_layout_entries(num_points)
    if num_clouds > limit:
        raise ValueError(
            f"'{name}' asks for {num_clouds} clouds for {num_points} points (at most {limit}): "
            "is a cloud index far too large?"
        )


def check_layout_size(num_slots: int, num_clouds: int, num_points: int, ball_size: int) -> None:
    """Raises before a layout of :obj:`num_slots` slots is allocated when it would be mostly
    padding (see :data:`LAYOUT_FACTOR`)."""
    limit = max_layout_entries(num_points)
    if num_slots + num_clouds > limit:
        raise ValueError(
            f"'ball_size'={ball_size} needs {num_slots} slots for {num_points} points in "
            f"{num_clouds} clouds (at most {limit}): choose a smaller ball_size"
        )


def device_assert(cond: Tensor, message: str) -> None:
    """Raises ``RuntimeError(message)`` unless the boolean scalar :obj:`cond` holds: at once
    on the CPU, as a device-side assert on CUDA (no host synchronisation), inside compiled
    graphs too."""
    torch._assert_async(cond, message)


# --- position keys: the fingerprint a tree keeps of the points it was built on ----------------


#: the key's weights and shifts, :math:`w_d = 1 + d\,\mathrm{W\_STEP}` (distinct: axes are not
#: exchangeable) and :math:`c_d = \mathrm{C0} + d\,\mathrm{C\_STEP}` (nonzero: a mirrored
#: cloud changes its keys); the CUDA tree build computes them the same way in its kernels
KEY_W_STEP = (math.sqrt(5.0) - 1.0) / 2.0
KEY_C0 = math.sqrt(0.5)
KEY_C_STEP = math.pi / 10.0


def _key_weights(dim: int, device) -> Tensor:
    d = torch.arange(dim, dtype=torch.float64, device=device)
    return torch.stack([1.0 + d * KEY_W_STEP, KEY_C0 + d * KEY_C_STEP])


def position_key(pos: Tensor) -> Tensor:
    r"""The key of every point, :math:`h(\mathbf{p}) = \sum_d w_d |p_d + c_d|` in float64
    (fixed distinct :math:`w_d > 0` and :math:`c_d \ne 0`): ``[N]``.

    A sum of nonnegative terms, so it has no cancellation and two computations of it agree
    to a relative ``1e-12`` on any device: a tree stores the key of the point in each slot,
    and a moved, rotated, mirrored, dropped or reordered point changes it."""
    wc = _key_weights(pos.size(1), pos.device)
    p = pos.detach().to(torch.float64)
    return ((p + wc[1]).abs() * wc[0]).sum(1)


#: relative tolerance of a key comparison (a float64 key of float64 or float32 positions is
#: reproduced to ~1e-15; a moved point changes it by ~|dp| / |p + c|)
KEY_RTOL = 1e-10


def check_tree(tree, pos: Tensor, batch: Optional[Tensor]) -> None:
    """Checks that the layout :obj:`tree` (a :class:`~torch_geometric_nsa.tree.TreeLayout`)
    belongs to the points ``pos`` and their clouds ``batch``.

    Free checks (raise :class:`ValueError`): the number of points and the device.  Data
    checks (:func:`device_assert`, no host synchronisation): ``pos`` is finite, every real
    slot holds a point of the slot's cloud (``batch[perm] == slot_batch``; without
    :obj:`batch` the tree's clouds are taken as given), and every real slot's stored key
    (if the tree has one) equals the key of the point it holds now.  Cost: ``O(N D + S)`` elementwise work and
    three reductions."""
    num_points = pos.size(0)
    if tree.num_points != num_points:
        raise ValueError(
            f"{TREE_MISMATCH}: the tree holds {tree.num_points} points, 'pos' has {num_points}"
        )
    if tree.device != pos.device:
        raise ValueError(f"the tree is on {tree.device} but 'pos' is on {pos.device}")
    mask = tree.mask
    device_assert(torch.isfinite(pos).all(), "'pos' contains NaN or infinite values")
    if batch is not None:
        same = batch.long().index_select(0, tree.perm) == tree.slot_batch
        device_assert(
            (same | ~mask).all(),
            f"{TREE_MISMATCH}: a slot holds a point of another cloud ('batch' differs from "
            "the tree's clouds)",
        )
    if tree.key is not None:
        now = position_key(pos).index_select(0, tree.perm)
        ok = (now - tree.key).abs() <= KEY_RTOL * now
        device_assert((ok | ~mask).all(), f"{TREE_MISMATCH}: points moved since it was built")


def check_channels(name: str, value, allow_lazy: bool = False) -> None:
    """Raises unless :obj:`value` is a positive int (or ``-1`` when :obj:`allow_lazy`)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and (value > 0 or (allow_lazy and value == -1)):
        return
    lazy = " or -1 (lazy)" if allow_lazy else ""
    raise ValueError(f"'{name}' must be a positive int{lazy} (got {value!r})")


def check_no_pos_grad(pos: Tensor) -> None:
    """Raises when gradients with respect to positions are requested: they are not computed
    (see the docs' guarantees and limits)."""
    if pos.requires_grad:
        raise ValueError(
            "'pos' requires grad, but Erwin NSA does not differentiate with respect to "
            "positions (the tree, the distance bias and the position projections treat them "
            "as constants): pass pos.detach(), or compute forces by another route"
        )

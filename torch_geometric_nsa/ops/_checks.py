"""Cheap, shape-only input validation for the public ops (no host synchronisation)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._checks import is_pow2 as _is_pow2


def check_size(name: str, value: int) -> None:
    if not _is_pow2(value):
        raise ValueError(f"'{name}' must be a positive power of two (got {value!r})")


def check_divides(small_name: str, small: int, big_name: str, big: int) -> None:
    if big % small != 0:
        raise ValueError(f"'{small_name}' ({small}) must divide '{big_name}' ({big})")


def check_qkv(fn: str, q: Tensor, *others: Sequence) -> None:
    """``q`` must be ``[S, H, D]`` floating with ``D >= 8``; ``others`` are ``(name, tensor)``
    pairs that must share q's dtype and device."""
    if not isinstance(q, Tensor) or q.dim() != 3:
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise ValueError(f"{fn}: 'q' must have shape [S, H, D] (got {shape})")
    if not q.is_floating_point():
        raise TypeError(f"{fn}: 'q' must be a floating point tensor (got {q.dtype})")
    if q.shape[2] < 8:
        raise ValueError(f"{fn}: head dim D must be >= 8 (got {q.shape[2]})")
    for name, t in others:
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: '{name}' has dtype {t.dtype} but 'q' has {q.dtype}")


def check_shape(fn: str, name: str, t: Tensor, shape: Sequence[int], what: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: '{name}' must be a tensor (got {type(t).__name__})")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{fn}: '{name}' must have shape {what} = {list(shape)} (got {list(t.shape)})"
        )


def check_dtype(fn: str, name: str, t: Tensor, kind: str) -> None:
    ok = {
        "bool": t.dtype == torch.bool,
        "int": not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
        "float": t.is_floating_point(),
    }[kind]
    if not ok:
        raise TypeError(f"{fn}: '{name}' must be a {kind} tensor (got {t.dtype})")


def check_device(fn: str, q: Tensor, *others) -> None:
    for name, t in others:
        if t.device != q.device:
            raise ValueError(
                f"{fn}: '{name}' is on {t.device} but 'q' is on {q.device}; "
                "all tensors must be on the same device"
            )


def check_ptr(fn: str, ptr: Tensor) -> None:
    if not isinstance(ptr, Tensor) or ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError(f"{fn}: 'ptr' must be a 1-D tensor [B + 1]")
    check_dtype(fn, "ptr", ptr, "int")


def check_scale(fn: str, scale: Optional[float]) -> None:
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(
            f"{fn}: 'scale' must be a Python number or None (got {type(scale).__name__})"
        )


def check_bias(fn: str, bias, q: Tensor, num_blocks: int) -> None:
    """A :class:`~torch_geometric_nsa.ops.DistanceBias` ``(sigma [H], pos [S, P],
    centre [S // c, P])`` for the queries ``q [S, H, D]``, or ``None``."""
    if bias is None:
        return
    if not isinstance(bias, tuple) or len(bias) != 3:
        raise TypeError(f"{fn}: 'bias' must be a DistanceBias(sigma, pos, centre) or None")
    sigma, pos, centre = bias
    S, H, _ = q.shape
    check_shape(fn, "bias.sigma", sigma, (H,), "[H]")
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[0] != S or pos.shape[1] < 1:
        shape = list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"{fn}: 'bias.pos' must have shape [S, P] with S = {S} (got {shape})")
    check_shape(fn, "bias.centre", centre, (num_blocks, pos.shape[1]), "[S // block_size, P]")
    for name, t in (("bias.sigma", sigma), ("bias.pos", pos), ("bias.centre", centre)):
        check_dtype(fn, name, t, "float")
    check_device(fn, q, ("bias.sigma", sigma), ("bias.pos", pos), ("bias.centre", centre))

"""Shared helpers of the Triton kernels (private)."""

from __future__ import annotations

import os

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(x: int) -> int:
    x = int(x)
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def head_block(D: int) -> int:
    """Padded head dim inside kernels (>= 16 for tl.dot)."""
    return max(16, next_pow2(D))


def dot_precision(dtype: torch.dtype) -> str:
    """Input precision of fp32 ``tl.dot``: IEEE unless the user allows TF32 (torch's flag)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def check_dtype(*ts: torch.Tensor) -> None:
    dt = ts[0].dtype
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported dtype {dt}: use float32, float16 or bfloat16")
    for t in ts[1:]:
        if t.dtype != dt:
            raise TypeError(f"dtype mismatch: {t.dtype} vs {dt}")


def as_u8(mask: torch.Tensor) -> torch.Tensor:
    """A mask as the contiguous uint8 vector the kernels read: in eager mode a bool tensor is
    reinterpreted in place (same bytes, no copy kernel); traced (``torch.compile``, where Inductor
    fuses the cast and its bool views are unreliable) and other dtypes are converted."""
    mask = mask.contiguous()
    if mask.dtype == torch.bool and not torch.compiler.is_compiling():
        return mask.view(torch.uint8)
    return mask.to(torch.uint8)

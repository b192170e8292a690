"""Launch configurations of the Triton kernels: one small table, filled from measurements.

Every kernel launch takes its tile sizes, ``num_warps`` and ``num_stages`` (plus a few
kernel-specific knobs) from :func:`get`.  Lookup order, first hit wins:

1. explicit arguments of the public function (``block_m``, ``block_n``, ``num_warps``,
   ``num_stages``; ``0`` = not given), applied to every kernel of the op;
2. :data:`TABLE` -- measured entries (``benchmarks/tune_kernels.py`` prints them), keyed
   ``(kernel, arch, dtype class, padded head dim, rows)`` for a launch whose row tile is fixed
   by the problem (:data:`ROW_KEYED`: ``sel_fwd`` / ``sel_bwd_dq``, the padded query group), then
   ``(kernel, arch, dtype class, padded head dim)`` for every launch of the kernel: an entry
   measured at one group size applies only to that group tile;
3. the built-in defaults of :func:`_base` (the v1 defaults: square 64 tiles, 4 warps, 3 stages).

Kernels (one entry each): ``ball_fwd``, ``ball_bwd_dq``, ``ball_bwd_dkdv``, ``cmp_fwd``,
``cmp_bwd_dq``, ``cmp_bwd_dkdv``, ``select``, ``sel_fwd``, ``sel_bwd_dq``, ``sel_bwd_dkdv``.
Keys of a config: ``BM``, ``BN`` (query / key tile), ``num_warps``, ``num_stages`` and

- ``select``: ``BN`` compressed blocks per streamed chunk (``BM`` is the group, unused);
- ``sel_fwd`` / ``sel_bwd_dq``: ``BN`` keys per gathered tile (``BM`` is the group, unused);
- ``sel_bwd_dkdv``: ``BM`` rows of gathered query groups, ``BN`` key rows (<= ``s``).

Arch: ``"sm90"`` (Hopper), ``"sm80"`` (Ampere / Ada), ``"interp"`` (``TRITON_INTERPRET=1``).
Dtype class: ``"16"`` (float16 / bfloat16) or ``"32"``.  Resolution happens inside the custom ops
(at run time, on plain ints), so ``torch.compile`` only ever sees the int arguments.
"""

from __future__ import annotations

import functools

import torch

from ._common import head_block, interpret_mode

KERNELS = (
    "ball_fwd",
    "ball_bwd_dq",
    "ball_bwd_dkdv",
    "cmp_fwd",
    "cmp_bwd_dq",
    "cmp_bwd_dkdv",
    "select",
    "sel_fwd",
    "sel_bwd_dq",
    "sel_bwd_dkdv",
)

#: The kernels whose row tile is fixed by the problem (the padded query group): their table
#: entries may also be keyed by it (the ``rows`` of :func:`get`).
ROW_KEYED = ("sel_fwd", "sel_bwd_dq")

#: Measured configs: ``(kernel, arch, dtype class, padded head dim) -> partial config``.
#: Keys missing from an entry fall back to :func:`_base`.
#: Sweep of 2026-11-27 on an H100 80GB HBM3 (torch 2.11, triton 3.6), bf16, 8 heads x head dim
#: 32, m = 128, c = s = g = 32, topk = 8, N = 65,536 in one cloud:
#: ``PYTHONPATH=. python benchmarks/tune_kernels.py`` (sel_fwd from a second sweep with smaller
#: tiles and fewer warps: ``--kernels sel_fwd --sweep-only``).  The whole table passed the bf16
#: reference check of the sweep, and the CUDA test grid passed with it (62 tests, H100 and H200).
#: Re-swept 2026-11-28 on an H100 after the v3 kernels (bias masks, transposed dK/dV):
#: ``--kernels cmp_bwd_dkdv,cmp_fwd,cmp_bwd_dq,select,ball_bwd_dkdv,sel_bwd_dkdv --sweep-only``
#: changed ``cmp_bwd_dq``, ``cmp_bwd_dkdv`` and ``select`` (select: 0.95 -> 0.65 ms at 64k, and
#: 0.68 -> 0.23 ms at ``--size 16x4096``); the CUDA grid passed with the new table.
#: Head dims 64 and 128 (sel_fwd only), 2026-11-30 on an H200 (torch 2.11, triton 3.6), same
#: problem: ``--head-dim 64 --kernels sel_fwd`` (0.448 -> 0.238 ms at 64k, 77 -> 144 TFLOP/s,
#: SDPA 312) and ``--head-dim 128`` (0.906 -> 0.431 ms, 76 -> 159 TFLOP/s, SDPA 352); both passed
#: the sweep's bf16 reference check.
TABLE: dict[tuple, dict[str, int]] = {
    ("ball_fwd", "sm90", "16", 32): dict(BM=128, BN=32, num_warps=4, num_stages=3),
    ("ball_bwd_dq", "sm90", "16", 32): dict(BM=64, BN=32, num_warps=4, num_stages=3),
    ("ball_bwd_dkdv", "sm90", "16", 32): dict(BM=32, BN=64, num_warps=4, num_stages=3),
    ("cmp_fwd", "sm90", "16", 32): dict(BM=64, BN=128, num_warps=4, num_stages=3),
    ("cmp_bwd_dq", "sm90", "16", 32): dict(BM=64, BN=64, num_warps=4, num_stages=3),
    ("cmp_bwd_dkdv", "sm90", "16", 32): dict(BM=128, BN=64, num_warps=4, num_stages=3),
    ("select", "sm90", "16", 32): dict(BN=64, num_warps=1, num_stages=3),
    ("sel_fwd", "sm90", "16", 32): dict(BN=32, num_warps=1, num_stages=2),
    # 64-row groups at head dim 32 (H200, ``--group-size 64 --kernels sel_fwd``): 0.167 ms with
    # the one-warp entry above, 0.128 with the built-in default, 0.123 with this one
    ("sel_fwd", "sm90", "16", 32, 64): dict(BN=128, num_warps=4, num_stages=2),
    # measured with 32-row groups (g = 32); with 64-row groups one warp holds a 64 x 128
    # accumulator and the kernel ran 2.5x slower than the default (v9), so rows = 32 only
    ("sel_fwd", "sm90", "16", 64, 32): dict(BN=32, num_warps=1, num_stages=2),
    ("sel_fwd", "sm90", "16", 128, 32): dict(BN=32, num_warps=1, num_stages=2),
    ("sel_bwd_dq", "sm90", "16", 32): dict(BN=64, num_warps=2, num_stages=2),
    ("sel_bwd_dkdv", "sm90", "16", 32): dict(BM=64, BN=32, num_warps=2, num_stages=3),
}


@functools.lru_cache(maxsize=None)
def _arch_of(index: int) -> str:
    major, _ = torch.cuda.get_device_capability(index)
    return "sm90" if major >= 9 else "sm80"


def arch(device: torch.device) -> str:
    if interpret_mode() or device.type != "cuda":
        return "interp"
    return _arch_of(device.index if device.index is not None else torch.cuda.current_device())


def dtype_class(dtype: torch.dtype) -> str:
    return "32" if dtype == torch.float32 else "16"


def _base(kernel: str, BD: int, dc: str, ar: str) -> dict[str, int]:
    if ar == "interp":  # few, large blocks
        t = 128
    else:
        t = 32 if (dc == "32" and BD > 64) else 64
    cfg = dict(BM=t, BN=t, num_warps=4, num_stages=3)
    if kernel == "select":
        cfg["BN"] = 128 if ar == "interp" else 64
    elif kernel in ("sel_fwd", "sel_bwd_dq"):
        cfg["BN"] = 128 if (ar == "interp" or (BD <= 64 and dc == "16")) else t
    return cfg


def get(
    kernel: str,
    D: int,
    dtype: torch.dtype,
    device: torch.device,
    block_m: int = 0,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
    rows: int = 0,
) -> dict[str, int]:
    """Config of one kernel launch (a fresh dict); ``rows``: the launch's fixed row tile
    (0: none; only for the kernels of :data:`ROW_KEYED`), which picks the table's entries
    measured at that tile."""
    if rows and kernel not in ROW_KEYED:
        raise ValueError(f"{kernel!r} has no row-keyed entries (rows={rows})")
    BD, dc, ar = head_block(D), dtype_class(dtype), arch(device)
    cfg = _base(kernel, BD, dc, ar)
    key = (kernel, ar, dc, BD)
    entry = TABLE.get(key + (rows,)) if rows else None
    cfg.update(TABLE.get(key, {}) if entry is None else entry)
    for key, val in (
        ("BM", block_m),
        ("BN", block_n),
        ("num_warps", num_warps),
        ("num_stages", num_stages),
    ):
        if val > 0:
            cfg[key] = int(val)
    return cfg


def for_tensor(
    kernel: str,
    q: torch.Tensor,
    block_m: int = 0,
    block_n: int = 0,
    num_warps: int = 0,
    num_stages: int = 0,
    rows: int = 0,
) -> dict[str, int]:
    """:func:`get` for a launch on ``q``'s head dim, dtype and device (``q`` is ``[..., D]``)."""
    return get(
        kernel, q.shape[-1], q.dtype, q.device, block_m, block_n, num_warps, num_stages, rows
    )


def launch_meta(cfg: dict[str, int]) -> dict[str, int]:
    """The launch keywords of a config (``num_warps``, ``num_stages``)."""
    return dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])

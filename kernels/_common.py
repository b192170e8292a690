"""Shared helpers of the Triton kernels (private)."""

from __future__ import annotations

import inspect
import os

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.weak import WeakIdKeyDictionary

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launch(kernel, grid):
    """``kernel[grid]``, or, while the ops are traced (a dispatch mode is active: fake tensors,
    functionalization under ``torch.compile``), the kernel wrapped by
    :func:`torch.library.wrap_triton`, so that the traced graph holds the kernel launch itself
    and Inductor launches it from its generated code (see :func:`custom_ops_with_eager_path`)."""
    if interpret_mode() or not _traced():
        return kernel[grid]
    return torch.library.wrap_triton(kernel)[grid]


def next_pow2(x: int) -> int:
    x = int(x)
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def head_block(D: int) -> int:
    """Padded head dim inside kernels (>= 16 for tl.dot)."""
    return max(16, next_pow2(D))


def group_block(group_size: int) -> int:
    """Row tile of the selected-attention kernels: one query group, padded (>= 16 for tl.dot).
    Config entries of those kernels are keyed by it (``rows``)."""
    return max(16, next_pow2(group_size))


def wide_offsets(*ts: torch.Tensor) -> bool:
    """Whether element offsets into these tensors may pass int32: kernels that take an ``I64``
    constexpr then compute them in int64 (else int32, cheaper)."""
    return max(t.numel() for t in ts) >= 2**31


def dot_precision(dtype: torch.dtype) -> str:
    """Input precision of fp32 ``tl.dot``: IEEE unless the user allows TF32 (torch's flag)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


#: smallest ball and selection block the kernels take: ``tl.dot`` needs tiles of at least 16
#: along its reduction, and a tile never spans two balls (or two selection blocks)
MIN_BALL_SIZE = 16
MIN_SELECT_SIZE = 16


def unsupported_sizes(ball_size: int | None = None, select_size: int | None = None) -> str | None:
    """Why the kernels cannot run these sizes (``None`` when they can)."""
    if ball_size is not None and ball_size < MIN_BALL_SIZE:
        return f"ball_size >= {MIN_BALL_SIZE} (got {ball_size})"
    if select_size is not None and select_size < MIN_SELECT_SIZE:
        return f"select_size >= {MIN_SELECT_SIZE} (got {select_size})"
    return None


def check_sizes(ball_size: int | None = None, select_size: int | None = None) -> None:
    reason = unsupported_sizes(ball_size, select_size)
    if reason is not None:
        raise ValueError(
            f"the Triton kernels need {reason}; smaller sizes run on the reference backend"
        )


def check_float_inputs(*ts: torch.Tensor) -> None:
    """The kernels' float inputs share one dtype the kernels support (float32, float16 or
    bfloat16).  Not :func:`torch_geometric_nsa.ops._checks.check_dtype`, which checks one
    tensor's kind for the public ops."""
    dt = ts[0].dtype
    if dt not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported dtype {dt}: use float32, float16 or bfloat16")
    for t in ts[1:]:
        if t.dtype != dt:
            raise TypeError(f"dtype mismatch: {t.dtype} vs {dt}")


def as_u8(mask: torch.Tensor) -> torch.Tensor:
    """A mask as the contiguous uint8 vector the kernels read: in eager mode a bool tensor is
    reinterpreted in place (same bytes, no copy kernel); traced (a dispatch mode is active, as under
    ``torch.compile``, where Inductor fuses the cast and its bool views are unreliable) and other
    dtypes are converted."""
    mask = mask.contiguous()
    if mask.dtype == torch.bool and not _traced():
        return mask.view(torch.uint8)
    return mask.to(torch.uint8)


#: eager-mode memo of :func:`cloud_block_ranges`: ``ptr`` tensor (by identity, while alive) ->
#: ``{(S, unit, ptr._version): (lo, hi)}``; every block of a model asks for the same ranges of
#: the same tree, and each computation is about a dozen small ops
_RANGES = WeakIdKeyDictionary()


def cloud_block_ranges(ptr: torch.Tensor, S: int, unit: int):
    """Per slot ``i``: ``[lo, hi)`` of its cloud in units of ``unit`` slots (int32, no host sync).

    Slots of no cloud (``i >= ptr[-1]``) get the empty range ``lo = S // unit, hi = 0``.
    Eager calls with the same ``ptr`` tensor (unmodified) reuse the result; traced calls
    (``torch.compile``) compute it.
    """
    if torch.compiler.is_compiling():
        return _cloud_block_ranges(ptr, S, unit)
    memo = _RANGES.setdefault(ptr, {})
    key = (S, unit, ptr._version)
    if key not in memo:
        for stale in [k for k in memo if k[2] != ptr._version]:
            del memo[stale]
        memo[key] = _cloud_block_ranges(ptr, S, unit)
    return memo[key]


def _cloud_block_ranges(ptr: torch.Tensor, S: int, unit: int):
    n = S // unit
    B = ptr.numel() - 1
    dev = ptr.device
    if B <= 0:
        return (
            torch.full((S,), n, dtype=torch.int32, device=dev),
            torch.zeros((S,), dtype=torch.int32, device=dev),
        )
    ptr = ptr.to(torch.int64)
    slots = torch.arange(S, device=dev, dtype=torch.int64)
    b = torch.searchsorted(ptr, slots, right=True) - 1
    valid = (b >= 0) & (b < B)
    bc = b.clamp(0, B - 1)
    lo = torch.where(valid, ptr[bc] // unit, n).to(torch.int32)
    hi = torch.where(valid, ptr[bc + 1] // unit, 0).to(torch.int32)
    return lo, hi


def _backward_calling(bwd, grad_inputs, num_inputs):
    """The autograd backward of a forward op ``(out, lse)`` of ``num_inputs`` inputs: the
    backward op ``bwd(dout, *saved_tensors, *ctx.args)`` returns the gradients of the inputs
    at positions ``grad_inputs``; every other input gets none."""

    def backward(ctx, do, dlse):
        grads = [None] * num_inputs
        for i, g in zip(grad_inputs, bwd(do, *ctx.saved_tensors, *ctx.args)):
            grads[i] = g
        return tuple(grads)

    return backward


def custom_ops_with_eager_path(
    name, impl, fake, *, bwd_impl=None, bwd_fake=None, setup_context=None, grad_inputs=(0, 1, 2)
):
    """Registers the custom op ``name`` (implementation ``impl``, fake ``fake``) and, when
    ``bwd_impl`` is given, its backward op ``<name without _fwd>_bwd`` and the autograd that
    calls it.  ``setup_context`` saves the tensors the backward op takes after ``dout`` (in its
    order) and its trailing plain arguments as ``ctx.args``; the backward op returns the
    gradients of the inputs at positions ``grad_inputs``.

    Every call through the dispatcher pays for the custom op's Python layers (autograd wrapper,
    argument defaults, redispatch, the compiler's disable guard): about 0.1-0.3 ms of host time
    per call, which adds up to a large share of a launch-bound training step.  The returned
    ``call`` runs ``impl`` directly (inside a ``torch.autograd.Function`` named after the op,
    with the same ``setup_context`` and a backward that calls ``bwd_impl`` directly) when the
    call is plain eager: not traced by ``torch.compile``, no dispatch mode active (fake tensors,
    op counters, ...) and plain tensors only.  Otherwise it calls the custom op, so tracing,
    fake tensors and ``opcheck`` see exactly the registered ops.

    Returns ``(op, bwd_op, call)`` (``bwd_op`` is ``None`` without ``bwd_impl``).
    """
    op = _register(name, impl, fake)
    if bwd_impl is None:
        bwd_op, direct = None, impl
    else:
        assert name.endswith("_fwd"), name
        bwd_op = _register(name[: -len("_fwd")] + "_bwd", bwd_impl, bwd_fake)
        num_inputs = len(inspect.signature(impl).parameters)
        op.register_autograd(
            _backward_calling(bwd_op, grad_inputs, num_inputs), setup_context=setup_context
        )

        def forward(ctx, *args):
            out = impl(*args)
            setup_context(ctx, args, out)
            return out

        # named after the op: grad_fn reads e.g. "ball_attention_fwdBackward"
        fn = type(
            name.split("::")[-1],
            (torch.autograd.Function,),
            dict(
                forward=staticmethod(forward),
                backward=staticmethod(_backward_calling(bwd_impl, grad_inputs, num_inputs)),
            ),
        )
        direct = fn.apply

    def call(*args):
        if _plain_eager(args):
            return direct(*args)
        return op(*args)

    return op, bwd_op, call


def _register(name, impl, fake):
    """The op ``name``: a :func:`torch.library.triton_op` (its launches go through
    :func:`launch`), which ``torch.compile`` decomposes into the impl's torch ops and kernel
    launches, so that a compiled step calls the kernels from Inductor's code instead of through
    the op's Python layers (0.1-0.5 ms of host time per call).  Under ``TRITON_INTERPRET=1``,
    where kernels cannot run on fake tensors, a plain custom op with the fake ``fake``."""
    if interpret_mode():
        op = torch.library.custom_op(name, mutates_args=())(impl)
        op.register_fake(fake)
        return op
    return torch.library.triton_op(name, mutates_args=())(impl)


def _traced() -> bool:
    """Traced by ``torch.compile`` or run under a dispatch mode (fake tensors, functionalization,
    op counters, ...)."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


def _plain_eager(args) -> bool:
    if _traced():
        return False
    return all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor))


def num_pos(pos: torch.Tensor) -> int:
    """``P`` of a distance bias's positions; 0 for the empty placeholder (no bias)."""
    return pos.shape[1] if pos.numel() else 0


def bias_tensors(bias, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pos, centre, sigma)`` of a distance bias ``(sigma, pos, centre)`` for the kernels
    (positions as contiguous float32, ``P = pos.shape[1]``), or three empty placeholders
    (``P = 0``: no bias) when ``bias`` is None."""
    if bias is None:
        empty = q.new_empty(0, dtype=torch.float32)
        return empty.view(0, 0), empty.view(0, 0), empty
    sigma, pos, centre = bias
    return (
        pos.detach().to(torch.float32).contiguous(),
        centre.detach().to(torch.float32).contiguous(),
        sigma.contiguous(),
    )

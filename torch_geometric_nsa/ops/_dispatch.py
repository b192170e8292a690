"""Backend dispatch of the attention ops (private): the backend state, the lazy import of the
Triton kernels, and the choice between kernels and reference for each call."""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, Iterator, Optional

from torch import Tensor

from . import reference

#: The valid backend names.
BACKENDS = ("auto", "reference", "triton")

_backend: str = "auto"
# name -> kernel function (or None when unavailable); filled lazily, once per name.
_kernel_cache: Dict[str, Optional[Callable]] = {}
_kernel_error: Dict[str, str] = {}
_warned: set = set()


def set_backend(name: str) -> None:
    r"""Sets the backend of the attention ops: ``"auto"``, ``"reference"`` or ``"triton"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}; expected one of {BACKENDS}")
    _backend = name


def get_backend() -> str:
    r"""Returns the current backend name."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    r"""Context manager that sets the backend inside its block and restores it afterwards.

    .. code-block:: python

        with ops.use_backend("reference"):
            o = ops.ball_attention(q, k, v, pos, mask, sigma, ball_size=128)
    """
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _kernel(name: str) -> Optional[Callable]:
    if name not in _kernel_cache:
        try:
            from torch_geometric_nsa import kernels  # noqa: PLC0415

            fn = getattr(kernels, name)
        except (ImportError, AttributeError) as e:  # kernels not built / not installed
            fn = None
            _kernel_error[name] = f"{type(e).__name__}: {e}"
        _kernel_cache[name] = fn
    return _kernel_cache[name]


def _impl(name: str, q: Tensor, **sizes: int) -> Callable:
    """The implementation of op ``name`` for ``q`` under the current backend; ``sizes``
    (``ball_size``, ``select_size``) are checked against what the kernels take."""
    if _backend == "reference":
        return getattr(reference, name)
    if _backend == "triton":
        fn = _kernel(name)
        if fn is None:
            raise RuntimeError(
                f"ops backend 'triton' was requested but torch_geometric_nsa.kernels.{name} is "
                f"unavailable ({_kernel_error.get(name, 'unknown error')})"
            )
        return fn  # it raises for sizes it does not take
    if q.is_cuda:  # "auto"
        fn = _kernel(name)
        limits = _kernel("unsupported_sizes")
        reason = limits(**sizes) if (fn is not None and limits is not None) else None
        if reason is not None:
            key = (name, reason)
            if key not in _warned:
                _warned.add(key)
                warnings.warn(
                    f"{name}: the Triton kernels need {reason}; these CUDA tensors run on the "
                    f"pure-PyTorch reference",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return getattr(reference, name)
        if fn is not None:
            return fn
        if name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"torch_geometric_nsa.kernels.{name} is unavailable "
                f"({_kernel_error.get(name, 'unknown error')}); CUDA tensors fall back to the "
                f"slow pure-PyTorch reference",
                RuntimeWarning,
                stacklevel=3,
            )
    return getattr(reference, name)

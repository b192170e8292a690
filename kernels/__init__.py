"""Triton kernels of torch_geometric_nsa (installed as ``torch_geometric_nsa.kernels``).

Four ops with the signatures of :mod:`torch_geometric_nsa.ops`.  Their specification is
``docs/design/contracts.md`` ("Attention ops"); its executable form is
:mod:`torch_geometric_nsa.ops.reference`, which the kernel tests compare against.  Each is built on
``torch.library.triton_op`` ops of the namespace ``tgnsa`` (plain custom ops with fake
implementations under ``TRITON_INTERPRET=1``) with registered autograd (backward ops are ops
too), so ``torch.compile(fullgraph=True)`` traces them and launches their kernels itself:

- :func:`ball_attention` -- local ball attention, distance bias computed in-kernel.
- :func:`compressed_attention` -- varlen flash attention against the cloud's compressed blocks
  (returns ``o`` and the float32 LSE).
- :func:`select_blocks` -- fused scoring + streaming top-k per query group.
- :func:`selected_attention` -- block-sparse attention over the selected blocks.

Sizes: ``ball_size`` and ``select_size`` of at least 16 (:func:`unsupported_sizes`; the ops
of :mod:`torch_geometric_nsa.ops` run smaller ones on the reference).  All backward passes are
deterministic and use no atomics.  Accumulation is float32 for
float32/float16/bfloat16 inputs; float32 ``tl.dot`` runs in IEEE precision unless
``torch.backends.cuda.matmul.allow_tf32`` is set.  Offsets are int64, except in the selected
kernels' gathers, which use int32 while every tensor has fewer than 2**31 elements.  CPU tensors
work under
``TRITON_INTERPRET=1`` (set before importing this package).
"""

from ._common import MIN_BALL_SIZE, MIN_SELECT_SIZE, unsupported_sizes
from .ball import ball_attention
from .compressed import compressed_attention
from .select import select_blocks
from .selected import selected_attention

__all__ = [
    "ball_attention",
    "compressed_attention",
    "select_blocks",
    "selected_attention",
    "unsupported_sizes",
    "MIN_BALL_SIZE",
    "MIN_SELECT_SIZE",
]

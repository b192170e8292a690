"""Non-finite values stay in their cloud: NaN or inf in one cloud's q, k, v or compressed blocks
leaves every other cloud's outputs of the four ops bit-identical (issue 11).  The kernels run the
same check under the interpreter (``interp_suite.py``) and on CUDA (``test_kernels_cuda.py``)."""

import os
import sys

import pytest
import torch

from torch_geometric_nsa import ops
from torch_geometric_nsa.ops import reference as R

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
)
import kernel_cases as kc  # noqa: E402


class _AllClouds:
    """The reference's masked all-clouds form (what CUDA and torch.compile run) on the CPU."""

    ball_attention = staticmethod(R.ball_attention)
    compressed_attention = staticmethod(R._compressed_attention)
    select_blocks = staticmethod(R._select_blocks)
    selected_attention = staticmethod(R.selected_attention)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("form", [R, _AllClouds], ids=["per-cloud", "all-clouds"])
def test_reference_isolates_nonfinite(form, dtype):
    kc.check_nonfinite_isolation(form, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_isolates_nonfinite_cuda(dtype):
    with ops.use_backend("reference"):
        kc.check_nonfinite_isolation(ops, dtype, device="cuda")


def test_rows_attending_to_nonfinite_values_are_nan():
    """The documented outcome inside the poisoned cloud: a row whose valid compressed block holds
    a non-finite value is NaN; a masked block's non-finite value is ignored."""
    q = torch.randn(16, 1, 8, dtype=torch.float64)
    kc_ = torch.randn(4, 1, 8, dtype=torch.float64)
    vc = torch.randn(4, 1, 8, dtype=torch.float64)
    ptr = torch.tensor([0, 8, 16])
    bm = torch.tensor([True, False, True, True])
    vc[1] = float("inf")  # masked block of cloud 0: ignored
    o, _ = R._compressed_attention(q, kc_, vc, bm, ptr, 4)
    assert torch.isfinite(o).all()
    vc[2] = float("nan")  # valid block of cloud 1
    o, _ = R._compressed_attention(q, kc_, vc, bm, ptr, 4)
    assert torch.isfinite(o[:8]).all() and torch.isnan(o[8:]).all()

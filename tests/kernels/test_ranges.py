"""``cloud_block_ranges``: per-slot cloud ranges, memoised per ``ptr`` tensor in eager mode."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton not installed"
)


def test_ranges_values_and_memo():
    from torch_geometric_nsa.kernels._common import cloud_block_ranges

    ptr = torch.tensor([0, 64, 64, 192])
    lo, hi = cloud_block_ranges(ptr, 256, 32)
    assert lo.tolist() == [0] * 64 + [2] * 128 + [8] * 64  # tail slots: empty range
    assert hi.tolist() == [2] * 64 + [6] * 128 + [0] * 64
    again = cloud_block_ranges(ptr, 256, 32)
    assert again[0] is lo and again[1] is hi  # memoised
    other = cloud_block_ranges(ptr, 256, 16)  # another unit: its own entry
    assert other[0].tolist()[:64] == [0] * 64 and cloud_block_ranges(ptr, 256, 32)[0] is lo
    ptr[3] = 256  # in place: recomputed
    lo2, hi2 = cloud_block_ranges(ptr, 256, 32)
    assert lo2 is not lo and hi2.tolist()[-1] == 8
    assert torch.equal(cloud_block_ranges(ptr.clone(), 256, 32)[1], hi2)


def test_ranges_under_compile():
    from torch_geometric_nsa.kernels._common import cloud_block_ranges

    ptr = torch.tensor([0, 32, 96])
    f = torch.compile(lambda p: cloud_block_ranges(p, 128, 32), fullgraph=True)
    lo, hi = f(ptr)
    ref = cloud_block_ranges(ptr, 128, 32)
    assert torch.equal(lo, ref[0]) and torch.equal(hi, ref[1])

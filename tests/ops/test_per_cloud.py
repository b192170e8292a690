"""The eager CPU reference handles several clouds one by one; the masked
all-clouds form (used under torch.compile and on CUDA) must agree exactly."""

import torch

from torch_geometric_nsa.ops import reference as R


def _inputs(sizes, m=16, c=4, H=2, D=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    slots = [-(-n // m) * m for n in sizes]
    S = sum(slots) + m  # one tail ball past ptr[B]
    ptr = torch.tensor([0] + slots).cumsum(0)
    mask = torch.zeros(S, dtype=torch.bool)
    for a, n in zip(ptr[:-1].tolist(), sizes):
        mask[a : a + n] = True
    q = torch.randn(S, H, D, generator=gen, dtype=torch.float64)
    kc = torch.randn(S // c, H, D, generator=gen, dtype=torch.float64)
    vc = torch.randn(S // c, H, D, generator=gen, dtype=torch.float64)
    block_mask = mask.view(-1, c).any(1)
    return q, kc, vc, block_mask, mask, ptr


def test_per_cloud_equals_masked_form():
    q, kc, vc, bm, mask, ptr = _inputs([5, 40, 1, 17])
    o1, l1 = R.compressed_attention(q, kc, vc, bm, ptr, 4)
    o2, l2 = R._compressed_attention(q, kc, vc, bm, ptr, 4)
    assert torch.allclose(o1, o2, atol=1e-12) and torch.equal(l1.isinf(), l2.isinf())
    assert torch.allclose(l1[l1.isfinite()], l2[l2.isfinite()], atol=1e-12)
    for g in (1, 4, 16):
        a = R.select_blocks(q, kc, l1, bm, mask, ptr, 4, 8, g, 3)
        b = R._select_blocks(q, kc, l2, bm, mask, ptr, 4, 8, g, 3)
        assert torch.equal(a, b)

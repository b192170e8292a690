import math

import pytest
import torch

from torch_geometric_nsa.ops import reference as R


def call(x, **kw):
    return R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, x.c, **kw)


@pytest.mark.parametrize("m,c,seed", [(16, 4, 0), (8, 8, 1), (32, 2, 2)])
def test_matches_brute_force(inputs, sizes, brute, m, c, seed):
    x = inputs(sizes(3, seed=seed), m, c=c, seed=seed, tail=m)
    o, lse = call(x)
    o_b, lse_b = brute.compressed(x.q, x.kc, x.vc, x.block_mask, x.ptr, c)
    torch.testing.assert_close(o, o_b, rtol=1e-12, atol=1e-12)
    assert lse.dtype == torch.float64 and not lse.requires_grad
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_b))
    torch.testing.assert_close(lse.nan_to_num(0, 0, 0), lse_b.nan_to_num(0, 0, 0))


def test_tail_slots_zero_and_minus_inf(inputs):
    x = inputs([5, 9], 8, c=4, tail=16)
    o, lse = call(x)
    assert x.ptr[-1] == 24
    assert torch.equal(o[24:], torch.zeros_like(o[24:]))
    assert torch.equal(lse[24:], torch.full_like(lse[24:], -math.inf))
    assert torch.isfinite(lse[:24]).all()  # pads of a cloud still see the cloud's blocks


def test_chunking_is_invisible(inputs, sizes, small_chunks):
    x = inputs(sizes(4, seed=3), 16, c=4, seed=3)
    R.MAX_CHUNK_ELEMENTS = 2**25
    o, lse = call(x)
    R.MAX_CHUNK_ELEMENTS = 5000
    o2, lse2 = call(x)
    torch.testing.assert_close(o2, o, rtol=0, atol=1e-13)  # matmul blocking may differ
    torch.testing.assert_close(lse2, lse, rtol=0, atol=1e-13)


def test_no_leakage_across_clouds(inputs):
    x = inputs([20, 30, 3], 16, c=4)
    for t in (x.q, x.kc, x.vc):
        t.requires_grad_()
    o, lse = call(x)
    a = slice(0, 32)  # cloud 0 slots, blocks 0..7
    gq, gk, gv = torch.autograd.grad(o[a].sum(), (x.q, x.kc, x.vc))
    assert torch.equal(gq[32:], torch.zeros_like(gq[32:]))
    assert torch.equal(gk[8:], torch.zeros_like(gk[8:]))
    assert torch.equal(gv[8:], torch.zeros_like(gv[8:]))
    with torch.no_grad():
        x.kc[8:] = 100 * torch.randn_like(x.kc[8:])
        x.vc[8:] = 100 * torch.randn_like(x.vc[8:])
        o2, lse2 = call(x)
    assert torch.equal(o2[a], o[a]) and torch.equal(lse2[a], lse[a])


def test_masked_blocks_never_keys(inputs, sizes):
    x = inputs(sizes(3, seed=6), 16, c=4, seed=6)
    o, lse = call(x)
    bad = ~x.block_mask
    assert bad.any()
    x.kc[bad] = 1e3
    x.vc[bad] = -1e3
    o2, lse2 = call(x)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)


def test_gradcheck(inputs):
    x = inputs([3, 9], 8, c=2, tail=8)
    for t in (x.q, x.kc, x.vc):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, kc, vc: R.compressed_attention(q, kc, vc, x.block_mask, x.ptr, 2)[0],
        (x.q, x.kc, x.vc),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_lse_is_float32(inputs, dtype):
    x = inputs([13, 40], 16, c=4, dtype=dtype)
    o, lse = call(x)
    assert o.dtype == dtype and lse.dtype == torch.float32
    o_up, lse_up = call(x, upcast=True)
    assert o_up.dtype == dtype and lse_up.dtype == torch.float32

import pytest
import torch

from torch_geometric_nsa.ops import reference as R


def random_idx(x, s, g, topk, seed=0):
    """Distinct random selection blocks per group (any cloud), some -1."""
    gen = torch.Generator().manual_seed(seed)
    ns, ng = x.S // s, x.S // g
    idx = torch.rand(ng, ns, generator=gen).argsort(1)[:, :topk]
    drop = torch.rand(ng, topk, generator=gen) < 0.3
    return torch.where(drop, torch.full_like(idx, -1), idx)


@pytest.mark.parametrize("s,g,topk,seed", [(8, 4, 3, 0), (4, 1, 2, 1), (16, 16, 2, 2)])
def test_matches_brute_force(inputs, sizes, brute, s, g, topk, seed):
    x = inputs(sizes(3, max_n=120, seed=seed), 16, seed=seed, tail=16)
    idx = random_idx(x, s, g, topk, seed)
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, s, g)
    torch.testing.assert_close(
        o, brute.selected(x.q, x.k, x.v, x.mask, idx, s, g), rtol=1e-12, atol=1e-12
    )


def test_with_selected_blocks(inputs, sizes, brute):
    x = inputs(sizes(2, seed=4), 16, c=4, seed=4)
    lse = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4)[1]
    idx = R.select_blocks(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, 4, 8, 4, 3)
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 8, 4, scale=0.2)
    torch.testing.assert_close(o, brute.selected(x.q, x.k, x.v, x.mask, idx, 8, 4, scale=0.2))


def test_no_block_gives_zero_with_finite_grad(inputs):
    x = inputs([10], 16, tail=16)  # S = 32, s = g = 8
    idx = torch.full((4, 2), -1)
    idx[0, 0] = 1  # slots 8..15: real 8, 9
    idx[1, 1] = 3  # slots 24..31 are tail slots -> no valid key
    for t in (x.q, x.k, x.v):
        t.requires_grad_()
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 8, 8)
    assert torch.equal(o[8:], torch.zeros_like(o[8:]))
    o.square().sum().backward()
    for t in (x.q, x.k, x.v):
        assert torch.isfinite(t.grad).all()


def test_pads_never_keys_and_out_of_range_ignored(inputs, sizes):
    x = inputs(sizes(2, seed=5), 16, seed=5)
    idx = random_idx(x, 8, 4, 3, seed=5)
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 8, 4)
    pad = ~x.mask
    x.k[pad] = 1e3
    x.v[pad] = -1e3
    assert torch.equal(R.selected_attention(x.q, x.k, x.v, x.mask, idx, 8, 4), o)
    idx2 = torch.where(idx < 0, torch.full_like(idx, -7), idx)
    assert torch.equal(R.selected_attention(x.q, x.k, x.v, x.mask, idx2, 8, 4), o)


def test_no_leakage_across_groups(inputs):
    x = inputs([32, 32], 16)
    idx = torch.tensor([[0, 1, 2, 3]] * 8 + [[4, 5, 6, 7]] * 8)  # s=8, g=4: own cloud only
    for t in (x.q, x.k, x.v):
        t.requires_grad_()
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 8, 4)
    grads = torch.autograd.grad(o[:32].sum(), (x.q, x.k, x.v))
    for grad in grads:
        assert torch.equal(grad[32:], torch.zeros_like(grad[32:]))


def test_chunking_is_invisible(inputs, sizes, small_chunks):
    x = inputs(sizes(3, seed=6), 16, seed=6)
    idx = random_idx(x, 4, 2, 3, seed=6)
    R.MAX_CHUNK_ELEMENTS = 2**25
    o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 4, 2)
    R.MAX_CHUNK_ELEMENTS = 1000
    torch.testing.assert_close(
        R.selected_attention(x.q, x.k, x.v, x.mask, idx, 4, 2), o, rtol=0, atol=1e-13
    )


def test_gradcheck(inputs):
    x = inputs([5, 1], 8, tail=8)
    idx = torch.tensor([[0, -1], [2, 0], [1, 2], [-1, -1], [1, 0], [2, -1]])  # s=4, g=4
    for t in (x.q, x.k, x.v):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k, v: R.selected_attention(q, k, v, x.mask, idx, 4, 4), (x.q, x.k, x.v)
    )


def test_upcast_dtype(inputs):
    x = inputs([40], 16, dtype=torch.bfloat16)
    idx = torch.tensor([[0, 1]] * 12)
    for up in (False, True):
        o = R.selected_attention(x.q, x.k, x.v, x.mask, idx, 16, 4, upcast=up)
        assert o.dtype == torch.bfloat16 and torch.isfinite(o).all()

import pytest
import torch

from torch_geometric_nsa.ops import reference as R


def call(x, **kw):
    return R.ball_attention(x.q, x.k, x.v, x.pos, x.mask, x.sigma, x.m, **kw)


@pytest.mark.parametrize("m,seed", [(8, 0), (16, 1), (32, 2)])
def test_matches_brute_force(inputs, sizes, brute, m, seed):
    x = inputs(sizes(3, seed=seed), m, seed=seed, tail=m)
    expected = brute.ball(x.q, x.k, x.v, x.pos, x.mask, x.sigma, m)
    torch.testing.assert_close(call(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        call(x, scale=0.3), brute.ball(x.q, x.k, x.v, x.pos, x.mask, x.sigma, m, scale=0.3)
    )


def test_chunking_is_invisible(inputs, sizes, small_chunks):
    x = inputs(sizes(4, seed=3), 16, seed=3)
    R.MAX_CHUNK_ELEMENTS = 2**25
    full = call(x)
    R.MAX_CHUNK_ELEMENTS = 2000  # a few balls per chunk, ragged last chunk
    torch.testing.assert_close(call(x), full, rtol=0, atol=1e-13)


def test_single_point_cloud_and_single_real_key(inputs):
    # cloud 0 has one point; cloud 1 has 17 points -> its second ball holds one real slot
    x = inputs([1, 17], 16)
    o = call(x)
    torch.testing.assert_close(o[0:16], x.v[0].expand(16, -1, -1), rtol=0, atol=1e-15)
    torch.testing.assert_close(o[32:48], x.v[32].expand(16, -1, -1), rtol=0, atol=1e-15)


def test_fully_masked_ball_gives_zero_and_finite_grad(inputs):
    x = inputs([5], 8, tail=8)  # slots 8..15: a ball of tail slots, no real key
    for t in (x.q, x.k, x.v, x.sigma):
        t.requires_grad_()
    o = call(x)
    assert torch.equal(o[8:], torch.zeros_like(o[8:]))
    o.square().sum().backward()
    for t in (x.q, x.k, x.v, x.sigma):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(x.q.grad[8:], torch.zeros_like(x.q.grad[8:]))


def test_pads_never_act_as_keys(inputs, sizes):
    x = inputs(sizes(3, seed=4), 16, seed=4)
    o = call(x)
    pad = ~x.mask
    x.k[pad] = 1e3 * torch.randn_like(x.k[pad])
    x.v[pad] = 1e3 * torch.randn_like(x.v[pad])
    x.pos[pad] = 1e3
    o2 = call(x)
    assert torch.equal(o[x.mask], o2[x.mask])


def test_no_leakage_across_clouds(inputs):
    x = inputs([20, 30], 16)
    for t in (x.q, x.k, x.v):
        t.requires_grad_()
    o = call(x)
    a = slice(0, 32)  # cloud 0
    gq, gk, gv = torch.autograd.grad(o[a].sum(), (x.q, x.k, x.v))
    for grad in (gq, gk, gv):
        assert torch.equal(grad[32:], torch.zeros_like(grad[32:]))
    with torch.no_grad():
        y = inputs([20, 30], 16, seed=7)
        y.q[a], y.k[a], y.v[a], y.pos[a] = x.q[a], x.k[a], x.v[a], x.pos[a]
        y.sigma = x.sigma
        assert torch.equal(call(y)[a], o[a])


def test_gradcheck(inputs):
    x = inputs([3, 1, 6], 4, H=2, D=8, tail=4)  # includes a single-point ball and a masked ball
    for t in (x.q, x.k, x.v, x.sigma):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k, v, sigma: R.ball_attention(q, k, v, x.pos, x.mask, sigma, 4),
        (x.q, x.k, x.v, x.sigma),
    )


def test_pos_is_constant(inputs):
    x = inputs([7], 8)
    x.pos.requires_grad_()
    o = call(x)
    assert not o.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_and_upcast(inputs, sizes, dtype):
    x64 = inputs(sizes(2, seed=5), 16, seed=5)
    ref = call(x64)
    x = inputs(sizes(2, seed=5), 16, seed=5, dtype=dtype)
    x.pos = x64.pos.float()
    o, o_up = call(x), call(x, upcast=True)
    assert o.dtype == dtype and o_up.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert (o.double() - ref).abs().max() < tol
    assert (o_up.double() - ref).abs().max() <= (o.double() - ref).abs().max() + 1e-6

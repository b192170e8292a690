"""The distance bias of the compressed branch (``ops.DistanceBias``): reference against the
brute-force spec, gradients, no leakage, the selection's scores, and the public API."""

import warnings

import pytest
import torch

from torch_geometric_nsa import ops
from torch_geometric_nsa.ops import DistanceBias
from torch_geometric_nsa.ops import reference as R


def with_bias(x, scale=1.0):
    """A bias for ``inputs(...)``: slot positions and block centroids of the real slots."""
    g = torch.Generator().manual_seed(7)
    sigma = -scale * torch.rand(x.H, generator=g, dtype=torch.float64)
    w = x.mask.double().view(-1, x.c, 1)
    centre = (x.pos.view(-1, x.c, x.pos.shape[1]) * w).sum(1) / w.sum(1).clamp(min=1)
    return DistanceBias(sigma, x.pos, centre)


@pytest.mark.parametrize("m,c,seed", [(16, 4, 0), (8, 8, 1)])
def test_compressed_matches_brute_force(inputs, sizes, brute, m, c, seed):
    x = inputs(sizes(3, seed=seed), m, c=c, seed=seed, tail=m)
    bias = with_bias(x)
    o, lse = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, c, bias=bias)
    o_b, lse_b = brute.compressed(x.q, x.kc, x.vc, x.block_mask, x.ptr, c, bias=bias)
    torch.testing.assert_close(o, o_b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse.nan_to_num(0, 0, 0), lse_b.nan_to_num(0, 0, 0))
    # the bias changes the answer, and sigma = 0 is no bias, exactly
    plain, _ = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, c)
    assert not torch.allclose(o, plain)
    zero = DistanceBias(torch.zeros_like(bias.sigma), bias.pos, bias.centre)
    o0, lse0 = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, c, bias=zero)
    assert torch.equal(o0, plain)


def test_per_cloud_and_all_clouds_forms_agree(inputs, sizes):
    x = inputs(sizes(4, seed=3), 16, c=4, seed=3, tail=16)
    bias = with_bias(x)
    per_cloud = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4, bias=bias)
    whole = R._compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4, bias=bias)
    for a, b in zip(per_cloud, whole):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_gradients_reach_sigma_and_stay_in_the_cloud(inputs):
    x = inputs([3, 9], 8, c=2, tail=8)
    bias = with_bias(x)
    sigma = bias.sigma.clone().requires_grad_()
    for t in (x.q, x.kc, x.vc):
        t.requires_grad_()

    def f(q, kc, vc, sigma):
        b = DistanceBias(sigma, bias.pos, bias.centre)
        return R.compressed_attention(q, kc, vc, x.block_mask, x.ptr, 2, bias=b)[0]

    assert torch.autograd.gradcheck(f, (x.q, x.kc, x.vc, sigma))
    # cloud 0 (slots 0..7, blocks 0..3) sees nothing of cloud 1
    gk, gs = torch.autograd.grad(f(x.q, x.kc, x.vc, sigma)[:8].sum(), (x.kc, sigma))
    assert torch.equal(gk[4:], torch.zeros_like(gk[4:])) and gs.abs().sum() > 0


@pytest.mark.parametrize("m,c,s,g,topk", [(16, 4, 8, 8, 2), (16, 2, 4, 16, 3)])
def test_select_ranks_by_the_biased_scores(inputs, sizes, brute, m, c, s, g, topk):
    x = inputs(sizes(3, seed=5), m, c=c, seed=5)
    bias = with_bias(x, scale=3.0)
    _, lse = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, c, bias=bias)
    args = (x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, c, s, g, topk)
    idx = R.select_blocks(*args, bias=bias)
    assert torch.equal(idx, brute.select(*args, bias=bias))
    assert not torch.equal(idx, R.select_blocks(*args))  # a strong bias moves the ranking


def test_api_checks_and_backends(inputs):
    x = inputs([5, 9], 8, c=4)
    bias = with_bias(x)
    args = (x.q, x.kc, x.vc, x.block_mask, x.ptr, 4)
    with ops.use_backend("auto"):  # CPU tensors: the reference, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            o, _ = ops.compressed_attention(*args, bias=bias)
    torch.testing.assert_close(o, R.compressed_attention(*args, bias=bias)[0])
    with pytest.raises(ValueError, match="bias.sigma"):
        ops.compressed_attention(*args, bias=DistanceBias(bias.sigma[:1], bias.pos, bias.centre))
    with pytest.raises(ValueError, match="bias.centre"):
        ops.compressed_attention(*args, bias=DistanceBias(bias.sigma, bias.pos, bias.pos))
    with pytest.raises(ValueError, match="bias.pos"):
        ops.compressed_attention(*args, bias=DistanceBias(bias.sigma, bias.pos[1:], bias.centre))
    with pytest.raises(TypeError, match="DistanceBias"):
        ops.compressed_attention(*args, bias=bias.sigma)

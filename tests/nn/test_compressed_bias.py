"""``compressed_bias``: the layer's learned distance bias on the compressed scores."""

import pytest
import torch

from torch_geometric_nsa.nn import ErwinNSAConv
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.testing import assert_no_leakage

SMALL = dict(ball_size=32, compress_size=8, topk=3)


def test_zero_bias_is_the_plain_layer_and_the_bias_is_learned(batch_maker):
    x, pos, batch = batch_maker([70, 5, 130], 16)
    torch.manual_seed(0)
    plain = ErwinNSAConv(16, heads=2, **SMALL)
    biased = ErwinNSAConv(16, heads=2, compressed_bias=True, **SMALL)
    missing = biased.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["sigma_cmp"]
    assert torch.equal(biased.sigma_cmp, torch.full((2,), -1.0))  # dist_bias_init
    with torch.no_grad():
        biased.sigma_cmp.zero_()
    torch.testing.assert_close(biased(x, pos, batch), plain(x, pos, batch), rtol=0, atol=1e-6)
    with torch.no_grad():
        biased.sigma_cmp.fill_(-2.0)
    out = biased(x, pos, batch)
    assert not torch.allclose(out, plain(x, pos, batch), atol=1e-4)
    (grad,) = torch.autograd.grad(out.square().sum(), biased.sigma_cmp)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("branches", [("compressed", "selected", "local"), ("compressed",)])
def test_no_leakage_with_the_bias(batch_maker, branches):
    torch.manual_seed(1)
    conv = ErwinNSAConv(16, heads=2, compressed_bias=True, branches=branches, **SMALL)
    with torch.no_grad():
        conv.sigma_cmp.fill_(-3.0)
    x, pos, batch = batch_maker([90, 1, 40, 33], 16, seed=2)
    assert_no_leakage(conv, x, pos, batch, atol=1e-5)


def test_needs_a_global_branch_and_reaches_the_model():
    with pytest.raises(ValueError, match="compressed_bias"):
        ErwinNSAConv(16, heads=2, compressed_bias=True, branches=("local",), **SMALL)
    model = ErwinNSA(4, 16, 2, 1, heads=2, compressed_bias=True, **SMALL)
    assert all(block.attn.sigma_cmp is not None for block in model.blocks)
    assert "compressed_bias=True" in repr(model.blocks[0].attn)

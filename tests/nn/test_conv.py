import math

import pytest
import torch
from torch_geometric.nn import GCNConv, Sequential

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.nn import ErwinNSAConv, knn_graph
from torch_geometric_nsa.testing import assert_no_leakage

SMALL = dict(ball_size=32, compress_size=8, topk=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_batch_equals_clouds_alone(batch_maker, seed):
    gen = torch.Generator().manual_seed(seed)
    num = int(torch.randint(1, 9, (1,), generator=gen))
    sizes = torch.randint(1, 3001, (num,), generator=gen).tolist()
    sizes = [min(s, 3000 // num + 1) if num > 3 else s for s in sizes] + [1]
    torch.manual_seed(seed)
    conv = ErwinNSAConv(32, heads=4, ball_size=64, compress_size=16, topk=2)
    x, pos, batch = batch_maker(sizes, 32, seed=seed)
    assert_no_leakage(conv, x, pos, batch, atol=1e-5)


def test_reordering_clouds_reorders_outputs(batch_maker):
    conv = ErwinNSAConv(16, heads=2, **SMALL)
    x, pos, batch = batch_maker([50, 7, 90], 16)
    out = conv(x, pos, batch)
    order = [2, 0, 1]
    starts = [0, 50, 57, 147]
    idx = torch.cat([torch.arange(starts[b], starts[b + 1]) for b in order])
    nb = torch.repeat_interleave(torch.arange(3), torch.tensor([90, 50, 7]))
    out2 = conv(x[idx], pos[idx], nb)
    assert torch.allclose(out2, out[idx], atol=1e-6)


@pytest.mark.parametrize("heads, channels", [(1, 8), (3, 24), (5, 80)])
def test_any_head_count(batch_maker, heads, channels):
    conv = ErwinNSAConv(channels, heads=heads, **SMALL)
    x, pos, batch = batch_maker([40, 3], channels)
    out = conv(x, pos, batch)
    assert out.shape == (43, channels) and torch.isfinite(out).all()


def test_local_only_one_ball_is_dense_attention_with_distance_bias():
    torch.manual_seed(0)
    n, C, H = 50, 32, 4
    conv = ErwinNSAConv(C, heads=H, ball_size=64, compress_size=16, branches=("local",))
    with torch.no_grad():
        conv.sigma.copy_(torch.tensor([-1.0, -0.5, 0.0, 0.7]))
    x, pos = torch.randn(n, C), torch.randn(n, 3)
    out = conv(x, pos)
    # independent dense computation in input order
    D = C // H
    h = x + conv.pos_proj(pos - pos.mean(0))
    q, k, v = conv.qkv(h).view(n, 3, H, D).unbind(1)
    dist = (pos[:, None] - pos[None]).norm(dim=-1)
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(D) + conv.sigma.view(H, 1, 1) * dist
    o = torch.einsum("hij,jhd->ihd", scores.softmax(-1), v).reshape(n, C)
    o = o * torch.sigmoid(conv.gate(h)).repeat_interleave(D, 1)
    assert torch.allclose(out, conv.out(o), atol=1e-5)


def test_branches_ablation_changes_parameters_and_output(batch_maker):
    x, pos, batch = batch_maker([70, 30], 16)
    torch.manual_seed(0)
    full = ErwinNSAConv(16, heads=2, **SMALL)
    local = ErwinNSAConv(16, heads=2, branches=("local",), **SMALL)
    assert not hasattr(local, "phi_in") and full.sigma is not None
    nolocal = ErwinNSAConv(16, heads=2, branches=("compressed", "selected"), **SMALL)
    assert nolocal.sigma is None
    for conv in (full, local, nolocal):
        assert conv(x, pos, batch).shape == (100, 16)
    assert full.gate.out_features == 3 * 2 and local.gate.out_features == 2


def test_precomputed_tree_and_larger_tree_ball(batch_maker):
    x, pos, batch = batch_maker([70, 30], 16)
    conv = ErwinNSAConv(16, heads=2, **SMALL)
    tree = build_ball_tree(pos, batch, ball_size=32)
    assert torch.equal(conv(x, pos, batch, tree=tree), conv(x, pos, batch))
    big = build_ball_tree(pos, batch, ball_size=128)
    assert conv(x, pos, batch, tree=big).shape == (100, 16)


def test_gradcheck_float64():
    torch.manual_seed(0)
    conv = ErwinNSAConv(16, heads=2, ball_size=16, compress_size=4, topk=2).double()
    x = torch.randn(21, 16, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(21, 3, dtype=torch.float64)
    batch = torch.tensor([0] * 18 + [1] * 3)
    tree = build_ball_tree(pos, batch, ball_size=16)
    assert torch.autograd.gradcheck(lambda x: conv(x, pos, batch, tree), (x,))
    out = conv(x, pos, batch, tree).square().sum()
    out.backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_pyg_sequential_state_dict_and_repr(batch_maker, tmp_path):
    x, pos, batch = batch_maker([60, 25], 16)
    edge_index = knn_graph(pos, 6, batch)
    model = Sequential(
        "x, pos, batch, edge_index",
        [
            (GCNConv(16, 32), "x, edge_index -> x"),
            (ErwinNSAConv(32, heads=4, **SMALL), "x, pos, batch -> x"),
            (GCNConv(32, 8), "x, edge_index -> x"),
        ],
    )
    out = model(x, pos, batch, edge_index)
    assert out.shape == (85, 8)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    model2 = Sequential(
        "x, pos, batch, edge_index",
        [
            (GCNConv(16, 32), "x, edge_index -> x"),
            (ErwinNSAConv(32, heads=4, **SMALL), "x, pos, batch -> x"),
            (GCNConv(32, 8), "x, edge_index -> x"),
        ],
    )
    model2.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert torch.equal(model2(x, pos, batch, edge_index), out)
    conv = ErwinNSAConv(32, heads=4, **SMALL)
    assert repr(conv).startswith("ErwinNSAConv(32, 32, heads=4, ball_size=32")
    conv2 = ErwinNSAConv(32, heads=4, **SMALL)
    conv2.load_state_dict(conv.state_dict())
    conv.reset_parameters()
    assert not torch.equal(conv.qkv.weight, conv2.qkv.weight)


def test_torch_compile_fullgraph_with_precomputed_tree(batch_maker):
    torch._dynamo.reset()
    x, pos, batch = batch_maker([40, 9], 16)
    conv = ErwinNSAConv(16, heads=2, **SMALL)
    tree = build_ball_tree(pos, batch, ball_size=32)
    eager = conv(x, pos, batch, tree)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, pos, batch, tree), eager, atol=1e-5)
    # building the tree inside may break the graph but gives the same numbers
    torch._dynamo.reset()
    compiled = torch.compile(conv, backend="aot_eager")
    assert torch.allclose(compiled(x, pos, batch), eager, atol=1e-5)


def test_tiny_clouds(batch_maker):
    conv = ErwinNSAConv(16, heads=2, **SMALL)
    for sizes in ([1], [1, 1, 1], [2, 31, 33]):
        x, pos, batch = batch_maker(sizes, 16)
        out = conv(x, pos, batch)
        assert out.shape == (sum(sizes), 16) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_channels=30, heads=4), "divisible"),
        (dict(in_channels=28, heads=4), "minimum of 8"),
        (dict(in_channels=32, out_channels=4), "minimum of 8"),
        (dict(in_channels=-1), "out_channels' must be given"),
        (dict(in_channels=0), "in_channels"),
        (dict(in_channels=32, out_channels=-1), "out_channels"),
        (dict(in_channels=32, heads=0), "heads"),
        (dict(in_channels=32, heads=4, ball_size=48), "power of two"),
        (dict(in_channels=32, heads=4, ball_size=2**30), "at most"),
        (dict(in_channels=32, heads=4, ball_size=32, compress_size=64), "exceed"),
        (dict(in_channels=32, heads=4, compress_size=16, select_size=8), "multiple of"),
        (dict(in_channels=32, heads=4, branches=("global",)), "subset"),
        (dict(in_channels=32, heads=4, branches=()), "subset"),
        (dict(in_channels=32, heads=4, topk=0), "topk"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ErwinNSAConv(**kwargs)


def test_bad_forward_input(batch_maker):
    conv = ErwinNSAConv(16, heads=2, **SMALL)
    x, pos, batch = batch_maker([20, 5], 16)
    with pytest.raises(ValueError, match="'x' must have shape"):
        conv(x[:, :8], pos, batch)
    with pytest.raises(ValueError, match="'pos' has 24"):
        conv(x, pos[:24], batch)
    with pytest.raises(ValueError, match="'pos' must have shape"):
        conv(x, pos[:, :2], batch)
    with pytest.raises(ValueError, match="'batch' has 3"):
        conv(x, pos, batch[:3])
    with pytest.raises(TypeError, match="floating point"):
        conv(x.long(), pos, batch)
    with pytest.raises(ValueError, match="NaN"):
        conv(x, torch.where(torch.rand_like(pos) < 0.1, float("nan"), pos), batch)
    with pytest.raises(ValueError, match="sorted"):
        conv(x, pos, batch.flip(0))
    small = build_ball_tree(pos, batch, ball_size=16)
    with pytest.raises(ValueError, match="ball_size=16"):
        conv(x, pos, batch, tree=small)
    with pytest.raises(ValueError, match="holds 5 points"):
        conv(x, pos, batch, tree=build_ball_tree(pos[:5], ball_size=32))


@pytest.mark.parametrize(
    "sizes, select",
    [
        (dict(ball_size=128, compress_size=32), 32),
        (dict(ball_size=128, compress_size=8), 16),  # the kernels take s >= 16
        (dict(ball_size=8, compress_size=4), 8),  # never above m
    ],
)
def test_default_select_and_group_size(sizes, select):
    conv = ErwinNSAConv(16, heads=2, **sizes)
    assert conv.select_size == select and conv.group_size == select

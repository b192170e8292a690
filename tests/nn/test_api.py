"""PyG conventions of the layer and the model: argument order, lazy and projected widths,
up-front dtype and position-gradient errors, compiling with the tree built inside."""

import pytest
import torch
from torch_geometric.nn import GCNConv, Sequential

from torch_geometric_nsa.nn import ErwinNSAConv, knn_graph
from torch_geometric_nsa.nn.conv import default_heads
from torch_geometric_nsa.nn.models import ErwinNSA

SMALL = dict(ball_size=16, compress_size=4, topk=2)


def test_model_arguments_follow_pyg_basic_gnn_order(batch_maker):
    torch.manual_seed(0)
    m = ErwinNSA(4, 32, 3, **SMALL)  # (in, hidden, num_layers, out_channels=None)
    assert (m.num_layers, m.out_channels, len(m.blocks)) == (3, 32, 3)
    assert m.heads == 2 and m.blocks[0].attn.heads == 2
    x, pos, batch = batch_maker([20, 9], 4)
    assert m(x, pos, batch).shape == (29, 32)
    m = ErwinNSA(4, 32, 2, 5, heads=4, **SMALL)
    assert m.out_channels == 5 and m.blocks[1].attn.heads == 4
    assert repr(m) == "ErwinNSA(4, 32, num_layers=2, out_channels=5)"
    with pytest.raises(TypeError):
        ErwinNSA(4, 32, 2, 5, 4)  # heads is keyword-only: no silent positional trap
    with pytest.raises(ValueError, match="num_layers"):
        ErwinNSA(4, 32, 0)


@pytest.mark.parametrize(
    "channels, heads", [(8, 1), (16, 1), (32, 2), (48, 3), (64, 4), (128, 8), (256, 8), (24, 1)]
)
def test_default_heads(channels, heads):
    assert default_heads(channels) == heads
    assert ErwinNSAConv(channels, **SMALL).heads == heads


def test_conv_projects_when_widths_differ(batch_maker):
    torch.manual_seed(0)
    x, pos, batch = batch_maker([30, 12], 16)
    conv = ErwinNSAConv(16, 32, heads=4, **SMALL)
    assert conv.lin_in is not None and conv.lin_in.in_channels == 16
    out = conv(x, pos, batch)
    assert out.shape == (42, 32)
    assert repr(conv).startswith("ErwinNSAConv(16, 32, heads=4")
    same = ErwinNSAConv(16, heads=2, **SMALL)
    assert same.lin_in is None and same.out_channels == 16
    with pytest.raises(ValueError, match=r"'x' must have shape \[num_points, 16\]"):
        conv(x[:, :8], pos, batch)


def test_lazy_conv_in_pyg_sequential(batch_maker, tmp_path):
    torch.manual_seed(0)
    x, pos, batch = batch_maker([40, 25], 6)
    edge_index = knn_graph(pos, 5, batch)

    def make():
        return Sequential(
            "x, pos, batch, edge_index",
            [
                (GCNConv(6, 24), "x, edge_index -> x"),
                (ErwinNSAConv(-1, 32, heads=4, **SMALL), "x, pos, batch -> x"),
                (ErwinNSAConv(32, **SMALL), "x, pos, batch -> x"),
            ],
        )

    model = make()
    out = model(x, pos, batch, edge_index)  # the first call infers in_channels = 24
    assert out.shape == (65, 32)
    lin = model.module_1.lin_in
    assert lin.weight.shape == (32, 24)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    model2 = make()
    model2.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert torch.equal(model2(x, pos, batch, edge_index), out)


def test_float64_model_with_float32_input_is_named_up_front(batch_maker):
    x, pos, batch = batch_maker([20, 5], 4)
    model = ErwinNSA(4, 16, 2, 3, **SMALL).double()
    with pytest.raises(
        TypeError, match="'x' is torch.float32 but the model's parameters are torch.float64"
    ):
        model(x, pos, batch)
    assert model(x.double(), pos, batch).dtype == torch.float64
    conv = ErwinNSAConv(16, **SMALL).double()
    with pytest.raises(TypeError, match="layer's parameters are torch.float64"):
        conv(torch.randn(25, 16), pos, batch)
    # autocast keeps working
    conv = ErwinNSAConv(16, **SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(25, 16), pos, batch).dtype == torch.bfloat16


def test_positions_requiring_grad_raise(batch_maker):
    x, pos, batch = batch_maker([20, 5], 16)
    pos.requires_grad_()
    with pytest.raises(ValueError, match="'pos' requires grad"):
        ErwinNSAConv(16, **SMALL)(x, pos, batch)
    with pytest.raises(ValueError, match="'pos' requires grad"):
        ErwinNSA(16, 16, 2, **SMALL)(x, pos, batch)
    out = ErwinNSAConv(16, **SMALL)(x, pos.detach(), batch)
    assert out.shape == (25, 16)


def test_default_torch_compile_with_trees_built_in_forward(batch_maker):
    """``torch.compile(model)`` with Inductor on the CPU: the tree build runs eagerly
    (it used to fail with CppCompileError), the rest compiles."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ErwinNSA(4, 16, 1, 3, heads=2, branches=("local",), **SMALL)
    x, pos, batch = batch_maker([30, 11], 4)
    eager = model(x, pos, batch)
    compiled = torch.compile(model)
    out = compiled(x, pos, batch)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()

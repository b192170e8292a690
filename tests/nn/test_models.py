import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_geometric_nsa.nn import MPNNEmbedding, radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.testing import assert_no_leakage
from torch_geometric_nsa.transforms import BallTree

KW = dict(heads=2, ball_size=32, compress_size=8, topk=2)


def make_model(**kwargs):
    torch.manual_seed(0)
    num_layers = kwargs.pop("num_layers", 2)
    return ErwinNSA(4, 16, num_layers, 3, **{**KW, **kwargs})


def test_model_mixed_batch_no_leakage(batch_maker):
    model = make_model(radius=0.7)
    x, pos, batch = batch_maker([300, 1, 45, 120], 4, seed=3)
    assert_no_leakage(model, x, pos, batch, atol=1e-5)


def test_translation_invariance(batch_maker):
    model = make_model(radius=0.7)
    x, pos, batch = batch_maker([200, 31], 4, seed=1)
    out = model(x, pos, batch)
    shift = torch.tensor([4.0, -2.0, 0.5])
    assert torch.allclose(model(x, pos + shift, batch), out, atol=1e-4)


def test_permutation_equivariance(batch_maker):
    model = make_model(radius=0.7)
    x, pos, batch = batch_maker([150], 4, seed=2)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(0))
    out = model(x, pos, batch)
    assert torch.allclose(model(x[perm], pos[perm], batch), out[perm], atol=1e-5)


def test_trees_from_transform_give_same_output(batch_maker):
    model = make_model()
    t = BallTree(ball_size=32, rotate=45.0)
    data = [t(Data(x=torch.randn(n, 4), pos=torch.randn(n, 3))) for n in (10, 70, 33)]
    b = Batch.from_data_list(data)
    tree = BallTree.layout(b, 32)
    tree_rot = BallTree.layout(b, 32, rotate=45.0)
    out = model(b.x, b.pos, b.batch, tree=tree, tree_rot=tree_rot)
    assert torch.allclose(out, model(b.x, b.pos, b.batch), atol=1e-6)
    tree2, rot2 = model.trees_from_data(b)
    assert torch.equal(tree2.perm, tree.perm)
    assert torch.equal(rot2.perm, tree_rot.perm)


def test_given_edges_and_local_only_variant(batch_maker):
    x, pos, batch = batch_maker([60, 20], 4)
    ei = radius_graph(pos, 0.8, batch)
    full = make_model()
    local = make_model(branches=("local",), rotate=None)
    assert full(x, pos, batch, edge_index=ei).shape == (80, 3)
    out = local(x, pos, batch, edge_index=ei)
    assert out.shape == (80, 3)
    loss = out.square().mean()
    loss.backward()
    assert all(p.grad is not None for p in local.parameters())
    assert "num_layers=2" in repr(full)


def test_embedding_is_message_passing_and_uses_edges(batch_maker):
    from torch_geometric.nn import MessagePassing

    emb = MPNNEmbedding(4, 16, steps=2)
    assert isinstance(emb, MessagePassing)
    x, pos, batch = batch_maker([30], 4)
    ei = radius_graph(pos, 1.0, batch)
    a = emb(x, pos, ei)
    assert not torch.allclose(a, emb(x, pos, None))
    assert torch.allclose(emb(x, pos + 3.0, ei), a, atol=1e-5)


def test_bfloat16_model_and_autocast(batch_maker):
    x, pos, batch = batch_maker([70, 20], 4)
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, pos, batch)
    ref = model(x, pos, batch)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    out16 = model.bfloat16()(x.bfloat16(), pos, batch)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16.float()).all()


def test_whole_model_compiles_fullgraph_with_precomputed_trees(batch_maker):
    torch._dynamo.reset()
    model = make_model()
    x, pos, batch = batch_maker([60, 30], 4)
    tree, rot = model.build_trees(pos, batch)
    ei = radius_graph(pos, 0.8, batch)
    eager = model(x, pos, batch, ei, tree, rot)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, pos, batch, ei, tree, rot)
    assert torch.allclose(out, eager, atol=1e-6)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_translation_invariance_far_from_the_origin(batch_maker):
    """The tree of a float64 cloud is built on float64-centred coordinates: far from the
    origin the output equals the output at the origin (it moved by 0.36 at 1e6 when the
    tree was built on float32-rounded coordinates)."""
    x, pos, batch = batch_maker([200, 31], 4, seed=1, dtype=torch.float64)
    model = make_model(radius=0.7).double()
    ref = model(x, pos, batch)
    for offset in (1e4, 1e5, 1e6):
        shift = torch.tensor([offset, -offset, 0.5 * offset], dtype=torch.float64)
        out = model(x, pos + shift, batch)
        torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)
    # float32 up to 1e3 (the input itself is rounded to ~6e-5 there)
    x, pos, batch = batch_maker([200, 31], 4, seed=1)
    model = make_model(radius=0.7)
    ref = model(x, pos, batch)
    for offset in (1e1, 1e2, 1e3):
        shift = torch.tensor([offset, -offset, 0.5 * offset])
        torch.testing.assert_close(model(x, pos + shift, batch), ref, atol=5e-4, rtol=0)


def test_rms_norm_matches_torch_and_keeps_its_state_dict():
    from torch_geometric_nsa.nn.models.erwin_nsa import RMSNorm

    torch.manual_seed(0)
    ours, ref = RMSNorm(16), torch.nn.RMSNorm(16)
    ours.weight.data.uniform_(0.5, 1.5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(7, 16)
    assert torch.equal(ours(x), ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x.bfloat16()), ref(x.bfloat16())
    assert y.dtype == torch.bfloat16
    # ours scales by the weight rounded to bf16: one bf16 rounding apart
    assert (y.float() - y_ref.float()).abs().max() <= 2e-2 * y_ref.abs().max()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_norms_take_the_fused_kernel_under_autocast(batch_maker):
    # torch's rms_norm falls back to ~6 element-wise kernels forward (and ~10 backward)
    # when the input's dtype differs from the weight's: bf16 activations of an fp32 model
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    x, pos, batch = batch_maker([70, 20], 4)
    model = make_model(num_layers=2).cuda()
    with Names() as seen, torch.autocast("cuda", dtype=torch.bfloat16):
        model(x.cuda(), pos.cuda(), batch.cuda())
    assert seen.names.count("_fused_rms_norm") == 2 * 2 + 1  # two per block, one final

"""The tree-to-points checks on CUDA: the same layouts as on the CPU (float64 far from the
origin included), no host synchronisation with trees passed or read from data, a failed
check is a device-side assert, and ``torch.compile`` with the tree built in ``forward``."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch_geometric.data import Batch, Data

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.nn import ErwinNSAConv, knn_graph, radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.transforms import BallTree

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def inputs():
    gen = torch.Generator().manual_seed(0)
    sizes = [300, 1, 77, 500]
    pos = torch.randn(sum(sizes), 3, generator=gen)
    x = torch.randn(sum(sizes), 4, generator=gen)
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    return x, pos, batch


@pytest.mark.parametrize("offset", [0.0, 1e6])
@pytest.mark.parametrize("rotate", [None, 30.0])
def test_cuda_layout_and_keys_equal_cpu(offset, rotate):
    _, pos, batch = inputs()
    pos = pos.double() + offset
    a = build_ball_tree(pos, batch, ball_size=32, rotate=rotate)
    b = build_ball_tree(pos.cuda(), batch.cuda(), ball_size=32, rotate=rotate)
    assert torch.equal(a.perm, b.perm.cpu())
    torch.testing.assert_close(a.key, b.key.cpu(), equal_nan=True, rtol=1e-13, atol=0)


def _no_sync(fn):
    fn()  # warm up (Triton compiles, caches fill)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return out


def test_passed_and_stored_trees_are_checked_without_host_sync():
    x, pos, batch = inputs()
    torch.manual_seed(0)
    model = ErwinNSA(4, 32, 2, 3, heads=2, ball_size=32, compress_size=8, topk=2).cuda()
    conv = ErwinNSAConv(4, 32, heads=2, ball_size=32, compress_size=8).cuda()
    xc, pc, bc = x.cuda(), pos.cuda(), batch.cuda()
    tree, rot = model.build_trees(pc, bc)
    ei = radius_graph(pc, 0.5, bc)
    out = _no_sync(lambda: model(xc, pc, bc, ei, tree, rot))
    _no_sync(lambda: conv(xc, pc, bc, tree))
    ref = model.cpu()(x, pos, batch, radius_graph(pos, 0.5, batch))
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3, rtol=2e-3)
    t = BallTree(32, rotate=45.0)
    items = [t(Data(pos=pos[batch == i].clone(), x=x[batch == i].clone())) for i in range(4)]
    data = Batch.from_data_list(items).cuda()
    model.cuda()
    layout = _no_sync(lambda: BallTree.layout(data, 32))
    _no_sync(lambda: model(data.x, data.pos, data.batch, None, *model.trees_from_data(data)))
    assert torch.equal(layout.perm, build_ball_tree(data.pos, data.batch, ball_size=32).perm)


SCRIPT = textwrap.dedent("""
    import torch
    from torch_geometric_nsa import build_ball_tree
    from torch_geometric_nsa.nn import ErwinNSAConv
    pos = torch.randn(100, 3, device="cuda")
    batch = torch.tensor([0] * 60 + [1] * 40, device="cuda")
    conv = ErwinNSAConv(16, heads=2, ball_size=16, compress_size=4).cuda()
    one = build_ball_tree(pos, ball_size=16)  # one cloud, but the batch has two
    conv(torch.randn(100, 16, device="cuda"), pos, batch, tree=one)
    torch.cuda.synchronize()
    print("NOT CAUGHT")
""")


def test_a_failed_check_is_a_device_side_assert():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert "NOT CAUGHT" not in proc.stdout
    assert proc.returncode != 0 and "assert" in proc.stderr.lower(), proc.stderr[-2000:]


def test_compile_with_trees_built_in_forward_on_cuda():
    x, pos, batch = inputs()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ErwinNSA(4, 32, 2, 3, heads=2, ball_size=32, compress_size=8, topk=2).cuda()
    xc, pc, bc = x.cuda(), pos.cuda(), batch.cuda()
    out = torch.compile(model)(xc, pc, bc)
    torch.testing.assert_close(out, model(xc, pc, bc), atol=2e-3, rtol=2e-3)
    torch._dynamo.reset()


def test_compile_dynamic_serves_new_sizes_on_cuda():
    """``torch.compile(dynamic=True)`` (the examples' ``--compile``): the ops' kernels launch
    from Inductor's code with symbolic sizes; batches of other sizes and cloud counts reuse the
    graph and match eager, gradients included."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ErwinNSA(4, 32, 2, 3, heads=2, ball_size=32, compress_size=8, topk=2).cuda()
    fast = torch.compile(model, dynamic=True)
    gen = torch.Generator().manual_seed(1)
    for sizes in ([300, 1, 77, 500], [45, 610], [129, 33, 2]):
        n = sum(sizes)
        x = torch.randn(n, 4, generator=gen).cuda()
        pos = torch.randn(n, 3, generator=gen).cuda()
        batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).cuda()
        out = fast(x, pos, batch)
        ref = model(x, pos, batch)
        torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)
        params = list(model.parameters())  # some serve only edges: allow_unused
        got = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
        want = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
        assert [g is None for g in got] == [w is None for w in want]
        for g, w in zip(got, want):
            if w is not None:
                torch.testing.assert_close(g, w, atol=5e-3, rtol=5e-3)
    torch._dynamo.reset()


def test_bad_neighbour_arguments_on_cuda():
    pos = torch.rand(20, 3, device="cuda")
    with pytest.raises(ValueError, match="'k'"):
        knn_graph(pos, -1)
    with pytest.raises(ValueError, match="'r'"):
        radius_graph(pos, -1.0)

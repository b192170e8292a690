"""Full grid of the Triton kernels against the reference on CUDA (skipped without a GPU)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_cases as kc  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

MIXED = [1, 37, 128, 129, 1000, 5000]  # 1..5,000 points, sizes not multiples of any ball size
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("D", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_headdim(dtype, D):
    kc.run_all(MIXED, 128, 32, 32, 32, 8, 2, D, dtype, device="cuda", seed=D)


CFGS = [  # m, c, s, g, topk
    (128, 32, 32, 32, 8),
    (64, 16, 32, 16, 4),
    (256, 32, 64, 64, 16),
    (32, 8, 16, 8, 2),
    (128, 16, 64, 128, 3),
    (128, 32, 128, 64, 2),
    (128, 32, 32, 64, 64),
]


@pytest.mark.parametrize("H", [1, 3, 8])
@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: "m{}-c{}-s{}-g{}-k{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_configs(dtype, cfg, H):
    m, c, s, g, topk = cfg
    sizes = torch.randint(1, 5001, (5,), generator=torch.Generator().manual_seed(H + m)).tolist()
    kc.run_all(sizes + [1], m, c, s, g, topk, H, 32, dtype, device="cuda", seed=H, tail=m)


@pytest.mark.parametrize("sizes", [[1], [1, 1, 1], [129, 1, 257]], ids=str)
def test_edges(sizes):
    kc.run_all(sizes, 128, 32, 64, 32, 8, 2, 32, torch.float32, device="cuda")


def test_deterministic_backward():
    from torch_geometric_nsa import kernels as K

    case = kc.make_case(MIXED, 128, 4, 32, 32, device="cuda")
    mask, ptr, bm = case["mask"], case["ptr"], case["block_mask"]
    args = [case[n].bfloat16().requires_grad_() for n in ("q", "k", "v", "kc", "vc")]
    sigma = case["sigma"].float().requires_grad_()

    def step():
        q, k, v, kc_, vc_ = args
        oc, lse = K.compressed_attention(q, kc_, vc_, bm, ptr, 32)
        idx = K.select_blocks(q, kc_, lse, bm, mask, ptr, 32, 32, 32, 8)
        o = (
            K.ball_attention(q, k, v, case["pos"], mask, sigma, 128)
            + oc
            + K.selected_attention(q, k, v, mask, idx, 32, 32)
        )
        return torch.autograd.grad(o.float().square().sum(), args + [sigma])

    a, b = step(), step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_compile_fullgraph_cuda():
    from torch_geometric_nsa import kernels as K

    torch._dynamo.reset()
    case = kc.make_case([300, 77], 64, 2, 32, 16, device="cuda")
    mask, ptr, bm = case["mask"], case["ptr"], case["block_mask"]

    def f(q, k, v, kc_, vc_, sigma):
        ob = K.ball_attention(q, k, v, case["pos"], mask, sigma, 64)
        oc, lse = K.compressed_attention(q, kc_, vc_, bm, ptr, 16)
        idx = K.select_blocks(q, kc_, lse, bm, mask, ptr, 16, 32, 16, 4)
        return (ob + oc + K.selected_attention(q, k, v, mask, idx, 32, 16)).square().sum()

    args = [case[n].float().requires_grad_() for n in ("q", "k", "v", "kc", "vc", "sigma")]
    ref = torch.autograd.grad(f(*args), args)
    out = torch.autograd.grad(torch.compile(f, fullgraph=True)(*args), args)
    for x, y in zip(out, ref):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nonfinite_isolation(dtype):
    from torch_geometric_nsa import kernels as K

    kc.check_nonfinite_isolation(K, dtype, device="cuda", cases=kc.KERNEL_NONFINITE_CASES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_eager_path_equals_the_registered_ops(dtype):
    from torch_geometric_nsa import kernels as K

    kc.check_eager_path(K, "cuda", dtype)


def test_small_sizes_fall_back_to_the_reference():
    """ball_size / select_size below 16: "auto" warns once and runs the reference on CUDA."""
    from torch_geometric_nsa import ops
    from torch_geometric_nsa.ops import reference as R

    case = kc.make_case([5, 7, 3], 8, 2, 16, 4, device="cuda")
    t = {n: case[n].float() for n in ("q", "k", "v", "pos", "sigma")}
    with pytest.warns(RuntimeWarning, match="ball_size >= 16"):
        o = ops.ball_attention(t["q"], t["k"], t["v"], t["pos"], case["mask"], t["sigma"], 8)
    ref = R.ball_attention(t["q"], t["k"], t["v"], t["pos"], case["mask"], t["sigma"], 8)
    assert torch.equal(o, ref)
    idx = torch.zeros(case["S"] // 4, 1, dtype=torch.long, device="cuda")
    with pytest.warns(RuntimeWarning, match="select_size >= 16"):
        o = ops.selected_attention(t["q"], t["k"], t["v"], case["mask"], idx, 8, 4)
    assert torch.equal(o, R.selected_attention(t["q"], t["k"], t["v"], case["mask"], idx, 8, 4))

"""Kernel checks run on the CPU through the Triton interpreter.

Not collected directly (no ``test_`` prefix): ``test_kernels_interpreter.py`` runs this module in a
subprocess with ``TRITON_INTERPRET=1`` set before Triton and the kernels are imported, so the
variable never leaks into the other test modules of the session.
"""

import os
import sys

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "run through test_kernels_interpreter.py (needs TRITON_INTERPRET=1)",
        allow_module_level=True,
    )

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernel_cases as kc  # noqa: E402

CASES = [
    # sizes, m, c, s, g, topk, H, D, dtype, tail, P
    ([1], 32, 8, 16, 8, 4, 1, 8, torch.float32, 0, 3),  # N = 1, topk >= #blocks
    ([1, 37, 129, 300], 128, 32, 32, 32, 8, 2, 16, torch.float32, 0, 3),  # mostly-pad last blocks
    ([5, 200], 64, 16, 32, 16, 4, 2, 8, torch.float16, 64, 3),  # fp16, capacity tail slots
    ([70, 190], 64, 8, 16, 64, 3, 3, 32, torch.float32, 0, 2),  # g = m, P = 2
    ([100, 33], 32, 16, 32, 8, 2, 1, 64, torch.float16, 0, 3),  # s = m
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[8]}-D{c[7]}-H{c[6]}-m{c[1]}")
def test_against_reference(case):
    sizes, m, c, s, g, topk, H, D, dtype, tail, P = case
    kc.run_all(sizes, m, c, s, g, topk, H, D, dtype, tail=tail, P=P)


def test_single_real_point_ball():
    from torch_geometric_nsa import kernels as K

    S, H, D, m = 64, 2, 16, 32
    q, k, v = (torch.randn(S, H, D) for _ in range(3))
    mask = torch.zeros(S, dtype=torch.bool)
    mask[3] = True  # ball 0: one real point; ball 1: none
    o = K.ball_attention(q, k, v, torch.randn(S, 3), mask, -torch.ones(H), m)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o[:m], v[3].expand(m, H, D))
    assert (o[m:] == 0).all()


@pytest.mark.parametrize("scale", [-0.4, 0.0])
def test_non_positive_scale(scale):
    """The forward kernels fold a positive scale into the exponent; a zero or negative scale takes
    the plain path (masks kept, no ``0 * inf``) and must match the reference too."""
    from torch_geometric_nsa import kernels as K
    from torch_geometric_nsa.ops import reference as R

    m, c, s, g, topk, H, D = 64, 16, 32, 16, 2, 2, 16
    case = kc.make_case([70, 1, 200], m, H, D, c, tail=64)
    mask, ptr, bm = case["mask"], case["ptr"], case["block_mask"]
    gout = torch.randn(case["S"], H, D, dtype=torch.float64)
    errors = {}
    kc.check_op(
        "ball",
        lambda t: K.ball_attention(t["q"], t["k"], t["v"], t["pos"], mask, t["sigma"], m, scale),
        lambda t: R.ball_attention(t["q"], t["k"], t["v"], t["pos"], mask, t["sigma"], m, scale),
        {n: case[n] for n in ("q", "k", "v", "pos", "sigma")},
        torch.float32,
        gout,
        ["q", "k", "v", "sigma"],
        errors,
        extra_cast=("pos", "sigma"),
    )
    kc.check_op(
        "compressed",
        lambda t: K.compressed_attention(t["q"], t["kc"], t["vc"], bm, ptr, c, scale),
        lambda t: R.compressed_attention(t["q"], t["kc"], t["vc"], bm, ptr, c, scale),
        {n: case[n] for n in ("q", "kc", "vc")},
        torch.float32,
        gout,
        ["q", "kc", "vc"],
        errors,
    )
    _, lse = R.compressed_attention(case["q"], case["kc"], case["vc"], bm, ptr, c)
    idx = R.select_blocks(case["q"], case["kc"], lse, bm, mask, ptr, c, s, g, topk)
    kc.check_op(
        "selected",
        lambda t: K.selected_attention(t["q"], t["k"], t["v"], mask, idx, s, g, scale),
        lambda t: R.selected_attention(t["q"], t["k"], t["v"], mask, idx, s, g, scale),
        {n: case[n] for n in ("q", "k", "v")},
        torch.float32,
        gout,
        ["q", "k", "v"],
        errors,
    )


def test_compile_fullgraph():
    from torch_geometric_nsa import kernels as K

    torch._dynamo.reset()
    H, D, m, c, s, g = 2, 16, 64, 16, 32, 32
    case = kc.make_case([100], m, H, D, c)
    mask, ptr, bm = case["mask"], case["ptr"], case["block_mask"]

    def f(q, k, v, kc_, vc_, sigma):
        ob = K.ball_attention(q, k, v, case["pos"], mask, sigma, m)
        oc, lse = K.compressed_attention(q, kc_, vc_, bm, ptr, c)
        idx = K.select_blocks(q, kc_, lse, bm, mask, ptr, c, s, g, 2)
        os_ = K.selected_attention(q, k, v, mask, idx, s, g)
        return (ob + oc + os_).square().sum()

    args = [case[n].float().requires_grad_() for n in ("q", "k", "v", "kc", "vc", "sigma")]
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    ref = torch.autograd.grad(f(*args), args)
    out = torch.autograd.grad(cf(*args), args)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


def test_eager_path_equals_the_registered_ops():
    from torch_geometric_nsa import kernels as K

    kc.check_eager_path(K)


def test_opcheck():
    from torch_geometric_nsa.kernels._common import bias_tensors, cloud_block_ranges

    S, H, D, m, c = 64, 1, 16, 32, 16
    case = kc.make_case([40], m, H, D, c)
    f = {n: case[n].float() for n in ("q", "k", "v", "kc", "vc", "pos", "sigma")}
    mask8 = case["mask"].view(torch.uint8)
    lo, hi = cloud_block_ranges(case["ptr"], S, c)
    for n in ("q", "k", "v", "kc", "vc", "sigma"):
        f[n].requires_grad_()
    torch.library.opcheck(
        torch.ops.tgnsa.ball_attention_fwd,
        (f["q"], f["k"], f["v"], f["pos"], mask8, f["sigma"], m, 0.25, 0, 0, 0, 0),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    bm8 = case["block_mask"].view(torch.uint8)
    centre = f["pos"].view(-1, c, f["pos"].shape[1]).mean(1)
    for pos, cen, sigma in (bias_tensors(None, f["q"]), (f["pos"], centre, f["sigma"])):
        torch.library.opcheck(
            torch.ops.tgnsa.compressed_attention_fwd,
            (f["q"], f["kc"], f["vc"], bm8, lo, hi, pos, cen, sigma, 0.25, 0, 0, 0, 0),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )


@pytest.mark.parametrize(
    "table",
    [
        dict(select=dict(BN=32), cmp_bwd_dkdv=dict(BN=16, BM=32), sel_bwd_dkdv=dict(BM=64, BN=16)),
        dict(
            select=dict(BN=16),
            cmp_bwd_dq=dict(BM=16, BN=32),
            sel_fwd=dict(BN=32),
            sel_bwd_dq=dict(BN=16),
            ball_bwd_dq=dict(BM=16, BN=32),
            ball_bwd_dkdv=dict(BM=32, BN=16),
        ),
    ],
    ids=["table-a", "table-b"],
)
def test_config_table(table, monkeypatch):
    """Other entries of the config table (per-kernel tiles)."""
    from torch_geometric_nsa.kernels import _config

    monkeypatch.setattr(
        _config,
        "TABLE",
        {
            (k, "interp", dc, bd): v
            for k, v in table.items()
            for dc in ("16", "32")
            for bd in (16, 32, 64)
        },
    )
    kc.run_all([70, 1, 190], 64, 16, 32, 16, 4, 2, 16, torch.float32, tail=64)
    kc.run_all([100, 33], 64, 16, 32, 32, 3, 1, 32, torch.float16)
    # many chunks of selection candidates (the running top-k merges and skips)
    kc.run_all([1000], 64, 8, 16, 64, 3, 2, 16, torch.float32)


def test_selected_kernels_with_int64_offsets(monkeypatch):
    """The selected kernels' int64-offset variant (inputs of 2**31 elements or more, forced
    here on a small mixed batch) against the reference."""
    from torch_geometric_nsa.kernels import selected

    calls = []
    monkeypatch.setattr(selected, "wide_offsets", lambda *ts: calls.append(1) or True)
    kc.run_all([70, 1, 190], 64, 16, 32, 16, 4, 2, 16, torch.float32, tail=64)
    assert calls  # the forward and the backward asked


def test_nonfinite_isolation():
    """NaN / inf in one cloud never reaches another cloud's outputs, also in tiles that span
    clouds (issue 11: the compressed kernel leaked through 0 * NaN there)."""
    from torch_geometric_nsa import kernels as K

    # the last cloud of each case shares a compressed tile with the cloud before it
    poisons = [("q", float("nan")), ("v", float("inf")), ("vc", float("nan"))]
    kc.check_nonfinite_isolation(
        K, torch.float32, cases=kc.KERNEL_NONFINITE_CASES, poisons=poisons, last_only=True
    )


def test_sizes_below_the_kernels_limits_raise():
    from torch_geometric_nsa import kernels as K

    case = kc.make_case([9], 8, 1, 16, 4)
    f = {n: case[n].float() for n in ("q", "k", "v", "pos", "sigma")}
    with pytest.raises(ValueError, match="ball_size >= 16"):
        K.ball_attention(f["q"], f["k"], f["v"], f["pos"], case["mask"], f["sigma"], 8)
    idx = torch.zeros(case["S"] // 4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="select_size >= 16"):
        K.selected_attention(f["q"], f["k"], f["v"], case["mask"], idx, 8, 4)

import sys
import types

import pytest
import torch

import torch_geometric_nsa
from torch_geometric_nsa import ops
from torch_geometric_nsa.ops import reference as R


@pytest.fixture
def fake_kernels(monkeypatch):
    """Installs a stub ``torch_geometric_nsa.kernels`` whose functions record their calls."""
    calls = []
    mod = types.ModuleType("torch_geometric_nsa.kernels")
    for name in ("ball_attention", "compressed_attention", "select_blocks", "selected_attention"):
        ref = getattr(R, name)

        def fn(*args, _ref=ref, _name=name):
            calls.append(_name)
            return _ref(*args)

        setattr(mod, name, fn)
    monkeypatch.setitem(sys.modules, "torch_geometric_nsa.kernels", mod)
    monkeypatch.setattr(torch_geometric_nsa, "kernels", mod, raising=False)
    monkeypatch.setattr(ops._dispatch, "_kernel_cache", {})
    return calls


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric_nsa.kernels", None)  # import -> ImportError
    monkeypatch.delattr(torch_geometric_nsa, "kernels", raising=False)
    monkeypatch.setattr(ops._dispatch, "_kernel_cache", {})
    monkeypatch.setattr(ops._dispatch, "_kernel_error", {})


def run_ball(x):
    return ops.ball_attention(x.q, x.k, x.v, x.pos, x.mask, x.sigma, x.m)


def test_set_get_use_backend():
    assert ops.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with pytest.raises(RuntimeError):
            with ops.use_backend("triton"):
                assert ops.get_backend() == "triton"
                raise RuntimeError("boom")
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"
    with pytest.raises(ValueError, match="Unknown backend"):
        ops.set_backend("cuda")
    ops.set_backend("reference")
    ops.set_backend("auto")


def test_auto_on_cpu_uses_reference(inputs, fake_kernels):
    x = inputs([5, 20], 8)
    assert torch.equal(run_ball(x), R.ball_attention(x.q, x.k, x.v, x.pos, x.mask, x.sigma, 8))
    assert fake_kernels == []


def test_triton_forces_kernels(inputs, fake_kernels):
    x = inputs([5, 20], 8, c=4)
    with ops.use_backend("triton"):
        run_ball(x)
        _, lse = ops.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4)
        idx = ops.select_blocks(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, 4, 4, 4, 2)
        ops.selected_attention(x.q, x.k, x.v, x.mask, idx, 4, 4)
    assert fake_kernels == [
        "ball_attention",
        "compressed_attention",
        "select_blocks",
        "selected_attention",
    ]
    with ops.use_backend("reference"):
        run_ball(x)
    assert len(fake_kernels) == 4


def test_triton_unavailable_raises(inputs, no_kernels):
    x = inputs([5], 8)
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="unavailable"):
        run_ball(x)
    run_ball(x)  # auto falls back to the reference


def test_public_matches_reference(inputs):
    x = inputs([7, 30], 16, c=4)
    o, lse = ops.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4)
    o2, lse2 = R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 4)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)


# ---- input validation --------------------------------------------------------------------
def _ball_args(x):
    return dict(q=x.q, k=x.k, v=x.v, pos=x.pos, mask=x.mask, sigma=x.sigma, ball_size=8)


F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize(
    "change,exc,match",
    [  # valid inputs: S = 24, H = 2, D = 8
        (dict(q=torch.zeros(24, 16, **F64)), ValueError, r"\[S, H, D\]"),
        (dict(k=torch.zeros(24, 2, 4, **F64)), ValueError, "'k' must have shape"),
        (dict(v=torch.zeros(24, 2, 8, dtype=torch.float32)), TypeError, "dtype"),
        (dict(pos=torch.zeros(8, 3, **F64)), ValueError, "'pos'"),
        (dict(mask=torch.ones(24, dtype=torch.long)), TypeError, "'mask' must be a bool"),
        (dict(sigma=torch.zeros(3, **F64)), ValueError, "'sigma'"),
        (dict(ball_size=6), ValueError, "power of two"),
        (dict(ball_size=16), ValueError, "must divide"),
        (
            dict(
                q=torch.zeros(24, 2, 4, **F64),
                k=torch.zeros(24, 2, 4, **F64),
                v=torch.zeros(24, 2, 4, **F64),
            ),
            ValueError,
            "head dim",
        ),
        (dict(q=torch.zeros(24, 2, 8, dtype=torch.long)), TypeError, "floating"),
        (dict(mask=torch.ones(24, dtype=torch.bool, device="meta")), ValueError, "device"),
    ],
)
def test_ball_attention_bad_inputs(inputs, change, exc, match):
    args = _ball_args(inputs([5, 9], 8))
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.ball_attention(**args)


def test_compressed_attention_bad_inputs(inputs):
    x = inputs([5, 9], 8, c=4)
    f = ops.compressed_attention
    with pytest.raises(ValueError, match="'kc' must have shape"):
        f(x.q, x.kc[:-1], x.vc, x.block_mask, x.ptr, 4)
    with pytest.raises(ValueError, match="'block_mask'"):
        f(x.q, x.kc, x.vc, x.block_mask[:-1], x.ptr, 4)
    with pytest.raises(TypeError, match="'ptr'"):
        f(x.q, x.kc, x.vc, x.block_mask, x.ptr.double(), 4)
    with pytest.raises(ValueError, match="'ptr'"):
        f(x.q, x.kc, x.vc, x.block_mask, x.ptr[None], 4)
    with pytest.raises(ValueError, match="power of two"):
        f(x.q, x.kc, x.vc, x.block_mask, x.ptr, 3)
    with pytest.raises(TypeError, match="dtype"):
        f(x.q, x.kc.float(), x.vc, x.block_mask, x.ptr, 4)


def test_select_and_selected_bad_inputs(inputs):
    x = inputs([5, 9], 8, c=4)
    lse = torch.zeros(x.S, x.H, dtype=torch.float64)
    f = ops.select_blocks
    with pytest.raises(ValueError, match="'block_size' .* must divide 'select_size'"):
        f(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, 4, 2, 4, 2)
    with pytest.raises(ValueError, match="topk"):
        f(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, 4, 8, 4, 0)
    with pytest.raises(ValueError, match="'lse'"):
        f(x.q, x.kc, lse[:-1], x.block_mask, x.mask, x.ptr, 4, 8, 4, 2)
    with pytest.raises(ValueError, match="'group_size' .* must divide"):
        f(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, 4, 8, 64, 2)
    g = ops.selected_attention
    idx = torch.zeros(x.S // 4, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="'idx'"):
        g(x.q, x.k, x.v, x.mask, idx[:-1], 8, 4)
    with pytest.raises(TypeError, match="'idx'"):
        g(x.q, x.k, x.v, x.mask, idx.float(), 8, 4)
    with pytest.raises(ValueError, match="power of two"):
        g(x.q, x.k, x.v, x.mask, idx, 12, 4)

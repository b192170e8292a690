"""``torch.compile(fullgraph=True)`` traces every public op on CPU (no graph break, no host
sync). One small compile per op. Inductor code generation is slow on a small CPU, so it is
used for two ops (ball attention, and select_blocks for its stable sort); the others and all
backward passes are traced with ``aot_eager`` (Dynamo + AOTAutograd, same graph capture)."""

import pytest
import torch

from torch_geometric_nsa import ops


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check(fn, args, grad_args=(), backend="aot_eager"):
    expected = fn(*args)
    out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    for a, b in zip(
        torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(expected)
    ):
        torch.testing.assert_close(a, b, equal_nan=True)
    if grad_args:
        for t in grad_args:
            t.requires_grad_()
        out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
        out = out[0] if isinstance(out, tuple) else out
        grads = torch.autograd.grad(out.square().sum(), grad_args)
        ref = fn(*args)
        ref = ref[0] if isinstance(ref, tuple) else ref
        for a, b in zip(grads, torch.autograd.grad(ref.square().sum(), grad_args)):
            torch.testing.assert_close(a, b)


def test_compile_ball_attention(inputs):
    x = inputs([5, 20], 8, dtype=torch.float32, tail=8)
    _check(
        lambda q, k, v, sigma: ops.ball_attention(q, k, v, x.pos, x.mask, sigma, 8),
        (x.q, x.k, x.v, x.sigma),
        (x.q, x.k, x.v, x.sigma),
        backend="inductor",
    )


def test_compile_compressed_attention(inputs):
    x = inputs([5, 20], 8, c=4, dtype=torch.float32, tail=8)
    _check(
        lambda q, kc, vc: ops.compressed_attention(q, kc, vc, x.block_mask, x.ptr, 4),
        (x.q, x.kc, x.vc),
        (x.q, x.kc, x.vc),
    )


def test_compile_select_blocks(inputs):
    x = inputs([5, 20], 8, c=2, dtype=torch.float32, tail=8)
    _, lse = ops.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, 2)

    def fn(q, kc):
        return ops.select_blocks(q, kc, lse, x.block_mask, x.mask, x.ptr, 2, 4, 4, 3)

    expected = fn(x.q, x.kc)
    assert torch.equal(torch.compile(fn, fullgraph=True)(x.q, x.kc), expected)


def test_compile_selected_attention(inputs):
    x = inputs([5, 20], 8, dtype=torch.float32, tail=8)
    idx = torch.tensor(
        [[0, -1], [1, 2], [2, 3], [3, -1], [-1, -1], [1, 0], [2, -1], [-1, -1], [0, 4], [4, -1]]
    )  # s = 4, g = 4, S = 40
    _check(
        lambda q, k, v: ops.selected_attention(q, k, v, x.mask, idx, 4, 4),
        (x.q, x.k, x.v),
        (x.q, x.k, x.v),
    )

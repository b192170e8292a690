"""The CUDA tree build (``tree/_triton.py``): bitwise equal to the torch loop,
on the CPU through the Triton interpreter (subprocess, so ``TRITON_INTERPRET=1``
is set before Triton is imported and never leaks into the other test modules),
and on CUDA, for both CUDA builds (Triton and the torch loop), against the CPU
build."""

import importlib.util
import os

import pytest
import torch
from test_build import random_batch

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.tree import slot_capacity

HERE = os.path.dirname(os.path.abspath(__file__))
HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_tree_levels_under_triton_interpreter(run_under_interpreter):
    run_under_interpreter(os.path.join(HERE, "triton_levels_suite.py"), timeout=600)


@pytest.fixture(params=["triton", "torch-loop"])
def cuda_path(request, monkeypatch):
    """Both CUDA builds: the Triton one (the default) and the torch level loop
    (``TORCH_GEOMETRIC_NSA_TREE_TRITON=0``)."""
    from torch_geometric_nsa.tree import _triton

    monkeypatch.setattr(_triton, "ENABLED", request.param == "triton")
    return request.param


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and triton")
@pytest.mark.parametrize(
    "dim, dtype", [(3, torch.float32), (2, torch.float64), (1, torch.float32), (5, torch.float16)]
)
def test_cuda_build_matches_cpu_and_never_syncs(dim, dtype, cuda_path):
    from torch_geometric_nsa.tree.build import _use_triton

    sizes = [1000, 1, 4097, 300, 2999]
    pos, batch = random_batch(sizes, dim, dtype=dtype, seed=dim)
    pos_c, batch_c = pos.cuda(), batch.cuda()
    assert _use_triton(pos_c.float()) == (cuda_path == "triton")
    cpu = build_ball_tree(pos, batch, ball_size=128)
    gpu = build_ball_tree(pos_c, batch_c, ball_size=128)
    assert torch.equal(gpu.perm.cpu(), cpu.perm)
    assert torch.equal(gpu.inverse.cpu(), cpu.inverse)
    rot_cpu = build_ball_tree(pos, batch, ball_size=32, rotate=30.0)
    rot_gpu = build_ball_tree(pos_c, batch_c, ball_size=32, rotate=30.0)
    assert torch.equal(rot_gpu.perm.cpu(), rot_cpu.perm)
    cap = slot_capacity(pos.size(0), len(sizes), 128)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        static = build_ball_tree(
            pos_c, batch_c, ball_size=128, batch_size=len(sizes), num_slots=cap
        )
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(static.perm[: cpu.num_slots].cpu(), cpu.perm)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and triton")
def test_cuda_build_grid_ties(cuda_path):
    g = torch.stack(
        torch.meshgrid(torch.arange(64.0), torch.arange(64.0), torch.arange(4.0), indexing="ij"), -1
    ).view(-1, 3)
    cpu = build_ball_tree(g, ball_size=64)
    gpu = build_ball_tree(g.cuda(), ball_size=64)
    assert torch.equal(gpu.perm.cpu(), cpu.perm)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRITON, reason="needs CUDA and triton")
@pytest.mark.parametrize(
    "dim, dtype", [(3, torch.float32), (1, torch.float32), (2, torch.float64), (5, torch.float16)]
)
def test_cuda_small_clouds_one_kernel(dim, dtype, monkeypatch):
    """Clouds of at most 4,096 slots take ``_small_kernel`` (sorts in registers, one
    program per cloud, blocks of 1,024, and of 4,096 in 3-D): the CPU layout, bitwise."""
    from torch_geometric_nsa.tree import _triton

    calls = []
    build = _triton._build_small
    monkeypatch.setattr(_triton, "_build_small", lambda *a: calls.append(a[-1]) or build(*a))
    cases = [
        ([900] * 32, 128, None),  # a batch of MD frames: blocks of 1,024
        ([5, 1, 30], 16, None),
        ([300, 201], 512, None),  # a ball larger than a cloud: 512 slots each
    ]
    if dim == 3:  # blocks of 4,096 (every block size and dim is a 15-30 s compilation)
        cases += [
            ([3586], 128, 30.0),  # a ShapeNet car, rotated tree: 3,712 slots
            ([4096, 1, 17, 2000], 128, None),  # the limit
        ]
    for sizes, m, rotate in cases:
        pos, batch = random_batch(sizes, dim, dtype=dtype, seed=len(sizes) + dim)
        pos[::3, 0] = pos[1, 0]  # exact ties on an axis
        cpu = build_ball_tree(pos, batch, ball_size=m, rotate=rotate)
        gpu = build_ball_tree(pos.cuda(), batch.cuda(), ball_size=m, rotate=rotate)
        for name in ("perm", "mask", "ptr", "inverse", "slot_batch"):
            assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), (sizes, name)
    assert calls == [1024, 32, 512] + ([3712, 4096] if dim == 3 else [])
    if dim == 3:
        g = torch.stack(
            torch.meshgrid(
                torch.arange(16.0), torch.arange(16.0), torch.arange(4.0), indexing="ij"
            ),
            -1,
        ).view(-1, 3)  # equal spreads and ties everywhere
        gpu = build_ball_tree(g.cuda(), ball_size=64)
        assert torch.equal(gpu.perm.cpu(), build_ball_tree(g, ball_size=64).perm)
        assert calls[-1] == 1024

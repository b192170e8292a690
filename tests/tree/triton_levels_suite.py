"""Bitwise checks of ``build_layout_triton`` (presorted lists, no sort per level)
against the torch level loop (one sort per level), on the CPU through the
Triton interpreter.

Not collected directly (no ``test_`` prefix): ``test_triton_levels.py`` runs
this module in a subprocess with ``TRITON_INTERPRET=1`` set before Triton and
the kernels are imported.
"""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "run through test_triton_levels.py (needs TRITON_INTERPRET=1)", allow_module_level=True
    )

import torch_geometric_nsa.tree._triton as tt  # noqa: E402
from torch_geometric_nsa import build_ball_tree  # noqa: E402
from torch_geometric_nsa.tree._triton import build_layout_triton  # noqa: E402


@pytest.fixture(autouse=True)
def general_path(monkeypatch):
    """The general build (torch sorts, level kernels) unless a test asks for the
    one-kernel build of small clouds (``small``): interpreting its in-register
    sorts costs seconds per cloud of a few hundred points."""
    monkeypatch.setattr(tt, "_SMALL_BLOCKS", ())


# Block sizes: small blocks put nodes across blocks and many nodes in a block.
@pytest.fixture(params=[32, 128, 1024], ids=["block32", "block128", "block1024"])
def path(request, monkeypatch):
    monkeypatch.setattr(tt, "_BLOCK", request.param)


@pytest.fixture
def small(monkeypatch):
    """The one-kernel build (``_small_kernel``); counts its calls."""
    calls = []
    build = tt._build_small

    def counted(*args):
        calls.append(args[-1])  # max_slots
        return build(*args)

    monkeypatch.setattr(tt, "_SMALL_BLOCKS", (16, 32, 64, 128))
    monkeypatch.setattr(tt, "_build_small", counted)
    return calls


def check(pos, batch, m, batch_size=None, num_slots=None, rotate=None):
    want = build_ball_tree(
        pos, batch, ball_size=m, batch_size=batch_size, num_slots=num_slots, rotate=rotate
    )  # CPU: the torch loop
    # a non-contiguous copy: the kernels read the positions contiguous
    got = build_layout_triton(pos.T.contiguous().T, batch, m, batch_size, num_slots, rotate)
    for name in ("perm", "mask", "ptr", "inverse", "slot_batch"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.ball_size == want.ball_size
    # the position keys, made in the kernels (pads and capacity tails: NaN)
    torch.testing.assert_close(got.key, want.key, rtol=1e-13, atol=0, equal_nan=True)


def batch_of(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_batches(dim, seed):
    gen = torch.Generator().manual_seed(seed * 10 + dim)
    sizes = torch.randint(1, 1500, (3,), generator=gen).tolist() + [1, 127]
    if seed == 1:
        sizes = sizes + [3000]
    pos = torch.randn(sum(sizes), dim, generator=gen) * 10 ** (seed * 3)
    check(pos, batch_of(sizes), 128)


def test_mixed_batch_small(path):
    gen = torch.Generator().manual_seed(11)
    sizes = [1, 130, 517, 3, 64]
    pos = torch.randn(sum(sizes), 3, generator=gen)
    check(pos, batch_of(sizes), 32)


def test_float64_origin_and_signed_zeros(path):
    gen = torch.Generator().manual_seed(5)
    pos = torch.randn(500, 3, generator=gen, dtype=torch.float64) * 1e-3 + 7.0
    pos[::7, 0] = 0.0
    pos[1::7, 0] = -0.0
    pos[::5, 2] = pos[3, 2]  # many exact ties on an axis
    sizes = [133, 1, 366]
    check(pos, batch_of(sizes), 32)


def test_grid_ties(path):
    g = torch.stack(torch.meshgrid(torch.arange(17.0), torch.arange(13.0), indexing="ij"), -1).view(
        -1, 2
    )
    check(g, torch.zeros(g.size(0), dtype=torch.long), 16)
    # square grid: equal spreads on both axes (lowest axis wins)
    sq = torch.stack(
        torch.meshgrid(torch.arange(9.0), torch.arange(9.0), torch.arange(3.0), indexing="ij"), -1
    ).view(-1, 3)
    check(sq, torch.zeros(sq.size(0), dtype=torch.long), 64)
    # all points equal: zero spreads everywhere
    same = torch.full((200, 3), 1.5)
    check(same, torch.zeros(200, dtype=torch.long), 128)


def test_empty_cloud_and_capacity_levels(path):
    gen = torch.Generator().manual_seed(3)
    sizes = [10, 300, 45]
    pos = torch.randn(sum(sizes), 4, generator=gen)
    batch = torch.tensor([0] * 10 + [2] * 300 + [3] * 45)
    # a gap (cloud 1 empty), a trailing empty cloud, and more levels than
    # needed (capacity mode: max_slots = num_slots)
    check(pos, batch, 64, batch_size=5, num_slots=4096)


def test_single_point_and_d8(path):
    check(torch.tensor([[0.5, 1.0, -2.0]]), torch.zeros(1, dtype=torch.long), 16)
    gen = torch.Generator().manual_seed(8)
    pos = torch.randn(300, 8, generator=gen)
    check(pos, batch_of([299, 1]), 128)


@pytest.mark.parametrize(
    "pos, batch, match",
    [
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), [0, 0], "NaN or inf"),
        (torch.tensor([[0.0, 1.0], [1.0, float("inf")]]), [0, 0], "NaN or inf"),
        (torch.tensor([[0.0, 1.0], [1.0, -3e38]]), [0, 0], "beyond"),
        (torch.rand(5, 2), [0, 1, 1, 0, 2], "must be sorted"),
        (torch.rand(3, 2), [-1, 0, 0], "negative"),
    ],
)
def test_bad_values_raise(pos, batch, match):
    with pytest.raises(ValueError, match=match):
        build_layout_triton(pos, torch.tensor(batch), 16, None, None)
    with pytest.raises(ValueError, match="batch_size=1"):
        build_layout_triton(torch.rand(3, 2), torch.tensor([0, 1, 1]), 16, 1, None)


def test_rotated_and_half_precision(path):
    gen = torch.Generator().manual_seed(13)
    sizes = [70, 1, 200]
    pos = torch.randn(sum(sizes), 3, generator=gen, dtype=torch.float64) + 3.0
    check(pos, batch_of(sizes), 32, rotate=30.0)
    check(pos.half(), batch_of(sizes), 32)


@pytest.mark.parametrize("rotate", [None, 45.0])
def test_small_clouds_rotated_and_half(small, rotate):
    gen = torch.Generator().manual_seed(14)
    sizes = [50, 1, 77]
    pos = torch.randn(sum(sizes), 2, generator=gen, dtype=torch.float64) * 100.0
    check(pos, batch_of(sizes), 16, rotate=rotate)
    check(pos.half(), batch_of(sizes), 16, rotate=rotate)
    assert small == [80, 80]  # the largest cloud's slots


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_small_clouds_one_kernel(small, dim):
    gen = torch.Generator().manual_seed(20 + dim)
    # a gap (cloud 2 empty), single points, sizes that fill no ball, the largest
    # cloud just at the limit (128 slots), exact ties on an axis, a far origin
    sizes = [37, 1, 0, 121, 3] if dim < 5 else [60, 1]
    pos = torch.randn(sum(sizes), dim, generator=gen, dtype=torch.float64) * 1e-3 + 5.0
    pos[::4, 0] = pos[2, 0]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    check(pos, batch, 16)
    assert small == [128 if dim < 5 else 64]


def test_small_clouds_ties_and_zeros(small):
    grid = torch.stack(
        torch.meshgrid(torch.arange(6.0), torch.arange(5.0), torch.arange(2.0), indexing="ij"), -1
    ).view(-1, 3)  # 60 points, equal spreads (lowest axis wins), ties everywhere
    same = torch.full((9, 3), -0.0)
    same[::2] = 0.0  # signed zeros are the same coordinate
    pos = torch.cat([grid, same, torch.tensor([[0.5, 1.0, -2.0]])])
    check(pos, batch_of([60, 9, 1]), 16)
    check(same, torch.zeros(9, dtype=torch.long), 8)
    assert small == [64, 16]


def test_small_path_only_below_its_limit(small):
    gen = torch.Generator().manual_seed(4)
    pos = torch.randn(140, 2, generator=gen)
    check(pos, batch_of([139, 1]), 16)  # 144 slots > 128: the general build
    check(pos, torch.ones(140, dtype=torch.long), 16, batch_size=3, num_slots=256)  # capacity
    assert small == []

import math

import pytest
import torch

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.tree import ball_radius, rotation_matrix, slot_capacity


def random_batch(sizes, dim=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(sum(sizes), dim, generator=gen).to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos, batch


def random_sizes(seed, count, high=5000):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, high + 1, (count,), generator=gen).tolist()


def check_layout(layout, pos, batch, sizes, m):
    """The invariants every layout must satisfy."""
    n, S = pos.size(0), layout.num_slots
    slots = [math.ceil(k / m) * m for k in sizes]
    assert layout.ptr.tolist() == [0] + torch.tensor(slots).cumsum(0).tolist()
    assert S == sum(slots)
    # Padding: at most m - 1 pads per cloud, all at the cloud's end.
    for b, k in enumerate(sizes):
        lo, hi = layout.ptr[b].item(), layout.ptr[b + 1].item()
        assert hi - lo - k < m
        assert layout.mask[lo : lo + k].all() and not layout.mask[lo + k : hi].any()
        # perm[mask] is a permutation of this cloud's points; pads stay inside
        cloud = layout.perm[lo:hi]
        assert (batch[cloud] == b).all()
        real = cloud[:k].sort().values
        first = batch.tolist().index(b)
        assert torch.equal(real, torch.arange(first, first + k))
    assert torch.equal(layout.perm[layout.inverse], torch.arange(n))
    assert layout.mask[layout.inverse].all()
    assert torch.equal(
        layout.slot_batch, torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(slots))
    )


def check_nesting(layout, pos, dim_levels=(1, 2, 4, 8, 16, 32, 64, 128)):
    """Every ball is exactly the union of its two children: the bounding box
    split of a parent separates its children along one axis."""
    p = layout.gather(pos.double())
    mask = layout.mask
    for size in dim_levels:
        if size > layout.ball_size or size == 1:
            continue
        half = size // 2
        pb = p.view(-1, 2, half, p.size(1))
        mb = mask.view(-1, 2, half)
        left_real, right_real = mb[:, 0].any(1), mb[:, 1].any(1)
        both = left_real & right_real
        # children of one ball are separable along some axis
        inf = torch.tensor(float("inf"), dtype=p.dtype)
        lmax = torch.where(mb[:, 0, :, None], pb[:, 0], -inf).amax(1)
        rmin = torch.where(mb[:, 1, :, None], pb[:, 1], inf).amin(1)
        sep = (lmax <= rmin).any(-1)
        assert sep[both].all(), f"children not separable at size {size}"
        # a right child has real points only if the left child is full
        assert (mb[:, 0].all(1) | ~right_real).all()


def reference_order(pos, m):
    """The documented rule, recursively for one cloud: coordinates relative to the
    cloud's bounding-box corner (in float64), rounded to float32; a node of L slots and
    r points splits along its axis of largest float32 spread (lowest axis on
    ties); the left child gets P slots and the min(P, r) points of smallest
    coordinate, ties broken by the lexicographic order of the points."""
    p = pos.double()
    x = (p - p.amin(0)).float() + 0.0  # -0.0 -> +0.0
    canon = sorted(range(x.size(0)), key=lambda i: (x[i].tolist(), i))
    rank = {p: r for r, p in enumerate(canon)}

    def split(points, slots):
        if slots <= 1 or len(points) <= 1:
            return points
        sub = x[points]
        axis = int((sub.amax(0) - sub.amin(0)).argmax())
        points = sorted(points, key=lambda i: (x[i, axis].item(), rank[i]))
        half = 1 << ((slots - 1).bit_length() - 1)
        return split(points[:half], half) + split(points[half:], slots - half)

    return split(list(range(x.size(0))), math.ceil(x.size(0) / m) * m)


@pytest.mark.parametrize("dim, m", [(3, 32), (2, 16), (1, 8)])
def test_matches_recursive_reference(dim, m):
    sizes = [300, 1, 70, 517]
    pos, batch = random_batch(sizes, dim, seed=dim)
    pos[::3, 0] = pos[1, 0]  # ties along an axis
    layout = build_ball_tree(pos, batch, ball_size=m)
    start = 0
    for b, k in enumerate(sizes):
        lo = layout.ptr[b].item()
        ref = [start + i for i in reference_order(pos[start : start + k], m)]
        assert layout.perm[lo : lo + k].tolist() == ref
        start += k


@pytest.mark.parametrize("seed", range(4))
def test_mixed_batch_properties(seed):
    sizes = random_sizes(seed, 1 + seed * 2, high=3000) + [1, 127, 129]
    m = 128
    pos, batch = random_batch(sizes, seed=seed)
    layout = build_ball_tree(pos, batch, ball_size=m)
    check_layout(layout, pos, batch, sizes, m)
    check_nesting(layout, pos)


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_dimensions(dim):
    sizes = [1, 37, 300]
    pos, batch = random_batch(sizes, dim=dim, seed=dim)
    layout = build_ball_tree(pos, batch, ball_size=64)
    check_layout(layout, pos, batch, sizes, 64)
    check_nesting(layout, pos)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    sizes = [50, 200]
    pos, batch = random_batch(sizes, dtype=dtype)
    layout = build_ball_tree(pos, batch, ball_size=32)
    check_layout(layout, pos, batch, sizes, 32)


def test_tiny_clouds():
    pos = torch.tensor([[0.5, 1.0, -2.0]])
    layout = build_ball_tree(pos, ball_size=16)
    assert layout.num_slots == 16
    assert layout.mask.tolist() == [True] + [False] * 15
    assert layout.perm.tolist() == [0] * 16
    assert layout.inverse.tolist() == [0]


def test_balls_are_compact_and_nested_levels_partition():
    pos, batch = random_batch([5000], seed=3)
    layout = build_ball_tree(pos, batch, ball_size=512)
    # every ball of every level is the union of its two children (by slots),
    # and smaller balls are tighter
    radii = [ball_radius(layout, pos, s) for s in (32, 128, 512)]
    means = [r[v].mean().item() for r, v in radii]
    assert means[0] < means[1] < means[2]
    # a ball of 32 random gaussian points of a 5000-point cloud is far
    # smaller than the cloud itself
    assert means[0] < 0.5 * (pos - pos.mean(0)).norm(dim=1).max()


def test_deterministic_and_order_independent():
    sizes = [700, 1, 1500]
    pos, batch = random_batch(sizes, seed=7)
    a = build_ball_tree(pos, batch, ball_size=128)
    b = build_ball_tree(pos, batch, ball_size=128)
    assert torch.equal(a.perm, b.perm)
    # shuffle points within each cloud: same points in the same slots
    gen = torch.Generator().manual_seed(1)
    shuffle = torch.cat(
        [torch.randperm(k, generator=gen) + o for k, o in zip(sizes, [0, 700, 701])]
    )
    c = build_ball_tree(pos[shuffle], batch, ball_size=128)
    assert torch.equal(pos[shuffle][c.perm], pos[a.perm])


def test_ties_on_a_grid_are_order_independent():
    g = torch.stack(torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="ij"), -1).view(
        -1, 2
    )
    a = build_ball_tree(g, ball_size=16)
    shuffle = torch.randperm(g.size(0), generator=torch.Generator().manual_seed(0))
    b = build_ball_tree(g[shuffle], ball_size=16)
    assert torch.equal(g[shuffle][b.perm], g[a.perm])
    check_nesting(a, g)


def test_rotation():
    sizes = [300, 45]
    pos, batch = random_batch(sizes, seed=11)
    plain = build_ball_tree(pos, batch, ball_size=64)
    rot = build_ball_tree(pos, batch, ball_size=64, rotate=45.0)
    check_layout(rot, pos, batch, sizes, 64)
    assert torch.equal(rot.ptr, plain.ptr) and torch.equal(rot.mask, plain.mask)
    assert not torch.equal(rot.perm, plain.perm)
    R = rotation_matrix(3, 45.0)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    same = build_ball_tree(pos @ R.T, batch, ball_size=64)
    assert torch.equal(same.perm, rot.perm)
    assert torch.equal(build_ball_tree(pos, batch, ball_size=64, rotate=0.0).perm, plain.perm)


def test_capacity_mode_matches_exact_layout():
    sizes = [100, 3, 260]
    pos, batch = random_batch(sizes, seed=5)
    exact = build_ball_tree(pos, batch, ball_size=32)
    cap = slot_capacity(pos.size(0), len(sizes), 32)
    static = build_ball_tree(pos, batch, ball_size=32, batch_size=3, num_slots=cap)
    S = exact.num_slots
    assert static.num_slots == cap >= S
    assert torch.equal(static.perm[:S], exact.perm)
    assert torch.equal(static.mask[:S], exact.mask)
    assert not static.mask[S:].any()
    assert torch.equal(static.inverse, exact.inverse)
    assert torch.equal(static.ptr, exact.ptr)


def test_capacity_too_small_raises():
    pos, batch = random_batch([100])
    with pytest.raises(RuntimeError, match="num_slots is smaller"):
        build_ball_tree(pos, batch, ball_size=16, batch_size=1, num_slots=64)


def test_empty_cloud_in_the_middle_gets_no_slots():
    pos, _ = random_batch([10, 20])
    batch = torch.tensor([0] * 10 + [2] * 20)
    layout = build_ball_tree(pos, batch, ball_size=16)
    assert layout.ptr.tolist() == [0, 16, 16, 48]
    assert layout.num_clouds == 3
    assert (batch[layout.perm] == layout.slot_batch).all()


def test_layout_helpers():
    pos, batch = random_batch([40, 9])
    layout = build_ball_tree(pos, batch, ball_size=32)
    x = torch.randn(49, 4)
    assert torch.equal(layout.scatter(layout.gather(x)), x)
    assert torch.equal(layout.balls(16), torch.arange(96) // 16)
    assert "num_slots=96" in repr(layout)
    with pytest.raises(ValueError, match="exceeds"):
        layout.balls(64)


@pytest.mark.parametrize("capacity", [False, True])
def test_gather_and_scatter_gradients_are_gathers(capacity):
    """The zero-pad gather and the scatter are adjoint permutations: their gradients
    match autograd's index_select backward (which accumulates), on a mixed batch with
    pads (and the tail slots of a capacity layout)."""
    pos, batch = random_batch([40, 9, 1])
    kw = dict(num_slots=slot_capacity(50, 3, 16) + 32, batch_size=3) if capacity else {}
    layout = build_ball_tree(pos, batch, ball_size=16, **kw)
    x = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    xs = layout.gather(x, zero_pads=True)
    assert torch.equal(xs[layout.mask], layout.gather(x)[layout.mask])
    assert not xs[~layout.mask].any()
    w = torch.randn(layout.num_slots, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((xs * w).sum(), x)
    (expect,) = torch.autograd.grad((x.index_select(0, layout.perm) * w)[layout.mask].sum(), x)
    assert torch.equal(grad, expect)
    s = torch.randn(layout.num_slots, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(50, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((layout.scatter(s) * v).sum(), s)
    (expect,) = torch.autograd.grad((s.index_select(0, layout.inverse) * v).sum(), s)
    assert torch.equal(grad, expect) and not grad[~layout.mask].any()
    assert torch.autograd.gradgradcheck(lambda t: layout.scatter(t) ** 2, (s,))
    assert torch.autograd.gradgradcheck(lambda t: layout.gather(t, zero_pads=True) ** 2, (x,))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(pos=torch.tensor([[0.0, float("nan")]])), "NaN"),
        (dict(pos=torch.tensor([[0.0, float("inf")]])), "NaN or infinite"),
        (
            dict(pos=torch.tensor([[0.0, -1e300], [0.0, 1e300]], dtype=torch.float64)),
            r"infinite values, or coordinates beyond",
        ),
        (dict(pos=torch.tensor([[0.0, 3e38], [0.0, 1.0]])), "beyond"),
        (dict(pos=torch.zeros(3, 3), ball_size=2**30), "at most"),
        (dict(pos=torch.zeros(3, 3), rotate=float("nan")), "rotate"),
        (
            dict(pos=torch.zeros(20, 3), ball_size=2**20, batch=torch.arange(20)),
            "smaller ball_size",
        ),
        (
            dict(pos=torch.zeros(10, 3), batch=torch.tensor([0] * 9 + [10**8])),
            "cloud index far too large",
        ),
        (dict(pos=torch.zeros(3)), r"shape \[num_points, dim\]"),
        (dict(pos=torch.zeros(0, 3)), "empty"),
        (dict(pos=torch.zeros(3, 3, dtype=torch.long)), "floating"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([0, 0])), "shape"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([0.0, 0.0, 0.0])), "integer"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([1, 0, 0])), "sorted"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([-1, 0, 0])), "negative"),
        (dict(pos=torch.zeros(3, 3), ball_size=0), "power of two"),
        (dict(pos=torch.zeros(3, 3), ball_size=-4), "power of two"),
        (dict(pos=torch.zeros(3, 3), ball_size=48), "power of two"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([0, 1, 2]), batch_size=2), "batch_size=2"),
        (dict(pos=torch.zeros(3, 3), batch=torch.tensor([0, 1, 2]), num_slots=64), "needs"),
        (dict(pos=torch.zeros(3, 3), num_slots=100, ball_size=64), "multiple"),
    ],
)
def test_bad_input(bad, match):
    kwargs = dict(ball_size=16)
    kwargs.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        build_ball_tree(**kwargs)

"""Property-based fuzzing of the public API: ``build_ball_tree``, ``BallTree``,
``ErwinNSAConv``, ``ErwinNSA``, ``radius_graph`` and ``knn_graph``.

Inputs are drawn at random: shapes, dimensions, dtypes, scales and offsets, batches with
gaps (empty clouds), one-point clouds, duplicate points, and corruptions (non-finite
positions, unsorted or negative or huge cloud ids, float or misshapen batches, bad sizes
and angles, stale or foreign trees).  The property, everywhere: either a documented
exception whose message names the offending argument, or a finite result equal to the
result of every cloud on its own.  (CPU only: the CUDA paths are tested elsewhere.)
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch, Data

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.nn import ErwinNSAConv, knn_graph, radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.transforms import BallTree
from torch_geometric_nsa.tree import rotation_matrix

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def scaled(factor: float):
    """Settings with a share of the profile's examples (slow properties get fewer)."""
    return settings(max_examples=max(2, int(settings.default.max_examples * factor)))


def expect_error(err: BaseException, *names: str) -> None:
    """A documented exception whose message names one of :obj:`names`."""
    assert isinstance(err, (ValueError, TypeError, RuntimeError)), repr(err)
    msg = str(err)
    assert any(n in msg for n in names), f"{names} not named in: {msg}"


@st.composite
def clouds(draw, max_size=40, dims=(1, 2, 3), dtypes=DTYPES, min_clouds=1):
    """``(pos, batch, sizes)``: clouds of ``sizes`` points (0 = a gap in the ids)."""
    dim = draw(st.sampled_from(dims))
    sizes = draw(st.lists(st.integers(0, max_size), min_size=min_clouds, max_size=4))
    if sum(sizes) == 0:
        sizes[-1] = 1
    dtype = draw(st.sampled_from(dtypes))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pos = torch.randn(n, dim, generator=gen, dtype=torch.float64) * scale + offset
    if draw(st.booleans()) and n > 2:  # duplicates and ties
        pos[1::3] = pos[0]
    pos = pos.to(dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos, batch, sizes


def cloud_slices(batch, sizes):
    start = 0
    for b, k in enumerate(sizes):
        if k:
            yield b, slice(start, start + k)
        start += k


# --- build_ball_tree --------------------------------------------------------------------------

CORRUPTIONS = [
    None,
    "nan",
    "inf",
    "unsorted",
    "negative",
    "huge_id",
    "float_batch",
    "short_batch",
    "ball_size",
    "rotate",
]


def corrupt(kind, pos, batch, kwargs):
    """Applies a corruption; returns the names an error must mention (None: valid)."""
    if kind == "nan" and pos.numel():
        pos = pos.clone()
        pos.view(-1)[pos.numel() // 2] = math.nan
        return pos, batch, kwargs, ("'pos'",)
    if kind == "inf" and pos.numel():
        pos = pos.clone()
        pos.view(-1)[0] = -math.inf
        return pos, batch, kwargs, ("'pos'",)
    if kind == "unsorted" and bool((batch.flip(0).diff() < 0).any()):
        return pos, batch.flip(0), kwargs, ("'batch'",)
    if kind == "negative":
        return pos, batch - int(batch.min()) - 1, kwargs, ("'batch'",)
    if kind == "huge_id":
        batch = batch.clone()
        batch[-1] = 10**9
        return pos, batch, kwargs, ("'batch'",)
    if kind == "float_batch":
        return pos, batch.float(), kwargs, ("'batch'",)
    if kind == "short_batch":
        return pos, batch[:-1], kwargs, ("'batch'",)
    if kind == "ball_size":
        return pos, batch, {**kwargs, "ball_size": 12}, ("'ball_size'",)
    if kind == "rotate":
        return pos, batch, {**kwargs, "rotate": math.inf}, ("'rotate'",)
    return pos, batch, kwargs, None


@given(
    data=clouds(),
    ball_size=st.sampled_from([1, 2, 4, 16, 64]),
    rotate=st.sampled_from([None, 30.0, -90.0]),
    kind=st.sampled_from(CORRUPTIONS),
    give_batch_size=st.booleans(),
)
def test_build_ball_tree(data, ball_size, rotate, kind, give_batch_size):
    pos, batch, sizes = data
    kwargs = dict(ball_size=ball_size, rotate=rotate)
    if give_batch_size:  # else trailing empty clouds are not seen (batch[-1] + 1 clouds)
        kwargs["batch_size"] = len(sizes)
    pos, batch, kwargs, names = corrupt(kind, pos, batch, kwargs)
    try:
        tree = build_ball_tree(pos, batch, **kwargs)
    except Exception as err:  # noqa: BLE001
        assert names is not None, f"valid input raised {err!r}"
        expect_error(err, *names)
        return
    assert names is None, f"{kind} was accepted"
    m = ball_size
    clouds = len(sizes) if give_batch_size else int(batch[-1]) + 1
    assert tree.num_clouds == clouds and tree.num_points == pos.size(0)
    assert torch.equal(tree.perm[tree.inverse], torch.arange(pos.size(0)))
    assert int(tree.ptr[-1]) == sum(math.ceil(k / m) * m for k in sizes)
    for b, sl in cloud_slices(batch, sizes):
        lo, hi = int(tree.ptr[b]), int(tree.ptr[b + 1])
        assert hi - lo == math.ceil(sizes[b] / m) * m
        alone = build_ball_tree(pos[sl], ball_size=m, rotate=rotate)
        assert torch.equal(tree.perm[lo:hi], alone.perm + sl.start)
        assert torch.equal(tree.mask[lo:hi], alone.mask)
        torch.testing.assert_close(tree.key[lo:hi], alone.key, equal_nan=True)


# --- the BallTree transform -------------------------------------------------------------------

STALE = [None, "rotate", "jitter", "drop", "shuffle", "swap_clouds", "foreign"]


@scaled(0.75)
@given(
    data=clouds(max_size=30, dims=(2, 3), dtypes=[torch.float32, torch.float64]),
    ball_size=st.sampled_from([2, 8, 16]),
    rotate=st.sampled_from([None, 45.0]),
    stale=st.sampled_from(STALE),
)
def test_ball_tree_transform(data, ball_size, rotate, stale):
    pos, batch, sizes = data
    sizes = [k for k in sizes if k]
    t = BallTree(ball_size, rotate=rotate)
    items = [t(Data(pos=p.clone())) for p in torch.split(pos, sizes)]
    b = Batch.from_data_list(items)
    if stale == "rotate":  # a RandomRotate after the transform (the identity in 1-D)
        b.pos = b.pos @ rotation_matrix(pos.size(1), 90.0, dtype=b.pos.dtype).T
    elif stale == "jitter":
        b.pos = b.pos + 1e-3 * (1 + b.pos.abs())
    elif stale == "drop" and b.num_nodes > 1:
        items[-1].pos = items[-1].pos[:-1] if items[-1].num_nodes > 1 else items[-1].pos
        if items[-1].num_nodes == sizes[-1]:
            stale = None
        b = Batch.from_data_list(items)
    elif stale == "shuffle":
        perm = torch.arange(b.num_nodes).flip(0)
        same = torch.equal(b.pos[perm], b.pos) and torch.equal(b.batch[perm], b.batch)
        b.pos = b.pos[perm]
        b.batch = b.batch[perm]
        stale = None if same else stale
    elif stale == "swap_clouds" and len(items) > 1 and sizes[0] != sizes[-1]:
        b = Batch.from_data_list(items[::-1])
        b.pos = Batch.from_data_list(items).pos  # trees of other clouds
    elif stale == "foreign":
        other = [t(Data(pos=p.clone() + 1.0)) for p in torch.split(pos, sizes)]
        b.ball_tree_key = Batch.from_data_list(other).ball_tree_key
    else:
        stale = None
    try:
        tree = BallTree.layout(b, ball_size, rotate=rotate)
    except Exception as err:  # noqa: BLE001
        assert stale is not None, f"fresh trees raised {err!r}"
        expect_error(err, "tree", "'batch'", "sorted")
        return
    # a stale tree may be accepted only if it still is exactly the tree of these points
    ref = build_ball_tree(b.pos, b.batch, ball_size=ball_size, rotate=rotate)
    assert torch.equal(tree.perm, ref.perm), stale
    assert torch.equal(tree.mask, ref.mask) and torch.equal(tree.ptr, ref.ptr)


# --- the layer --------------------------------------------------------------------------------


@st.composite
def conv_config(draw):
    ball = draw(st.sampled_from([4, 8, 16]))
    compress = draw(st.sampled_from([c for c in (1, 2, 4) if c <= ball]))
    select = draw(st.sampled_from([s for s in (compress, 2 * compress) if s <= ball]))
    branches = draw(
        st.sampled_from(
            [("compressed", "selected", "local"), ("local",), ("compressed",), ("selected",)]
        )
    )
    return dict(
        ball_size=ball,
        compress_size=compress,
        select_size=select,
        topk=draw(st.integers(1, 3)),
        branches=branches,
    )


@scaled(1.0)
@given(
    data=clouds(max_size=40, dtypes=[torch.float32, torch.float64, torch.float16]),
    config=conv_config(),
    widths=st.sampled_from([(16, 16), (8, 16), (-1, 16)]),
    nan_x=st.booleans(),
    kind=st.sampled_from([None, None, "nan", "unsorted", "huge_id", "negative"]),
)
def test_conv(data, config, widths, nan_x, kind):
    pos, batch, sizes = data
    torch.manual_seed(0)
    conv = ErwinNSAConv(*widths, heads=2, pos_dim=pos.size(1), **config).eval()
    width = 8 if widths[0] == -1 else widths[0]
    x = torch.randn(pos.size(0), width, generator=torch.Generator().manual_seed(1))
    poisoned = None
    # NaN features of one cloud must not reach any other cloud
    if nan_x:
        b, sl = next(iter(cloud_slices(batch, sizes)))
        x[sl.start] = math.nan
        poisoned = b
    pos, batch, _, names = corrupt(kind, pos, batch, {})
    with torch.no_grad():
        try:
            out = conv(x, pos, batch)
        except Exception as err:  # noqa: BLE001
            assert names is not None, f"valid input raised {err!r}"
            expect_error(err, *names)
            return
        assert names is None, f"{kind} was accepted"
        assert out.shape == (pos.size(0), conv.out_channels)
        for b, sl in cloud_slices(batch, sizes):
            if b == poisoned:
                continue
            assert torch.isfinite(out[sl]).all(), f"cloud {b} not finite"
            alone = conv(x[sl], pos[sl])
            torch.testing.assert_close(out[sl], alone, atol=2e-4, rtol=1e-3)


def test_nan_features_stay_in_their_cloud_with_selection():
    """Found by test_conv: two one-point clouds, topk=2 > the one block of each cloud (the -1
    padding of the selection used to gather another cloud's values)."""
    pos, batch = torch.tensor([[0.0015], [-0.0003]]), torch.tensor([0, 1])
    x = torch.randn(2, 16)
    x[0] = math.nan
    torch.manual_seed(0)
    conv = ErwinNSAConv(16, heads=2, pos_dim=1, ball_size=4, compress_size=4, topk=2)
    with torch.no_grad():
        assert torch.isfinite(conv(x, pos, batch)[1]).all()


@scaled(0.75)
@given(
    data=clouds(max_size=30, dims=(3,), dtypes=[torch.float32], min_clouds=2),
    stale=st.sampled_from(["moved", "more_points", "one_cloud", "other_clouds", "small_ball"]),
)
def test_conv_refuses_stale_or_foreign_trees(data, stale):
    pos, batch, sizes = data
    conv = ErwinNSAConv(16, heads=2, ball_size=8, compress_size=2)
    x = torch.randn(pos.size(0), 16)
    tree = build_ball_tree(pos, batch, ball_size=8)
    if stale == "moved":
        tree = build_ball_tree(pos * 1.001 + 0.01, batch, ball_size=8)
    elif stale == "more_points":
        tree = build_ball_tree(torch.cat([pos, pos[:1]]), ball_size=8)
    elif stale == "one_cloud":
        assume(len([k for k in sizes if k]) > 1)
        tree = build_ball_tree(pos, ball_size=8)
    elif stale == "other_clouds":
        assume(sizes[0] > 1)
        other = batch.clone()
        other[0] = -1  # a point moved to a cloud of its own
        tree = build_ball_tree(pos, other + 1, ball_size=8)
    else:
        tree = build_ball_tree(pos, batch, ball_size=4)
    with pytest.raises((ValueError, RuntimeError)) as info:
        conv(x, pos, batch, tree=tree)
    expect_error(info.value, "tree")


# --- the model --------------------------------------------------------------------------------


@scaled(0.4)
@given(
    data=clouds(max_size=30, dims=(2, 3), dtypes=[torch.float32, torch.float64]),
    rotate=st.sampled_from([None, 30.0]),
    radius=st.sampled_from([None, 0.8]),
    layers=st.integers(1, 2),
    kind=st.sampled_from([None, None, "nan", "unsorted", "short_batch"]),
)
def test_model(data, rotate, radius, layers, kind):
    pos, batch, sizes = data
    torch.manual_seed(0)
    model = ErwinNSA(
        3,
        16,
        layers,
        2,
        heads=2,
        ball_size=8,
        compress_size=2,
        topk=2,
        rotate=rotate,
        radius=radius,
        pos_dim=pos.size(1),
    ).eval()
    x = torch.randn(pos.size(0), 3, generator=torch.Generator().manual_seed(2))
    pos = pos / pos.abs().amax().clamp(min=1e-6)  # a radius graph of sensible size
    pos, batch, _, names = corrupt(kind, pos, batch, {})
    with torch.no_grad():
        try:
            out = model(x, pos, batch)
        except Exception as err:  # noqa: BLE001
            assert names is not None, f"valid input raised {err!r}"
            expect_error(err, *names)
            return
        assert names is None, f"{kind} was accepted"
        assert torch.isfinite(out).all()
        for _, sl in cloud_slices(batch, sizes):
            torch.testing.assert_close(out[sl], model(x[sl], pos[sl]), atol=2e-4, rtol=1e-3)


@scaled(0.5)
@given(data=clouds(max_size=30, dims=(3,), dtypes=[torch.float32]), angle=st.sampled_from([10.0]))
def test_model_refuses_trees_of_another_angle_or_size(data, angle):
    pos, batch, _ = data
    model = ErwinNSA(3, 16, 2, heads=2, ball_size=8, compress_size=2, rotate=45.0)
    x = torch.randn(pos.size(0), 3)
    tree, _ = model.build_trees(pos, batch)
    wrong = build_ball_tree(pos, batch, ball_size=8, rotate=angle)
    with pytest.raises(ValueError) as info:
        model(x, pos, batch, tree=tree, tree_rot=wrong)
    expect_error(info.value, "tree_rot")
    bigger = build_ball_tree(torch.cat([pos, pos]), ball_size=8)
    with pytest.raises(ValueError) as info:
        model(x, pos, batch, tree=bigger)
    expect_error(info.value, "tree")


# --- neighbour graphs -------------------------------------------------------------------------


def brute(pos, batch, loop):
    p = pos.double()
    d = (p[:, None] - p[None]).norm(dim=-1)  # exact zeros (cdist's are not)
    d = d.masked_fill(batch[:, None] != batch[None], math.inf)
    if not loop:
        d.fill_diagonal_(math.inf)
    return d


@scaled(1.0)
@given(
    data=clouds(max_size=40, dtypes=[torch.float32, torch.float64]),
    r=st.sampled_from([0.0, 0.3, 1.0, 5.0, -1.0, math.nan]),
    k=st.sampled_from([1, 3, 50, 0, -1]),
    loop=st.booleans(),
    shuffle=st.booleans(),
    kind=st.sampled_from([None, None, "nan", "negative", "huge_id", "float_batch"]),
)
def test_neighbour_graphs(data, r, k, loop, shuffle, kind):
    pos, batch, sizes = data
    if shuffle:  # unsorted clouds are fine here
        perm = torch.randperm(pos.size(0), generator=torch.Generator().manual_seed(0))
        pos, batch = pos[perm], batch[perm]
    pos = pos / pos.abs().amax().clamp(min=1e-6)
    pos, batch, _, names = corrupt(kind, pos, batch, {})
    try:
        ei = radius_graph(pos, r, batch, loop=loop, max_num_neighbors=None)
    except Exception as err:  # noqa: BLE001
        assert names is not None or not (r >= 0), f"valid input raised {err!r}"
        expect_error(err, *(names or ()), "'r'")
    else:
        assert names is None and r >= 0
        d = brute(pos, batch, loop)
        t, s = (d <= r).nonzero(as_tuple=True)
        assert set(map(tuple, ei.t().tolist())) == set(zip(s.tolist(), t.tolist()))
    try:
        ei = knn_graph(pos, k, batch, loop=loop)
    except Exception as err:  # noqa: BLE001
        assert names is not None or k < 1, f"valid input raised {err!r}"
        expect_error(err, *(names or ()), "'k'")
    else:
        assert names is None and k >= 1
        d = brute(pos, batch, loop)
        # every target's neighbour distances are its k smallest (ties in any order)
        expect = d.sort(1).values[:, :k]
        got = torch.full_like(expect, math.inf)
        for t in range(pos.size(0)):
            dist = d[t, ei[0][ei[1] == t]].sort().values
            got[t, : dist.numel()] = dist
        torch.testing.assert_close(got, expect)
        assert (batch[ei[0]] == batch[ei[1]]).all()

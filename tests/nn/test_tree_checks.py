"""A tree must belong to the points it is used with: every way of pairing a layout with
other points, clouds, positions, sizes or angles raises "the tree does not match these
points" (or names the mismatch), never a wrong answer or a bare IndexError."""

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.nn import ErwinNSAConv
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.transforms import BallTree

MISMATCH = "the tree does not match these points"
SMALL = dict(heads=2, ball_size=16, compress_size=4, topk=2)


def conv():
    torch.manual_seed(0)
    return ErwinNSAConv(16, **SMALL)


def model(rotate=45.0):
    torch.manual_seed(0)
    return ErwinNSA(4, 16, 2, 3, rotate=rotate, **SMALL)


def clouds(sizes, channels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        Data(pos=torch.randn(n, 3, generator=gen), x=torch.randn(n, channels, generator=gen))
        for n in sizes
    ]


def test_one_cloud_tree_with_two_cloud_batch_raises_instead_of_leaking(batch_maker):
    x, pos, batch = batch_maker([30, 20], 16)
    one = build_ball_tree(pos, ball_size=16)  # ignores the clouds: would leak across them
    with pytest.raises(RuntimeError, match="another cloud"):
        conv()(x, pos, batch, tree=one)
    m = model()
    with pytest.raises(RuntimeError, match="another cloud"):
        m(x[:, :4], pos, batch, tree=one)
    # the matching tree is accepted and equals building it inside; without a batch the
    # tree's clouds are used
    two = build_ball_tree(pos, batch, ball_size=16)
    c = conv()
    assert torch.equal(c(x, pos, batch, tree=two), c(x, pos, batch))
    assert torch.equal(c(x, pos, tree=two), c(x, pos, batch))


def test_tree_of_other_positions_or_clouds_raises(batch_maker):
    x, pos, batch = batch_maker([30, 20], 16)
    c = conv()
    moved = build_ball_tree(pos + 0.01, batch, ball_size=16)
    with pytest.raises(RuntimeError, match=MISMATCH):
        c(x, pos, batch, tree=moved)
    other_split = torch.tensor([0] * 20 + [1] * 30)
    with pytest.raises(RuntimeError, match="another cloud"):
        c(x, pos, other_split, tree=build_ball_tree(pos, batch, ball_size=16))
    # reordered points: same positions, other order
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    perm = torch.cat([perm[perm < 30], perm[perm >= 30]])  # stay in their clouds
    tree = build_ball_tree(pos, batch, ball_size=16)
    with pytest.raises(RuntimeError, match=MISMATCH):
        c(x[perm], pos[perm], batch, tree=tree)
    with pytest.raises(RuntimeError, match="NaN"):
        c(x, pos.masked_fill(pos > 1.5, float("nan")), batch, tree=tree)


def test_model_with_a_tree_for_more_points_raises_clearly(batch_maker):
    x, pos, batch = batch_maker([30, 20], 4)
    m = model()
    big, big_rot = m.build_trees(torch.randn(80, 3), torch.tensor([0] * 40 + [1] * 40))
    with pytest.raises(ValueError, match=MISMATCH + ".*holds 80 points"):
        m(x, pos, batch, tree=big)
    tree, _ = m.build_trees(pos, batch)
    with pytest.raises(ValueError, match=MISMATCH + ".*holds 80 points"):
        m(x, pos, batch, tree=tree, tree_rot=big_rot)


def test_model_checks_the_angles_of_passed_trees(batch_maker):
    x, pos, batch = batch_maker([30, 20], 4)
    m = model(rotate=45.0)
    tree = build_ball_tree(pos, batch, ball_size=16)
    with pytest.raises(ValueError, match="rotate=30.0 but the model needs rotate=45.0"):
        m(x, pos, batch, tree=tree, tree_rot=build_ball_tree(pos, batch, ball_size=16, rotate=30))
    with pytest.raises(ValueError, match="'tree' was built with rotate=45.0"):
        m(x, pos, batch, tree=build_ball_tree(pos, batch, ball_size=16, rotate=45))
    with pytest.raises(ValueError, match="ball_size=8 < the model's 16"):
        m(x, pos, batch, tree=build_ball_tree(pos, batch, ball_size=8))


def test_trees_from_data_compares_the_angle():
    b = Batch.from_data_list([BallTree(16, rotate=30.0)(d) for d in clouds([20, 33])])
    with pytest.raises(RuntimeError, match="another angle than rotate=45.0"):
        model(rotate=45.0).trees_from_data(b)
    tree, rot = model(rotate=30.0).trees_from_data(b)
    assert rot.rotate == 30.0 and tree.rotate is None
    out = model(rotate=30.0)(b.x, b.pos, b.batch, tree=tree, tree_rot=rot)
    assert torch.allclose(out, model(rotate=30.0)(b.x, b.pos, b.batch), atol=1e-6)
    with pytest.raises(RuntimeError, match="another ball_size than 32"):
        ErwinNSA(4, 16, 2, 3, heads=2, ball_size=32, compress_size=4).trees_from_data(b)


@pytest.mark.parametrize("n", [50, 64])  # 64: as many slots as points
def test_random_rotate_after_the_transform_is_caught(n):
    data = BallTree(16, rotate=45.0)(clouds([n])[0])
    data = T.RandomRotate(90, axis=2)(data)
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(data, 16)
    with pytest.raises(RuntimeError, match=MISMATCH):
        model().trees_from_data(data)
    # read unchecked, the layer and the model still refuse it
    stale = BallTree.layout(data, 16, check=False)
    with pytest.raises(RuntimeError, match=MISMATCH):
        conv()(torch.randn(n, 16), data.pos, tree=stale)
    with pytest.raises(RuntimeError, match=MISMATCH):
        model()(data.x, data.pos, tree=stale)


@pytest.mark.parametrize("n", [200, 64])
def test_fixed_points_after_the_transform_is_caught(n):
    data = BallTree(16)(clouds([n])[0])
    data = T.FixedPoints(48, replace=False)(data)
    # the tree's fields are never taken for per-node data, even when slots == points
    assert data.ball_tree_index.numel() == (n + 15) // 16 * 16 + 2
    assert data.pos.size(0) == 48
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(data, 16)


def test_subgraph_leaves_the_tree_alone_and_is_caught():
    data = BallTree(16)(clouds([64])[0])  # 64 slots for 64 points
    sub = data.subgraph(torch.arange(0, 64, 2))
    assert sub.ball_tree_index.numel() == 66 and sub.ball_tree_key.numel() == 66
    with pytest.raises(RuntimeError, match=MISMATCH + ".*another number of points"):
        BallTree.layout(sub, 16)
    data = BallTree(16)(clouds([20])[0])
    with pytest.raises(ValueError, match=MISMATCH + ".*32 slots in 1 clouds for 40 points"):
        BallTree.layout(
            Data(pos=torch.randn(40, 3), **{k: data[k] for k in data.keys() if "ball" in k}), 16
        )


def test_reordered_or_jittered_points_are_caught():
    data = BallTree(16)(clouds([40])[0])
    jittered = T.RandomJitter(1e-3)(data.clone())
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(jittered, 16)
    flipped = T.RandomFlip(axis=0, p=1.0)(data.clone())
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(flipped, 16)
    shuffled = data.clone()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    shuffled.pos, shuffled.x = data.pos[perm], data.x[perm]
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(shuffled, 16)
    # untouched data reads back fine
    assert BallTree.layout(data, 16).num_points == 40


def test_first_places_the_tree_last_and_shows_in_repr():
    augment = T.Compose([T.RandomRotate(180, axis=2), T.RandomJitter(0.01)])
    t = BallTree(16, rotate=45.0, first=augment)
    assert repr(t) == f"BallTree(ball_size=16, rotate=45.0, first={augment!r})"
    assert "RandomRotate" in repr(t) and "RandomJitter" in repr(t)
    b = Batch.from_data_list([t(d) for d in clouds([20, 50])])
    tree, rot = model().trees_from_data(b)  # checked against the augmented positions
    ref = build_ball_tree(b.pos, b.batch, ball_size=16)
    assert torch.equal(tree.perm, ref.perm)


def test_transform_refuses_a_batch():
    b = Batch.from_data_list(clouds([5, 7]))
    with pytest.raises(ValueError, match="before batching"):
        BallTree(16)(b)


def test_stored_tree_has_no_per_node_shape():
    for n in (1, 2, 16, 32):
        data = BallTree(16, rotate=10.0)(clouds([n])[0])
        for key in ("ball_tree_index", "ball_tree_key", "ball_tree_rot_index"):
            assert not data.is_node_attr(key), (n, key)


def test_fixed_points_upsampling_after_the_transform_is_caught():
    data = BallTree(16)(clouds([10])[0])
    data = T.FixedPoints(100)(data)  # 10 points drawn up to 100 (with repeats)
    with pytest.raises(ValueError, match=MISMATCH + ".*16 slots in 1 clouds for 100 points"):
        BallTree.layout(data, 16)
    data = BallTree(16)(clouds([10])[0])
    data = T.FixedPoints(12, allow_duplicates=True)(data)
    with pytest.raises(RuntimeError, match=MISMATCH):
        BallTree.layout(data, 16)

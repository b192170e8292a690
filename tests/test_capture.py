"""Capacity buckets, padding into dummy clouds and the bucketed training step
(torch_geometric_nsa.capture): on the CPU with the reference ops, the CUDA
graphs on a CUDA device."""

import copy

import pytest
import torch

from torch_geometric_nsa import ops
from torch_geometric_nsa.capture import (
    CapacityBuckets,
    CapturedTrainStep,
    mse_per_point,
    pad_batch,
)
from torch_geometric_nsa.nn import radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA
from torch_geometric_nsa.tree import build_ball_tree, slot_capacity

KW = dict(num_layers=2, heads=2, ball_size=32, compress_size=8, topk=2)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ErwinNSA(in_channels=4, hidden_channels=16, out_channels=3, **{**KW, **kwargs})


def make_batch(sizes, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 4, generator=gen)
    pos = torch.randn(n, 3, generator=gen)
    y = torch.randn(n, 3, generator=gen)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    edges = radius_graph(pos, 0.8, batch, max_num_neighbors=8)
    return [t.to(device) for t in (x, pos, batch, y, edges)]


@pytest.fixture(autouse=True)
def reference_ops():
    with ops.use_backend("reference" if not torch.cuda.is_available() else "auto"):
        yield


# --------------------------------------------------------------------------- buckets
def test_buckets_are_geometric_multiples_covering_the_range():
    b = CapacityBuckets(10_000, min_size=1_000, ratio=1.25, multiple=128)
    caps = b.capacities
    assert caps[0] == 1024 and caps[-1] > 10_000 and caps[-2] <= 10_000
    assert all(c % 128 == 0 for c in caps)
    assert all(c1 > c0 for c0, c1 in zip(caps, caps[1:]))
    # each step grows by the ratio, up to the rounding to a multiple
    assert all(c1 <= 1.25 * c0 + 128 for c0, c1 in zip(caps, caps[1:]))
    assert len(b) == len(caps) <= 12


def test_bucket_choice_is_smallest_capacity_above_the_size():
    b = CapacityBuckets(1000, min_size=100, ratio=1.5, multiple=32)
    assert b.capacities[:3] == (128, 192, 288)
    assert b(100) == 128 and b(127) == 128
    assert b(128) == 192  # a padded batch always holds one padding point
    assert b(1000) == b.capacities[-1]
    assert b.max_padding(192) == 192 - 128
    assert b.max_padding(128) == 128 - 100
    with pytest.raises(ValueError, match="largest capacity bucket"):
        b(b.capacities[-1])
    with pytest.raises(ValueError, match="not one of the capacities"):
        b.max_padding(129)


def test_growing_buckets_continue_the_progression():
    fixed = CapacityBuckets(1000, min_size=100, ratio=1.5, multiple=32)
    b = CapacityBuckets(1000, min_size=100, ratio=1.5, multiple=32, grow=True)
    assert b.capacities == fixed.capacities
    last = b.capacities[-1]
    assert b(500) == fixed(500) and b.capacities == fixed.capacities  # no growth needed
    cap = b(5 * last)
    assert cap > 5 * last and b.capacities[: len(fixed)] == fixed.capacities
    assert b.capacities[-1] == cap and b.capacities[-2] <= 5 * last
    assert b.max_size == 5 * last
    # the same progression the constructor would have built for that range
    assert (
        b.capacities == CapacityBuckets(5 * last, min_size=100, ratio=1.5, multiple=32).capacities
    )
    assert b.max_padding(cap) == cap - b.capacities[-2]
    with pytest.raises(ValueError, match="or pass grow=True"):
        fixed(5 * last)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_size=0), "max_size"),
        (dict(max_size=10, min_size=11), "exceeds"),
        (dict(max_size=10, ratio=1.0), "ratio"),
        (dict(max_size=10, ratio=float("inf")), "ratio"),
        (dict(max_size=10, multiple=0), "multiple"),
    ],
)
def test_bucket_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CapacityBuckets(**kwargs)


# --------------------------------------------------------------------------- padding
def test_pad_batch_puts_padding_in_dummy_clouds():
    x, pos, batch, y, edges = make_batch([70, 33, 101])
    n, e = x.size(0), edges.size(1)
    p = pad_batch(
        x,
        pos,
        batch,
        y,
        edges,
        capacity=400,
        max_clouds=5,
        ball_size=32,
        edge_capacity=e + 17,
        dummy_clouds=3,
        num_graphs=3,
    )
    assert p.capacity == 400 and p.num_points == n and p.num_edges == e
    assert p.batch_size == 8 and p.num_slots == slot_capacity(400, 8, 32)
    assert torch.equal(p.x[:n], x) and torch.equal(p.pos[:n], pos) and torch.equal(p.y[:n], y)
    assert torch.equal(p.batch[:n], batch)
    assert not p.x[n:].any() and not p.pos[n:].any() and not p.y[n:].any()
    # padding: clouds 5, 6, 7 (ids 3, 4 stay empty), sorted, balanced
    ids, counts = p.batch[n:].unique(return_counts=True)
    assert ids.tolist() == [5, 6, 7]
    assert counts.max() - counts.min() <= 1 and counts.sum() == 400 - n
    assert (p.batch[1:] >= p.batch[:-1]).all()
    # loss weights: the mean over real points; none on the padding
    assert torch.allclose(p.weight[:n].sum(), torch.tensor(1.0))
    assert not p.weight[n:].any()
    assert p.mask[:n].all() and not p.mask[n:].any()
    # padding edges are self-loops of the padding points, in turn
    assert torch.equal(p.edge_index[:, :e], edges) and p.edge_index.size(1) == e + 17
    assert torch.equal(p.edge_index[0, e:], p.edge_index[1, e:])
    assert p.edge_index[0, e:].tolist() == [n + i % (400 - n) for i in range(17)]


def test_pad_batch_refills_buffers_in_place():
    a = make_batch([90, 40], seed=1)
    b = make_batch([50, 20], seed=2)
    kw = dict(capacity=160, max_clouds=2, ball_size=32, edge_capacity=2000, dummy_clouds=2)
    pa = pad_batch(*a, **kw)
    loops = pa.edge_index[:, a[4].size(1) :]  # more padding edges than padding points
    assert torch.equal(loops[0], loops[1]) and loops.size(1) > 30
    assert loops[0].min() == 130 and loops[0].max() == 159
    counts = torch.bincount(loops[0] - 130)
    assert counts.max() - counts.min() <= 1  # spread evenly
    pb = pad_batch(*b, **kw, out=pa)
    assert pb.x.data_ptr() == pa.x.data_ptr() and pb.num_points == 70
    # rows of the earlier, larger batch are cleared
    assert not pb.x[70:].any() and not pb.weight[70:].any() and (pb.batch[70:] >= 2).all()
    assert torch.equal(pb.x[:70], b[0])
    with pytest.raises(ValueError, match="'out' holds 160 points"):
        pad_batch(*b, **{**kw, "capacity": 192}, out=pa)
    with pytest.raises(ValueError, match="'x' has dtype torch.float64"):
        pad_batch(b[0].double(), *b[1:], **kw, out=pa)
    with pytest.raises(ValueError, match="'y' is missing"):
        pad_batch(b[0], b[1], b[2], None, b[4], **kw, out=pa)


def test_pad_batch_rejects_bad_sizes():
    x, pos, batch, y, edges = make_batch([40, 30])
    kw = dict(max_clouds=2, ball_size=32)
    with pytest.raises(ValueError, match="must exceed the batch's 70 points"):
        pad_batch(x, pos, batch, capacity=70, **kw)
    with pytest.raises(ValueError, match="holds 2 clouds but max_clouds=1"):
        pad_batch(x, pos, batch, capacity=100, max_clouds=1, ball_size=32)
    with pytest.raises(ValueError, match="edge_capacity=None"):
        pad_batch(x, pos, batch, y, edges, capacity=100, **kw)
    with pytest.raises(ValueError, match="same number of rows"):
        pad_batch(x, pos[:-1], batch, capacity=100, **kw)
    with pytest.raises(ValueError, match="dummy_clouds"):
        pad_batch(x, pos, batch, capacity=100, dummy_clouds=0, **kw)


def test_pad_batch_weights_give_the_weighted_mean():
    x, pos, batch, y, _ = make_batch([40, 30], seed=6)
    n = x.size(0)
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(n, 3, generator=gen)
    mask = torch.rand(n, generator=gen) < 0.3
    assert 0 < int(mask.sum()) < n
    kw = dict(capacity=96, max_clouds=2, ball_size=32)
    padded_pred = torch.cat([pred, torch.full((96 - n, 3), 7.0)])

    def loss_of(p):
        return (mse_per_point(padded_pred, p.y) * p.weight).sum()

    # a bool mask: the masked MSE (cosmology's loss over its training nodes)
    p = pad_batch(x, pos, batch, y, weight=mask, **kw)
    masked = torch.nn.functional.mse_loss(pred[mask], y[mask])
    assert torch.allclose(loss_of(p), masked, rtol=1e-6)
    assert not p.weight[n:].any() and not p.weight[:n][~mask].any()
    assert torch.allclose(p.weight.sum(), torch.tensor(1.0))
    # float weights: the weighted mean; the uniform default is the plain mean
    w = torch.rand(n, generator=gen)
    p = pad_batch(x, pos, batch, y, weight=w, **kw)
    per_point = mse_per_point(pred, y)
    assert torch.allclose(loss_of(p), (w * per_point).sum() / w.sum(), rtol=1e-6)
    p = pad_batch(x, pos, batch, y, weight=None, out=p, **kw)
    assert torch.allclose(loss_of(p), torch.nn.functional.mse_loss(pred, y), rtol=1e-6)
    # no weight at all: a zero loss, not NaN
    p = pad_batch(x, pos, batch, y, weight=torch.zeros(n, dtype=torch.bool), out=p, **kw)
    assert not p.weight.any() and loss_of(p) == 0
    for bad in (mask[:-1], mask.view(-1, 1), [1.0] * n):
        with pytest.raises(
            ValueError, match=f"'weight' must be a real or bool tensor of shape \\[{n}\\]"
        ):
            pad_batch(x, pos, batch, y, weight=bad, **kw)


def test_padded_trees_are_the_builds_capacity_mode_layouts():
    x, pos, batch, y, _ = make_batch([70, 33, 101], seed=5)
    p = pad_batch(x, pos, batch, y, capacity=300, max_clouds=3, ball_size=32, dummy_clouds=2)
    kw = dict(ball_size=32, batch_size=p.batch_size, num_slots=p.num_slots)
    for _ in range(2):  # the second call reuses the cached rotation matrix
        tree, rot = p.build_trees(32, 45.0)
        ref = build_ball_tree(p.pos, p.batch, **kw)
        ref_rot = build_ball_tree(p.pos, p.batch, rotate=45.0, **kw)
        for a, b in ((tree, ref), (rot, ref_rot)):
            assert torch.equal(a.perm, b.perm) and torch.equal(a.mask, b.mask)
            assert torch.equal(a.ptr, b.ptr)
    assert not torch.equal(tree.perm, rot.perm)
    assert p.build_trees(32)[1] is None


@pytest.mark.parametrize("capacity, dummy", [(205, 1), (400, 3), (1000, 8)])
def test_padded_outputs_of_real_points_equal_unpadded(capacity, dummy):
    model = make_model().eval()
    x, pos, batch, y, edges = make_batch([70, 33, 101], seed=3)
    n = x.size(0)
    p = pad_batch(
        x,
        pos,
        batch,
        y,
        edges,
        capacity=capacity,
        max_clouds=4,
        ball_size=32,
        edge_capacity=edges.size(1) + 5,
        dummy_clouds=dummy,
    )
    with torch.no_grad():
        ref = model(x, pos, batch, edges)
        tree, rot = p.build_trees(32, 45.0)
        out = model(p.x, p.pos, p.batch, p.edge_index, tree, rot)
    assert tree.num_slots == p.num_slots
    assert torch.allclose(out[:n], ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- the step
def eager_step(model, opt, batch, max_grad_norm=None):
    x, pos, b, y, edges = batch
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x, pos, b, edges), y)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return loss.detach()


# every batch's edges (fewer than 5,000) in one bucket of 5,000
ONE_EDGE_BUCKET = CapacityBuckets(5000, min_size=4999)
BATCHES = [[40, 17, 50], [20, 75], [35, 33, 41], [5, 60, 30]]


def test_padded_step_trains_like_the_unpadded_step(max_grad_norm=0.1):
    model = make_model(seed=1)
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt_twin = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    step = CapturedTrainStep(
        twin,
        opt_twin,
        CapacityBuckets(150, min_size=50, ratio=1.25, multiple=8),
        max_clouds=3,
        edge_buckets=ONE_EDGE_BUCKET,
        max_grad_norm=max_grad_norm,
        dummy_cloud_size=64,
    )
    assert not step.cuda_graphs
    for i, sizes in enumerate(BATCHES):
        batch = make_batch(sizes, seed=10 + i)
        ref = eager_step(model, opt, batch, max_grad_norm)
        loss = step(*batch[:4], edge_index=batch[4], num_graphs=len(sizes))
        assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6), i
        for p, q in zip(model.parameters(), twin.parameters()):  # gradients of this step
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), i
    # (Adam turns rounding noise of near-zero gradients into steps of ~lr)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-3)
    expected = {step.point_buckets(sum(sizes)) for sizes in BATCHES}
    assert len(expected) == 2 and {c for c, _ in step.buckets} == expected
    assert sum(step.calls.values()) == len(BATCHES) and step.num_graphs == 0


def test_padding_gets_no_loss_weight_and_no_gradient():
    model = make_model(seed=2)
    opt = torch.optim.AdamW(model.parameters())
    step = CapturedTrainStep(
        model, opt, CapacityBuckets(500, ratio=2.0), max_clouds=2, dummy_cloud_size=100
    )
    x, pos, batch, y, _ = make_batch([90, 60], seed=4)
    key, padded = step.pad(x, pos, batch, y)
    n = padded.num_points
    # 150 points -> bucket 256, which holds up to 256 - 128 padding points: two dummy
    # clouds of at most 100 points (ids 2 and 3)
    assert key == (256, 0) and padded.capacity == 256 and padded.batch_size == 4
    assert padded.batch[n:].unique().tolist() == [2, 3]

    def loss_and_grads():
        model.zero_grad()
        loss = step.forward_loss(padded)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = loss_and_grads()
    assert torch.allclose(loss, torch.nn.functional.mse_loss(model(x, pos, batch), y), atol=1e-6)
    # arbitrary padding targets and features change nothing
    padded.y[n:].fill_(1e4)
    padded.x[n:].normal_()
    loss2, grads2 = loss_and_grads()
    assert torch.equal(loss, loss2) and len(grads) == len(grads2) > 0
    for g, g2 in zip(grads, grads2):
        assert torch.allclose(g, g2, atol=1e-7)


def test_weighted_step_trains_like_the_masked_eager_step():
    """A mask as loss weights: loss and gradients of cosmology's masked MSE."""
    model = make_model(seed=3)
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = CapturedTrainStep(
        twin,
        torch.optim.AdamW(twin.parameters(), lr=1e-2),
        CapacityBuckets(300, min_size=100, multiple=8),
        max_clouds=3,
        edge_buckets=ONE_EDGE_BUCKET,
        max_grad_norm=1.0,
    )
    for i, sizes in enumerate(BATCHES[:2]):
        x, pos, b, y, edges = make_batch(sizes, seed=40 + i)
        mask = torch.rand(x.size(0), generator=torch.Generator().manual_seed(i)) < 0.5
        opt.zero_grad()
        ref = torch.nn.functional.mse_loss(model(x, pos, b, edges)[mask], y[mask])
        ref.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = step(x, pos, b, y, edges, num_graphs=len(sizes), weight=mask)
        assert torch.allclose(loss, ref.detach(), rtol=1e-5, atol=1e-6), i
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), i


def test_step_arguments_are_checked():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    buckets = CapacityBuckets(500)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        CapturedTrainStep(model, opt, buckets, 2, cuda_graphs=True)
    with pytest.raises(ValueError, match="float16"):
        CapturedTrainStep(model, opt, buckets, 2, autocast_dtype=torch.float16)
    with pytest.raises(TypeError, match="ErwinNSA-like"):
        CapturedTrainStep(torch.nn.Linear(2, 2), opt, buckets, 2)
    with pytest.raises(TypeError, match="CapacityBuckets"):
        CapturedTrainStep(model, opt, [128, 256], 2)
    step = CapturedTrainStep(model, opt, buckets, 2)
    x, pos, batch, y, edges = make_batch([90, 60])
    with pytest.raises(ValueError, match="without edge_buckets"):
        step(x, pos, batch, y, edges)
    with pytest.raises(ValueError, match="largest capacity bucket"):
        step(*make_batch([300, 300])[:4])
    bad = CapturedTrainStep(model, opt, buckets, 2, loss_fn=lambda p, t: (p - t).pow(2))
    with pytest.raises(ValueError, match="one loss per point"):
        bad(x, pos, batch, y)


def test_mse_per_point_mean_is_mse():
    gen = torch.Generator().manual_seed(0)
    p, t = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen)
    assert mse_per_point(p, t).shape == (7,)
    assert torch.allclose(mse_per_point(p, t).mean(), torch.nn.functional.mse_loss(p, t))
    assert torch.allclose(mse_per_point(p[:, 0], t[:, 0]), (p[:, 0] - t[:, 0]) ** 2)


# --------------------------------------------------------------------------- CUDA graphs
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cuda_pair(dtype):
    model = make_model(seed=5).cuda()
    twin = copy.deepcopy(model)

    def build(m, graphs):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, capturable=True)
        return CapturedTrainStep(
            m,
            opt,
            CapacityBuckets(400, min_size=50, ratio=1.5, multiple=32),
            max_clouds=3,
            edge_buckets=ONE_EDGE_BUCKET,
            autocast_dtype=dtype,
            max_grad_norm=1.0,
            dummy_cloud_size=64,
            cuda_graphs=graphs,
        )

    return model, twin, build(model, True), build(twin, False)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cuda_graph_replays_match_the_eager_padded_step(dtype):
    model, twin, graphed, eager = _cuda_pair(dtype)
    # buckets A B A B C A: replays of different buckets in any order
    seq = [[70, 33, 101], [60, 60], [100, 110], [50, 80], [250, 40, 9], [33, 170]]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype is None else dict(rtol=2e-2, atol=2e-3)
    for i, sizes in enumerate(seq):
        b = make_batch(sizes, seed=20 + i, device="cuda")
        loss = graphed(*b[:4], edge_index=b[4], num_graphs=len(sizes))
        ref = eager(*b[:4], edge_index=b[4], num_graphs=len(sizes))
        assert torch.isfinite(loss)
        assert torch.allclose(loss, ref, **tol), (i, loss.item(), ref.item())
    buckets = CapacityBuckets(400, min_size=50, ratio=1.5, multiple=32)
    want = {buckets(sum(sizes)) for sizes in seq}
    assert len(want) == 3 and {c for c, _ in graphed.calls} == want
    assert graphed.num_graphs == len(graphed.calls) == 3
    assert sum(graphed.calls.values()) == len(seq)
    # Adam turns rounding noise of near-zero gradients into full steps: one update moves a
    # parameter by at most lr * (1 - beta1) / sqrt(1 - beta2) (3.2 lr, reached when a gradient
    # changes sign), so the two runs may part by that much per step, and no more.
    max_step = 1e-3 * (1 - 0.9) / (1 - 0.999) ** 0.5
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=len(seq) * max_step)


@pytest.mark.cuda
@cuda
def test_cuda_graph_replay_needs_no_host_sync():
    _, _, graphed, _ = _cuda_pair(torch.bfloat16)
    b = make_batch([70, 33, 101], seed=30, device="cuda")
    graphed(*b[:4], edge_index=b[4], num_graphs=3)  # eager step + capture
    b = make_batch([60, 60, 90], seed=31, device="cuda")  # same bucket
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = graphed(*b[:4], edge_index=b[4], num_graphs=3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert graphed.num_graphs == 1 and torch.isfinite(loss)


@pytest.mark.cuda
@cuda
def test_cuda_graphs_need_a_capturable_optimizer():
    model = make_model().cuda()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="capturable"):
        CapturedTrainStep(model, opt, CapacityBuckets(400), 2)

import pytest
import torch

from torch_geometric_nsa.nn import knn_graph, neighbors, radius_graph


def brute_radius(pos, r, batch, loop=False):
    d = torch.cdist(pos.double(), pos.double())
    ok = (d <= r) & (batch[:, None] == batch[None])
    if not loop:
        ok.fill_diagonal_(False)
    t, s = ok.nonzero(as_tuple=True)
    return torch.stack([s, t])


def as_set(ei):
    return set(map(tuple, ei.t().tolist()))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("loop", [False, True])
def test_radius_graph_is_exact(dim, loop):
    gen = torch.Generator().manual_seed(dim)
    pos = torch.rand(400, dim, generator=gen) * 4
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([150, 1, 249]))
    ours = radius_graph(pos, 0.5, batch, loop=loop, max_num_neighbors=None, use_cluster=False)
    assert as_set(ours) == as_set(brute_radius(pos, 0.5, batch, loop))
    # sorted by target then source
    key = ours[1] * 400 + ours[0]
    assert torch.equal(key, key.sort().values)


def test_radius_graph_keeps_nearest_neighbours():
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(300, 3, generator=gen)
    ei = radius_graph(pos, 0.6, max_num_neighbors=5, use_cluster=False)
    full = radius_graph(pos, 0.6, max_num_neighbors=None, use_cluster=False)
    counts = torch.bincount(ei[1], minlength=300)
    assert counts.max() == 5
    d = (pos[full[0]] - pos[full[1]]).norm(dim=1)
    for i in [0, 17, 299]:
        sel = full[1] == i
        nearest = set(full[0][sel][d[sel].argsort()[:5]].tolist())
        assert set(ei[0][ei[1] == i].tolist()) == nearest


def test_knn_graph_is_exact():
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(200, 3, generator=gen)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([197, 3]))
    ei = knn_graph(pos, 4, batch, use_cluster=False)
    counts = torch.bincount(ei[1], minlength=200)
    assert (counts[:197] == 4).all() and (counts[197:] == 2).all()
    assert (batch[ei[0]] == batch[ei[1]]).all()
    d = torch.cdist(pos, pos).fill_diagonal_(float("inf"))
    d[batch[:, None] != batch[None]] = float("inf")
    expect = d[:197].topk(4, largest=False).indices
    for i in (0, 100, 196):
        assert set(ei[0][ei[1] == i].tolist()) == set(expect[i].tolist())


@pytest.mark.skipif(neighbors.torch_cluster is None, reason="torch-cluster not installed")
def test_matches_torch_cluster():
    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(500, 3, generator=gen)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([300, 200]))
    a = radius_graph(pos, 0.3, batch, max_num_neighbors=None, use_cluster=False)
    b = radius_graph(pos, 0.3, batch, max_num_neighbors=None, use_cluster=True)
    assert torch.equal(a, b)
    a = knn_graph(pos, 6, batch, use_cluster=False)
    b = knn_graph(pos, 6, batch, use_cluster=True)
    assert as_set(a) == as_set(b)


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        radius_graph(torch.rand(5), 0.1)
    with pytest.raises(ValueError, match="'batch' has"):
        radius_graph(torch.rand(5, 3), 0.1, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("loop", [False, True])
def test_brute_force_fallback_is_exact(loop):
    # the path taken when the cell keys would overflow int64
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(300, 3, generator=gen) * 3
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([120, 180]))
    row, col = neighbors._radius_brute(pos, 0.4, batch, loop, chunk=64)
    assert as_set(torch.stack([col, row])) == as_set(brute_radius(pos, 0.4, batch, loop))


@pytest.mark.parametrize("use_cluster", [False, True])
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, c: knn_graph(p, -1, use_cluster=c), "'k' must be a positive int"),
        (lambda p, c: knn_graph(p, 0, use_cluster=c), "'k'"),
        (lambda p, c: knn_graph(p, True, use_cluster=c), "'k'"),
        (lambda p, c: knn_graph(p, 2.5, use_cluster=c), "'k'"),
        (lambda p, c: radius_graph(p, -0.1, use_cluster=c), "'r' must be a finite number >= 0"),
        (lambda p, c: radius_graph(p, float("nan"), use_cluster=c), "'r'"),
        (lambda p, c: radius_graph(p, float("inf"), use_cluster=c), "'r'"),
        (lambda p, c: radius_graph(p, "1", use_cluster=c), "'r'"),
        (lambda p, c: radius_graph(p, 0.1, max_num_neighbors=0, use_cluster=c), "max_num"),
        (lambda p, c: radius_graph(p.int(), 0.1, use_cluster=c), "floating point"),
        (lambda p, c: radius_graph(p[:, :0], 0.1, use_cluster=c), "shape"),
        (
            lambda p, c: radius_graph(p.masked_fill(p > 0.9, float("nan")), 0.1, use_cluster=c),
            "'pos' contains NaN",
        ),
        (
            lambda p, c: knn_graph(p, 2, torch.tensor([0] * 9 + [-1]), use_cluster=c),
            "negative",
        ),
        (
            lambda p, c: knn_graph(p, 2, torch.tensor([0] * 9 + [10**8]), use_cluster=c),
            "far too large",
        ),
        (lambda p, c: knn_graph(p, 2, torch.zeros(10), use_cluster=c), "integer"),
        (lambda p, c: knn_graph(p, 2, torch.zeros(2, 5, dtype=torch.long), use_cluster=c), "1-D"),
    ],
)
def test_arguments_are_checked_before_dispatch(call, match, use_cluster, monkeypatch):
    """Bad arguments never reach torch-cluster (knn_graph(pos, -1) segfaulted there; a
    negative radius gave edges there and none in our search)."""

    class Boom:
        def __getattr__(self, name):
            raise AssertionError("reached torch-cluster")

    monkeypatch.setattr(neighbors, "torch_cluster", Boom() if use_cluster else None)
    pos = torch.rand(10, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises((ValueError, TypeError), match=match):
        call(pos, use_cluster)


def test_empty_input_gives_no_edges():
    for ei in (knn_graph(torch.zeros(0, 3), 3), radius_graph(torch.zeros(0, 2), 0.5)):
        assert ei.shape == (2, 0) and ei.dtype == torch.long


def test_unsorted_batch_is_sorted_for_torch_cluster(monkeypatch):
    """torch-cluster needs sorted clouds: the wrapper sorts them and maps the edges back
    (checked with a stand-in that insists on a sorted batch)."""

    class SortedOnly:
        @staticmethod
        def radius_graph(x, r, batch, loop, k):
            assert bool((batch[1:] >= batch[:-1]).all())
            return radius_graph(x, r, batch, loop, k, use_cluster=False)

        @staticmethod
        def knn_graph(x, k, batch, loop):
            assert bool((batch[1:] >= batch[:-1]).all())
            return knn_graph(x, k, batch, loop, use_cluster=False)

    gen = torch.Generator().manual_seed(5)
    pos = torch.rand(60, 3, generator=gen)
    batch = torch.randint(0, 3, (60,), generator=gen)
    expect_r = radius_graph(pos, 0.4, batch, max_num_neighbors=None, use_cluster=False)
    expect_k = knn_graph(pos, 4, batch, use_cluster=False)
    monkeypatch.setattr(neighbors, "torch_cluster", SortedOnly())
    got_r = radius_graph(pos, 0.4, batch, max_num_neighbors=None, use_cluster=True)
    assert torch.equal(got_r, expect_r)
    assert as_set(knn_graph(pos, 4, batch, use_cluster=True)) == as_set(expect_k)
    assert (batch[got_r[0]] == batch[got_r[1]]).all()


def test_zero_radius_finds_duplicates():
    pos = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.1, 0.2]])
    ei = radius_graph(pos, 0.0, use_cluster=False)
    assert as_set(ei) == {(0, 1), (1, 0)}


@pytest.mark.skipif(neighbors.torch_cluster is None, reason="torch-cluster not installed")
def test_zero_radius_with_torch_cluster_installed():
    pos = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.1, 0.2]])
    assert as_set(radius_graph(pos, 0.0)) == {(0, 1), (1, 0)}


def test_knn_keeps_k_neighbours_when_points_coincide():
    pos = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    for use_cluster in [False] + ([True] if neighbors.torch_cluster is not None else []):
        ei = knn_graph(pos, 1, use_cluster=use_cluster)
        assert torch.bincount(ei[1], minlength=5).tolist() == [1] * 5

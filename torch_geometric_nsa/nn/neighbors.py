"""Exact neighbour graphs on the points' own device.

torch-cluster's kernels are used when it is installed; otherwise a cell-list
(radius) or chunked brute-force (kNN) search of our own, with the same result
sets.  PyG 2.8's own ``radius_graph``/``knn_graph`` need pyg-lib, which is not on
PyPI, so we do not route through them.
"""

import itertools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import check_num_clouds

try:  # pragma: no cover - depends on the environment
    import torch_cluster
except ImportError:  # pragma: no cover
    torch_cluster = None


def _prepare(pos: Tensor, batch: Optional[Tensor], use_cluster: Optional[bool]):
    """Checks the input before any search runs (torch-cluster crashes on some bad
    arguments); returns the batch vector and whether to use torch-cluster.  Reads the
    data once (finite positions, nonnegative ids), like the searches themselves."""
    if not isinstance(pos, Tensor):
        raise TypeError(f"'pos' must be a tensor (got {type(pos).__name__})")
    if pos.dim() != 2 or pos.size(1) == 0:
        raise ValueError(f"'pos' must have shape [num_points, dim] (got {tuple(pos.shape)})")
    if not pos.is_floating_point():
        raise TypeError(f"'pos' must be floating point (got {pos.dtype})")
    if use_cluster is None:
        use_cluster = torch_cluster is not None
    elif use_cluster and torch_cluster is None:
        raise ImportError("torch-cluster is not installed")
    batch = _batch_or_zeros(pos, batch)
    if pos.size(0) and not bool(torch.isfinite(pos).all()):
        raise ValueError("'pos' contains NaN or infinite values")
    if batch.numel():
        low, high = (int(v) for v in torch.stack([batch.min(), batch.max()]).tolist())
        if low < 0:
            raise ValueError("'batch' contains negative cloud indices")
        check_num_clouds(high + 1, pos.size(0))
    return batch, use_cluster


def _batch_or_zeros(pos: Tensor, batch: Optional[Tensor]) -> Tensor:
    if batch is None:
        return pos.new_zeros(pos.size(0), dtype=torch.long)
    if not isinstance(batch, Tensor):
        raise TypeError(f"'batch' must be a tensor (got {type(batch).__name__})")
    if batch.dim() != 1 or batch.numel() != pos.size(0):
        raise ValueError(
            f"'batch' has {batch.numel()} entries but 'pos' has {pos.size(0)} points"
            if batch.dim() == 1
            else f"'batch' must be 1-D (got shape {tuple(batch.shape)})"
        )
    if batch.is_floating_point() or batch.is_complex() or batch.dtype == torch.bool:
        raise TypeError(f"'batch' must be an integer tensor (got {batch.dtype})")
    if batch.device != pos.device:
        raise ValueError(f"'batch' is on {batch.device} but 'pos' is on {pos.device}")
    return batch.long()


def _check_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        none = " or None" if allow_none else ""
        raise ValueError(f"'{name}' must be a positive int{none} (got {value!r})")


def _check_radius(r) -> float:
    if isinstance(r, Tensor) and r.numel() == 1 and r.is_floating_point():
        r = r.item()
    if not isinstance(r, (int, float)) or isinstance(r, bool):
        raise TypeError(f"'r' must be a number (got {type(r).__name__})")
    value = float(r)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"'r' must be a finite number >= 0 (got {r!r})")
    return value


def _cluster_call(fn, pos: Tensor, batch: Tensor, *args) -> Tensor:
    """Calls a torch-cluster graph function, which needs a sorted batch: unsorted clouds
    are sorted first and the edges mapped back."""
    if pos.size(0) > 1 and bool((batch[1:] < batch[:-1]).any()):
        order = torch.argsort(batch, stable=True)
        return order[fn(pos[order], args[0], batch[order], *args[1:])]
    return fn(pos, args[0], batch, *args[1:])


def _keep_nearest(row: Tensor, col: Tensor, dist: Tensor, num_points: int, k: int) -> Tensor:
    """Boolean mask keeping, for every target ``row``, its ``k`` nearest
    sources (ties towards the smaller index)."""
    order = torch.sort(col, stable=True)[1]  # secondary key: source index
    order = order[torch.sort(dist[order], stable=True)[1]]
    order = order[torch.sort(row[order], stable=True)[1]]
    counts = torch.bincount(row, minlength=num_points)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(row.numel(), device=row.device) - start[row[order]]
    keep = torch.zeros_like(row, dtype=torch.bool)
    keep[order] = rank < k
    return keep


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    max_num_neighbors: Optional[int] = 32,
    use_cluster: Optional[bool] = None,
) -> Tensor:
    r"""All pairs of points of the same cloud closer than :obj:`r`.

    Args:
        pos (torch.Tensor): ``[N, D]`` positions.
        r (float): the radius (pairs with :math:`\|p_i - p_j\| \le r`), finite and
            :math:`\ge 0`.
        batch (torch.Tensor, optional): ``[N]`` cloud of every point.
        loop (bool): include self loops.  (default: :obj:`False`)
        max_num_neighbors (int, optional): keep at most this many neighbours
            per point.  Our search keeps the nearest ones; torch-cluster keeps
            the first it finds.  :obj:`None` keeps all.  (default: :obj:`32`)
        use_cluster (bool, optional): force (:obj:`True`) or avoid
            (:obj:`False`) torch-cluster.  (default: use it when installed)

    Returns:
        torch.Tensor: ``[2, E]`` edge index, row 0 the source (neighbour)
        :math:`j`, row 1 the target :math:`i`, sorted by target then source.
    """
    r = _check_radius(r)
    _check_int("max_num_neighbors", max_num_neighbors, allow_none=True)
    batch, use_cluster = _prepare(pos, batch, use_cluster)
    if pos.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    if use_cluster and r > 0:  # torch-cluster finds no pair at r = 0 (it compares d < r)
        k = pos.size(0) if max_num_neighbors is None else max_num_neighbors
        ei = _cluster_call(torch_cluster.radius_graph, pos, batch, r, loop, k)
        return _sort_edges(ei, pos.size(0))
    row, col = _radius_cells(pos, r, batch, loop)
    if max_num_neighbors is not None:
        dist = (pos[row].double() - pos[col].double()).norm(dim=1)
        keep = _keep_nearest(row, col, dist, pos.size(0), max_num_neighbors)
        row, col = row[keep], col[keep]
    return _sort_edges(torch.stack([col, row]), pos.size(0))


def _sort_edges(edge_index: Tensor, num_points: int) -> Tensor:
    key = edge_index[1] * num_points + edge_index[0]
    return edge_index[:, torch.sort(key)[1]]


def _radius_cells(
    pos: Tensor, r: float, batch: Tensor, loop: bool, chunk: int = 1 << 22
) -> Tuple[Tensor, Tensor]:
    """Cell list: points hashed into cubes of side ``r``; each point checks the
    3^D cubes around its own.  Returns (target, source) index pairs."""
    n, dim = pos.shape
    device = pos.device
    if n == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    p = pos.double()
    side = r if r > 0 else 1.0  # any side >= r works; r = 0 finds exact duplicates
    cell = torch.floor((p - p.min(0).values) / side).long()
    extent = cell.max(0).values + 3  # room for the -1/+1 neighbour offsets
    cell = cell + 1
    # exact (collision-free) key; fall back to brute force if it overflows
    span = [int(e) for e in extent.tolist()] + [int(batch.max()) + 1]
    total = 1
    for s in span:
        total *= s
    if total >= 2**62:
        return _radius_brute(pos, r, batch, loop)
    strides = []
    acc = 1
    for s in span[:dim]:
        strides.append(acc)
        acc *= s
    strides = torch.tensor(strides, device=device)
    key = batch * acc + (cell * strides).sum(1)
    sorted_key, order = torch.sort(key)

    rows, cols = [], []
    offsets = torch.tensor(list(itertools.product((-1, 0, 1), repeat=dim)), device=device)
    for off in offsets:
        nkey = key + (off * strides).sum()
        lo = torch.searchsorted(sorted_key, nkey)
        hi = torch.searchsorted(sorted_key, nkey, right=True)
        cnt = hi - lo
        tgt = torch.repeat_interleave(torch.arange(n, device=device), cnt)
        start = torch.repeat_interleave(lo - (torch.cumsum(cnt, 0) - cnt), cnt)
        src = order[start + torch.arange(tgt.numel(), device=device)]
        for a in range(0, tgt.numel(), chunk):
            t, s = tgt[a : a + chunk], src[a : a + chunk]
            d = (p[t] - p[s]).norm(dim=1)
            ok = d <= r
            if not loop:
                ok &= t != s
            rows.append(t[ok])
            cols.append(s[ok])
    return torch.cat(rows), torch.cat(cols)


def _chunked_distances(pos: Tensor, batch: Tensor, loop: bool, chunk: int):
    """Yields ``(a, d)``: the float64 distances ``[rows, N]`` of the points
    ``a:a + chunk`` to all points, ``inf`` to other clouds (and, without
    :obj:`loop`, to the point itself)."""
    p = pos.double()
    for a in range(0, p.size(0), chunk):
        d = torch.cdist(p[a : a + chunk], p)
        d = d.masked_fill(batch[a : a + chunk, None] != batch[None], float("inf"))
        if not loop:
            d[torch.arange(d.size(0)), torch.arange(a, a + d.size(0))] = float("inf")
        yield a, d


def _radius_brute(
    pos: Tensor, r: float, batch: Tensor, loop: bool, chunk: int = 2048
) -> Tuple[Tensor, Tensor]:
    rows, cols = [], []
    for a, d in _chunked_distances(pos, batch, loop, chunk):
        t, s = (d <= r).nonzero(as_tuple=True)
        rows.append(t + a)
        cols.append(s)
    return torch.cat(rows), torch.cat(cols)


def knn_graph(
    pos: Tensor,
    k: int,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    use_cluster: Optional[bool] = None,
    chunk: int = 1024,
) -> Tensor:
    r"""The :obj:`k` nearest neighbours of every point within its cloud.

    Args:
        pos (torch.Tensor): ``[N, D]`` positions.
        k (int): neighbours per point, at least 1 (fewer in clouds with at most :obj:`k`
            points).
        batch (torch.Tensor, optional): ``[N]`` cloud of every point.
        loop (bool): count a point as its own neighbour.  (default:
            :obj:`False`)
        use_cluster (bool, optional): force or avoid torch-cluster.
            (default: use it when installed)

    Returns:
        torch.Tensor: ``[2, E]`` edge index (source, target), sorted by target.
    """
    _check_int("k", k)
    _check_int("chunk", chunk)
    batch, use_cluster = _prepare(pos, batch, use_cluster)
    if pos.size(0) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    if use_cluster:
        ei = _cluster_call(torch_cluster.knn_graph, pos, batch, k, loop)
        # torch-cluster can return k + 1 neighbours when points coincide: keep k
        dist = (pos[ei[0]].double() - pos[ei[1]].double()).norm(dim=1)
        ei = ei[:, _keep_nearest(ei[1], ei[0], dist, pos.size(0), k)]
        return _sort_edges(ei, pos.size(0))
    n = pos.size(0)
    rows, cols = [], []
    for a, d in _chunked_distances(pos, batch, loop, chunk):
        val, idx = torch.topk(d, min(k, n), dim=1, largest=False, sorted=True)
        ok = torch.isfinite(val)
        t = torch.arange(a, a + d.size(0), device=pos.device)[:, None].expand_as(idx)
        rows.append(t[ok])
        cols.append(idx[ok])
    return _sort_edges(torch.stack([torch.cat(cols), torch.cat(rows)]), n)

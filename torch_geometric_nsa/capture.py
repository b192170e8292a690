r"""Training steps of static shape for batches of varying size: capacity
buckets, padding into dummy clouds and one CUDA graph per bucket.

Real datasets vary the number of points from batch to batch, so a step
captured for one shape (``torch.compile(mode="reduce-overhead")`` with
``dynamic=False``, or a manual :class:`torch.cuda.CUDAGraph`) would be
recorded again for every new shape.  Here each batch is padded instead:

* its point count :math:`N` goes up to the smallest capacity :math:`P > N` of
  a few geometric :class:`CapacityBuckets` (and its edge count likewise);
* the :math:`P - N` padding points form extra *dummy clouds* with ids from
  :obj:`max_clouds` on, so that they never share a ball, a compression block
  or an attention row with a real point (every attention branch stays
  within its cloud); they get zero loss weight and are dropped by
  :attr:`PaddedBatch.mask`;
* the ball trees are built in capacity mode
  (:func:`~torch_geometric_nsa.tree.build_ball_tree` with ``batch_size=`` and
  ``num_slots=``), whose layouts have a static size and need no host
  synchronisation.

:class:`CapturedTrainStep` records one CUDA graph of a whole training step
(tree build, forward, backward, gradient clipping and a capturable optimizer
step) per bucket into static input buffers and replays it for every batch of
that bucket: after the first batch of a bucket nothing is compiled or
recorded again.
"""

import contextlib
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .tree import build_ball_tree, slot_capacity

__all__ = [
    "CapacityBuckets",
    "PaddedBatch",
    "pad_batch",
    "mse_per_point",
    "CapturedTrainStep",
]


class CapacityBuckets:
    r"""A few capacities in geometric progression for a size that varies
    between :obj:`min_size` and :obj:`max_size` (points or edges of a batch).

    A size :math:`n` goes to the smallest capacity :math:`> n` (not
    :math:`\ge n`: a padded batch always holds at least one padding point,
    which also anchors the padding edges).  Consecutive capacities grow by
    about :obj:`ratio`, so at most a fraction :math:`1 - 1/\mathrm{ratio}` of
    a padded batch is padding, and :math:`\lceil \log_{\mathrm{ratio}}
    (\mathrm{max}/\mathrm{min}) \rceil + 1` buckets cover the range.

    Args:
        max_size (int): the largest size to serve.
        min_size (int): the smallest size to serve.  (default: :obj:`1`)
        ratio (float): growth factor between capacities, above 1.
            (default: :obj:`1.25`)
        multiple (int): every capacity is a multiple of it.
            (default: :obj:`1`)
        grow (bool): a size above the largest capacity adds capacities,
            continuing the progression (a new bucket: one more graph),
            instead of raising an error.  (default: :obj:`False`)
    """

    def __init__(
        self,
        max_size: int,
        min_size: int = 1,
        ratio: float = 1.25,
        multiple: int = 1,
        grow: bool = False,
    ):
        for name, v in (("max_size", max_size), ("min_size", min_size), ("multiple", multiple)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"'{name}' must be a positive int (got {v!r})")
        if min_size > max_size:
            raise ValueError(f"'min_size'={min_size} exceeds 'max_size'={max_size}")
        if not float(ratio) > 1.0 or not math.isfinite(ratio):
            raise ValueError(f"'ratio' must be a finite number above 1 (got {ratio!r})")
        self.min_size, self.max_size = min_size, max_size
        self.ratio, self.multiple, self.grow = float(ratio), multiple, bool(grow)
        caps = [self._up(min_size + 1)]
        while caps[-1] <= max_size:
            caps.append(self._next(caps[-1]))
        self.capacities: Tuple[int, ...] = tuple(caps)

    def _up(self, v: int) -> int:
        return -(-v // self.multiple) * self.multiple

    def _next(self, cap: int) -> int:
        return self._up(max(cap + 1, math.ceil(cap * self.ratio)))

    def __len__(self) -> int:
        return len(self.capacities)

    def __iter__(self):
        return iter(self.capacities)

    def __call__(self, size: int) -> int:
        """The capacity of the bucket of :obj:`size`: the smallest one above it."""
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int (got {size!r})")
        for cap in self.capacities:
            if cap > size:
                return cap
        if self.grow:
            caps = list(self.capacities)
            while caps[-1] <= size:
                caps.append(self._next(caps[-1]))
            self.capacities, self.max_size = tuple(caps), size
            return caps[-1]
        raise ValueError(
            f"size {size} does not fit the largest capacity bucket ({self.capacities[-1]}, "
            f"which serves sizes up to {self.capacities[-1] - 1}); raise 'max_size' "
            f"(now {self.max_size}) or pass grow=True"
        )

    def max_padding(self, capacity: int) -> int:
        """The most padding a batch of bucket :obj:`capacity` can hold: the
        capacity minus the smallest size that lands in it."""
        if capacity not in self.capacities:
            raise ValueError(f"{capacity} is not one of the capacities {self.capacities}")
        i = self.capacities.index(capacity)
        lowest = self.capacities[i - 1] if i else self.min_size
        return capacity - lowest

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({len(self)} buckets: "
            f"{', '.join(map(str, self.capacities))})"
        )


class PaddedBatch(NamedTuple):
    r"""A batch padded to static sizes (see :func:`pad_batch`).

    Rows ``:num_points`` hold the real points in their input order, rows
    ``num_points:`` the padding points (zero features, positions and targets)
    in the dummy clouds ``max_clouds, ..., batch_size - 1``.
    """

    #: ``[P, F]`` features.
    x: Tensor
    #: ``[P, D]`` positions.
    pos: Tensor
    #: ``[P]`` int64 cloud index, sorted; padding in the dummy clouds.
    batch: Tensor
    #: ``[P, ...]`` targets (or :obj:`None`).
    y: Optional[Tensor]
    #: ``[2, E_cap]`` edges; padding edges are self-loops of the padding
    #: points, spread over them in turn (or :obj:`None`).
    edge_index: Optional[Tensor]
    #: ``[P]`` float32 loss weight: :math:`1/N` on real points (or the
    #: normalised weights given to :func:`pad_batch`), 0 on padding, so that
    #: ``(weight * per_point_loss).sum()`` is the (weighted) mean over real points.
    weight: Tensor
    #: ``[P]`` bool, :obj:`True` for real points.
    mask: Tensor
    #: the number :math:`N` of real points.
    num_points: int
    #: the number of real edges.
    num_edges: int
    #: clouds of the padded batch, dummy clouds included (``batch_size=`` of
    #: :func:`~torch_geometric_nsa.tree.build_ball_tree`).
    batch_size: int
    #: static slot count of its trees (``num_slots=``).
    num_slots: int

    @property
    def capacity(self) -> int:
        """Rows of the padded batch :math:`P`."""
        return self.x.size(0)

    def build_trees(self, ball_size: int, rotate: Optional[float] = None):
        """The capacity-mode ball tree of the padded batch (and the rotated
        one if :obj:`rotate` is given, else :obj:`None`); no host
        synchronisation and, after the first call, no host-to-device copy
        (build_ball_tree keeps the rotation matrix on the device), so it can be recorded
        in a CUDA graph."""
        kw = dict(ball_size=ball_size, batch_size=self.batch_size, num_slots=self.num_slots)
        tree = build_ball_tree(self.pos, self.batch, **kw)
        if rotate is None:
            return tree, None
        return tree, build_ball_tree(self.pos, self.batch, rotate=float(rotate), **kw)


def dummy_clouds_for(max_padding: int, dummy_cloud_size: int) -> int:
    """The number of dummy clouds that hold :obj:`max_padding` padding
    points with at most :obj:`dummy_cloud_size` points each."""
    return max(1, -(-max_padding // dummy_cloud_size))


def _alloc(x, pos, y, edge_index, capacity, edge_capacity, batch_size, num_slots) -> PaddedBatch:
    dev = x.device
    return PaddedBatch(
        x=x.new_empty((capacity,) + tuple(x.shape[1:])),
        pos=pos.new_empty((capacity,) + tuple(pos.shape[1:])),
        batch=torch.empty(capacity, dtype=torch.long, device=dev),
        y=None if y is None else y.new_empty((capacity,) + tuple(y.shape[1:])),
        edge_index=None
        if edge_index is None
        else torch.empty(2, edge_capacity, dtype=torch.long, device=dev),
        weight=torch.empty(capacity, dtype=torch.float32, device=dev),
        mask=torch.empty(capacity, dtype=torch.bool, device=dev),
        num_points=0,
        num_edges=0,
        batch_size=batch_size,
        num_slots=num_slots,
    )


def _check_matches(name: str, src: Optional[Tensor], buf: Optional[Tensor]) -> None:
    if (src is None) != (buf is None):
        state = "given here but" if src is not None else "missing here but not in"
        raise ValueError(f"'{name}' is {state} the first batch of this bucket")
    if src is None:
        return
    # the rows (edges: columns) vary; the rest of the shape is fixed per bucket
    shape_differs = (
        src.shape[:1] != buf.shape[:1] if name == "edge_index" else src.shape[1:] != buf.shape[1:]
    )
    if src.dtype != buf.dtype or shape_differs or src.device != buf.device:
        raise ValueError(
            f"'{name}' has dtype {src.dtype}, shape {tuple(src.shape)} on {src.device}; the "
            f"buffers of this bucket hold {buf.dtype}, [*, {', '.join(map(str, buf.shape[1:]))}] "
            f"on {buf.device}"
        )


def pad_batch(
    x: Tensor,
    pos: Tensor,
    batch: Tensor,
    y: Optional[Tensor] = None,
    edge_index: Optional[Tensor] = None,
    *,
    capacity: int,
    max_clouds: int,
    ball_size: int,
    edge_capacity: Optional[int] = None,
    dummy_clouds: int = 1,
    num_graphs: Optional[int] = None,
    weight: Optional[Tensor] = None,
    out: Optional[PaddedBatch] = None,
) -> PaddedBatch:
    r"""Pads a batch to :obj:`capacity` points (and :obj:`edge_capacity`
    edges), the padding in :obj:`dummy_clouds` extra clouds.

    Padding point :math:`i` of :math:`p = P - N` goes to cloud
    ``max_clouds + i * dummy_clouds // p``, so the dummy clouds follow every
    real cloud (ids below :obj:`max_clouds`; unused ids are empty clouds,
    which get no slots) and hold about :math:`p / K` points each.  Without a
    host synchronisation when :obj:`num_graphs` is given.

    Args:
        x (torch.Tensor): ``[N, F]`` features.
        pos (torch.Tensor): ``[N, D]`` positions.
        batch (torch.Tensor): ``[N]`` sorted cloud index.
        y (torch.Tensor, optional): ``[N, ...]`` targets.
        edge_index (torch.Tensor, optional): ``[2, E]`` edges.
        capacity (int): padded point count :math:`P > N`.
        max_clouds (int): the most real clouds a batch may hold; dummy
            cloud ids start here.
        ball_size (int): the ball size of the trees (for
            :attr:`PaddedBatch.num_slots`).
        edge_capacity (int, optional): padded edge count :math:`\ge E`
            (needed with :obj:`edge_index`).
        dummy_clouds (int): :math:`K`, clouds the padding is spread over.
            (default: :obj:`1`)
        num_graphs (int, optional): real clouds of the batch (PyG's
            ``num_graphs``); read from :obj:`batch` when missing.
        weight (torch.Tensor, optional): ``[N]`` non-negative loss weights of
            the real points (bool: a mask, e.g. the training nodes); the
            padded batch's :attr:`~PaddedBatch.weight` is
            :math:`w_i / \sum_j w_j` (all 0 when every :math:`w_i` is 0),
            so that the loss is the weighted mean over the real points.
            Normalised on the device, without a host synchronisation.
            (default: :obj:`None`, :math:`1/N` each)
        out (PaddedBatch, optional): buffers of the right sizes to fill in
            place (static inputs of a CUDA graph).

    Returns:
        PaddedBatch
    """
    if x.dim() < 1 or pos.dim() != 2 or batch.dim() != 1:
        raise ValueError(
            f"expected x [N, F], pos [N, D], batch [N] (got {tuple(x.shape)}, "
            f"{tuple(pos.shape)}, {tuple(batch.shape)})"
        )
    n = x.size(0)
    if pos.size(0) != n or batch.size(0) != n or (y is not None and y.size(0) != n):
        raise ValueError(
            f"x, pos, batch and y must have the same number of rows (got {n}, {pos.size(0)}, "
            f"{batch.size(0)}, {None if y is None else y.size(0)})"
        )
    if n == 0:
        raise ValueError("the batch is empty")
    if weight is not None and (
        not isinstance(weight, Tensor)
        or weight.shape != (n,)
        or weight.is_complex()
        or weight.device != x.device
    ):
        desc = (
            f"{weight.dtype} of shape {tuple(weight.shape)} on {weight.device}"
            if isinstance(weight, Tensor)
            else type(weight).__name__
        )
        raise ValueError(
            f"'weight' must be a real or bool tensor of shape [{n}] on {x.device} (got {desc})"
        )
    if not isinstance(capacity, int) or capacity <= n:
        raise ValueError(
            f"capacity={capacity!r} must exceed the batch's {n} points (one padding point at least)"
        )
    if not isinstance(dummy_clouds, int) or dummy_clouds < 1:
        raise ValueError(f"'dummy_clouds' must be a positive int (got {dummy_clouds!r})")
    if not isinstance(max_clouds, int) or max_clouds < 1:
        raise ValueError(f"'max_clouds' must be a positive int (got {max_clouds!r})")
    if num_graphs is None:
        num_graphs = int(batch[-1]) + 1  # one read-back
    if num_graphs > max_clouds:
        raise ValueError(
            f"the batch holds {num_graphs} clouds but max_clouds={max_clouds}: its last clouds "
            f"would share ids with the padding"
        )
    num_edges = 0
    if edge_index is not None:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'edge_index' must have shape [2, E] (got {tuple(edge_index.shape)})")
        num_edges = edge_index.size(1)
        if edge_capacity is None or edge_capacity < num_edges:
            raise ValueError(
                f"edge_capacity={edge_capacity!r} must be at least the batch's {num_edges} edges"
            )
    batch_size = max_clouds + dummy_clouds
    num_slots = slot_capacity(capacity, batch_size, ball_size)
    if out is None:
        out = _alloc(x, pos, y, edge_index, capacity, edge_capacity, batch_size, num_slots)
    else:
        if out.capacity != capacity or out.batch_size != batch_size or out.num_slots != num_slots:
            raise ValueError(
                f"'out' holds {out.capacity} points in {out.batch_size} clouds and "
                f"{out.num_slots} slots; this call needs {capacity}, {batch_size}, {num_slots}"
            )
        if out.edge_index is not None and out.edge_index.size(1) != edge_capacity:
            raise ValueError(
                f"'out' holds {out.edge_index.size(1)} edges; this call needs {edge_capacity}"
            )
        for name, src, buf in (
            ("x", x, out.x),
            ("pos", pos, out.pos),
            ("y", y, out.y),
            ("edge_index", edge_index, out.edge_index),
        ):
            _check_matches(name, src, buf)
    pad = capacity - n
    out.x[:n].copy_(x)
    out.x[n:].zero_()
    out.pos[:n].copy_(pos)
    out.pos[n:].zero_()
    out.batch[:n].copy_(batch)
    dummy = torch.arange(pad, device=out.batch.device).mul_(dummy_clouds)
    out.batch[n:].copy_(dummy.div_(pad, rounding_mode="floor").add_(max_clouds))
    if y is not None:
        out.y[:n].copy_(y)
        out.y[n:].zero_()
    if edge_index is not None:
        out.edge_index[:, :num_edges].copy_(edge_index)
        # self-loops spread over the padding points (no hot spot for the aggregation)
        loops = torch.arange(edge_capacity - num_edges, device=out.edge_index.device)
        out.edge_index[:, num_edges:].copy_(loops.remainder_(pad).add_(n).expand(2, -1))
    out.weight.zero_()
    if weight is None:
        out.weight[:n].fill_(1.0 / n)
    else:  # sum_i w_i on the device: no host read (0 / tiny = 0 when every weight is 0)
        w = out.weight[:n]
        w.copy_(weight)
        w.div_(w.sum().clamp_min(torch.finfo(torch.float32).tiny))
    out.mask.zero_()
    out.mask[:n].fill_(True)
    return out._replace(num_points=n, num_edges=num_edges)


def mse_per_point(pred: Tensor, target: Tensor) -> Tensor:
    """Squared error averaged over the channels of every point: ``[N]``.
    Its mean over the real points is :func:`torch.nn.functional.mse_loss`
    of the real rows."""
    diff = (pred.float() - target.float()).pow(2)
    return diff.reshape(diff.size(0), -1).mean(1)


class CapturedTrainStep:
    r"""A training step of an :class:`~torch_geometric_nsa.nn.models.ErwinNSA`
    (or any model with its ``forward(x, pos, batch, edge_index, tree,
    tree_rot)`` and its ``ball_size``, ``rotate`` and ``uses_rotation``
    attributes) on batches of varying size, with one CUDA graph per capacity
    bucket.

    A call pads the batch (:func:`pad_batch`) to the bucket of its point and
    edge counts and runs the step: trees of the padded batch in capacity mode,
    forward under autocast, the loss as the mean of :obj:`loss_fn` over the
    real points (or its weighted mean, with per-point weights such as a
    mask of the training nodes), backward, optional gradient clipping and
    :obj:`optimizer`'s step.  With CUDA graphs the first batch of a bucket
    runs the step eagerly on a side stream (that is its training step; it
    also compiles the Triton kernels for the bucket's shapes and creates the
    optimizer state), then the step is recorded into the bucket's static
    buffers; every later batch of the bucket only copies its tensors into
    those buffers and replays the graph.  Parameters, gradients, optimizer
    state and the static buffers live outside the graphs' shared memory pool,
    so replays of different buckets may come in any order.

    The optimizer must be capturable (e.g.
    ``torch.optim.AdamW(..., capturable=True)``); a float learning rate is
    frozen into the graphs at capture, so change it through a tensor ``lr``
    (``AdamW(..., lr=torch.tensor(1e-3), capturable=True)``, updated in place).

    Args:
        model (torch.nn.Module): the model.
        optimizer (torch.optim.Optimizer): its optimizer.
        point_buckets (CapacityBuckets): point capacities.
        max_clouds (int): the most clouds a batch holds (the loader's
            ``batch_size``).
        edge_buckets (CapacityBuckets, optional): edge capacities (needed
            when batches carry edges).
        loss_fn (callable, optional): ``loss_fn(pred, y) -> [N]`` per-point
            loss.  (default: :func:`mse_per_point`)
        autocast_dtype (torch.dtype, optional): autocast dtype of the forward
            (:obj:`torch.bfloat16`; float16 would need a gradient scaler,
            which synchronises).  (default: :obj:`None`, no autocast)
        max_grad_norm (float, optional): clip the gradient norm to it.
            (default: :obj:`None`)
        dummy_cloud_size (int): the most padding points per dummy cloud; a
            bucket spreads its largest padding over that many clouds, since
            the compressed branch costs the square of a cloud's size.
            (default: :obj:`2048`)
        cuda_graphs (bool, optional): record CUDA graphs.  (default: on CUDA
            devices; elsewhere the padded step runs eagerly)

    Shapes:
        - **call:** ``x [N, F]``, ``pos [N, D]``, ``batch [N]``, ``y [N,
          ...]``, ``edge_index [2, E]`` *(optional)*, ``weight [N]``
          *(optional)* -> loss ``[]``
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        point_buckets: CapacityBuckets,
        max_clouds: int,
        *,
        edge_buckets: Optional[CapacityBuckets] = None,
        loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        max_grad_norm: Optional[float] = None,
        dummy_cloud_size: int = 2048,
        cuda_graphs: Optional[bool] = None,
    ):
        for attr in ("ball_size", "rotate", "uses_rotation"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"the model has no '{attr}' attribute; CapturedTrainStep needs an ErwinNSA-like "
                    f"model (ball_size, rotate, uses_rotation, forward(x, pos, batch, edge_index, "
                    f"tree, tree_rot))"
                )
        if not isinstance(point_buckets, CapacityBuckets):
            raise TypeError("'point_buckets' must be a CapacityBuckets")
        if edge_buckets is not None and not isinstance(edge_buckets, CapacityBuckets):
            raise TypeError("'edge_buckets' must be a CapacityBuckets or None")
        if not isinstance(max_clouds, int) or max_clouds < 1:
            raise ValueError(f"'max_clouds' must be a positive int (got {max_clouds!r})")
        if not isinstance(dummy_cloud_size, int) or dummy_cloud_size < 1:
            raise ValueError(
                f"'dummy_cloud_size' must be a positive int (got {dummy_cloud_size!r})"
            )
        if autocast_dtype == torch.float16:
            raise ValueError("autocast_dtype=float16 needs a gradient scaler; use torch.bfloat16")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        device = params[0].device
        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if cuda_graphs:
            if device.type != "cuda":
                raise ValueError(
                    f"cuda_graphs=True needs the model on a CUDA device (got {device})"
                )
            if not all(g.get("capturable", False) for g in optimizer.param_groups):
                raise ValueError(
                    "CUDA graphs need a capturable optimizer, e.g. "
                    "torch.optim.AdamW(params, capturable=True)"
                )
        self.model, self.optimizer = model, optimizer
        self.point_buckets, self.edge_buckets = point_buckets, edge_buckets
        self.max_clouds, self.dummy_cloud_size = max_clouds, dummy_cloud_size
        self.loss_fn = mse_per_point if loss_fn is None else loss_fn
        self.autocast_dtype, self.max_grad_norm = autocast_dtype, max_grad_norm
        self.cuda_graphs, self.device = cuda_graphs, device
        self._params = params
        self._buffers: Dict[Tuple[int, int], PaddedBatch] = {}
        self._graphs: Dict[Tuple[int, int], "torch.cuda.CUDAGraph"] = {}
        #: batches run per bucket ``(point capacity, edge capacity)``
        self.calls: Dict[Tuple[int, int], int] = {}
        self._loss = torch.zeros((), device=device)  # the graphs' output, outside their pool
        self._pool = self._stream = None
        if cuda_graphs:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(device=device)

    @property
    def buckets(self) -> List[Tuple[int, int]]:
        """The buckets seen so far, as ``(point capacity, edge capacity)``
        (edge capacity 0 without edges)."""
        return list(self._buffers)

    @property
    def num_graphs(self) -> int:
        """The number of CUDA graphs recorded."""
        return len(self._graphs)

    def pad(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Tensor,
        y: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        weight: Optional[Tensor] = None,
    ) -> Tuple[Tuple[int, int], PaddedBatch]:
        """Pads the batch into its bucket's static buffers; returns the
        bucket key and the :class:`PaddedBatch`."""
        capacity = self.point_buckets(x.size(0))
        edge_capacity = 0
        if edge_index is not None:
            if self.edge_buckets is None:
                raise ValueError("the batch has edges but the step was built without edge_buckets")
            edge_capacity = self.edge_buckets(edge_index.size(1))
        key = (capacity, edge_capacity)
        dummy = dummy_clouds_for(self.point_buckets.max_padding(capacity), self.dummy_cloud_size)
        padded = pad_batch(
            x,
            pos,
            batch,
            y,
            edge_index,
            capacity=capacity,
            max_clouds=self.max_clouds,
            ball_size=self.model.ball_size,
            edge_capacity=edge_capacity or None,
            dummy_clouds=dummy,
            num_graphs=num_graphs,
            weight=weight,
            out=self._buffers.get(key),
        )
        self._buffers.setdefault(key, padded)
        return key, padded

    def forward_loss(self, padded: PaddedBatch) -> Tensor:
        """Trees, forward and the mean loss over the real points of a padded
        batch (no backward)."""
        model = self.model
        tree, tree_rot = padded.build_trees(
            model.ball_size, model.rotate if model.uses_rotation else None
        )
        amp = contextlib.nullcontext()
        if self.autocast_dtype is not None:  # weight casts are part of a recorded step
            amp = torch.autocast(self.device.type, self.autocast_dtype, cache_enabled=False)
        with amp:
            out = model(padded.x, padded.pos, padded.batch, padded.edge_index, tree, tree_rot)
        per_point = self.loss_fn(out, padded.y)
        if per_point.shape != (padded.capacity,):
            raise ValueError(
                f"loss_fn must return one loss per point, shape [{padded.capacity}] (got "
                f"{tuple(per_point.shape)})"
            )
        return (per_point.float() * padded.weight).sum()

    def _step(self, padded: PaddedBatch) -> Tensor:
        self.optimizer.zero_grad(set_to_none=False)  # gradients keep their memory
        loss = self.forward_loss(padded)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def __call__(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Tensor,
        y: Tensor,
        edge_index: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
        weight: Optional[Tensor] = None,
    ) -> Tensor:
        """Runs one training step on the batch; returns its loss (a new
        0-dim tensor on the device).  :obj:`weight` (``[N]``, optional):
        per-point loss weights or a bool mask, the loss being their weighted
        mean (see :func:`pad_batch`); by default the plain mean."""
        if y is None:
            raise ValueError("'y' (the targets) is required")
        if self.cuda_graphs and edge_index is None and getattr(self.model, "radius", None):
            raise ValueError(
                "the model builds a radius graph in its forward, which cannot be recorded: pass "
                "'edge_index' (e.g. computed in the data loader)"
            )
        self.model.train()
        key, padded = self.pad(x, pos, batch, y, edge_index, num_graphs, weight)
        self.calls[key] = self.calls.get(key, 0) + 1
        if not self.cuda_graphs:
            return self._step(padded)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
            return self._loss.clone()
        # first batch of the bucket: its step runs eagerly on the side stream
        # (kernels compiled, optimizer state created), then the step is recorded
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            loss = self._step(padded)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread-local: CUDA calls of other threads (a loader's pin-memory thread) may go on
        with torch.cuda.graph(
            graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"
        ):
            self._loss.copy_(self._step(padded))
        self._graphs[key] = graph
        return loss.clone()

"""One training loop for every example.

An example describes its data and metrics with a :class:`Task`; :func:`main`
does the rest:

* argparse flags shared by all examples (:func:`add_common_args`), every one
  with a help line and its default;
* PyG's :class:`~torch_geometric.loader.DataLoader` (``--num-workers``
  workers) over datasets that carry the ball tree of every sample from the
  :class:`~torch_geometric_nsa.transforms.BallTree` transform
  (:func:`tree_transform`); the loop consumes :class:`~torch_geometric.data.Batch`
  objects and hands the collated trees to the model (:func:`forward`);
* with ``--cuda-graphs`` (tree models), every training step padded to one of
  a few size buckets and replayed as one CUDA graph per bucket
  (:class:`~torch_geometric_nsa.capture.CapturedTrainStep`, see
  :func:`captured_train_step`);
* single process, or DistributedDataParallel under ``torchrun`` (gloo on CPU,
  nccl on CUDA) with a :class:`~torch.utils.data.DistributedSampler`, rank-0
  logging and checkpoints;
* tqdm progress with the loss and the throughput, a ``metrics.jsonl`` line
  every ``--log-every`` steps;
* with ``--eval-every K``, the held-out error every K steps as
  ``eval_<metric>`` rows of ``metrics.jsonl`` (on the validation split that an
  example gives as ``Task.extra["val_dataset"]``, else on the test split,
  named in each row; the RNG states are restored, so training is unchanged);
* ``timing.json``: the seconds of every step (data loading excluded), their
  median and the peak GPU memory of training (also in ``test_metrics.json``),
  with ``--cuda-graphs`` also the buckets and graphs (:func:`capture_summary`);
* a checkpoint every ``--ckpt-every`` steps holding the model, the optimiser,
  every RNG state (as tensors), the step and the settings; it is read back with
  ``torch.load(weights_only=True)``, so a planted file cannot run code.
  ``--resume`` refuses a checkpoint whose settings differ (only ``--steps`` may
  change, with ``--allow-change steps``) and continues the same loss curve
  (the sampler's order is a function of ``(seed, epoch)`` and the position
  within the epoch is ``step % steps_per_epoch``, so nothing else needs saving);
* at the end, the task's test metrics (``test_metrics.json``) and figures next
  to the metrics, among them the loss curves.
"""

import argparse
import contextlib
import copy
import json
import math
import os
import os.path as osp
import pickle
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler
from torch_geometric.loader import DataLoader

from torch_geometric_nsa.capture import CapacityBuckets, CapturedTrainStep, mse_per_point
from torch_geometric_nsa.transforms import BallTree

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------
MODELS = ("erwin-nsa", "local-only", "point-transformer", "mlp")
#: models that read ball trees (their datasets get the BallTree transform)
TREE_MODELS = ("erwin-nsa", "local-only")

#: settings that never change the model, the data or the optimisation: they
#: may differ between a checkpoint and ``--resume`` (and between ablation runs)
FREE_SETTINGS = frozenset(
    {
        "out",
        "resume",
        "allow_change",
        "ckpt_every",
        "log_every",
        "no_figures",
        "no_progress",
        "stop_after",
        "device",
        "threads",
        "num_workers",
        "eval_batch_size",
        "compile",
        # the padded step computes the same loss and gradients (tested), and a checkpoint's
        # optimiser state loads with or without it (fit_optimizer)
        "cuda_graphs",
        # held-out curves do not touch training: the RNG states are restored after
        # each evaluation (tested), so the loss curve is the same with or without them
        "eval_every",
        "eval_samples",
        "cache_samples",
    }
)
#: settings that may change on ``--resume`` when named in ``--allow-change``
CHANGEABLE_SETTINGS = ("steps",)
#: settings added after checkpoints were written, with the value those runs had
ADDED_SETTINGS = {"compressed_bias": False}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` with the module docstring as written and every default."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value})")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer (got {value})")
    return value


def add_common_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """Flags shared by the examples; ``defaults`` overrides the defaults."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="erwin-nsa", help="model to train")
    g.add_argument("--hidden", type=positive_int, default=64, help="hidden channels")
    g.add_argument("--layers", type=positive_int, default=4, help="number of blocks")
    g.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    g.add_argument(
        "--branches",
        default="compressed,selected,local",
        help="comma-separated NSA branches (erwin-nsa only)",
    )
    g.add_argument(
        "--compressed-bias",
        action="store_true",
        help="a learned distance bias on the compressed scores, query to block centroid "
        "(erwin-nsa only)",
    )
    g.add_argument("--ball-size", type=positive_int, default=128, help="points per ball")
    g.add_argument(
        "--compress-size", type=positive_int, default=32, help="points per compressed block"
    )
    g.add_argument(
        "--select-size",
        type=positive_int,
        default=None,
        help="points per selected block (None: the compression block size, at least 16)",
    )
    g.add_argument("--topk", type=positive_int, default=4, help="selected blocks per query")
    g.add_argument("--rotate", type=float, default=45.0, help="angle of the rotated tree (degrees)")
    g.add_argument("--knn", type=positive_int, default=16, help="neighbours (point-transformer)")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps")
    g.add_argument("--batch-size", type=positive_int, default=1, help="clouds per step and process")
    g.add_argument(
        "--eval-batch-size",
        type=positive_int,
        default=None,
        help="clouds per evaluation batch (None: --batch-size)",
    )
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument(
        "--warmup",
        type=non_negative_int,
        default=None,
        help="linear warm-up steps (None: 5%% of --steps); cosine decay follows",
    )
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the model, sampler and RNGs")
    g.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes (0: load in the training process)",
    )
    g.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="erwin-nsa, local-only: pad each training batch to a size bucket and replay one "
        "CUDA graph of the whole step per bucket (torch_geometric_nsa.capture.CapturedTrainStep, "
        "which builds the trees itself: the loader's serve evaluation only; on the CPU the "
        "padded step runs eagerly; not with --compile or torchrun)",
    )
    g.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on CUDA, float32 matrix products (cuBLAS and the attention kernels) in TF32 "
        "(torch.set_float32_matmul_precision('high')); --no-tf32 keeps full float32",
    )
    g.add_argument(
        "--cache-samples",
        action="store_true",
        help="keep every transformed training (and --eval-every) sample in memory after its "
        "first use, so each sample's ball trees are built once, not at every step (the "
        "examples' transforms are deterministic)",
    )
    g.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (None: torch's)"
    )
    g = parser.add_argument_group("output")
    g.add_argument(
        "--out",
        default=None,
        help="run folder for metrics, checkpoints and figures (None: runs/<example>-<model>)",
    )
    g.add_argument(
        "--ckpt-every",
        type=non_negative_int,
        default=100,
        help="checkpoint every this many steps and at the end (0: no checkpoints)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/ckpt.pt; refuses a checkpoint with other settings",
    )
    g.add_argument(
        "--allow-change",
        nargs="+",
        default=[],
        choices=CHANGEABLE_SETTINGS,
        help="with --resume: settings that may differ from the checkpoint's",
    )
    g.add_argument(
        "--log-every",
        type=non_negative_int,
        default=1,
        help="metrics.jsonl line every this many steps (0: none)",
    )
    g.add_argument(
        "--eval-every",
        type=non_negative_int,
        default=0,
        help="evaluate on the held-out split every this many steps and at the end, as "
        "eval_<metric> rows of metrics.jsonl (the validation split when the example has one, "
        "else the test split, named in the row; nothing is chosen from it; 0: off)",
    )
    g.add_argument(
        "--eval-samples",
        type=positive_int,
        default=None,
        help="with --eval-every: evenly spaced held-out samples per evaluation (None: all)",
    )
    g.add_argument("--no-figures", action="store_true", help="skip the figures")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        help="stop after this many steps (the schedule still spans --steps): no test "
        "evaluation, timing.json is written (None: all --steps)",
    )
    parser.set_defaults(**defaults)
    return parser


def tree_transform(args) -> Optional[BallTree]:
    """The :class:`BallTree` transform that gives every sample the trees the
    model of ``args`` reads (:obj:`None` for models without trees)."""
    if args.model not in TREE_MODELS:
        return None
    # the model's own angle (a one-block model never reads the rotated tree)
    return BallTree(ball_size=args.ball_size, rotate=args.rotate)


# ---------------------------------------------------------------------------
# the task an example describes
# ---------------------------------------------------------------------------
@dataclass
class Task:
    """What an example gives the loop.

    Attributes:
        name: short name (the default run folder is ``runs/<name>-<model>``).
        train_dataset, test_dataset: PyG datasets of :class:`Data` with ``x``,
            ``pos``, ``y`` (and optionally ``edge_index``), opened with
            ``transform=tree_transform(args)``.
        in_channels, out_channels: the model's sizes.
        evaluate: ``evaluate(predict, loader) -> dict``; ``loader`` is a
            :class:`DataLoader` over the test set (``loader.dataset``), and
            ``predict(batch) -> Tensor`` runs the model on a batch of it.
            Scalars in the dict are test metrics; the rest is handed to
            :obj:`figures`.
        figures: ``figures(result, out_dir) -> [paths]``.
        summary: ``summary(result) -> str`` printed at the end.
        loss: ``loss(pred, batch) -> Tensor`` (default: MSE against ``batch.y``).
        loss_targets: ``loss_targets(batch) -> (target, weight)``, the per-point
            form of :obj:`loss` that ``--cuda-graphs`` trains with: the loss is
            the weighted mean over the points of the squared error against
            ``target`` (averaged over its channels) with weights ``weight``
            (``[N]``, or a bool mask; :obj:`None`: the plain mean).  Default:
            ``(batch.y, None)``, the default MSE; a task with its own
            :obj:`loss` must give it to be trained with ``--cuda-graphs``.
        use_edges: hand ``batch.edge_index`` to the model's embedding.
        extra: optional keys the loop reads: ``"val_dataset"`` (the split of the
            ``--eval-every`` rows; default the test set) and ``"metric"`` (the
            test metric the loss-curve figure plots next to the loss).
    """

    name: str
    train_dataset: Any
    test_dataset: Any
    in_channels: int
    out_channels: int
    evaluate: Callable
    figures: Optional[Callable] = None
    summary: Optional[Callable] = None
    loss: Optional[Callable] = None
    use_edges: bool = True
    loss_targets: Optional[Callable] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def mse_loss(pred: Tensor, batch) -> Tensor:
    return torch.nn.functional.mse_loss(pred, batch.y)


def mse_targets(batch):
    """The per-point form of :func:`mse_loss`: ``batch.y``, uniform weights."""
    return batch.y, None


# ---------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------
@dataclass
class Env:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_env(device: str) -> Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    return Env(rank, world, local_rank, dev)


@contextlib.contextmanager
def rank0_first(device: str = "auto"):
    """Under torchrun, rank 0 runs the block (e.g. processing a dataset) before
    the other ranks, which then load its result."""
    env = setup_env(device)
    if env.distributed and not env.main:
        dist.barrier()
    yield env
    if env.distributed and env.main:
        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Every RNG state as tensors and plain numbers (loadable with ``weights_only``)."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=torch.tensor(words, dtype=torch.int64),
        python_version=int(version),
        python_gauss=gauss,
        numpy=torch.from_numpy(keys.astype(np.int64)),
        numpy_pos=int(pos),
        numpy_gauss=(int(has_gauss), float(cached)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    words = tuple(int(w) for w in state["python"].tolist())
    random.setstate((state["python_version"], words, state["python_gauss"]))
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------
# data loading and the forward pass
# ---------------------------------------------------------------------------
class StepSampler(Sampler):
    """Sample indices for the steps from ``start_step`` on, without end: epoch
    after epoch of ``sampler`` (a :class:`DistributedSampler`), each cut to
    whole batches so that no batch straddles two epochs.  The order depends
    only on ``(seed, epoch)``, so a resumed run sees the batches it would
    have seen."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, start_step: int = 0):
        self.sampler, self.batch_size, self.start_step = sampler, batch_size, start_step
        self.steps_per_epoch = len(sampler) // batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, pos = divmod(self.start_step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[: self.steps_per_epoch * self.batch_size]
            yield from order[pos * self.batch_size :]
            epoch, pos = epoch + 1, 0


def train_loader(dataset, args, env: Env, start_step: int) -> DataLoader:
    """Batches of ``dataset`` for the steps from ``start_step`` on (this
    process's share under ``torchrun``)."""
    sampler = DistributedSampler(
        dataset, num_replicas=env.world, rank=env.rank, shuffle=True, seed=args.seed, drop_last=True
    )
    if len(sampler) < args.batch_size:
        raise ValueError(
            f"{len(dataset)} training samples are too few for {env.world} process(es) x "
            f"batch size {args.batch_size}: pass a smaller --batch-size"
        )
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=StepSampler(sampler, args.batch_size, start_step),
        num_workers=args.num_workers,
        # the loader's seed comes from its own generator, not the global RNG
        generator=torch.Generator().manual_seed(args.seed),
    )


class CachedSamples(torch.utils.data.Dataset):
    """``dataset`` whose samples are kept in memory after their first access
    (``--cache-samples``), so a deterministic transform such as
    :class:`BallTree` builds each sample's trees once instead of at every step.
    Other attributes are those of ``dataset`` (what an example's ``evaluate``
    reads).  Do not use it with random transforms (augmentations): every epoch
    would see the first draw."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.cache: Dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx):
        idx = int(idx)
        if idx not in self.cache:
            self.cache[idx] = self.dataset[idx]
        return self.cache[idx]

    def __getattr__(self, name):
        if name in ("dataset", "cache"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def test_loader(dataset, args) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=args.eval_batch_size or args.batch_size,
        shuffle=False,
        num_workers=args.num_workers,
    )


def forward(model, batch, net=None, use_edges: bool = True) -> Tensor:
    """Runs ``net`` (by default ``model``; a DDP or compiled wrapper of it) on
    a :class:`Batch`, with the ball trees the batch carries when the model
    reads trees."""
    net = model if net is None else net
    kwargs = {}
    if hasattr(model, "trees_from_data"):
        kwargs["tree"], kwargs["tree_rot"] = model.trees_from_data(batch)
    edge_index = getattr(batch, "edge_index", None) if use_edges else None
    return net(batch.x, batch.pos, batch.batch, edge_index, **kwargs)


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 1% of ``--lr``."""
    warm = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    if step < warm:
        return args.lr * (step + 1) / warm
    t = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ---------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------
def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a partial last line (a run killed
    while writing it) is skipped, any other malformed line is an error."""
    if not osp.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no newline after it: cut off mid-write
                break
            raise ValueError(f"'{path}', line {i + 1}: not a JSON row ({e})") from e
    return rows


def _truncate_jsonl(path: str, step: int) -> None:
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def eval_metric_key(rows: List[Dict[str, Any]], metric: Optional[str] = None) -> Optional[str]:
    """The ``eval_<metric>`` key of the held-out rows (the first scalar the
    task reports when ``metric`` is :obj:`None`)."""
    for r in rows:
        if "eval_split" in r:
            if metric is not None:
                return f"eval_{metric}" if f"eval_{metric}" in r else None
            keys = [
                k for k in r if k.startswith("eval_") and k not in ("eval_split", "eval_seconds")
            ]
            return keys[0] if keys else None
    return None


def plot_loss_curves(
    metrics_path: str, out_dir: str, metric: Optional[str] = None
) -> Optional[str]:
    """``loss_curve.png``: the training loss per step (and its running mean),
    and beside it the held-out ``eval_<metric>`` rows when there are any."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    rows = read_jsonl(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    key = eval_metric_key(rows, metric)
    held = [(r["step"], r[key]) for r in rows if key and key in r]
    if not train:
        return None
    fig, axes = plt.subplots(1, 2 if held else 1, figsize=(11 if held else 6, 4), squeeze=False)
    ax = axes[0, 0]
    s, l = zip(*train)
    ax.plot(s, l, lw=0.8, alpha=0.5, label="train (per step)")
    if len(l) >= 20:
        w = max(5, len(l) // 50)
        sm = np.convolve(l, np.ones(w) / w, mode="valid")
        ax.plot(s[w - 1 :], sm, lw=1.5, label=f"train ({w}-step mean)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (normalised MSE)")
    ax.legend()
    ax.grid(alpha=0.3)
    if held:
        split = next(r["eval_split"] for r in rows if "eval_split" in r)
        ax = axes[0, 1]
        s, v = zip(*held)
        ax.plot(s, v, "o-", ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{key[5:]} on the {split} split")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "loss_curve.png", dpi=120)


def save_figure(fig, out_dir: str, name: str, dpi: int = 110) -> str:
    """Saves a matplotlib figure as ``out_dir/name``, closes it and returns the path."""
    import matplotlib.pyplot as plt

    path = osp.join(out_dir, name)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
CKPT_KEYS = ("model", "optimizer", "step", "rng", "args")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot or must not be used."""


def _load_error_detail(e: Exception) -> str:
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(skip)]
    return (useful or lines or [type(e).__name__])[0]


def load_checkpoint(path: str, device=None) -> Dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` with
    ``torch.load(weights_only=True)``: tensors and plain values only, so a
    planted pickle is refused instead of run."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint '{path}'")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _load_error_detail(e)
        if "GLOBAL" in detail or "global" in detail:
            raise CheckpointError(
                f"refusing to load checkpoint '{path}': it asks to import code ({detail}). "
                "Checkpoints of these examples hold only tensors and plain values; this "
                "file was written by something else (or by an older version of the "
                "examples): do not load it with weights_only=False unless you trust it."
            ) from e
        raise CheckpointError(
            f"cannot read checkpoint '{path}' (corrupt or not a checkpoint): {detail}"
        ) from e
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint '{path}' (corrupt, truncated or not a checkpoint): "
            f"{type(e).__name__}: {_load_error_detail(e)}"
        ) from e
    missing = [k for k in CKPT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"'{path}' is not a checkpoint of these examples: it lacks {', '.join(missing)}"
        )
    return ckpt


def save_checkpoint(path: str, model, opt, step: int, args, env: Env) -> None:
    """Writes model, optimiser, step, settings and every process's RNG states
    (atomically: a run killed while saving keeps the previous checkpoint)."""
    rngs: Any = rng_state()
    if env.distributed:
        gathered = [None] * env.world
        dist.all_gather_object(gathered, rngs)
        rngs = gathered
    if not env.main:
        return
    state = dict(
        model=model.state_dict(), optimizer=opt.state_dict(), step=step, rng=rngs, args=vars(args)
    )
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def setting_differences(old: Dict[str, Any], new: Dict[str, Any], allowed=()) -> List[str]:
    """The settings (as flags) in which two runs differ, ignoring
    :data:`FREE_SETTINGS` and ``allowed``."""
    keys = sorted((set(old) | set(new)) - FREE_SETTINGS - set(allowed))
    missing = "<not set>"
    old = {k: old.get(k, ADDED_SETTINGS.get(k, missing)) for k in keys}
    return [
        f"--{k.replace('_', '-')}: {old[k]!r} in the checkpoint, {new.get(k, missing)!r} now"
        for k in keys
        if old[k] != new.get(k, missing)
    ]


def resume(path: str, model, opt, args, env: Env) -> int:
    """Restores a checkpoint into ``model`` and ``opt`` after checking that it
    was written with the same settings; returns its step."""
    ckpt = load_checkpoint(path, env.device)
    diff = setting_differences(ckpt["args"], vars(args), args.allow_change)
    if diff:
        raise ValueError(
            f"--resume: the checkpoint '{path}' was written with other settings:\n  "
            + "\n  ".join(diff)
            + "\nStart a new run (another --out), or resume with the checkpoint's settings"
            + f" (only {', '.join(CHANGEABLE_SETTINGS)} may change, with --allow-change)."
        )
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model: {e}") from e
    rng = ckpt["rng"]
    set_rng_state(rng[env.rank] if isinstance(rng, list) else rng)
    return int(ckpt["step"])


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
@dataclass
class Run:
    """The state of a training run."""

    args: Any
    task: Task
    env: Env
    model: torch.nn.Module
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int
    out: str
    #: seconds of every optimiser step of this process (data loading excluded)
    step_times: List[float] = field(default_factory=list)
    #: peak bytes allocated on the GPU during training (:obj:`None` on the CPU)
    peak_bytes: Optional[int] = None
    #: ``--cuda-graphs``: the captured step (made at the first training batch)
    captured: Optional[CapturedTrainStep] = None
    #: ``--cuda-graphs``: the steps that opened a new bucket (on the GPU: ran
    #: eagerly and recorded its graph)
    new_bucket_steps: List[int] = field(default_factory=list)
    #: ``--cuda-graphs``: real and padded points of the training steps
    real_points: int = 0
    padded_points: int = 0

    @property
    def metrics_path(self) -> str:
        return osp.join(self.out, "metrics.jsonl")

    @property
    def ckpt_path(self) -> str:
        return osp.join(self.out, "ckpt.pt")


def setup(args, task: Task, build_model: Callable) -> Run:
    """Builds the model and optimiser, resumes from the checkpoint when
    asked, and writes ``args.json``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    env = setup_env(args.device)
    check_cuda_graphs(args, env, task)
    if env.device.type == "cuda":
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    args.out = args.out or osp.join("runs", f"{task.name}-{args.model}")
    if env.main:
        os.makedirs(args.out, exist_ok=True)
    seed_everything(args.seed)
    model = build_model(args, task.in_channels, task.out_channels).to(env.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run = Run(args, task, env, model, model, opt, 0, args.out)
    if args.resume:
        run.step = resume(run.ckpt_path, model, opt, args, env)
        if env.main:
            _truncate_jsonl(run.metrics_path, run.step)
    elif env.main:  # a new run: nothing of an earlier one in this folder may look like its own
        for name in ("metrics.jsonl", "test_metrics.json"):
            if osp.isfile(osp.join(args.out, name)):
                os.remove(osp.join(args.out, name))
    graphs = getattr(args, "cuda_graphs", False)
    fit_optimizer(opt, capturable=graphs and env.device.type == "cuda", tensor_lr=graphs)
    if env.main:
        with open(osp.join(args.out, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)
    if env.distributed:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if args.compile:
        run.net = torch.compile(run.net, dynamic=True)
    return run


def train_step(run: Run, batch) -> float:
    """One optimiser step on ``batch``; returns the loss (averaged over processes)."""
    set_lr(run.opt, lr_at(run.step, run.args))
    run.net.train()
    run.opt.zero_grad(set_to_none=True)
    pred = forward(run.model, batch, run.net, run.task.use_edges)
    loss = (run.task.loss or mse_loss)(pred, batch)
    loss.backward()
    if run.args.clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.args.clip)
    run.opt.step()
    value = loss.detach()
    if run.env.distributed:
        dist.all_reduce(value)
        value /= run.env.world
    return float(value)


# ---------------------------------------------------------------------------
# --cuda-graphs: the training step as one CUDA graph per capacity bucket
# ---------------------------------------------------------------------------
#: growth factor of consecutive capacity buckets (at most 20% of a padded batch is padding)
BUCKET_RATIO = 1.25
#: every point capacity is a multiple of it
POINT_MULTIPLE = 128
#: every edge capacity is a multiple of it
EDGE_MULTIPLE = 1024
#: training samples drawn (as the loader yields them) to estimate the sizes of the batches
SIZE_PROBES = 4


def check_cuda_graphs(args, env: Env, task: Task) -> None:
    """Refuses ``--cuda-graphs`` with what it does not support, naming it."""
    if not getattr(args, "cuda_graphs", False):
        return
    problems = []
    if args.model not in TREE_MODELS:
        problems.append(
            f"--model {args.model} is not a tree model (only {', '.join(TREE_MODELS)} have a "
            "captured step)"
        )
    if args.compile:
        problems.append("it excludes --compile (the whole step is already one CUDA graph)")
    if env.distributed:
        problems.append(
            f"it runs in one process only ({env.world} under torchrun): the captured step does "
            "not all-reduce the gradients"
        )
    if task.loss is not None and task.loss_targets is None:
        problems.append(
            f"the {task.name} task's loss has no per-point form (Task.loss_targets) to train with"
        )
    if problems:
        raise ValueError("--cuda-graphs: " + "; ".join(problems))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Sets the learning rate of every group; a tensor ``lr`` (``--cuda-graphs``:
    recorded in the graphs by address) is overwritten in place."""
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def fit_optimizer(opt: torch.optim.Optimizer, capturable: bool, tensor_lr: bool) -> None:
    """Puts an AdamW (new, or just loaded from a checkpoint, whose saved
    groups replace the settings) into the form the training step needs:
    ``capturable`` (step counters on the parameters' device) for CUDA graphs,
    the learning rate as a 0-dim tensor on the parameters' device (updated in
    place by :func:`set_lr`) or a float.  So a checkpoint written with or
    without ``--cuda-graphs`` resumes in either mode."""
    for group in opt.param_groups:
        params = group["params"]
        group["capturable"] = capturable
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=params[0].device) if tensor_lr else lr
        for p in params:
            state = opt.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if capturable else "cpu")


def capture_model(model: torch.nn.Module):
    """``(bare, graph)``: the ErwinNSA-like model a captured step trains, and
    ``graph(pos, batch)``, the edges a wrapper (cosmology's ``DeviceGraphs``,
    exposing the bare model as ``.model``) builds in its forward, which
    cannot be recorded: :func:`captured_train_step` computes them eagerly
    before the step (:obj:`None` for a bare model)."""
    if all(hasattr(model, a) for a in ("ball_size", "rotate", "uses_rotation")):
        return model, None
    inner = getattr(model, "model", None)
    if isinstance(inner, torch.nn.Module):
        return inner, getattr(model, "graph", None)
    return model, None  # CapturedTrainStep names what is missing


def sample_sizes(dataset, count: int = SIZE_PROBES):
    """``(points, edges)``: the point and edge counts (edges :obj:`None` when a
    sample has no ``edge_index``) of ``count`` evenly spaced samples as the
    loader yields them (transforms applied; every RNG state restored, so the
    run is unchanged), the points also of every stored sample of an
    :class:`~torch_geometric.data.InMemoryDataset` (cheap: its slices)."""
    state = rng_state()
    try:
        idx = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round())
        samples = [dataset[int(i)] for i in idx]
    finally:
        set_rng_state(state)
    points = [int(d.num_nodes) for d in samples]
    edges = None
    if all(getattr(d, "edge_index", None) is not None for d in samples):
        edges = [int(d.edge_index.size(1)) for d in samples]
    slices = getattr(dataset, "slices", None)
    if isinstance(slices, dict) and "pos" in slices and hasattr(dataset, "indices"):
        ptr = slices["pos"]
        counts = (ptr[1:] - ptr[:-1])[torch.as_tensor(list(dataset.indices()), dtype=torch.long)]
        points += [int(counts.min()), int(counts.max())]
    return points, edges


def make_captured_step(run: Run, batch, edge_index: Optional[Tensor]) -> CapturedTrainStep:
    """The :class:`CapturedTrainStep` of a run, made at its first batch.

    Buckets (:data:`BUCKET_RATIO` apart, ``grow=True``): points between
    ``--batch-size`` times the smallest and the largest sample of
    :func:`sample_sizes` (and the first batch); edges likewise, or from the
    first batch's count when they are built on the device.  A larger batch
    later adds a bucket (one more graph; ``timing.json`` lists them) instead of
    failing.  The loss is the per-point MSE (:attr:`Task.loss_targets`), in
    float32 like the eager step (no autocast), clipped at ``--clip``."""
    args, task = run.args, run.task
    bs = args.batch_size
    points, edges = sample_sizes(task.train_dataset)
    n = batch.num_nodes
    point_buckets = CapacityBuckets(
        max(bs * max(points), n),
        min_size=min(bs * min(points), n),
        ratio=BUCKET_RATIO,
        multiple=POINT_MULTIPLE,
        grow=True,
    )
    edge_buckets = None
    if edge_index is not None:
        e = edge_index.size(1)
        lo, hi = (bs * min(edges), bs * max(edges)) if edges and task.use_edges else (e, e)
        edge_buckets = CapacityBuckets(
            max(hi, e, 1),
            min_size=max(1, min(lo, e)),
            ratio=BUCKET_RATIO,
            multiple=EDGE_MULTIPLE,
            grow=True,
        )
    bare, _ = capture_model(run.model)
    step = CapturedTrainStep(
        bare,
        run.opt,
        point_buckets,
        max_clouds=bs,
        edge_buckets=edge_buckets,
        loss_fn=mse_per_point,
        max_grad_norm=args.clip or None,
    )
    if run.env.main:
        print(
            f"[{task.name}] --cuda-graphs: point buckets {list(point_buckets.capacities)}"
            + (f", edge buckets {list(edge_buckets.capacities)}" if edge_buckets else "")
            + ("" if step.cuda_graphs else " (not on CUDA: the padded step runs eagerly)"),
            flush=True,
        )
    return step


def captured_train_step(run: Run, batch) -> float:
    """:func:`train_step` with ``--cuda-graphs``: the same learning rate
    (:func:`lr_at`, written into the tensor ``lr``), loss
    (:attr:`Task.loss_targets`), clipping and AdamW, through the run's
    :class:`CapturedTrainStep` (made at the first batch by
    :func:`make_captured_step`).  The batch's trees are not read: the step
    builds those of the padded batch; edges built by the model (cosmology's
    ``--device-graphs``) are computed here, eagerly, with the model's own
    function."""
    args, task = run.args, run.task
    set_lr(run.opt, lr_at(run.step, args))
    _, graph = capture_model(run.model)
    edge_index = getattr(batch, "edge_index", None) if task.use_edges else None
    if edge_index is None and graph is not None:
        edge_index = graph(batch.pos, batch.batch)
    if run.captured is None:
        run.captured = make_captured_step(run, batch, edge_index)
    step = run.captured
    target, weight = (task.loss_targets or mse_targets)(batch)
    buckets = len(step.buckets)
    loss = step(
        batch.x,
        batch.pos,
        batch.batch,
        target,
        edge_index,
        num_graphs=batch.num_graphs,
        weight=weight,
    )
    if len(step.buckets) > buckets:
        run.new_bucket_steps.append(run.step + 1)
    run.real_points += batch.num_nodes
    run.padded_points += step.point_buckets(batch.num_nodes)
    return float(loss)


def capture_summary(run: Run, warmup: int = 5) -> Dict[str, Any]:
    """The ``cuda_graphs`` entry of ``timing.json``: graphs recorded, buckets
    ``[points, edges]`` and their batches, the steps that opened a bucket, the
    capacities, the padding's share of the points and the median step of
    the others (after ``warmup`` steps; this call's steps)."""
    step = run.captured
    first = run.step - len(run.step_times) + 1
    skip = warmup if len(run.step_times) > warmup else 0  # as timing_summary
    replays = [
        t
        for i, t in enumerate(run.step_times)
        if i >= skip and first + i not in run.new_bucket_steps
    ]
    return dict(
        recorded=step.cuda_graphs,
        num_graphs=step.num_graphs,
        buckets=[list(k) for k in step.buckets],
        batches_per_bucket=[step.calls[k] for k in step.buckets],
        new_bucket_steps=list(run.new_bucket_steps),
        point_capacities=list(step.point_buckets.capacities),
        edge_capacities=None if step.edge_buckets is None else list(step.edge_buckets.capacities),
        padding_fraction=1 - run.real_points / max(1, run.padded_points),
        step_s_median_same_bucket=float(np.median(replays)) if replays else None,
    )


def _due(step: int, every: int, last: int) -> bool:
    return bool(every) and (step % every == 0 or step == last)


def held_out_split(task: Task):
    """The split of the held-out curves: ``(name, dataset)``, the validation
    split when the example gives one (``task.extra["val_dataset"]``), else the
    test split.  Nothing is chosen from the curves (a fixed step budget, no
    early stopping), so drawing them on the test split tunes nothing."""
    val = task.extra.get("val_dataset")
    return ("val", val) if val is not None else ("test", task.test_dataset)


def _evenly_spaced(dataset, count: Optional[int]):
    if count is None or count >= len(dataset):
        return dataset
    return dataset.index_select(np.linspace(0, len(dataset) - 1, count).round().astype(int))


def evaluate_held_out(run: Run, name: str, dataset) -> Dict[str, Any]:
    """Evaluates the model on ``dataset``, the split ``name`` (what
    :func:`held_out_split` gives, ``--eval-samples`` of it), and returns the row
    for ``metrics.jsonl``: ``step``, ``eval_split``, ``eval_<metric>`` for
    every scalar metric of the task, ``eval_seconds``.

    The RNG states are restored afterwards (a loader draws its seed from the
    global RNG), so the training run is the same with or without evaluations.
    """
    args, env, task, model = run.args, run.env, run.task, run.model
    state = rng_state()
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()

    @torch.no_grad()
    def predict(batch):
        return forward(model, copy.copy(batch).to(env.device), use_edges=task.use_edges)

    try:
        result = task.evaluate(predict, test_loader(dataset, args))
    finally:
        set_rng_state(state)
        model.train(was_training)
    row: Dict[str, Any] = dict(step=run.step, eval_split=name)
    for k, v in result.items():
        if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
            row[f"eval_{k}"] = float(v)
    row["eval_seconds"] = time.perf_counter() - t0
    return row


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine() or "cpu"
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def _peak(run: Run) -> None:
    if run.env.device.type == "cuda":
        now = torch.cuda.max_memory_allocated(run.env.device)
        run.peak_bytes = max(run.peak_bytes or 0, now)


def timing_summary(run: Run, warmup: int = 5) -> Dict[str, Any]:
    """Median seconds per step of this process after ``warmup`` steps (all
    steps when there are no more), and the peak GPU memory in GiB
    (:obj:`None` on the CPU; training only, evaluations excluded)."""
    times = run.step_times[warmup:] if len(run.step_times) > warmup else run.step_times
    return dict(
        step_s_median=float(np.median(times)) if times else None,
        peak_gib=None if run.peak_bytes is None else run.peak_bytes / 2**30,
    )


def train(run: Run) -> float:
    """Trains until ``--steps`` (or ``--stop-after``); returns the seconds spent
    (the held-out evaluations excluded).

    Every ``--eval-every`` steps (and at the last step) it appends a
    :func:`evaluate_held_out` row to ``metrics.jsonl``; at the end it writes
    ``timing.json`` (rank 0): the seconds of every step of this call, their
    median after 5 warm-up steps, the peak GPU memory of training and the
    device's name.
    """
    args, env = run.args, run.env
    stop = min(args.steps, args.stop_after if args.stop_after is not None else args.steps)
    bar = None
    if env.main and tqdm is not None and not args.no_progress:
        bar = tqdm(
            total=args.steps,
            initial=run.step,
            desc=f"{run.task.name}/{args.model}",
            dynamic_ncols=True,
        )
    log = open(run.metrics_path, "a") if env.main else None
    cuda = env.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(env.device)
        run.peak_bytes = 0
    t_start = time.perf_counter()
    eval_seconds = 0.0
    train_set = run.task.train_dataset
    held_out = None
    if args.eval_every and env.main:
        split, held_out = held_out_split(run.task)
        held_out = (split, _evenly_spaced(held_out, args.eval_samples))
    if args.cache_samples:
        train_set = CachedSamples(train_set)
        if held_out is not None:
            held_out = (held_out[0], CachedSamples(held_out[1]))
    batches = iter(train_loader(train_set, args, env, run.step))
    graphs = getattr(args, "cuda_graphs", False)
    while run.step < stop:
        batch = next(batches).to(env.device)
        t0 = time.perf_counter()
        loss = (captured_train_step if graphs else train_step)(run, batch)
        if cuda:
            torch.cuda.synchronize(env.device)
        dt = time.perf_counter() - t0
        run.step_times.append(dt)
        run.step += 1
        points = batch.num_nodes * env.world
        if env.main:
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {run.step}")
            if _due(run.step, args.log_every, args.steps):
                row = dict(
                    step=run.step,
                    loss=loss,
                    lr=lr_at(run.step - 1, args),
                    points_per_s=points / dt,
                    step_s=dt,
                )
                log.write(json.dumps(row) + "\n")
                log.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", pts_s=f"{points / dt:,.0f}")
                bar.update(1)
        if _due(run.step, args.eval_every, args.steps):
            t_eval = time.perf_counter()
            if cuda:  # the peak of training, not of the evaluation's batches
                _peak(run)
            if env.main:
                log.write(json.dumps(evaluate_held_out(run, *held_out)) + "\n")
                log.flush()
            if cuda:
                torch.cuda.reset_peak_memory_stats(env.device)
            if env.distributed:
                dist.barrier()
            eval_seconds += time.perf_counter() - t_eval
        if _due(run.step, args.ckpt_every, args.steps):
            save_checkpoint(run.ckpt_path, run.model, run.opt, run.step, args, env)
    seconds = time.perf_counter() - t_start - eval_seconds
    if cuda:
        _peak(run)
    del batches  # stops the loader's workers
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    if env.main:
        timing = dict(
            timing_summary(run),
            warmup_steps=5,
            step_s=run.step_times,
            device=device_name(env.device),
            first_step=run.step - len(run.step_times) + 1,
        )
        if run.captured is not None:
            timing["cuda_graphs"] = capture_summary(run)
        with open(osp.join(run.out, "timing.json"), "w") as f:
            json.dump(timing, f)
    return seconds


def report(run: Run, train_seconds: float) -> Dict[str, Any]:
    """Evaluates on the test set, writes ``test_metrics.json`` and the
    figures, prints the summary (rank 0)."""
    args, env, task, model = run.args, run.env, run.task, run.model
    model.eval()

    @torch.no_grad()
    def predict(batch):
        # a shallow copy: ``Batch.to`` moves in place, and the task reads
        # its targets from ``batch`` on the CPU afterwards
        return forward(model, copy.copy(batch).to(env.device), use_edges=task.use_edges)

    t0 = time.perf_counter()
    result = task.evaluate(predict, test_loader(task.test_dataset, args))
    scalars = {
        k: float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
    }
    scalars.update(
        train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - t0,
        params=sum(p.numel() for p in model.parameters()),
        steps=run.step,
        model=args.model,
        processes=env.world,
    )
    scalars.update(timing_summary(run), device=device_name(env.device))
    rows = [r for r in read_jsonl(run.metrics_path) if "loss" in r]
    if rows:
        tail = rows[-max(1, len(rows) // 10) :]
        scalars["final_train_loss"] = float(np.mean([r["loss"] for r in tail]))
        scalars["points_per_s"] = float(np.median([r["points_per_s"] for r in rows]))
    with open(osp.join(run.out, "test_metrics.json"), "w") as f:
        json.dump(scalars, f, indent=1)
    result["scalars"] = scalars
    paths = []
    if not args.no_figures:
        p = plot_loss_curves(run.metrics_path, run.out, task.extra.get("metric"))
        paths += [p] if p else []
        if task.figures is not None:
            paths += [p for p in task.figures(result, run.out) if p]
    result["figures"] = paths
    if task.summary is not None:
        print(task.summary(result), flush=True)
    print(f"metrics: {run.metrics_path}\ntest metrics: {osp.join(run.out, 'test_metrics.json')}")
    if paths:
        print("figures written to: " + ", ".join(paths), flush=True)
    return result


def main(args, task: Task, build_model: Callable) -> Dict[str, Any]:
    """Trains ``build_model(args, in_channels, out_channels)`` on ``task``.

    Returns the test result dict (on rank 0; ``{}`` elsewhere, and after
    ``--stop-after``).
    """
    run = setup(args, task, build_model)
    if run.env.main:
        print(
            f"[{task.name}] model={args.model} "
            f"params={sum(p.numel() for p in run.model.parameters()):,} "
            f"train={len(task.train_dataset)} test={len(task.test_dataset)} "
            f"device={run.env.device} processes={run.env.world} workers={args.num_workers} "
            f"out={run.out}",
            flush=True,
        )
    seconds = train(run)
    result: Dict[str, Any] = {}
    if run.step == args.steps and run.env.main:
        result = report(run, seconds)
    if run.env.distributed:
        dist.barrier()
    return result


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

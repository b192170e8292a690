"""One training loop for every example (no dependency on torch_geometric_nsa).

An example describes its data and metrics with a :class:`Task`; :func:`main`
does the rest:

* argparse flags shared by all examples (:func:`add_common_args`);
* single process, or DistributedDataParallel under ``torchrun`` (gloo on CPU,
  nccl on CUDA) with a :class:`~torch.utils.data.DistributedSampler`, rank-0
  logging and checkpoints;
* tqdm progress with the loss and the throughput, a ``metrics.jsonl`` line per
  step;
* a checkpoint every ``--ckpt-every`` steps holding the model, the optimiser,
  every RNG state and the step; ``--resume`` continues the same loss curve (the
  sampler's order is a function of ``(seed, epoch)`` and the position within
  the epoch is ``step % steps_per_epoch``, so nothing else needs saving);
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
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch_geometric.data import Batch

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------
MODELS = ("erwin-nsa", "local-only", "point-transformer", "mlp")


def add_common_args(parser: argparse.ArgumentParser, **defaults) -> argparse.ArgumentParser:
    """Flags shared by the examples; ``defaults`` overrides the defaults."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="erwin-nsa")
    g.add_argument("--hidden", type=int, default=64, help="hidden channels")
    g.add_argument("--layers", type=int, default=4, help="number of blocks")
    g.add_argument("--heads", type=int, default=4)
    g.add_argument(
        "--branches",
        default="compressed,selected,local",
        help="comma-separated NSA branches (erwin-nsa only)",
    )
    g.add_argument("--ball-size", type=int, default=128)
    g.add_argument("--compress-size", type=int, default=32)
    g.add_argument("--select-size", type=int, default=None)
    g.add_argument("--topk", type=int, default=4)
    g.add_argument("--rotate", type=float, default=45.0)
    g.add_argument("--knn", type=int, default=16, help="neighbours (point-transformer)")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=1, help="clouds per step and process")
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument(
        "--warmup", type=int, default=None, help="linear warm-up steps (default: 5%% of --steps)"
    )
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, help="run folder (metrics, checkpoints, figures)")
    g.add_argument("--ckpt-every", type=int, default=100)
    g.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    g.add_argument("--log-every", type=int, default=1)
    g.add_argument("--no-figures", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(**defaults)
    return parser


# ---------------------------------------------------------------------------
# the task an example describes
# ---------------------------------------------------------------------------
@dataclass
class Task:
    """What an example gives the loop.

    Attributes:
        name: short name (the default run folder is ``runs/<name>-<model>``).
        train_dataset, test_dataset: PyG datasets of :class:`Data` with ``x``,
            ``pos``, ``y`` (and optionally ``edge_index``).
        in_channels, out_channels: the model's sizes.
        evaluate: ``evaluate(predict, dataset, device, batch_size) -> dict``;
            ``predict(batch) -> Tensor`` runs the model.  Scalars in the dict
            are test metrics; the rest is handed to :obj:`figures`.
        figures: ``figures(result, out_dir) -> [paths]``.
        summary: ``summary(result) -> str`` printed at the end.
        loss: ``loss(pred, batch) -> Tensor`` (default: MSE against ``batch.y``).
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
    extra: Dict[str, Any] = field(default_factory=dict)


def mse_loss(pred: Tensor, batch) -> Tensor:
    return torch.nn.functional.mse_loss(pred, batch.y)


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
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------
def collate(dataset, indices: List[int]) -> Batch:
    return Batch.from_data_list([dataset[int(i)] for i in indices])


def iterate_batches(dataset, batch_size: int):
    """Plain in-order batches (evaluation)."""
    for s in range(0, len(dataset), batch_size):
        yield collate(dataset, range(s, min(s + batch_size, len(dataset))))


def forward(model, batch, use_edges: bool = True) -> Tensor:
    edge_index = getattr(batch, "edge_index", None) if use_edges else None
    return model(batch.x, batch.pos, batch.batch, edge_index)


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
    if not osp.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_jsonl(path: str, step: int) -> None:
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def plot_loss_curves(metrics_path: str, out_dir: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    rows = read_jsonl(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["test_loss"]) for r in rows if "test_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    s, l = zip(*train)
    ax.plot(s, l, lw=0.8, alpha=0.5, label="train (per step)")
    if len(l) >= 20:
        w = max(5, len(l) // 50)
        sm = np.convolve(l, np.ones(w) / w, mode="valid")
        ax.plot(s[w - 1 :], sm, lw=1.5, label=f"train ({w}-step mean)")
    if val:
        s, l = zip(*val)
        ax.plot(s, l, "o-", label="test")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (normalised MSE)")
    ax.legend()
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
# the loop
# ---------------------------------------------------------------------------
def main(args, task: Task, build_model: Callable) -> Dict[str, Any]:
    """Trains ``build_model(args, in_channels, out_channels)`` on ``task``.

    Returns the test result dict (on rank 0; ``{}`` elsewhere).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    env = setup_env(args.device)
    out = args.out or osp.join("runs", f"{task.name}-{args.model}")
    args.out = out
    metrics_path = osp.join(out, "metrics.jsonl")
    ckpt_path = osp.join(out, "ckpt.pt")
    if env.main:
        os.makedirs(out, exist_ok=True)

    seed_everything(args.seed)
    model = build_model(args, task.in_channels, task.out_channels).to(env.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step = 0
    if args.resume:
        if not osp.isfile(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint '{ckpt_path}'")
        ckpt = torch.load(ckpt_path, map_location=env.device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"][env.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        if env.main:
            _truncate_jsonl(metrics_path, step)
    elif env.main and osp.isfile(metrics_path):
        os.remove(metrics_path)
    if env.main:
        with open(osp.join(out, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=1)

    net = model
    if env.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    if args.compile:
        net = torch.compile(net, dynamic=True)
    loss_fn = task.loss or mse_loss

    ds = task.train_dataset
    sampler = torch.utils.data.DistributedSampler(
        ds, num_replicas=env.world, rank=env.rank, shuffle=True, seed=args.seed, drop_last=True
    )
    per_epoch = len(sampler) // args.batch_size
    if per_epoch < 1:
        raise ValueError(
            f"{len(ds)} training samples are too few for "
            f"{env.world} process(es) x batch size {args.batch_size}"
        )
    n_params = sum(p.numel() for p in model.parameters())
    if env.main:
        print(
            f"[{task.name}] model={args.model} params={n_params:,} "
            f"train={len(ds)} test={len(task.test_dataset)} device={env.device} "
            f"processes={env.world} out={out}",
            flush=True,
        )

    bar = None
    if env.main and tqdm is not None and not args.no_progress:
        bar = tqdm(
            total=args.steps, initial=step, desc=f"{task.name}/{args.model}", dynamic_ncols=True
        )
    log = open(metrics_path, "a") if env.main else None
    t_start = time.perf_counter()
    stop = args.stop_after if args.stop_after is not None else args.steps
    while step < min(args.steps, stop):
        epoch, pos = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        for b in range(pos, per_epoch):
            if step >= min(args.steps, stop):
                break
            batch = collate(ds, order[b * args.batch_size : (b + 1) * args.batch_size])
            batch = batch.to(env.device)
            lr = lr_at(step, args)
            for group in opt.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            net.train()
            opt.zero_grad(set_to_none=True)
            pred = forward(net, batch, task.use_edges)
            loss = loss_fn(pred, batch)
            loss.backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            loss_val = loss.detach()
            if env.distributed:
                dist.all_reduce(loss_val)
                loss_val /= env.world
            loss_val = float(loss_val)
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)
            dt = time.perf_counter() - t0
            step += 1
            points = batch.num_nodes * env.world
            if env.main:
                if not math.isfinite(loss_val):
                    raise FloatingPointError(f"loss is {loss_val} at step {step}")
                if step % args.log_every == 0 or step == args.steps:
                    log.write(
                        json.dumps(
                            dict(
                                step=step, loss=loss_val, lr=lr, points_per_s=points / dt, step_s=dt
                            )
                        )
                        + "\n"
                    )
                    log.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_val:.4f}", pts_s=f"{points / dt:,.0f}")
                    bar.update(1)
            if step % args.ckpt_every == 0 or step == args.steps:
                rngs = rng_state()
                if env.distributed:
                    gathered = [None] * env.world
                    dist.all_gather_object(gathered, rngs)
                    rngs = gathered
                if env.main:
                    tmp = ckpt_path + ".tmp"
                    torch.save(
                        dict(
                            model=model.state_dict(),
                            optimizer=opt.state_dict(),
                            step=step,
                            rng=rngs,
                            args=vars(args),
                        ),
                        tmp,
                    )
                    os.replace(tmp, ckpt_path)
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t_start
    if log is not None:
        log.close()
    if step < args.steps:  # interrupted on purpose (--stop-after)
        if env.distributed:
            dist.barrier()
        return {}

    result: Dict[str, Any] = {}
    if env.main:
        model.eval()

        @torch.no_grad()
        def predict(batch):
            # a shallow copy: ``Batch.to`` moves in place, and the task reads
            # its targets from ``batch`` on the CPU afterwards
            return forward(model, copy.copy(batch).to(env.device), task.use_edges)

        t0 = time.perf_counter()
        result = task.evaluate(
            predict, task.test_dataset, env.device, args.eval_batch_size or args.batch_size
        )
        scalars = {
            k: float(v)
            for k, v in result.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
        }
        scalars.update(
            train_seconds=train_s,
            eval_seconds=time.perf_counter() - t0,
            params=n_params,
            steps=step,
            model=args.model,
            processes=env.world,
        )
        rows = read_jsonl(metrics_path)
        if rows:
            tail = rows[-max(1, len(rows) // 10) :]
            scalars["final_train_loss"] = float(np.mean([r["loss"] for r in tail]))
            scalars["points_per_s"] = float(np.median([r["points_per_s"] for r in rows]))
        with open(osp.join(out, "test_metrics.json"), "w") as f:
            json.dump(scalars, f, indent=1)
        result["scalars"] = scalars
        paths = []
        if not args.no_figures:
            p = plot_loss_curves(metrics_path, out)
            paths += [p] if p else []
            if task.figures is not None:
                paths += [p for p in task.figures(result, out) if p]
        result["figures"] = paths
        if task.summary is not None:
            print(task.summary(result), flush=True)
        print(f"metrics: {metrics_path}\ntest metrics: {osp.join(out, 'test_metrics.json')}")
        if paths:
            print("figures written to: " + ", ".join(paths), flush=True)
    if env.distributed:
        dist.barrier()
    return result


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

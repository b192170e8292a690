"""Time one training step of ErwinNSA at the sizes of the published benchmarks.

    python benchmarks/train_step.py                  # eager, all configs
    python benchmarks/train_step.py --all            # every fixed-size mode
    python benchmarks/train_step.py --modes eager compile-dynamic reduce-overhead cuda-graph
    python benchmarks/train_step.py --varying        # + batches of varying size: eager vs buckets
    python benchmarks/train_step.py --json out/train_step.json   # results for plots.py
    python benchmarks/train_step.py --device cpu --sizes small --dtypes float32 --varying \
        --steps 2 --warmup 1 --varying-steps 2 --varying-warmup 1   # CPU smoke run

Fixed-size modes (rows of the first table):

- ``eager``: plain PyTorch; the step is also run once under
  ``torch.cuda.set_sync_debug_mode('warn')`` and the host synchronisations it
  makes are counted (column ``syncs``; CUDA only).
- ``compile`` / ``reduce-overhead`` (``--compile``, ``--compile-mode``):
  ``torch.compile(model, fullgraph=True, dynamic=False, mode=...)``; a graph
  break raises, and in ``reduce-overhead`` a skipped CUDA graph (Inductor's
  ``cudagraph_skips`` counter) raises instead of timing an eager fallback.
- ``compile-dynamic``: ``torch.compile(model, fullgraph=True, dynamic=True)``
  (default mode, dynamic shapes: what serves batches of varying size without
  recompiling).  Its rows share the compiled graphs (no ``torch._dynamo.reset()``
  between configs), so ``first step (s)`` and ``graphs compiled`` show what a new
  size costs once the model is compiled.
- ``cuda-graph`` (``--cuda-graph``, CUDA only): the whole step (forward,
  backward, ``AdamW(capturable=True).step()``) captured once with
  ``torch.cuda.graph`` on static inputs and replayed.

``--inductor KEY=VALUE ...`` sets ``torch._inductor.config`` for the compiled modes and
``--compile-optimizer`` compiles ``opt.step`` there too; both are recorded in the rows'
``inductor`` column.  ``--isolate`` runs every fixed-size row in its own Python process, so
that no row's timing depends on what ran before it in the process (other rows, their profiler
traces); the JSON rows keep every timed step (``steps (ms)``).

Every mode also reports the CUDA kernels one step runs (``kernels/step``: device
kernels in a ``torch.profiler`` trace of one step) and the host calls that launch
work (``launches/step``: kernel launches, graph launches, memcpy/memset calls); a
CUDA graph runs many kernels from one launch.

Varying sizes (``--varying``, second table): batches whose clouds are drawn from the
real datasets' ranges, log-uniformly per cloud (cosmology sub-boxes 1,150-17,368 points
x 16; MD 900 x 32 and ShapeNet-Car 3,586 x 1 are fixed by their data), the same
sequence for every mode; the trees are built inside the step, the edges before it
(as a loader would).  Modes: ``eager``; ``buckets``
(:class:`torch_geometric_nsa.capture.CapturedTrainStep`: each batch padded to one of
a few capacity buckets, one CUDA graph of the whole step per bucket, replayed for
every later batch of it); ``compile-dynamic``.  Reported: points per second over the
timed steps (for ``buckets`` over the replays; the steps that recorded a new graph are
counted apart), next to the fixed-size ``reduce-overhead`` figure of the same run.

Configs (points x batch): ShapeNet-Car 3,586 x 1, cosmology 5,000 x 16, MD 900 x 32;
a model of ~2.3 M parameters (width 128, 6 blocks, 4 heads, m=128, c=32, s=32,
g=32, topk=4) and ``AdamW`` (``fused=True`` on CUDA).  In the fixed-size modes trees and
radius graphs are precomputed once (as the BallTree transform does in the data loader), so the
step is model + optimizer only.
Timed: median of --steps steps after --warmup, with CUDA synchronisation;
peak memory from torch.cuda.max_memory_allocated over the whole run of a mode
(first step, compilation, CUDA-graph capture and pools included).  The Erwin columns are
the Erwin reference model (fp32, tree built per step, eager and torch.compile) measured on
one H200 for issue 14, not by this script.  A mode that fails prints its traceback and gets
an error row; nothing falls back silently (the ops backend is 'triton' on CUDA, never the
reference).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import torch
from _results import count_kernels, exit_now, metadata, write_json

from torch_geometric_nsa import ops
from torch_geometric_nsa.capture import CapacityBuckets, CapturedTrainStep
from torch_geometric_nsa.nn import radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA

CONFIGS = {  # points per cloud, clouds per batch
    "shapenet-car": (3586, 1),
    "cosmology": (5000, 16),
    "md": (900, 32),
}
#: the Erwin reference model's training step (ms), fp32, tree built per step; issue 14,
#: one H200, median of 10 steps after 3 (not measured by this script)
ERWIN = {
    "shapenet-car": {"eager": 57.3, "compiled": 29.1},
    "cosmology": {"eager": 129.0, "compiled": 78.5},
    "md": {"eager": 100.8, "compiled": 52.5},
}
ERWIN_SOURCE = "Erwin reference model, fp32, tree per step (issue 14, one H200)"
#: points per cloud (smallest, largest) and clouds per batch of the real datasets
VARYING = {
    "shapenet-car": (3586, 3586, 1),
    "cosmology": (1150, 17368, 16),
    "md": (900, 900, 32),
}
MODES = ("eager", "compile", "compile-dynamic", "reduce-overhead", "cuda-graph")
VARYING_MODES = ("eager", "buckets", "compile-dynamic")
RADIUS, NEIGHBOURS = 0.05, 16


def sizes_of(name, args):
    n, bs = CONFIGS[name]
    if args.sizes == "small":  # CPU smoke test of the modes
        n, bs = min(n, 300), min(bs, 2)
    return n, bs


def make_model(args, device):
    torch.manual_seed(0)
    return ErwinNSA(
        in_channels=8,
        hidden_channels=args.width,
        out_channels=3,
        num_layers=args.layers,
        heads=args.heads,
        ball_size=128,
        compress_size=32,
        topk=4,
        rotate=45.0,
    ).to(device)


def make_optimizer(model, device, capturable=False):
    """AdamW, fused into one kernel per step on CUDA (the foreach default launches ~20 kernels
    and costs ~5 ms of host time per step at 2.3 M parameters; issue 14)."""
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, capturable=capturable, fused=device == "cuda"
    )


def make_inputs(n, batch_size, device, gen):
    pos = torch.rand(n * batch_size, 3, generator=gen).to(device)
    x = torch.randn(n * batch_size, 8, generator=gen).to(device)
    y = torch.randn(n * batch_size, 3, generator=gen).to(device)
    batch = torch.arange(batch_size, device=device).repeat_interleave(n)
    return x, pos, batch, y


def autocast(device, dtype, cache=True):
    return torch.autocast(
        device_type=device,
        dtype=dtype,
        enabled=dtype != torch.float32,
        cache_enabled=cache,
    )


def inductor_settings(pairs):
    """Sets ``torch._inductor.config`` entries from ``KEY=VALUE`` strings (``--inductor``;
    values are Python literals, e.g. ``cpp_wrapper=True combo_kernels=True``) and returns them
    as a dict for the results."""
    import ast

    import torch._inductor.config as cfg

    settings = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(cfg, key):
            raise SystemExit(
                f"--inductor: expected KEY=VALUE with a torch._inductor.config key, got {pair!r}"
            )
        settings[key] = ast.literal_eval(value)
        setattr(cfg, key, settings[key])
    return settings


#: the modes that go through torch.compile (and so take --inductor's settings)
COMPILED_MODES = ("compile", "compile-dynamic", "reduce-overhead")


def inductor_label(settings, compile_optimizer=False):
    """``cpp_wrapper, combo_kernels``: the settings of a row, for tables and plot legends
    (``KEY=VALUE`` unless the value is True; ``optimizer compiled`` last when it was)."""
    labels = [k if v is True else f"{k}={v}" for k, v in settings.items()]
    return ", ".join(labels + (["optimizer compiled"] if compile_optimizer else []))


def compiled(model, mode):
    if mode == "compile-dynamic":
        return torch.compile(model, fullgraph=True, dynamic=True)
    return torch.compile(
        model, fullgraph=True, dynamic=False, mode="default" if mode == "compile" else mode
    )


def make_step(mode, model, opt, inputs, dtype, device, compile_optimizer=False):
    """A function running one training step in :obj:`mode` (warm-ups and
    capture not included).  :obj:`compile_optimizer` also compiles ``opt.step`` in the
    compiled modes (the fused AdamW kernel stays; its Python bookkeeping goes)."""
    x, pos, batch, edges, tree, tree_rot, y = inputs
    cache = True
    opt_step = opt.step
    if compile_optimizer and mode in COMPILED_MODES:
        opt_step = torch.compile(opt.step)
    if mode == "eager":
        fwd = model
    elif mode in COMPILED_MODES:
        fwd = compiled(model, mode)
    elif mode == "cuda-graph":
        if device != "cuda":
            raise RuntimeError("cuda-graph needs a CUDA device")
        cache = False  # casts are part of the graph
        fwd = model
    else:
        raise ValueError(f"unknown mode {mode!r}")

    def body():
        with autocast(device, dtype, cache):
            out = fwd(x, pos, batch, edges, tree, tree_rot)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt_step()
        return loss

    def step():
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        return body()

    if mode != "cuda-graph":
        return step
    # warm up on a side stream (Triton compiles its kernels, AdamW allocates
    # its state), then capture forward + backward + optimizer step once
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # grads are allocated inside the graph
    with torch.cuda.graph(graph):
        static_loss = body()

    def replay():
        graph.replay()
        return static_loss

    return replay


def count_syncs(step):
    """Runs :obj:`step` under ``set_sync_debug_mode('warn')``; returns the
    number of host synchronisations it reported."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    # the message of a synchronising call (not the one-time notice that the
    # debug mode is a prototype)
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    for w in syncs[:3]:
        print(f"  sync: {w.filename}:{w.lineno}: {w.message}", file=sys.stderr)
    return len(syncs)


def kernel_columns(step, args, device):
    if device != "cuda" or args.no_kernel_count:
        return {"kernels/step": "-", "launches/step": "-"}
    try:
        kernels, launches = count_kernels(step)
    except Exception as e:  # the profiler must not cost the row
        print(f"  kernel count failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"kernels/step": "error", "launches/step": "error"}
    return {"kernels/step": kernels, "launches/step": "-" if launches is None else launches}


def erwin_columns(name, ms):
    ref = ERWIN[name]
    return {
        "Erwin eager (ms)": ref["eager"],
        "Erwin compiled (ms)": ref["compiled"],
        "vs Erwin compiled": ref["compiled"] / ms,
    }


_last_mode = None


def bench(name, backend, dtype, mode, args, device):
    global _last_mode
    n, bs = sizes_of(name, args)
    gen = torch.Generator().manual_seed(0)
    # compile-dynamic keeps its compiled graphs from one config to the next: dynamic
    # shapes are meant to serve new sizes without compiling again
    if mode != "compile-dynamic" or _last_mode != mode:
        torch._dynamo.reset()
    _last_mode = mode
    model = make_model(args, device)
    params = sum(p.numel() for p in model.parameters())
    # capturable keeps AdamW's step counters on the device (no host read)
    opt = make_optimizer(model, device, capturable=mode == "cuda-graph")
    x, pos, batch, y = make_inputs(n, bs, device, gen)
    tree, tree_rot = model.build_trees(pos, batch, batch_size=bs)
    edges = radius_graph(pos, RADIUS, batch, max_num_neighbors=NEIGHBOURS)
    inputs = (x, pos, batch, edges, tree, tree_rot, y)
    syncs = "-"
    with ops.use_backend(backend):
        from torch._dynamo.utils import counters

        counters.clear()
        if device == "cuda":  # the peak covers warm-up, capture and pools
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step = make_step(mode, model, opt, inputs, dtype, device, args.compile_optimizer)
        t0 = time.perf_counter()
        step()
        first_s = time.perf_counter() - t0  # compile / first-call time
        for _ in range(args.warmup - 1):
            step()
        skips = counters["inductor"].get("cudagraph_skips", 0)
        if mode == "reduce-overhead" and (device != "cuda" or skips):
            raise RuntimeError(
                f"reduce-overhead ran without CUDA graphs ({skips} cudagraph skips; see the log)"
            )
        if mode == "eager" and device == "cuda":
            syncs = count_syncs(step)
        if device == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            loss = step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e3)
        if not torch.isfinite(loss).item():
            raise RuntimeError(f"non-finite loss {loss.item()}")
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
        kernels = kernel_columns(step, args, device)
    ms = statistics.median(times)
    return {
        "config": f"{name} ({n} x {bs})",
        "name": name,
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": mode,
        "params (M)": params / 1e6,
        "first step (s)": first_s,
        "step (ms)": ms,
        "points/s": n * bs / ms * 1e3,
        "peak (MiB)": peak,
        "syncs": syncs,
        **kernels,
        "steps (ms)": [round(t, 3) for t in times],
        **erwin_columns(name, ms),
        **(
            {"graphs compiled": counters["stats"].get("unique_graphs", 0)}
            if "compile" in mode or mode == "reduce-overhead"
            else {}
        ),
    }


# --------------------------------------------------------------------------- varying sizes
def varying_batches(name, count, args, device):
    """:obj:`count` batches with cloud sizes drawn log-uniformly from the
    config's range (seeded: the same sequence for every mode), edges included."""
    lo, hi, clouds = VARYING[name]
    if args.sizes == "small":  # a fixed size stays fixed
        (lo, hi), clouds = ((min(lo, 300),) * 2 if lo == hi else (150, 400)), min(clouds, 2)
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        u = torch.rand(clouds, generator=gen, dtype=torch.float64)
        sizes = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).round().long()
        sizes = sizes.clamp(lo, hi)
        num = int(sizes.sum())
        pos = torch.rand(num, 3, generator=gen).to(device)
        x = torch.randn(num, 8, generator=gen).to(device)
        y = torch.randn(num, 3, generator=gen).to(device)
        batch = torch.repeat_interleave(torch.arange(clouds), sizes).to(device)
        edges = radius_graph(pos, RADIUS, batch, max_num_neighbors=NEIGHBOURS)
        batches.append((x, pos, batch, y, edges, clouds))
    return (lo, hi, clouds), batches


def make_varying_step(mode, model, dtype, device, spec, args):
    """``(step(batch) -> loss, captured)``: one training step on a batch of
    any size, and the CapturedTrainStep (or None)."""
    lo, hi, clouds = spec
    capture = mode == "buckets"
    opt = make_optimizer(model, device, capturable=capture and device == "cuda")
    if capture:
        captured = CapturedTrainStep(
            model,
            opt,
            CapacityBuckets(
                clouds * hi, min_size=clouds * lo, ratio=args.bucket_ratio, multiple=128
            ),
            max_clouds=clouds,
            edge_buckets=CapacityBuckets(
                clouds * hi * NEIGHBOURS, ratio=args.bucket_ratio, multiple=1024
            ),
            autocast_dtype=None if dtype == torch.float32 else dtype,
        )

        def step(b):
            x, pos, batch, y, edges, num_graphs = b
            return captured(x, pos, batch, y, edges, num_graphs=num_graphs)

        return step, captured
    if mode not in ("eager", "compile-dynamic"):
        raise ValueError(f"unknown varying mode {mode!r}")
    fwd = model if mode == "eager" else compiled(model, mode)

    def step(b):
        x, pos, batch, y, edges, num_graphs = b
        opt.zero_grad(set_to_none=True)
        tree, tree_rot = model.build_trees(pos, batch, batch_size=num_graphs)
        with autocast(device, dtype):
            out = fwd(x, pos, batch, edges, tree, tree_rot)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    return step, None


def bench_varying(name, backend, dtype, mode, args, device, data):
    spec, batches = data
    lo, hi, clouds = spec
    torch._dynamo.reset()
    model = make_model(args, device)
    with ops.use_backend(backend):
        from torch._dynamo.utils import counters

        counters.clear()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step, captured = make_varying_step(mode, model, dtype, device, spec, args)
        t0 = time.perf_counter()
        for b in batches[: args.varying_warmup]:
            loss = step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - t0
        times, points, capture_s, captures = [], 0, 0.0, 0
        padding = []
        for b in batches[args.varying_warmup :]:
            graphs = captured.num_graphs if captured else 0
            t = time.perf_counter()
            loss = step(b)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            if captured is not None:
                cap = captured.point_buckets(b[0].size(0))
                padding.append(1 - b[0].size(0) / cap)
            if captured is not None and captured.num_graphs > graphs:
                captures += 1
                capture_s += dt
                continue
            times.append(dt * 1e3)
            points += b[0].size(0)
        if not torch.isfinite(loss).item():
            raise RuntimeError(f"non-finite loss {loss.item()}")
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
        kernels = kernel_columns(lambda: step(batches[-1]), args, device)
    if not times:
        raise RuntimeError("every timed step recorded a new graph: raise --varying-steps")
    row = {
        "config": f"{name} ({lo}-{hi} x {clouds})" if lo != hi else f"{name} ({lo} x {clouds})",
        "name": name,
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": mode,
        "steps": len(times),
        "points/step": points / len(times),
        "step (ms)": statistics.median(times),
        "points/s": points / sum(times) * 1e3,
        "warm-up (s)": warm_s,
        "peak (MiB)": peak,
        **kernels,
    }
    if captured is not None:
        row.update(
            {
                "graphs": captured.num_graphs,
                "timed captures": captures,
                "capture (s)": capture_s,
                "padding (%)": 100 * statistics.mean(padding),
            }
        )
    if mode == "compile-dynamic":
        row["graphs compiled"] = counters["stats"].get("unique_graphs", "-")
    return row


# --------------------------------------------------------------------------- output
def print_table(rows, skip=("name", "steps (ms)")):
    """Markdown table over the union of the rows' keys."""
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in skip]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.2f}"
        return str(v).replace("|", "/")

    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")


def add_fixed_reference(varying, fixed):
    """Puts the fixed-size reduce-overhead points/s of the same config next to
    every varying row."""
    ro = {
        (r["name"], r["backend"], r["dtype"]): r["points/s"]
        for r in fixed
        if r.get("mode") == "reduce-overhead" and "points/s" in r
    }
    for r in varying:
        ref = ro.get((r.get("name"), r.get("backend"), r.get("dtype")))
        if ref is not None and "points/s" in r:
            r["fixed reduce-overhead points/s"] = ref
            r["fixed RO / this"] = ref / r["points/s"]


def child_argv(argv):
    """This run's arguments for a child process that runs one fixed-size row: without
    ``--isolate``, ``--varying`` and ``--json PATH`` (the caller appends its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif a not in ("--isolate", "--varying") and not a.startswith("--json="):
            out.append(a)
    return out


def bench_isolated(name, backend, dtype, mode, argv):
    """One fixed-size row in a fresh Python process: nothing that ran before it (other rows,
    their profiler traces, compiled graphs, the allocator's cache) shares its process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), *child_argv(argv)]
        cmd += ["--one-row", mode, "--configs", name, "--backends", backend]
        cmd += ["--dtypes", dtype, "--json", path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sys.stderr.write(proc.stderr)
        if not os.path.exists(path):
            raise RuntimeError(f"the row's process exited with {proc.returncode}")
        with open(path) as f:
            rows = json.load(f)["rows"]
    if len(rows) != 1:
        raise RuntimeError(f"the row's process returned {len(rows)} rows")
    return rows[0]


def selected_modes(args):
    if args.one_row:
        return [args.one_row]
    if args.no_fixed:
        return []
    if args.all:
        return list(MODES)
    modes = [] if args.only_compiled else ["eager"]
    if args.compile:
        modes += ["compile" if m == "default" else m for m in args.compile_mode]
    if args.cuda_graph:
        modes.append("cuda-graph")
    modes += [m for m in args.modes if m not in modes]
    return modes  # run in this order


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="ops backends (default: 'triton' on CUDA, 'reference' on CPU)",
    )
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile of the model"
    )
    parser.add_argument(
        "--compile-mode",
        nargs="+",
        default=["default"],
        choices=["default", "reduce-overhead"],
        help="torch.compile modes; 'reduce-overhead' uses CUDA graphs",
    )
    parser.add_argument("--only-compiled", action="store_true", help="skip the eager runs")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="also time a manual CUDA graph of the whole step"
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=[],
        choices=MODES,
        help="fixed-size modes to run (added to the flags above)",
    )
    parser.add_argument("--all", action="store_true", help="run every fixed-size mode")
    parser.add_argument("--no-fixed", action="store_true", help="no fixed-size rows")
    parser.add_argument("--varying", action="store_true", help="also time batches of varying size")
    parser.add_argument(
        "--varying-modes",
        nargs="+",
        default=["eager", "buckets"],
        choices=VARYING_MODES,
        help="modes of the varying-size rows",
    )
    parser.add_argument(
        "--bucket-ratio", type=float, default=1.25, help="growth between capacity buckets"
    )
    parser.add_argument(
        "--varying-steps", type=int, default=30, help="timed batches of a varying-size row"
    )
    parser.add_argument("--varying-warmup", type=int, default=5, help="untimed batches before them")
    parser.add_argument("--width", type=int, default=None, help="(default: 128; small: 32)")
    parser.add_argument("--layers", type=int, default=None, help="(default: 6; small: 2)")
    parser.add_argument("--heads", type=int, default=None, help="(default: 4; small: 2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--sizes",
        choices=["full", "small"],
        default="full",
        help="'small': at most 300 points x 2 clouds and a small model (CPU smoke test)",
    )
    parser.add_argument("--tiny", action="store_true", help="same as --sizes small")
    parser.add_argument(
        "--no-kernel-count", action="store_true", help="skip the profiler's kernel count"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds; later rows are skipped (and say so) once exceeded (0: no limit)",
    )
    parser.add_argument(
        "--inductor",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="torch._inductor.config settings for the compiled modes (cpp_wrapper=True ...)",
    )
    parser.add_argument(
        "--compile-optimizer",
        action="store_true",
        help="compiled modes also torch.compile the optimizer step",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run every fixed-size row in its own Python process (timings independent of the "
        "rows before them; compile-dynamic rows then compile afresh)",
    )
    parser.add_argument("--one-row", default=None, choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    if args.tiny:
        args.sizes = "small"
    small = args.sizes == "small"  # a small model too: the CPU smoke test runs in seconds
    for key, full, tiny in (("width", 128, 32), ("layers", 6, 2), ("heads", 4, 2)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if small else full)
    args.warmup = max(1, args.warmup)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backends or (["triton"] if device == "cuda" else ["reference"])
    modes = selected_modes(args)
    meta = metadata(device)
    meta["inductor"] = inductor_settings(args.inductor)
    meta["compile_optimizer"] = args.compile_optimizer
    print(f"card: {meta['card']} | torch {meta['torch']} | commit {meta['commit']}", flush=True)
    if meta["inductor"]:
        print(f"torch._inductor.config: {meta['inductor']}", flush=True)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1", flush=True)
    start = time.perf_counter()

    def run(fn, row, *a):
        if args.time_budget and time.perf_counter() - start > args.time_budget:
            row["error"] = "skipped (time budget)"
            return row
        try:
            return fn(*a)
        except Exception as e:  # loud: traceback + error row
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"[:200]
            return row

    rows, varying = [], []

    def save(final=False):
        """The results so far (after every row: a run cut by a timeout keeps its rows)."""
        if args.json:
            write_json(
                args.json,
                "train_step",
                meta,
                rows,
                quiet=not final,
                varying=varying,
                erwin=ERWIN,
                erwin_source=ERWIN_SOURCE,
                settings={
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "varying_steps": args.varying_steps,
                    "varying_warmup": args.varying_warmup,
                    "bucket_ratio": args.bucket_ratio,
                    "width": args.width,
                    "layers": args.layers,
                    "heads": args.heads,
                },
            )

    for mode in modes:  # mode by mode: a time budget cuts the slow ones
        for name in args.configs:
            for backend in backends:
                for dt in args.dtypes:
                    row = {"config": name, "name": name, "backend": backend, "dtype": dt}
                    row["mode"] = mode
                    if args.isolate:  # the child labels its row itself
                        rows.append(run(bench_isolated, row, name, backend, dt, mode, sys.argv[1:]))
                    else:
                        rows.append(
                            run(bench, row, name, backend, getattr(torch, dt), mode, args, device)
                        )
                        if mode in COMPILED_MODES and (meta["inductor"] or args.compile_optimizer):
                            rows[-1]["inductor"] = inductor_label(
                                meta["inductor"], args.compile_optimizer
                            )
                    print(rows[-1], flush=True)
                    save()
    if args.varying:
        for name in args.configs:
            data = varying_batches(name, args.varying_warmup + args.varying_steps, args, device)
            for mode in args.varying_modes:
                for backend in backends:
                    for dt in args.dtypes:
                        row = {"config": name, "name": name, "backend": backend, "dtype": dt}
                        row["mode"] = mode
                        varying.append(
                            run(
                                bench_varying,
                                row,
                                name,
                                backend,
                                getattr(torch, dt),
                                mode,
                                args,
                                device,
                                data,
                            )
                        )
                        print(varying[-1], flush=True)
                        save()
            del data
        add_fixed_reference(varying, rows)
    if rows:
        print("\nTraining step of ErwinNSA, fixed sizes (median ms)")
        print(f"Erwin columns: {ERWIN_SOURCE}")
        print_table(rows)
    if varying:
        print(
            "\nTraining step of ErwinNSA, batches of varying size (points/s over the timed steps)"
        )
        print_table(varying)
    save(final=True)
    rc = 1 if any("error" in r for r in rows + varying) else 0
    if args.one_row:  # a row's child process: its results are written
        exit_now(rc)
    sys.exit(rc)


if __name__ == "__main__":
    main()

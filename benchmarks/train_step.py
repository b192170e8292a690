"""Time one training step of ErwinNSA at the sizes of the published benchmarks.

    python benchmarks/train_step.py                  # eager, all configs
    python benchmarks/train_step.py --all            # eager, compile, reduce-overhead, cuda-graph
    python benchmarks/train_step.py --compile --compile-mode default reduce-overhead
    python benchmarks/train_step.py --cuda-graph     # eager + manual CUDA graph of the step

Modes (rows of the final table):

- ``eager``: plain PyTorch; the step is also run once under
  ``torch.cuda.set_sync_debug_mode('warn')`` and the host synchronisations it
  makes are counted (column ``syncs``; CUDA only).
- ``compile`` / ``reduce-overhead`` (``--compile``, ``--compile-mode``):
  ``torch.compile(model, fullgraph=True, dynamic=False, mode=...)``; a graph
  break raises, and in ``reduce-overhead`` a skipped CUDA graph (Inductor's
  ``cudagraph_skips`` counter) raises instead of timing an eager fallback.
- ``cuda-graph`` (``--cuda-graph``, CUDA only): the whole step (forward,
  backward, ``AdamW(capturable=True).step()``) captured once with
  ``torch.cuda.graph`` on static inputs and replayed.

Configs (points x batch): ShapeNet-Car 3,586 x 1, cosmology 5,000 x 16, MD 900 x 32;
a model of ~2.3 M parameters (width 128, 6 blocks, 4 heads, m=128, c=32, s=32,
g=32, topk=4).  Trees and radius graphs are precomputed once (as the BallTree
transform does in the data loader), so the step is model + optimizer only.
Timed: median of --steps steps after --warmup, with CUDA synchronisation;
peak memory from torch.cuda.max_memory_allocated over the whole run of a mode
(first step, compilation, CUDA-graph capture and pools included).  Anchor numbers from the
issue: the Erwin reference model takes 64 / 103 / ~118 ms per step on one H100.
A mode that fails prints its traceback and gets an error row; nothing falls
back silently (the ops backend is 'triton' on CUDA, never the reference).
"""

import argparse
import os
import statistics
import sys
import time
import traceback
import warnings

import torch

from torch_geometric_nsa import ops
from torch_geometric_nsa.nn import radius_graph
from torch_geometric_nsa.nn.models import ErwinNSA

CONFIGS = {
    "shapenet-car": (3586, 1, 64.0),
    "cosmology": (5000, 16, 103.0),
    "md": (900, 32, 118.0),
}
MODES = ("eager", "compile", "reduce-overhead", "cuda-graph")


def make_inputs(n, batch_size, device, gen):
    pos = torch.rand(n * batch_size, 3, generator=gen).to(device)
    x = torch.randn(n * batch_size, 8, generator=gen).to(device)
    y = torch.randn(n * batch_size, 3, generator=gen).to(device)
    batch = torch.arange(batch_size, device=device).repeat_interleave(n)
    return x, pos, batch, y


def make_step(mode, model, opt, inputs, dtype, device):
    """A function running one training step in :obj:`mode` (warm-ups and
    capture not included)."""
    x, pos, batch, edges, tree, tree_rot, y = inputs
    amp = dict(device_type=device, dtype=dtype, enabled=dtype != torch.float32)
    if mode == "eager":
        fwd = model
    elif mode in ("compile", "reduce-overhead"):
        fwd = torch.compile(
            model, fullgraph=True, dynamic=False, mode="default" if mode == "compile" else mode
        )
    elif mode == "cuda-graph":
        if device != "cuda":
            raise RuntimeError("cuda-graph needs a CUDA device")
        amp["cache_enabled"] = False  # casts are part of the graph
        fwd = model
    else:
        raise ValueError(f"unknown mode {mode!r}")

    def body():
        with torch.autocast(**amp):
            out = fwd(x, pos, batch, edges, tree, tree_rot)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
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


def bench(name, backend, dtype, mode, args, device):
    n, bs, anchor_ms = CONFIGS[name]
    if args.tiny:  # CPU smoke test of the modes
        n, bs = min(n, 300), min(bs, 2)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = ErwinNSA(
        8,
        args.width,
        3,
        num_layers=args.layers,
        heads=args.heads,
        ball_size=128,
        compress_size=32,
        topk=4,
        rotate=45.0,
    ).to(device)
    params = sum(p.numel() for p in model.parameters())
    # capturable keeps AdamW's step counters on the device (no host read)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=mode == "cuda-graph")
    x, pos, batch, y = make_inputs(n, bs, device, gen)
    tree, tree_rot = model.build_trees(pos, batch, batch_size=bs)
    edges = radius_graph(pos, 0.05, batch, max_num_neighbors=16)
    inputs = (x, pos, batch, edges, tree, tree_rot, y)
    syncs = "-"
    with ops.use_backend(backend):
        from torch._dynamo.utils import counters

        counters.clear()
        if device == "cuda":  # the peak covers warm-up, capture and pools
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step = make_step(mode, model, opt, inputs, dtype, device)
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
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
    return {
        "config": f"{name} ({n} x {bs})",
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "mode": mode,
        "params (M)": params / 1e6,
        "first step (s)": first_s,
        "step (ms)": ms,
        "peak (MiB)": peak,
        "syncs": syncs,
        "anchor (ms)": anchor_ms,
        "speed-up": anchor_ms / ms,
    }


def print_table(rows):
    """Markdown table over the union of the rows' keys."""
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v).replace("|", "/")

    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")


def selected_modes(args):
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
        help="modes to run (added to the flags above)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="run every mode (eager, compile, reduce-overhead, cuda-graph)",
    )
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--tiny", action="store_true", help="at most 300 points x 2 clouds (CPU smoke test)"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds; later rows are skipped (and say so) once exceeded (0: no limit)",
    )
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    args.warmup = max(1, args.warmup)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backends or (["triton"] if device == "cuda" else ["reference"])
    modes = selected_modes(args)
    if device == "cuda":
        print("card:", torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1", flush=True)
    start = time.perf_counter()
    rows = []
    for mode in modes:  # mode by mode: a time budget cuts the slow ones
        for name in args.configs:
            for backend in backends:
                for dt in args.dtypes:
                    row = {"config": name, "backend": backend, "dtype": dt, "mode": mode}
                    if args.time_budget and time.perf_counter() - start > args.time_budget:
                        row["error"] = "skipped (time budget)"
                    else:
                        try:
                            row = bench(name, backend, getattr(torch, dt), mode, args, device)
                        except Exception as e:  # loud: traceback + error row
                            traceback.print_exc()
                            row["error"] = f"{type(e).__name__}: {e}"[:200]
                    rows.append(row)
                    print(rows[-1], flush=True)
    print("\nTraining step of ErwinNSA (median ms)")
    print_table(rows)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

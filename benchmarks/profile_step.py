"""Where one eager training step spends its time: a ``torch.profiler`` trace of
the step of ``benchmarks/train_step.py`` (same model, inputs and optimiser).

    python benchmarks/profile_step.py                       # ShapeNet-Car config, bf16
    python benchmarks/profile_step.py --config cosmology --top 40
    python benchmarks/profile_step.py --device cpu --tiny   # CPU smoke run
    python benchmarks/profile_step.py --mode compile        # torch.compile, default mode

Prints three tables: the device kernels of one step grouped by name (count and
device time), the host operators by self CPU time (what the Python/ATen side
costs per step), and one line with the step's wall time, the summed device
kernel time and the number of kernels, so that a launch-bound step (wall time
far above kernel time) is visible at once.  ``--retime-without-workers`` times the steps
a second time after shutting down Inductor's compile-worker pool; ``--retime-on-cores 0-7
8-15`` times them again with every thread of the process pinned to each CPU set in turn
(twice round), which shows whether a host-bound step depends on where it runs (the GPU's
NUMA node: ``nvidia-smi topo -m``).
"""

import argparse
import collections
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as ts  # noqa: E402

from torch_geometric_nsa import ops  # noqa: E402
from torch_geometric_nsa.nn import radius_graph  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default="shapenet-car", choices=list(ts.CONFIGS))
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--top", type=int, default=30, help="rows per table")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median) before the trace")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="300 points x 2 clouds, 2 layers")
    ap.add_argument(
        "--mode",
        default="eager",
        choices=["eager", "compile", "compile-dynamic"],
        help="how the model runs (train_step.py's modes without CUDA graphs)",
    )
    ap.add_argument(
        "--inductor", nargs="+", default=[], metavar="KEY=VALUE", help="as train_step.py's"
    )
    ap.add_argument("--compile-optimizer", action="store_true", help="as train_step.py's")
    ap.add_argument(
        "--retime-without-workers",
        action="store_true",
        help="after the timed steps, shut down Inductor's compile-worker pool and time the "
        "steps again (shows whether the idle pool slows a host-bound step)",
    )
    ap.add_argument(
        "--retime-on-cores",
        nargs="+",
        default=[],
        metavar="CPUS",
        help="CPU sets (e.g. 0-7 8-15 0,1): time the steps with the process pinned to each",
    )
    args = ap.parse_args(argv)
    inductor = ts.inductor_settings(args.inductor)
    args.sizes = "small" if args.tiny else None
    if args.tiny:
        args.layers, args.width, args.heads = 2, 32, 2
    device, dtype = args.device, getattr(torch, args.dtype)
    cuda = device == "cuda"
    n, bs = ts.sizes_of(args.config, args)
    model = ts.make_model(args, device)
    opt = ts.make_optimizer(model, device)
    x, pos, batch, y = ts.make_inputs(n, bs, device, torch.Generator().manual_seed(0))
    tree, tree_rot = model.build_trees(pos, batch, batch_size=bs)
    edges = radius_graph(pos, ts.RADIUS, batch, max_num_neighbors=ts.NEIGHBOURS)
    backend = "triton" if cuda else "reference"
    with ops.use_backend(backend):
        step = ts.make_step(
            args.mode,
            model,
            opt,
            (x, pos, batch, edges, tree, tree_rot, y),
            dtype,
            device,
            args.compile_optimizer,
        )
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        for _ in range(3):
            step()

        def timed():
            times = []
            for _ in range(args.steps):
                sync()
                t = time.perf_counter()
                step()
                sync()
                times.append((time.perf_counter() - t) * 1e3)
            return times

        times = timed()
        retimed = None
        if args.retime_without_workers:
            from torch._inductor.async_compile import shutdown_compile_workers

            t = time.perf_counter()
            shutdown_compile_workers()
            shutdown_s = time.perf_counter() - t
            retimed = timed()
        pinned = []
        if args.retime_on_cores:
            everywhere = os.sched_getaffinity(0)
            for _ in range(2):
                for spec in args.retime_on_cores + ["all"]:
                    pin_threads(everywhere if spec == "all" else cpu_set(spec))
                    pinned.append((spec, statistics.median(timed())))
            pin_threads(everywhere)
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        sync()
        with profile(activities=acts) as prof:
            step()
            sync()
    kern_n, kern_us = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            name = e.name if len(e.name) < 70 else e.name[:67] + "..."
            kern_n[name] += 1
            kern_us[name] += e.device_time
    meta = ts.metadata(device)
    print(
        f"card: {meta['card']} | torch {meta['torch']} | commit {meta['commit']} | {meta['date']}"
    )
    print(
        f"# {args.config} ({n} x {bs}), {args.dtype}, {args.layers} layers, "
        f"width {args.width}, {args.mode}"
        + (f", {label}" if (label := ts.inductor_label(inductor, args.compile_optimizer)) else "")
    )
    if cuda:
        print("\n| kernel | count | device ms |\n|---|---|---|")
        for name, c in kern_n.most_common(args.top):
            print(f"| {name} | {c} | {kern_us[name] / 1e3:.3f} |")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print("\n" + table)
    print(
        f"step wall {statistics.median(times):.2f} ms (median of {args.steps}); "
        f"device kernels {sum(kern_n.values())}, {sum(kern_us.values()) / 1e3:.2f} ms summed"
    )
    if retimed is not None:
        print(
            f"step wall after shutting down the compile workers ({shutdown_s:.1f} s): "
            f"{statistics.median(retimed):.2f} ms (median of {args.steps})"
        )
    if pinned:
        print(
            f"step wall (median of {args.steps}) with every thread pinned to CPUs: "
            + ", ".join(f"{spec} {ms:.2f} ms" for spec, ms in pinned)
        )
    print("steps (ms):", [round(t, 2) for t in times + (retimed or [])])


def cpu_set(spec):
    """``"0-3,8"`` -> ``{0, 1, 2, 3, 8}``."""
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin_threads(cpus):
    """Every thread of this process (the autograd engine's device threads too) onto ``cpus``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


if __name__ == "__main__":
    main()
    ts.exit_now(0)

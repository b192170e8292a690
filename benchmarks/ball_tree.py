"""Ball-tree build: speed (ours on CPU and CUDA vs balltree-erwin) and ball quality.

    python benchmarks/ball_tree.py                 # speed table (+ quality table)
    python benchmarks/ball_tree.py --quality-only  # quality on AdK and a uniform cube
    python benchmarks/ball_tree.py --quick         # small sizes only
    python benchmarks/ball_tree.py --speed-only --json out/ball_tree.json   # for plots.py
    python benchmarks/ball_tree.py --devices cpu --sizes small   # CPU smoke run
    python benchmarks/ball_tree.py --speed-only --devices cuda --configs 16x1024 --profile

Speed: median wall time of the build (CUDA timed with synchronisation, after a
warm-up), 1 x {1k..1M} and 16 x {1k..16k} points, uniform in the unit cube, and
1 x 3,586 (a ShapeNet car's size) and 32 x 900 (a batch of MD frames).  On CUDA also
the general path for clouds of at most 4,096 slots (which otherwise take the
one-kernel build), the torch level loop and capacity mode (no sync), same run,
and for ours the kernels of one build and their summed device time ("kernel
ms": the wall time above it is host time).
balltree-erwin (the anchor; OpenMP on all CPU cores) is timed when importable.

Quality: mean ball radius (largest distance of a ball's points from their
centroid) at ball sizes 32/128/512, next to a plain median-split tree's at the
same number of points per ball (log-log interpolation between its levels,
since a median tree of n points has n / 2^d points per node at depth d).
"""

import argparse
import contextlib
import math
import statistics
import time

import numpy as np
import torch
from _results import count_kernels, metadata, write_json

from torch_geometric_nsa import build_ball_tree
from torch_geometric_nsa.tree import ball_radius, slot_capacity

try:
    import balltree as anchor  # balltree-erwin
except ImportError:
    anchor = None


def timeit(fn, device, repeats):
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


@contextlib.contextmanager
def tree_setting(name, value):
    """A module setting of the CUDA build (``tree/_triton.py``) changed for the block, for a
    baseline in the same run: ``ENABLED=False``, the torch level loop (one sort per level);
    ``_SMALL_BLOCKS=()``, the general path for clouds the one-kernel build would take."""
    from torch_geometric_nsa.tree import _triton

    old = getattr(_triton, name)
    setattr(_triton, name, value)
    try:
        yield
    finally:
        setattr(_triton, name, old)


def uniform_clouds(clouds, n):
    """``clouds`` clouds of ``n`` points uniform in the unit cube (seeded): ``pos``, ``batch``."""
    pos = torch.rand(clouds * n, 3, generator=torch.Generator().manual_seed(0))
    return pos, torch.arange(clouds).repeat_interleave(n)


def speed(configs, devices, repeats):
    rows = []
    for clouds, n in configs:
        pos, batch = uniform_clouds(clouds, n)
        row = {"config": f"{clouds} x {n}", "clouds": clouds, "N": clouds * n}
        for dev in devices:
            p, b = pos.to(dev), batch.to(dev)
            reps = repeats if (dev == "cuda" or clouds * n <= 65536) else 2
            row[f"ours {dev} (ms)"] = timeit(
                lambda: build_ball_tree(p, b, ball_size=128), dev, reps
            )
            if dev == "cuda":
                k, _, busy = count_kernels(
                    lambda: build_ball_tree(p, b, ball_size=128), device_ms=True
                )
                row["kernels"], row["kernel ms"] = k, busy
                with tree_setting("_SMALL_BLOCKS", ()):
                    row["ours cuda, general path (ms)"] = timeit(
                        lambda: build_ball_tree(p, b, ball_size=128), dev, reps
                    )
                    row["kernels, general"] = count_kernels(
                        lambda: build_ball_tree(p, b, ball_size=128)
                    )[0]
                with tree_setting("ENABLED", False):
                    row["ours cuda, torch loop (ms)"] = timeit(
                        lambda: build_ball_tree(p, b, ball_size=128), dev, reps
                    )
                cap = slot_capacity(p.size(0), clouds, 128)
                row["ours cuda, no sync (ms)"] = timeit(
                    lambda: build_ball_tree(p, b, ball_size=128, batch_size=clouds, num_slots=cap),
                    dev,
                    reps,
                )
        if anchor is not None:
            row["balltree-erwin (ms)"] = timeit(
                lambda: anchor.build_balltree(pos, batch),
                "cpu",
                repeats if clouds * n <= 65536 else 2,
            )
        rows.append(row)
        # each row as it is done: a run cut short by a time limit still reports its rows
        print(
            "  "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            ),
            flush=True,
        )
    return rows


def check_no_sync():
    """The capacity-mode build runs under torch.cuda's sync debug mode."""
    sizes = [1000, 1, 4097, 300]
    pos = torch.rand(sum(sizes), 3, device="cuda")
    batch = torch.repeat_interleave(
        torch.arange(4, device="cuda"), torch.tensor(sizes, device="cuda")
    )
    cap = slot_capacity(pos.size(0), 4, 128)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layout = build_ball_tree(pos, batch, ball_size=128, batch_size=4, num_slots=cap)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    ref = build_ball_tree(pos.cpu(), batch.cpu(), ball_size=128)
    same = torch.equal(layout.perm[: ref.num_slots].cpu(), ref.perm)
    return f"no host sync in capacity mode: OK; same layout as CPU: {same}"


def median_tree_levels(pos: np.ndarray):
    """Mean node radius and mean node size per depth of a plain median-split
    tree (split along the axis of largest spread into ceil/floor halves)."""
    levels = {}

    def visit(idx, depth):
        p = pos[idx]
        radius = np.linalg.norm(p - p.mean(0), axis=1).max()
        levels.setdefault(depth, []).append((radius, len(idx)))
        if len(idx) <= 8:
            return
        axis = np.argmax(p.max(0) - p.min(0))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        half = (len(idx) + 1) // 2
        visit(order[:half], depth + 1)
        visit(order[half:], depth + 1)

    visit(np.arange(len(pos)), 0)
    return [
        (np.mean([c for _, c in v]), np.mean([r for r, _ in v])) for _, v in sorted(levels.items())
    ]


def interpolate(levels, count):
    for (c0, r0), (c1, r1) in zip(levels, levels[1:]):
        if c1 <= count <= c0:
            t = (math.log(count) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
    return float("nan")


def quality(clouds):
    rows = []
    for name, pos in clouds:
        levels = median_tree_levels(pos.double().numpy())
        layout = build_ball_tree(pos, ball_size=512)
        for size in (32, 128, 512):
            r, valid = ball_radius(layout, pos, size)
            full = layout.mask.view(-1, size).all(1)  # balls with `size` points
            ours = r[full].mean().item()
            base = interpolate(levels, size)
            row = {
                "cloud": name,
                "ball": size,
                "ours": ours,
                "median tree": base,
                "ratio": ours / base,
            }
            if anchor is not None:  # its balls of `size` slots hold fewer points
                idx, mask = anchor.build_balltree(pos, torch.zeros(len(pos), dtype=torch.long))
                p = pos.double()[idx].view(-1, size, pos.size(1))
                mk = mask.view(-1, size, 1).double()
                cen = (p * mk).sum(1) / mk.sum(1).clamp(min=1)
                rad = ((p - cen[:, None]).norm(dim=-1) * mk[..., 0]).amax(1)
                row["anchor (same slots)"] = rad.mean().item()
                row["anchor pts/ball"] = mask.float().mean().item() * size
            rows.append(row)
        # each row as it is done: a run cut short by a time limit still reports its rows
        print(
            "  "
            + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            ),
            flush=True,
        )
    return rows


def load_clouds():
    clouds = []
    try:
        import MDAnalysis as mda
        from MDAnalysisTests.datafiles import DCD, PSF

        u = mda.Universe(PSF, DCD)
        clouds.append(("AdK (3,341 atoms)", torch.tensor(u.atoms.positions, dtype=torch.float32)))
    except ImportError:
        print("MDAnalysis/MDAnalysisTests not installed: AdK skipped")
    gen = torch.Generator().manual_seed(0)
    clouds.append(("uniform cube 10k", torch.rand(10000, 3, generator=gen)))
    clouds.append(("uniform cube 16,384", torch.rand(16384, 3, generator=gen)))
    return clouds


def profile_build(clouds, n, top=25):
    """One CUDA build under ``torch.profiler``: the host operators by self CPU time and
    the device kernels, so that host time (launches, torch ops, the read-back) and
    kernel time can be told apart."""
    from torch.profiler import ProfilerActivity, profile

    pos, batch = (t.cuda() for t in uniform_clouds(clouds, n))
    for _ in range(3):  # warm-up: compilation, caches
        build_ball_tree(pos, batch, ball_size=128)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            build_ball_tree(pos, batch, ball_size=128)
        torch.cuda.synchronize()
    print(f"\nProfile of 10 builds, {clouds} x {n} (times summed over the 10)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def print_table(rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    widths = [max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sizes",
        choices=["full", "quick", "small"],
        default="full",
        help="'quick': up to 16k; 'small': 1 x {1k, 4k} and 16 x 1k (CPU smoke run)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        default=None,
        choices=["cpu", "cuda"],
        help="where our build runs (default: cpu, and cuda when available)",
    )
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--configs", default=None, help="comma list of BxN (e.g. 16x1024,32x900): only these"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print a profile of each config's CUDA build"
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    meta = metadata("cuda" if "cuda" in devices else "cpu")
    print(f"card: {meta['card']} | torch {meta['torch']} | commit {meta['commit']}")
    print(
        "CPU threads:",
        torch.get_num_threads(),
        "| balltree-erwin:",
        "yes" if anchor else "not importable",
    )
    rows, quality_rows, no_sync = [], [], None
    if not args.quality_only:
        size = "quick" if args.quick else args.sizes
        if size == "small":
            configs = [(1, 1024), (1, 4096), (16, 1024)]
        else:
            sizes = [1024, 4096, 16384]
            sizes += [] if size == "quick" else [65536, 262144, 1048576]
            configs = [(1, n) for n in sizes] + [(16, n) for n in (1024, 4096, 16384)]
            configs += [(1, 3586), (32, 900)]  # ShapeNet-Car, a batch of MD frames
        if args.configs:
            configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
        rows = speed(configs, devices, args.repeats)
        if "cuda" in devices:
            no_sync = check_no_sync()
            print(no_sync)
        print("\nBuild time, ball_size=128 (median ms)")
        print_table(rows)
        if args.profile and "cuda" in devices:
            for clouds, n in configs:
                profile_build(clouds, n)
    if not args.speed_only:
        quality_rows = quality(load_clouds())
        print("\nMean ball radius (balls full of real points)")
        print_table(quality_rows)
    if args.json:
        meta["cpu_threads"] = torch.get_num_threads()
        write_json(
            args.json,
            "ball_tree",
            meta,
            rows,
            quality=quality_rows,
            no_sync_check=no_sync,
            anchor="balltree-erwin" if anchor else None,
        )


if __name__ == "__main__":
    main()

"""What every benchmark records with its results (``--json PATH``): the card, the versions, the
exact command and the commit, so that a figure made from the file can say where it came from
(``benchmarks/plots.py``)."""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The short commit of the checkout, with ``-dirty`` when tracked files differ from it.

    ``$BENCH_COMMIT`` wins (for a copy of the tree without ``.git``, e.g. on a remote device:
    ``BENCH_COMMIT=$(git rev-parse --short HEAD)`` where the copy was made); ``unknown`` when
    neither is available.  Untracked files (build folders, the kernels link) do not count.
    """
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:

        def git(*args):
            return subprocess.run(
                ["git", "-C", ROOT, *args], capture_output=True, text=True, check=True, timeout=20
            ).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def card(device: str) -> str:
    """The accelerator's name, or the CPU's for CPU runs."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def metadata(device: str) -> dict:
    """Card, versions, command, commit and UTC time of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return {
        "card": card(device),
        "device": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "command": "python " + shlex.join([script, *sys.argv[1:]]),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_json(path: str, kind: str, meta: dict, rows: list, quiet: bool = False, **extra) -> None:
    """Writes ``{"kind", "meta", "rows", **extra}`` to :obj:`path` (folders created;
    replaced at once, so a reader never sees half a file)."""
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"kind": kind, "meta": meta, "rows": rows, **extra}, f, indent=1, default=str)
    os.replace(tmp, path)
    if not quiet:
        print(f"results written to {path}", flush=True)


#: host calls that start device work (CUDA runtime and driver API names in a profiler trace)
LAUNCH_CALLS = {
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cudaLaunchCooperativeKernel",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
}


def count_kernels(step, device_ms=False):
    """``(kernels, launches)`` of one call of :obj:`step` on CUDA: the device
    kernels of a ``torch.profiler`` trace (copies and memsets not counted) and
    the host calls that launched work (``None`` when the trace has none); with
    :obj:`device_ms` also the summed duration of those kernels in ms (the device
    time, against which the wall time shows what the host costs)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = launches = 0
    busy_us = 0.0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            if not e.name.startswith(("Memcpy", "Memset")):
                kernels += 1
                busy_us += e.device_time
        elif e.name in LAUNCH_CALLS:
            launches += 1
    if device_ms:
        return kernels, launches or None, busy_us / 1e3
    return kernels, launches or None


def exit_now(rc: int = 0) -> None:
    """Ends the process with :obj:`rc` once its output is flushed, skipping the interpreter's
    exit: that waits for Inductor's compile-worker pool to shut down, about a minute after a
    cold compile on the H200 (``benchmarks/README.md``, v12), device time for nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)

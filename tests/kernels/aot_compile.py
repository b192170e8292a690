"""Ahead-of-time compile check of every Triton kernel for real GPUs, on a machine without one.

The interpreter (``TRITON_INTERPRET=1``) runs kernels as Python and never type-checks them the way
the compiler does: a loop-carried variable that changes type, a shape mismatch in a ``tl.where``
branch, or a launch config whose tiles need more shared memory than the GPU has all pass there and
fail on the device.  This module closes that gap in two steps, each in its own process:

1. ``capture`` (under the interpreter): drives the public kernels (forward and backward of the
   four ops) and the CUDA ball-tree build on small CPU inputs, with the launch-config dispatch
   told it runs on an sm_90 or an sm_80 GPU, over every supported dtype (float32 with IEEE and
   TF32 dots, float16, bfloat16), head dims 8 to 128, both forms of the forward's softmax (scale
   folded or not), the selected kernels' int32 and int64 offsets, several top-k / group settings
   and tree block sizes.  Every launch is recorded
   as (kernel, argument types, constexpr values, ``num_warps``, ``num_stages``, target) and the
   records are deduplicated.
2. ``compile`` (no interpreter, with whichever Triton is first on ``sys.path``): each record goes
   through the whole compiler, ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
   (TTIR, TTGIR, LLVM, PTX, cubin through the ``ptxas`` that Triton ships), and its static shared
   memory is checked against the target's per-block limit.

Usage: ``python aot_compile.py capture OUT.json`` then ``python aot_compile.py compile OUT.json``
(``--jobs N`` compiles in N processes).  ``test_aot_compile.py`` runs both, for the Triton that CI
installs and for the version torch's CUDA wheels pin.  Compiled kernels land in Triton's cache
(``TRITON_CACHE_DIR``), so a second run only compiles what changed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import sys
import time

#: GPU targets: the dispatch's arch name -> compute capability; sm_80 stands for Ampere and Ada
TARGETS = {"sm90": 90, "sm80": 80}
#: usable shared memory per block (bytes, opt-in maximum) of each target
SMEM_LIMIT = {90: 232448, 80: 166912}
#: launch options that are not kernel arguments
_LAUNCH_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")

_TORCH_TO_TRITON = {
    "torch.float32": "fp32",
    "torch.float16": "fp16",
    "torch.bfloat16": "bf16",
    "torch.float64": "fp64",
    "torch.int64": "i64",
    "torch.int32": "i32",
    "torch.int16": "i16",
    "torch.int8": "i8",
    "torch.uint8": "u8",
    "torch.bool": "i1",
}


# ---------------------------------------------------------------------------------------------
# step 1: capture (TRITON_INTERPRET=1)
# ---------------------------------------------------------------------------------------------
def _spec(value):
    """A launch argument as JSON: its Triton type, and its value where it may be a constexpr."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"type": "*" + _TORCH_TO_TRITON[str(value.dtype)]}
    if isinstance(value, bool):
        return {"type": "i1", "value": value}
    if isinstance(value, int):
        return {"type": "i32" if -(2**31) <= value < 2**31 else "i64", "value": value}
    if isinstance(value, float):
        return {"type": "fp32", "value": value}
    if value is None or isinstance(value, str):
        return {"type": "constexpr", "value": value}
    if hasattr(value, "value"):  # tl.constexpr
        return {"type": "constexpr", "value": value.value}
    raise TypeError(f"unsupported launch argument {value!r}")


#: tree kernels that are recorded without running
RECORD_ONLY = ("_small_kernel",)


class Recorder:
    """Records every kernel launch of the interpreter.  Attention kernels and the tree's
    one-kernel build of small clouds are recorded only (their outputs are never read, and
    interpreting the GPU's large tiles and in-register sorts is slow); the other tree kernels
    also run, since the build reads back a size that its first kernel computes."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.target = None

    def install(self):
        from triton.runtime.interpreter import InterpretedFunction

        original = InterpretedFunction.run
        recorder = self

        def run(fn_self, *args, grid, warmup, **kwargs):
            if recorder.target is not None and not warmup:
                recorder.add(fn_self.fn, args, kwargs)
                if ".kernels." in fn_self.fn.__module__ or fn_self.fn.__name__ in RECORD_ONLY:
                    return None
            return original(fn_self, *args, grid=grid, warmup=warmup, **kwargs)

        InterpretedFunction.run = run

    def add(self, fn, args, kwargs):
        options = {k: kwargs[k] for k in _LAUNCH_KEYS if k in kwargs}
        bound = inspect.signature(fn).bind(
            *args, **{k: v for k, v in kwargs.items() if k not in _LAUNCH_KEYS}
        )
        params = inspect.signature(fn).parameters
        args = {}
        for name, value in bound.arguments.items():
            spec = _spec(value)
            if spec["type"] == "fp32" and ".kernels." in fn.__module__:
                # the attention ops run from Inductor's code under torch.compile, which passes
                # Python floats as fp64 (Triton's own launcher: fp32); the kernels cast them to
                # fp32 first, so fp64 is the variant that can fail to type-check
                spec["type"] = "fp64"
            if "constexpr" not in str(params[name].annotation) and spec["type"] != "constexpr":
                spec.pop("value", None)  # a run-time argument: only its type matters
            args[name] = spec
        rec = {
            "module": fn.__module__,
            "name": fn.__name__,
            "target": self.target,
            "args": args,
            "options": {
                "num_warps": options.get("num_warps", 4),
                "num_stages": options.get("num_stages", 3),
            },
        }
        self.records.setdefault(json.dumps(rec, sort_keys=True), rec)


def _drive_ops(dtype, D, scale, settings):
    """Forward and backward of the four public kernels on one small mixed batch."""
    import torch

    from torch_geometric_nsa import kernels as K
    from torch_geometric_nsa.testing import padded_slots

    m, c, s, g, topk, H, P = settings
    ptr, mask = padded_slots([m + 3, m // 2], m, 0)
    S = mask.numel()
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).requires_grad_()

    q, k, v = (rnd(S, H, D) for _ in range(3))
    kc, vc = rnd(S // c, H, D), rnd(S // c, H, D)
    pos = torch.randn(S, P, generator=gen)
    sigma = -torch.rand(H, generator=gen).requires_grad_()
    bm = mask.reshape(-1, c).any(1)
    ob = K.ball_attention(q, k, v, pos, mask, sigma, m, scale)
    oc, lse = K.compressed_attention(q, kc, vc, bm, ptr, c, scale)
    idx = K.select_blocks(q.detach(), kc.detach(), lse, bm, mask, ptr, c, s, g, topk, scale)
    os_ = K.selected_attention(q, k, v, mask, idx, s, g, scale)
    # the compressed branch with its distance bias (the kernels' P > 0 variants)
    bias = (sigma, pos, pos.view(-1, c, P).mean(1))
    ocb, lseb = K.compressed_attention(q, kc, vc, bm, ptr, c, scale, bias=bias)
    K.select_blocks(q.detach(), kc.detach(), lseb, bm, mask, ptr, c, s, g, topk, scale, bias=bias)
    (ob.float().sum() + oc.float().sum() + os_.float().sum() + ocb.float().sum()).backward()


def _drive_tree(block, dim, capacity, dtype=None):
    import torch

    import torch_geometric_nsa.tree._triton as tt
    from torch_geometric_nsa import build_ball_tree
    from torch_geometric_nsa.tree import build as tb

    old_block, old_use, old_small = tt._BLOCK, tb._use_triton, tt._SMALL_BLOCKS
    tt._BLOCK, tb._use_triton, tt._SMALL_BLOCKS = block, (lambda posf: True), ()  # the general path
    try:
        gen = torch.Generator().manual_seed(block + dim)
        sizes = torch.tensor([block + 5, 3, 2 * block])
        pos = torch.randn(int(sizes.sum()), dim, generator=gen, dtype=dtype)
        batch = torch.repeat_interleave(torch.arange(3), sizes)
        num_slots = None
        if capacity:
            num_slots = tb.slot_capacity(int(sizes.sum()), 3, 32)
        build_ball_tree(pos, batch, ball_size=32, batch_size=3, num_slots=num_slots)
    finally:
        tt._BLOCK, tb._use_triton, tt._SMALL_BLOCKS = old_block, old_use, old_small


def _drive_small_tree(max_slots, dim, dtype=None, rotate=None):
    """The one-kernel build of small clouds (``_small_kernel``, recorded only) at the block size
    of clouds of ``max_slots`` slots."""
    import torch

    from torch_geometric_nsa.tree import _triton as tt

    sizes = torch.tensor([max_slots, 3])
    pos = torch.rand(int(sizes.sum()), dim, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(2), sizes)
    tt.build_layout_triton(pos, batch, 16, None, None, rotate)


@contextlib.contextmanager
def _wide_offsets():
    """The selected kernels' int64-offset variants (``I64``) on small inputs."""
    from torch_geometric_nsa.kernels import selected

    real = selected.wide_offsets
    selected.wide_offsets = lambda *ts: True
    try:
        yield
    finally:
        selected.wide_offsets = real


#: user settings the ops are driven with: (m, c, s, g, topk, heads, spatial dims)
OP_SETTINGS = [
    (128, 32, 32, 32, 8, 2, 3),  # the layer's defaults
    (64, 16, 32, 64, 3, 3, 2),  # odd top-k and head count, group = ball, 2-D
    (32, 16, 16, 16, 1, 1, 1),  # top-1, one head, 1-D, c = s = g = 16
]
HEAD_DIMS = (8, 16, 32, 64, 128)


def capture(out_path: str) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("capture needs TRITON_INTERPRET=1 (set before Triton is imported)")
    import torch

    rec = Recorder()
    rec.install()
    from torch_geometric_nsa.kernels import _config

    real_arch = _config.arch
    for target in TARGETS:
        rec.target = target
        _config.arch = lambda device, _t=target: _t
        try:
            for dtype, tf32 in (
                (torch.float32, False),
                (torch.float32, True),
                (torch.float16, False),
                (torch.bfloat16, False),
            ):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                for D in HEAD_DIMS:
                    _drive_ops(dtype, D, None, OP_SETTINGS[0])
                _drive_ops(dtype, 32, -0.3, OP_SETTINGS[0])  # a negative scale: no folding
                for settings in OP_SETTINGS[1:]:
                    _drive_ops(dtype, 16, None, settings)
                with _wide_offsets():  # int64 offsets, as for inputs of 2**31 elements or more
                    _drive_ops(dtype, 32, None, OP_SETTINGS[0])
        finally:
            _config.arch = real_arch
            torch.backends.cuda.matmul.allow_tf32 = False
        for block in (32, 128, 1024):
            for dim in (1, 2, 3):
                _drive_tree(block, dim, capacity=False)
        _drive_tree(1024, 3, capacity=True)
        _drive_tree(1024, 3, capacity=False, dtype=torch.float64)  # positions read as given
        for max_slots, dims in ((16, (1, 3)), (4096, (3,))):  # blocks of 1,024 and 4,096
            for dim in dims:
                _drive_small_tree(max_slots, dim)
        # float64 positions, rotated (coordinates made on the host: CENTER off)
        _drive_small_tree(16, 3, torch.float64, rotate=30.0)
    rec.target = None
    with open(out_path, "w") as f:
        json.dump(sorted(rec.records.values(), key=lambda r: json.dumps(r, sort_keys=True)), f)
    return len(rec.records)


# ---------------------------------------------------------------------------------------------
# step 2: compile (no interpreter)
# ---------------------------------------------------------------------------------------------
def compile_record(rec: dict) -> tuple[str, str]:
    """Compiles one record to a cubin; returns ``(status, detail)``, status "ok" or "FAIL"."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(rec["module"]), rec["name"])
    signature, constexprs = {}, {}
    for p in fn.params:
        spec = rec["args"].get(p.name)
        if spec is None:  # a defaulted argument the launch left out
            signature[p.name] = "constexpr"
            constexprs[p.name] = p.default
        elif p.is_constexpr or spec["type"] == "constexpr":
            signature[p.name] = "constexpr"
            constexprs[p.name] = spec["value"]
        else:
            signature[p.name] = spec["type"]
    cc = TARGETS[rec["target"]]
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs),
            target=GPUTarget("cuda", cc, 32),
            options=dict(rec["options"]),
        )
    except Exception as e:  # noqa: BLE001 -- every compiler error is a finding
        return "FAIL", f"{type(e).__name__}: {str(e).strip()[-1500:]}"
    if "cubin" not in kernel.asm:
        return "FAIL", "no cubin produced"
    shared = int(getattr(kernel.metadata, "shared", 0))
    if shared > SMEM_LIMIT[cc]:
        return "FAIL", f"needs {shared} B of shared memory, sm_{cc} has {SMEM_LIMIT[cc]}"
    return "ok", f"shared {shared} B"


def _label(rec: dict) -> str:
    const = {k: v["value"] for k, v in rec["args"].items() if v["type"] == "constexpr"}
    types = sorted({v["type"] for v in rec["args"].values() if v["type"].startswith("*f")})
    short = ",".join(f"{k}={v}" for k, v in const.items() if k.isupper())
    return f"{rec['name']} sm_{TARGETS[rec['target']]} {'/'.join(types)} {short} {rec['options']}"


def _constexpr_float_variants(records: list[dict]) -> list[dict]:
    """One record per attention kernel and target with its float arguments as constexprs:
    Inductor's mutation analysis of a ``wrap_triton`` launch (``torch.compile``) builds the
    kernel's IR so, and when that fails it assumes every input is mutated."""
    out, seen = [], set()
    for rec in records:
        if ".kernels." not in rec["module"] or (rec["name"], rec["target"]) in seen:
            continue
        seen.add((rec["name"], rec["target"]))
        args = {
            k: ({"type": "constexpr", "value": 0.125} if v["type"] == "fp64" else v)
            for k, v in rec["args"].items()
        }
        out.append({**rec, "args": args})
    return out


def compile_all(path: str, jobs: int = 1, only: str | None = None) -> int:
    import triton

    with open(path) as f:
        records = [r for r in json.load(f) if only is None or r["name"] == only]
    records += _constexpr_float_variants(records)
    t0 = time.time()
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            results = pool.map(compile_record, records, chunksize=1)
    else:
        results = [compile_record(r) for r in records]
    failures = [(r, d) for r, (st, d) in zip(records, results) if st != "ok"]
    for rec, detail in failures:
        print(f"FAIL {_label(rec)}\n    {detail}\n")
    kernels = sorted({(r["module"].rsplit(".", 1)[-1], r["name"]) for r in records})
    print(
        f"triton {triton.__version__}: {len(records) - len(failures)} of {len(records)} launch "
        f"variants of {len(kernels)} kernels compiled to cubin for "
        f"{', '.join(f'sm_{c}' for c in TARGETS.values())} in {time.time() - t0:.0f} s"
    )
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("capture", "compile"))
    ap.add_argument("records", help="JSON file of launch records (written by capture)")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--only", help="compile only the records of this kernel (e.g. _cmp_fwd_kernel)")
    args = ap.parse_args(argv)
    if args.step == "capture":
        n = capture(args.records)
        print(f"captured {n} launch variants")
        return 0
    return compile_all(args.records, args.jobs, args.only)


if __name__ == "__main__":
    sys.exit(main())

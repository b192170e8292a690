"""Sweep of the launch configs of every Triton kernel (fills ``kernels/_config.py``'s TABLE).

For each kernel (ball fwd / bwd dQ / bwd dK,dV, compressed fwd / bwd dQ / bwd dK,dV, select,
selected fwd / bwd dQ / bwd dK,dV) at the attention benchmark's defaults (bf16, 8 heads x head
dim 32, m = 128, c = s = g = 32, topk = 8, one cloud of N = 65,536): time a small grid of configs
(tiles, warps, stages, kernel knobs) with ``triton.testing.do_bench``, each through its custom op
with the config table patched.  Backward kernels are swept one at a time inside their op (dQ first
with the default dK/dV, then dK/dV with the best dQ), so the time is the whole backward op.  Every
config is checked against the default config's outputs (relative error, or differing top-k groups
for select); configs that fail to compile or exceed shared memory are skipped.  The winners are then
checked against the float64 reference at a small size (``tests/kernels/kernel_cases.run_all``) and
timed at 16 x 4,096 too.  The whole sweep stops at ``--budget`` seconds (grids ordered by prior).

Usage (device, repo root):  PYTHONPATH=. python benchmarks/tune_kernels.py [--budget 170] [--out DIR]
                            [--head-dim 64] [--group-size 64] [--kernels sel_fwd,sel_bwd_dq]
                            [--sweep-only]
                            PYTHONPATH=. python benchmarks/tune_kernels.py --verify
``--verify`` times every op and the whole layer (fwd+bwd, as ``benchmarks/attention.py``) with the
built-in defaults and with the committed TABLE, next to dense SDPA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests", "kernels"))

import attention  # noqa: E402
from attention import SEL, TOPK, C, D, G, H, M  # noqa: E402  (the same problem)
from torch_geometric_nsa.kernels import _config  # noqa: E402
from torch_geometric_nsa.kernels._common import (  # noqa: E402
    bias_tensors,
    cloud_block_ranges,
    group_block,
    head_block,
)

from torch_geometric_nsa import kernels as K  # noqa: E402

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def cfg(BM, BN, w, s, **kw):
    return dict(BM=BM, BN=BN, num_warps=w, num_stages=s, **kw)


# grids, most promising first (the built-in default is always measured first)
GRIDS = {
    "cmp_bwd_dkdv": [
        cfg(128, 64, 8, 3),
        cfg(64, 128, 8, 3),
        cfg(64, 64, 4, 2),
        cfg(32, 64, 4, 3),
        cfg(128, 64, 4, 2),
        cfg(64, 32, 4, 3),
        cfg(128, 128, 8, 3),
        cfg(64, 128, 4, 3),
        cfg(128, 64, 4, 3),
        cfg(128, 64, 4, 4),
        cfg(128, 32, 4, 3),
        cfg(256, 64, 8, 3),
        cfg(128, 64, 2, 3),
        cfg(128, 128, 4, 3),
    ],
    "cmp_bwd_dq": [
        cfg(128, 64, 8, 3),
        cfg(64, 64, 4, 2),
        cfg(128, 64, 4, 3),
        cfg(64, 32, 4, 3),
        cfg(128, 32, 4, 3),
        cfg(64, 128, 4, 3),
        cfg(64, 64, 8, 3),
        cfg(128, 128, 8, 2),
        cfg(64, 64, 2, 3),
        cfg(32, 64, 4, 3),
        cfg(64, 64, 4, 4),
    ],
    "select": [
        cfg(0, 128, 4, 3),
        cfg(0, 32, 4, 3),
        cfg(0, 64, 4, 2),
        cfg(0, 64, 8, 3),
        cfg(0, 128, 8, 3),
        cfg(0, 64, 2, 3),
        cfg(0, 128, 2, 3),
        cfg(0, 32, 2, 3),
        cfg(0, 64, 1, 3),
        cfg(0, 64, 2, 2),
        cfg(0, 64, 2, 4),
        cfg(0, 32, 1, 3),
    ],
    "cmp_fwd": [
        cfg(128, 64, 4, 3),
        cfg(128, 64, 8, 3),
        cfg(128, 128, 8, 3),
        cfg(64, 64, 4, 2),
        cfg(64, 64, 4, 4),
        cfg(128, 32, 4, 3),
        cfg(64, 128, 4, 3),
        cfg(128, 64, 8, 2),
    ],
    "sel_fwd": [
        cfg(0, 32, 1, 2),
        cfg(0, 64, 2, 3),
        cfg(0, 32, 2, 2),
        cfg(0, 64, 1, 2),
        cfg(0, 32, 1, 2),
        cfg(0, 128, 2, 2),
        cfg(0, 64, 2, 1),
        cfg(0, 128, 4, 2),
        cfg(0, 64, 4, 3),
        cfg(0, 256, 4, 3),
        cfg(0, 128, 8, 3),
        cfg(0, 128, 2, 3),
        cfg(0, 64, 2, 2),
        cfg(0, 256, 8, 2),
        cfg(0, 128, 4, 4),
        # 64-row groups
        cfg(0, 128, 4, 1),
        cfg(0, 64, 4, 2),
        cfg(0, 256, 4, 2),
        cfg(0, 32, 4, 2),
        cfg(0, 128, 8, 2),
    ],
    "sel_bwd_dkdv": [
        cfg(128, 32, 4, 3),
        cfg(128, 32, 8, 3),
        cfg(64, 16, 4, 3),
        cfg(32, 32, 4, 3),
        cfg(64, 32, 4, 2),
        cfg(128, 32, 8, 2),
        cfg(64, 32, 2, 3),
    ],
    "sel_bwd_dq": [
        cfg(0, 128, 4, 2),
        cfg(0, 64, 4, 3),
        cfg(0, 256, 4, 3),
        cfg(0, 128, 8, 3),
        cfg(0, 128, 2, 3),
        cfg(0, 64, 2, 2),
    ],
    "ball_bwd_dkdv": [
        cfg(64, 128, 4, 3),
        cfg(128, 64, 8, 3),
        cfg(32, 64, 4, 3),
        cfg(64, 64, 4, 2),
        cfg(64, 64, 8, 3),
        cfg(64, 32, 4, 3),
    ],
    "ball_bwd_dq": [
        cfg(128, 64, 8, 3),
        cfg(64, 128, 4, 3),
        cfg(64, 32, 4, 3),
        cfg(64, 64, 4, 2),
        cfg(64, 64, 8, 3),
        cfg(32, 64, 4, 3),
    ],
    "ball_fwd": [
        cfg(128, 64, 4, 3),
        cfg(128, 128, 8, 3),
        cfg(64, 128, 4, 3),
        cfg(128, 32, 4, 3),
        cfg(64, 64, 4, 2),
        cfg(128, 64, 8, 3),
        cfg(64, 32, 4, 3),
    ],
}
ORDER = [
    "cmp_bwd_dkdv",
    "cmp_bwd_dq",
    "select",
    "cmp_fwd",
    "sel_fwd",
    "sel_bwd_dkdv",
    "sel_bwd_dq",
    "ball_bwd_dkdv",
    "ball_bwd_dq",
    "ball_fwd",
]
WEIGHT = dict(
    cmp_bwd_dkdv=3,
    cmp_bwd_dq=2,
    select=2.5,
    cmp_fwd=1.5,
    sel_fwd=1.5,
    sel_bwd_dkdv=1.2,
    sel_bwd_dq=1,
    ball_bwd_dkdv=0.8,
    ball_bwd_dq=0.8,
    ball_fwd=0.8,
)
OP_OF = dict(
    ball_fwd="ball fwd",
    ball_bwd_dq="ball bwd",
    ball_bwd_dkdv="ball bwd",
    cmp_fwd="compressed fwd",
    cmp_bwd_dq="compressed bwd",
    cmp_bwd_dkdv="compressed bwd",
    select="select",
    sel_fwd="selected fwd",
    sel_bwd_dq="selected bwd",
    sel_bwd_dkdv="selected bwd",
)


def make(B, n, dtype, dev):
    t = attention.make(B, n, dtype, dev)  # the attention benchmark's inputs
    S, q, k, v, mask, ptr = t["S"], t["q"], t["k"], t["v"], t["mask"], t["ptr"]
    pos, sigma = t["pos"], t["sigma"]
    gen = torch.Generator(device=dev).manual_seed(1)
    t["kc"], t["vc"] = attention.block_means(k, mask, C), attention.block_means(v, mask, C)
    t["bm"] = mask.view(-1, C).any(1)
    t["lo"], t["hi"] = cloud_block_ranges(ptr, S, C)
    t["m8"], t["bm8"] = mask.to(torch.uint8), t["bm"].to(torch.uint8)
    t["go"] = torch.randn(S, H, D, device=dev, dtype=dtype, generator=gen)
    scale = D**-0.5
    t["scale"] = scale
    with torch.no_grad():
        t["ob"], t["lseb"] = torch.ops.tgnsa.ball_attention_fwd(
            q, k, v, pos, t["m8"], sigma, M, scale, 0, 0, 0, 0
        )
        t["nobias"] = bias_tensors(None, q)
        t["oc"], t["lsec"] = torch.ops.tgnsa.compressed_attention_fwd(
            q, t["kc"], t["vc"], t["bm8"], t["lo"], t["hi"], *t["nobias"], scale, 0, 0, 0, 0
        )
        t["idx"] = K.select_blocks(q, t["kc"], t["lsec"], t["bm"], mask, ptr, C, SEL, G, TOPK)
        t["os"], t["lses"] = torch.ops.tgnsa.selected_attention_fwd(
            q, k, v, t["m8"], t["idx"], SEL, G, scale, 0, 0, 0, 0
        )
    return t


def op_fn(kernel, t):
    """A no-arg callable running the custom op that launches ``kernel``; returns its outputs."""
    q, k, v, sc = t["q"], t["k"], t["v"], t["scale"]
    ops = torch.ops.tgnsa
    if kernel == "ball_fwd":
        return lambda: ops.ball_attention_fwd(
            q, k, v, t["pos"], t["m8"], t["sigma"], M, sc, 0, 0, 0, 0
        )[:1]
    if kernel.startswith("ball_bwd"):
        return lambda: ops.ball_attention_bwd(
            t["go"], q, k, v, t["pos"], t["m8"], t["sigma"], t["ob"], t["lseb"], M, sc, 0, 0, 0, 0
        )
    if kernel == "cmp_fwd":
        return lambda: ops.compressed_attention_fwd(
            q, t["kc"], t["vc"], t["bm8"], t["lo"], t["hi"], *t["nobias"], sc, 0, 0, 0, 0
        )
    if kernel.startswith("cmp_bwd"):
        return lambda: ops.compressed_attention_bwd(
            t["go"],
            q,
            t["kc"],
            t["vc"],
            t["bm8"],
            t["lo"],
            t["hi"],
            *t["nobias"],
            t["oc"],
            t["lsec"],
            sc,
            0,
            0,
            0,
            0,
        )
    if kernel == "select":
        return lambda: (
            K.select_blocks(q, t["kc"], t["lsec"], t["bm"], t["mask"], t["ptr"], C, SEL, G, TOPK),
        )
    if kernel == "sel_fwd":
        return lambda: ops.selected_attention_fwd(
            q, k, v, t["m8"], t["idx"], SEL, G, sc, 0, 0, 0, 0
        )[:1]
    if kernel.startswith("sel_bwd"):
        return lambda: ops.selected_attention_bwd(
            t["go"], q, k, v, t["m8"], t["idx"], t["os"], t["lses"], SEL, G, sc, 0, 0, 0, 0
        )
    raise KeyError(kernel)


def bench(fn):
    if torch.cuda.is_available():
        return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")
    t0 = time.perf_counter()  # CPU smoke test (interpreter)
    fn()
    return (time.perf_counter() - t0) * 1e3


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-6)).item()


def compare(kernel, out, ref):
    """(ok, error): outputs vs the default config's."""
    if kernel == "select":
        diff = (out[0] != ref[0]).any(1).float().mean().item()
        return diff <= 0.01, diff  # near-ties may flip with another summation order
    err = max(rel(a, b) for a, b in zip(out, ref) if a.is_floating_point())
    return err <= 2e-2, err


def key_of(kernel, dev):
    key = (kernel, _config.arch(dev), _config.dtype_class(torch.bfloat16), head_block(D))
    return key + (group_block(G),) if kernel in _config.ROW_KEYED else key


def set_head_dim(d):
    """Sweeps another head dim: the attention benchmark's inputs and this module follow."""
    global D
    D = attention.D = d


def set_group_size(g):
    """Sweeps another query group size (the selected kernels' row tile; their entries are
    keyed by it)."""
    global G
    G = attention.G = g


def run_cfg(kernel, t, c, ref):
    """(ms or None, err or message)."""
    key = key_of(kernel, t["q"].device)
    old = _config.TABLE.get(key)
    _config.TABLE[key] = c
    try:
        fn = op_fn(kernel, t)
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if ref is not None:
            ok, err = compare(kernel, out, ref)
            if not ok:
                return None, f"mismatch {err:.3g}"
        else:
            err = 0.0
        return bench(fn), err
    except Exception as e:  # noqa: BLE001  (compile errors, out of shared memory / registers)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
    finally:
        if old is None:
            _config.TABLE.pop(key, None)
        else:
            _config.TABLE[key] = old


def fmt_cfg(c):
    return " ".join(f"{k}={v}" for k, v in c.items() if not (k == "BM" and v == 0))


def sweep(t, deadline, only=None):
    dev = t["q"].device
    best = {}
    results = {}
    kernels = [k for k in ORDER if only is None or k in only]
    total_w = sum(WEIGHT[k] for k in kernels)
    for i, kernel in enumerate(kernels):
        now = time.time()
        rest_w = sum(WEIGHT[k] for k in kernels[i:])
        slice_end = now + (deadline - now) * WEIGHT[kernel] / rest_w
        base = _config.get(kernel, D, torch.bfloat16, dev)
        _config.TABLE.pop(key_of(kernel, dev), None)
        ref_out = op_fn(kernel, t)()
        d_ms, _ = run_cfg(kernel, t, base, None)
        rows = [(fmt_cfg(base) + " (default)", d_ms, 0.0)]
        best_c, best_ms = base, d_ms
        for c in GRIDS[kernel]:
            if time.time() > slice_end:
                rows.append(("... grid cut by the time budget", None, None))
                break
            full = dict(base, **c)
            if c.get("BM") == 0:
                full["BM"] = base["BM"]
            ms, err = run_cfg(kernel, t, full, ref_out)
            rows.append((fmt_cfg(full), ms, err))
            if ms is not None and ms < best_ms:
                best_c, best_ms = full, ms
        best[kernel] = best_c
        # keep the winner for the next kernels of the same op (dQ before dK/dV)
        _config.TABLE[key_of(kernel, dev)] = best_c
        results[kernel] = dict(default_ms=d_ms, best_ms=best_ms, best=best_c, rows=rows)
        log(
            f"{kernel} ({OP_OF[kernel]} op time): default {d_ms:.3f} ms -> best {best_ms:.3f} ms "
            f"[{fmt_cfg(best_c)}]  ({len(rows) - 1} configs)"
        )
        for name, ms, err in rows:
            e = err if isinstance(err, str) else ("" if err is None else f"err {err:.2g}")
            print(f"    {name:<48} {'-' if ms is None else f'{ms:8.3f} ms'}  {e}", flush=True)
    del total_w
    return best, results


def sdpa_fwd_ms(t):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, n = t["B"], t["n"]
    q, k, v = (x.view(B, n, H, D).transpose(1, 2) for x in (t["q"], t["k"], t["v"]))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))


def op_times(t, table):
    """ms of the 7 ops with the given TABLE."""
    saved = dict(_config.TABLE)
    _config.TABLE.clear()
    _config.TABLE.update(table)
    try:
        out = {}
        for op, kern in [
            ("ball fwd", "ball_fwd"),
            ("ball bwd", "ball_bwd_dq"),
            ("compressed fwd", "cmp_fwd"),
            ("compressed bwd", "cmp_bwd_dq"),
            ("select", "select"),
            ("selected fwd", "sel_fwd"),
            ("selected bwd", "sel_bwd_dq"),
        ]:
            fn = op_fn(kern, t)
            try:
                fn()
                out[op] = bench(fn)
            except Exception as e:  # noqa: BLE001
                log(f"{op} failed: {type(e).__name__}: {str(e)[:120]}")
                out[op] = float("nan")
        return out
    finally:
        _config.TABLE.clear()
        _config.TABLE.update(saved)


def print_ops(label, t, tables):
    S = t["S"]
    res = {name: op_times(t, tab) for name, tab in tables.items()}
    names = list(tables)
    print(f"\n{label}: per-op ms (S={S})")
    print("| op | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    ops = list(next(iter(res.values())))
    for op in ops + ["sum"]:
        vals = [sum(res[n].values()) if op == "sum" else res[n][op] for n in names]
        print(f"| {op} | " + " | ".join(f"{x:.3f}" for x in vals) + " |")
    sd = sdpa_fwd_ms(t)
    fl_sel = 4 * S * H * D * TOPK * SEL
    fl_sdpa = 4 * t["B"] * t["n"] ** 2 * H * D
    print(
        "selected fwd TFLOP/s (useful): "
        + ", ".join(f"{n} {fl_sel / res[n]['selected fwd'] / 1e9:.1f}" for n in names)
        + f"; SDPA fwd (flash) {fl_sdpa / sd / 1e9:.1f} TFLOP/s ({sd:.3f} ms)",
        flush=True,
    )
    return res


def check_reference(table, sizes=(1, 37, 129, 1000, 3000)):
    """The winners against the float64 reference at a small mixed batch."""
    import kernel_cases as kc

    saved = dict(_config.TABLE)
    _config.TABLE.clear()
    _config.TABLE.update(table)
    try:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        # bf16 only on CUDA (the interpreter has no bf16); CUDA tests cover fp16 with the table
        for dtype in (torch.bfloat16,) if dev == "cuda" else (torch.float16,):
            errs = kc.run_all(list(sizes), M, C, SEL, G, TOPK, H, D, dtype, device=dev, seed=3)
            worst = max((e / b if b else 0.0) for n, (e, b) in errs.items() if "groups" not in n)
            log(f"reference check {dtype}: ok (worst err / bound {worst:.2f})")
        return True
    except AssertionError as e:
        log(f"reference check FAILED: {e}")
        return False
    finally:
        _config.TABLE.clear()
        _config.TABLE.update(saved)


def layer_fb(t):
    import attention as A

    tt = dict(
        q=t["q"].clone(),
        k=t["k"].clone(),
        v=t["v"].clone(),
        pos=t["pos"],
        mask=t["mask"],
        ptr=t["ptr"],
        sigma=t["sigma"],
        S=t["S"],
        B=t["B"],
        n=t["n"],
    )
    ours, _ = A.measure(lambda x: A.layer(A._OURS, x), tt, True, (10, 100))
    sd, _ = A.measure(A.sdpa, tt, True, (5, 50))
    return ours, sd


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=170, help="seconds for the whole sweep")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--kernels", default=None, help="comma list (default: all)")
    ap.add_argument("--sweep-only", action="store_true", help="no final tables / checks")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (TRITON_INTERPRET=1)")
    ap.add_argument("--size", default=None, help="N or BxN of the sweep (default 65536)")
    ap.add_argument("--head-dim", type=int, default=None, help=f"head dim (default {D})")
    ap.add_argument(
        "--group-size", type=int, default=None, help=f"query group size g (default {G})"
    )
    args = ap.parse_args(argv)
    if args.head_dim:
        set_head_dim(args.head_dim)
    if args.group_size:
        set_group_size(args.group_size)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    big, small = ((1, 65536), (16, 4096)) if not args.smoke else ((1, 1024), (2, 512))
    if args.size:
        big = attention.parse_size(args.size)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)"
    log(
        f"{name}, torch {torch.__version__}, triton {triton.__version__}; bf16 H={H} D={D} m={M} "
        f"c={C} s={SEL} g={G} topk={TOPK}"
    )
    committed = dict(_config.TABLE)
    if args.verify:
        t = make(*big, torch.bfloat16, dev)
        print_ops(f"{big[0]} x {big[1]}", t, {"built-in defaults": {}, "TABLE": committed})
        ours, sd = layer_fb(t)
        log(
            f"whole layer f+b at {big[0]} x {big[1]}: ours {ours:.2f} ms, sdpa {sd:.2f} ms "
            f"({sd / ours:.1f}x)"
        )
        t = make(*small, torch.bfloat16, dev)
        print_ops(f"{small[0]} x {small[1]}", t, {"built-in defaults": {}, "TABLE": committed})
        ours, sd = layer_fb(t)
        log(
            f"whole layer f+b at {small[0]} x {small[1]}: ours {ours:.2f} ms, sdpa {sd:.2f} ms "
            f"({sd / ours:.1f}x)"
        )
        return 0
    deadline = T0 + args.budget - 45  # leave time for the checks and the 16 x 4k timings
    t = make(*big, torch.bfloat16, dev)
    log(f"inputs ready at {big[0]} x {big[1]}")
    _config.TABLE.clear()
    only = None if args.kernels is None else args.kernels.split(",")
    best, results = sweep(t, deadline, only)
    if args.sweep_only:
        return 0
    table = {key_of(k, t["q"].device): c for k, c in best.items()}
    res64 = print_ops(f"{big[0]} x {big[1]}", t, {"built-in defaults": {}, "best": table})
    del t
    ok = check_reference(table, (1, 37, 300) if args.smoke else (1, 37, 129, 1000, 3000))
    t = make(*small, torch.bfloat16, dev)
    res16 = print_ops(f"{small[0]} x {small[1]}", t, {"built-in defaults": {}, "best": table})
    print("\n# TABLE entries (paste into kernels/_config.py):")
    for key, c in table.items():
        print(f"    {key!r}: {c},")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tune_kernels.json"), "w") as f:
        json.dump(
            dict(
                device=name,
                results=results,
                ops_64k=res64,
                ops_16x4k=res16,
                reference_ok=ok,
                table=[[list(k), c] for k, c in table.items()],
            ),
            f,
            indent=1,
            default=str,
        )
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

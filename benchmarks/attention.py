"""Benchmark of one layer's attention (all three NSA branches) against dense and flex peers.

Prints one table: forward and forward+backward time (median, ms) and peak memory (GiB) of

  (a) ours      -- Triton kernels: block means -> compressed_attention -> select_blocks ->
                   selected_attention, plus ball_attention (local, distance bias), summed;
  (b) reference -- the same four ops from torch_geometric_nsa.ops.reference;
  (c) sdpa      -- dense scaled_dot_product_attention, flash backend, per cloud (batched);
  (d) flex      -- torch.nn.attention.flex_attention over the same block-sparse pattern
                   (local balls + the selected blocks of each query group, one softmax over the
                   union, distance bias as score_mod); the BlockMask is built outside the timing.

Defaults: 8 heads x head dim 32, bf16, m = 128 (ball), c = 32 (compression block), s = 32
(selection block), g = 32 (query group), topk = 8.  Sizes: N in {4k, 16k, 64k, 256k, 1M} in one
cloud and 16 clouds x {1k, 4k, 16k}.  Use ``--quick`` for a small subset.

Usage:  python benchmarks/attention.py [--quick] [--sizes 65536,16x1024] [--no-flex] ...
        python benchmarks/attention.py --json out/attention.json   # results for plots.py
        python benchmarks/attention.py --device cpu --sizes small   # CPU smoke run

On the CPU (a smoke run of the script, not a benchmark) "ours" is the reference ops, SDPA runs
its math backend, flex and the breakdown are skipped, times are medians of wall time and no peak
memory is recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types

import torch
from _results import metadata, write_json

from torch_geometric_nsa.ops import reference as R

H, D, M, C, SEL, G, TOPK = 8, 32, 128, 32, 32, 32, 8


def parse_size(tok):
    if "x" in tok:
        b, n = tok.split("x")
        return int(b), int(n)
    return 1, int(tok)


def make(B, n, dtype, dev):
    S = B * n
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(S, H, D, device=dev, dtype=dtype, generator=gen) for _ in range(3))
    # spatially coherent positions in slot order (like a ball tree): a noisy space-filling walk
    pos = torch.cumsum(torch.randn(S, 3, device=dev, generator=gen) * 0.05, 0)
    mask = torch.ones(S, dtype=torch.bool, device=dev)
    ptr = torch.arange(B + 1, device=dev, dtype=torch.long) * n
    sigma = -torch.ones(H, device=dev)
    return dict(q=q, k=k, v=v, pos=pos, mask=mask, ptr=ptr, sigma=sigma, S=S, B=B, n=n)


def block_means(x, mask, c):
    S = x.shape[0]
    w = mask.view(S // c, c, 1, 1).to(x.dtype)
    return (x.view(S // c, c, *x.shape[1:]) * w).sum(1) / w.sum(1).clamp_min(1)


def layer(ops, t, return_idx=False):
    q, k, v, mask, ptr = t["q"], t["k"], t["v"], t["mask"], t["ptr"]
    kc, vc = block_means(k, mask, C), block_means(v, mask, C)
    bm = mask.view(-1, C).any(1)
    ob = ops.ball_attention(q, k, v, t["pos"], mask, t["sigma"], M)
    oc, lse = ops.compressed_attention(q, kc, vc, bm, ptr, C)
    idx = ops.select_blocks(q, kc, lse, bm, mask, ptr, C, SEL, G, TOPK)
    os_ = ops.selected_attention(q, k, v, mask, idx, SEL, G)
    out = ob + oc + os_
    return (out, idx) if return_idx else out


OPS = ("ball_attention", "compressed_attention", "select_blocks", "selected_attention")


def ours_ops():
    """The Triton kernels as an ops namespace (CUDA runs only)."""
    from torch_geometric_nsa import kernels as K

    return types.SimpleNamespace(**{name: getattr(K, name) for name in OPS})


def sdpa(t):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, n = t["B"], t["n"]
    q, k, v = (x.view(B, n, H, D).transpose(1, 2) for x in (t["q"], t["k"], t["v"]))
    backend = SDPBackend.FLASH_ATTENTION if q.is_cuda else SDPBackend.MATH
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)


_flex = None


def flex_setup(t, idx):
    from torch.nn.attention.flex_attention import BlockMask

    S, dev = t["S"], t["q"].device
    nb = S // 128
    qb = torch.arange(nb, device=dev)
    # kv blocks (128 slots) touched by each q block: its ball + blocks of the selected s-blocks
    sel_blocks = (idx.clamp_min(0) * SEL // 128).view(nb, (128 // G) * TOPK)
    sel_blocks = torch.where(idx.view(nb, -1) >= 0, sel_blocks, qb[:, None])
    cand = torch.cat([qb[:, None], sel_blocks], 1)
    cand = torch.sort(cand, 1).values
    uniq = torch.cat(
        [torch.ones_like(cand[:, :1], dtype=torch.bool), cand[:, 1:] != cand[:, :-1]], 1
    )
    num = uniq.sum(1).to(torch.int32)
    key = torch.where(uniq, cand, torch.iinfo(torch.int64).max)
    kv_idx = torch.sort(key, 1).values.clamp_max(nb - 1).to(torch.int32)
    # from_kv_blocks wants the last dim to be the number of kv blocks (it builds the transpose)
    kv_idx = torch.nn.functional.pad(kv_idx, (0, max(0, nb - kv_idx.shape[1])))[:, :nb].contiguous()
    idxg, sigma = idx, t["sigma"].float()
    px, py, pz = (t["pos"][:, i].float().contiguous() for i in range(3))
    mask = t["mask"]

    def mask_mod(b, h, q_idx, kv_idx):
        same = (q_idx // M) == (kv_idx // M)
        kb = kv_idx // SEL
        gq = q_idx // G
        sel = idxg[gq, 0] == kb
        for j in range(1, TOPK):
            sel = sel | (idxg[gq, j] == kb)
        return mask[kv_idx] & (same | sel)

    def score_mod(score, b, h, q_idx, kv_idx):
        same = (q_idx // M) == (kv_idx // M)
        dx, dy, dz = px[q_idx] - px[kv_idx], py[q_idx] - py[kv_idx], pz[q_idx] - pz[kv_idx]
        dist = torch.sqrt(dx * dx + dy * dy + dz * dz)
        return torch.where(same, score + sigma[h] * dist, score)

    bmask = BlockMask.from_kv_blocks(
        num[None, None], kv_idx[None, None], BLOCK_SIZE=128, mask_mod=mask_mod, seq_lengths=(S, S)
    )
    return bmask, score_mod


def flex(t, bmask, score_mod):
    global _flex
    from torch.nn.attention.flex_attention import flex_attention

    if _flex is None:
        _flex = torch.compile(flex_attention, dynamic=False)
    q, k, v = (x.view(1, t["S"], H, D).transpose(1, 2) for x in (t["q"], t["k"], t["v"]))
    return _flex(q, k, v, score_mod=score_mod, block_mask=bmask).transpose(1, 2)


def measure(fn, t, bwd, reps):
    """median ms, peak GiB (of the whole step, inputs included)."""
    leaves = [t["q"], t["k"], t["v"]]
    for x in leaves:
        x.requires_grad_(bwd)
    gout = None

    def step():
        nonlocal gout
        o = fn(t)
        if bwd:
            if gout is None:
                gout = torch.randn_like(o)
            torch.autograd.backward(o, gout)
            for x in leaves:
                x.grad = None

    step()
    if not t["q"].is_cuda:  # CPU smoke run: wall time, no peak
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        for x in leaves:
            x.requires_grad_(False)
        return statistics.median(times), float("nan")
    import triton

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    ms = triton.testing.do_bench(step, warmup=reps[0], rep=reps[1], return_mode="median")
    for x in leaves:
        x.requires_grad_(False)
    return ms, peak


def fmt(r):
    return "-" if r is None else f"{r[0]:9.2f} {r[1]:6.2f}"


SMALL = [(1, 256), (1, 512), (2, 256)]


def parse_sizes(text, quick):
    if text == "small":
        return SMALL
    if text:
        return [parse_size(x) for x in text.split(",")]
    if quick:
        return [(1, 4096), (1, 65536), (16, 1024)]
    return [
        (1, 4096),
        (1, 16384),
        (1, 65536),
        (1, 262144),
        (1, 1048576),
        (16, 1024),
        (16, 4096),
        (16, 16384),
    ]


def json_row(B, n, res):
    """One size's results as a flat dict: ``<impl>_fwd_ms``, ``<impl>_fb_ms``,
    ``<impl>_peak_gib`` (null: not run; ``"oom"``: out of memory)."""
    row = {"clouds": B, "points": n, "N": B * n}
    for key, (fwd, fb) in res.items():
        for name, r, j in (("fwd_ms", fwd, 0), ("fb_ms", fb, 0), ("peak_gib", fb, 1)):
            v = r if r in (None, "oom") else r[j]
            row[f"{key}_{name}"] = None if isinstance(v, float) and v != v else v  # NaN -> null
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma list: N or BxN; 'small': CPU smoke sizes")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-ref", action="store_true")
    ap.add_argument("--ref-max", type=int, default=65536)
    ap.add_argument("--sdpa-max", type=int, default=262144, help="max points per cloud for SDPA")
    ap.add_argument("--breakdown", type=int, default=65536, help="per-branch times at this N")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes, args.quick)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    meta = metadata(dev)
    print(
        f"# {meta['card']}, torch {meta['torch']}, triton {meta['triton']}; {dtype}, H={H}, "
        f"D={D}, m={M}, c={C}, s={SEL}, g={G}, topk={TOPK}; commit {meta['commit']}",
        flush=True,
    )
    if cuda:
        Ours = ours_ops()
    else:  # smoke run: the reference is "ours"; flex needs the GPU here
        print("# CPU: 'ours' is the reference ops; no flex, no ref row, no breakdown", flush=True)
        Ours, args.no_flex, args.no_ref, args.breakdown = R, True, True, 0

    def empty_cache():
        if cuda:
            torch.cuda.empty_cache()

    rows = []
    config = dict(H=H, D=D, m=M, c=C, s=SEL, g=G, topk=TOPK, dtype=str(dtype)[6:])

    def save(final=False):
        if args.json:
            json_rows = [json_row(B, n, res) for B, n, res in rows]
            write_json(args.json, "attention", meta, json_rows, quiet=not final, config=config)

    for B, n in sizes:
        t = make(B, n, dtype, dev)
        S = t["S"]
        big = S >= 262144
        reps = (5, 30) if big else (10, 100)
        res = {}
        for key, fn, ok in [
            ("ours", lambda t: layer(Ours, t), True),
            ("ref", lambda t: layer(R, t), (not args.no_ref) and S <= args.ref_max),
            ("sdpa", sdpa, n <= args.sdpa_max),
        ]:
            if not ok:
                res[key] = (None, None)
                continue
            try:
                res[key] = (measure(fn, t, False, reps), measure(fn, t, True, reps))
            except torch.OutOfMemoryError:
                res[key] = ("oom", "oom")
            empty_cache()
        print(f"ours {B}x{n}: fwd {fmt(res['ours'][0])} / f+b {fmt(res['ours'][1])}", flush=True)
        if not args.no_flex:
            global _flex
            _flex = None
            torch._dynamo.reset()
            try:
                with torch.no_grad():
                    _, idx = layer(Ours, t, return_idx=True)
                bmask, smod = flex_setup(t, idx)
                fl = lambda t: flex(t, bmask, smod)  # noqa: E731
                res["flex"] = (measure(fl, t, False, reps), measure(fl, t, True, reps))
                del bmask
            except Exception as e:  # noqa: BLE001
                print(f"flex failed at {B}x{n}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                res["flex"] = (None, None)
            empty_cache()
        else:
            res["flex"] = (None, None)
        rows.append((B, n, res))
        save()  # after every size: a run cut by a timeout keeps its rows
        print(
            f"done {B}x{n}: "
            + " | ".join(f"{k} {fmt(v[0])} / {fmt(v[1])}" for k, v in res.items()),
            flush=True,
        )
        if args.breakdown and B == 1 and n == args.breakdown:
            breakdown(t)
        del t
        empty_cache()

    print(
        "\n| clouds x N | ours fwd ms | ours f+b ms | ours peak GiB | ref f+b ms | ref peak | "
        "sdpa fwd | sdpa f+b | sdpa peak | flex fwd | flex f+b | flex peak | f+b vs sdpa | "
        "f+b vs flex |"
    )
    print("|" + "---|" * 14)
    for B, n, res in rows:

        def g(k, i, j):
            r = res[k][i]
            if r is None:
                return "-"
            if r == "oom":
                return "OOM"
            return "-" if r[j] != r[j] else f"{r[j]:.2f}"  # NaN: not measured (CPU peak)

        def ratio(k):
            a, b = res["ours"][1], res[k][1]
            if a in (None, "oom") or b in (None, "oom"):
                return "-"
            return f"{b[0] / a[0]:.1f}x"

        print(
            f"| {B} x {n} | {g('ours', 0, 0)} | {g('ours', 1, 0)} | {g('ours', 1, 1)} | {g('ref', 1, 0)} | "
            f"{g('ref', 1, 1)} | {g('sdpa', 0, 0)} | {g('sdpa', 1, 0)} | {g('sdpa', 1, 1)} | "
            f"{g('flex', 0, 0)} | {g('flex', 1, 0)} | {g('flex', 1, 1)} | {ratio('sdpa')} | "
            f"{ratio('flex')} |"
        )
    save(final=True)


def breakdown(t):
    """Per-branch forward / fwd+bwd times and the TFLOP/s of the selected branch vs dense SDPA."""
    import triton

    from torch_geometric_nsa import kernels as K

    q, k, v, mask, ptr = t["q"], t["k"], t["v"], t["mask"], t["ptr"]
    S = t["S"]
    kc, vc = block_means(k, mask, C), block_means(v, mask, C)
    bm = mask.view(-1, C).any(1)
    _, lse = K.compressed_attention(q, kc, vc, bm, ptr, C)
    idx = K.select_blocks(q, kc, lse, bm, mask, ptr, C, SEL, G, TOPK)
    bench = lambda f: triton.testing.do_bench(f, warmup=10, rep=100, return_mode="median")  # noqa
    out = {}
    out["ball fwd"] = bench(lambda: K.ball_attention(q, k, v, t["pos"], mask, t["sigma"], M))
    out["compressed fwd"] = bench(lambda: K.compressed_attention(q, kc, vc, bm, ptr, C))
    out["select"] = bench(lambda: K.select_blocks(q, kc, lse, bm, mask, ptr, C, SEL, G, TOPK))
    out["selected fwd"] = bench(lambda: K.selected_attention(q, k, v, mask, idx, SEL, G))
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = K.selected_attention(qq, kk, vv, mask, idx, SEL, G)
    go = torch.randn_like(o)
    out["selected bwd"] = bench(lambda: torch.autograd.grad(o, (qq, kk, vv), go, retain_graph=True))
    o = K.ball_attention(qq, kk, vv, t["pos"], mask, t["sigma"], M)
    out["ball bwd"] = bench(lambda: torch.autograd.grad(o, (qq, kk, vv), go, retain_graph=True))
    kc2, vc2 = kc.detach().clone().requires_grad_(), vc.detach().clone().requires_grad_()
    o, _ = K.compressed_attention(qq, kc2, vc2, bm, ptr, C)
    out["compressed bwd"] = bench(
        lambda: torch.autograd.grad(o, (qq, kc2, vc2), go, retain_graph=True)
    )
    sd = bench(lambda: sdpa(t))
    fl_sel = 4 * S * H * D * TOPK * SEL
    fl_sdpa = 4 * t["B"] * t["n"] ** 2 * H * D
    print(f"\n# breakdown at S={S}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in out.items()))
    from torch.profiler import ProfilerActivity, profile

    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    tt = dict(t, q=qq, k=kk, v=vv)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.autograd.backward(layer(ours_ops(), tt), go)
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60)
    )
    print(
        f"# selected fwd {fl_sel / out['selected fwd'] / 1e9:.1f} TFLOP/s (useful) vs sdpa fwd "
        f"{fl_sdpa / sd / 1e9:.1f} TFLOP/s ({sd:.3f} ms)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

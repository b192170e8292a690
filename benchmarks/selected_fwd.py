"""Selected forward against dense SDPA's forward: TFLOP/s and the bytes its gathers move.

    python benchmarks/selected_fwd.py                      # N = 65,536, D in 32/64/128, g in 32/64
    python benchmarks/selected_fwd.py --sizes 16384 --dims 32

The selected branch's forward (``kernels.selected_attention``) on one cloud of ``N`` slots, bf16,
8 heads, selection blocks of ``s = 32``, top-8 blocks per query group, for head dims ``D`` and
group sizes ``g``, next to SDPA's flash forward on the same q/k/v (dense, the same cloud), both
with ``triton.testing.do_bench`` (median).  The selection is not computed (no compressed branch,
no select kernel to compile): each group takes

* ``local``: its own selection block and its nearest neighbours in tree order (what a spatially
  coherent selection looks like: neighbouring groups share most of their blocks, so the gathers
  hit L2), or
* ``random``: distinct blocks drawn uniformly (no sharing: the gathers go to DRAM).

Useful FLOP: ``4 S H D topk s`` (as ``attention.py``); SDPA: ``4 N^2 H D``.  Gather bytes: the
K and V rows every (group, head) program reads, ``2 (S / g) H topk s D`` elements, plus q and o;
"GB/s" is those bytes over the time, an upper bound on what the kernel must move (L2 hits move
less from DRAM).  Needs CUDA.
"""

import argparse

import torch
import triton

from torch_geometric_nsa import kernels as K

H, SEL, TOPK = 8, 32, 8


def selection(S, g, pattern, gen):
    """``[S // g, TOPK]`` ascending selection-block indices of every group."""
    ns, ng = S // SEL, S // g
    if pattern == "random":
        keys = torch.rand(ng, ns, generator=gen)
        return keys.topk(TOPK, dim=1).indices.sort(dim=1).values
    own = torch.arange(ng) * g // SEL  # the group's own selection block
    start = (own - TOPK // 2).clamp(0, ns - TOPK)
    return start[:, None] + torch.arange(TOPK)[None, :]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="65536", help="comma list of N (one cloud)")
    ap.add_argument("--dims", default="32,64,128", help="comma list of head dims")
    ap.add_argument("--groups", default="32,64", help="comma list of group sizes g")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    bench = lambda f: triton.testing.do_bench(f, warmup=10, rep=100, return_mode="median")  # noqa
    print(f"card: {torch.cuda.get_device_name()}, bf16, H={H}, s={SEL}, topk={TOPK}", flush=True)
    print(
        "N | D | g | selection | ours ms | TFLOP/s | gather GB/s | SDPA fwd ms | SDPA TFLOP/s | ours / SDPA"
    )
    print("---|---|---|---|---|---|---|---|---|---")
    for S in (int(n) for n in args.sizes.split(",")):
        for D in (int(d) for d in args.dims.split(",")):
            q, k, v = (
                torch.randn(S, H, D, generator=gen).to("cuda", torch.bfloat16) for _ in range(3)
            )
            mask = torch.ones(S, dtype=torch.bool, device="cuda")
            qd, kd, vd = (x.view(1, S, H, D).transpose(1, 2) for x in (q, k, v))
            sd = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qd, kd, vd))
            sd_tf = 4 * S * S * H * D / sd / 1e9
            for g in (int(x) for x in args.groups.split(",")):
                for pattern in ("local", "random"):
                    idx = selection(S, g, pattern, gen).cuda()
                    ms = bench(lambda: K.selected_attention(q, k, v, mask, idx, SEL, g))
                    tf = 4 * S * H * D * TOPK * SEL / ms / 1e9
                    gather = (2 * (S // g) * H * TOPK * SEL * D + 2 * S * H * D) * 2
                    print(
                        f"{S} | {D} | {g} | {pattern} | {ms:.3f} | {tf:.1f} | {gather / ms / 1e6:.0f} "
                        f"| {sd:.3f} | {sd_tf:.1f} | {tf / sd_tf:.0%}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()

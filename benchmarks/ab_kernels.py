"""A/B timing of the working tree's kernels against another commit's, in one process (GPU).

    git archive OLD kernels | tar -x -C .ab_old      # the other commit's kernels/
    python benchmarks/ab_kernels.py --old .ab_old/kernels --sizes 65536,16x4096

The old package is loaded under another name with its custom ops renamed (``tgnsa_old::``), so
both register side by side.  Every op (forward, and forward + backward) runs on the same inputs;
the table gives the median ms of each, interleaved over ``--rounds`` rounds, and the largest
difference of their outputs.

    python benchmarks/ab_kernels.py --bias --sizes 65536,16x4096

``--bias`` times the working tree's compressed and select ops without (``old``) and with
(``new``) the compressed distance bias (``ops.DistanceBias``, query to block centroid); the
difference column is then the bias's effect on the outputs, not an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_old(path: str):
    tmp = os.path.join(tempfile.mkdtemp(), "kernels_old")
    shutil.copytree(path, tmp)
    for name in os.listdir(tmp):
        if name.endswith(".py"):
            f = os.path.join(tmp, name)
            src = (
                open(f)
                .read()
                .replace('"tgnsa::', '"tgnsa_old::')
                .replace("'tgnsa::", "'tgnsa_old::")
            )
            src = src.replace("torch.ops.tgnsa.", "torch.ops.tgnsa_old.")
            open(f, "w").write(src)
    spec = importlib.util.spec_from_file_location(
        "kernels_old", os.path.join(tmp, "__init__.py"), submodule_search_locations=[tmp]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernels_old"] = mod
    spec.loader.exec_module(mod)
    return mod


def inputs(sizes, H, D, m, c, dtype):
    from torch_geometric_nsa.testing import padded_slots

    ptr, mask = padded_slots(sizes, m, 0)
    S = mask.numel()
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device=dev, dtype=dtype, generator=g)

    return dict(
        q=rnd(S, H, D),
        k=rnd(S, H, D),
        v=rnd(S, H, D),
        kc=rnd(S // c, H, D),
        vc=rnd(S // c, H, D),
        pos=torch.randn(S, 3, device=dev, generator=g),
        sigma=-torch.rand(H, device=dev, generator=g),
        mask=mask.to(dev),
        ptr=ptr.to(dev),
        block_mask=mask.to(dev).view(-1, c).any(1),
    )


def ops_of(K, t, m, c, s, g, topk, bias=None):
    def ball():
        return K.ball_attention(t["q"], t["k"], t["v"], t["pos"], t["mask"], t["sigma"], m)

    def compressed():
        return K.compressed_attention(
            t["q"], t["kc"], t["vc"], t["block_mask"], t["ptr"], c, bias=bias
        )

    lse = compressed()[1]

    def select():
        return K.select_blocks(
            t["q"], t["kc"], lse, t["block_mask"], t["mask"], t["ptr"], c, s, g, topk, bias=bias
        )

    idx = select()

    def sel():
        return K.selected_attention(t["q"], t["k"], t["v"], t["mask"], idx, s, g)

    ops = dict(ball=ball, compressed=lambda: compressed()[0], select=select, selected=sel)
    return ops if bias is None else {k: ops[k] for k in ("compressed", "select")}


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", help="the other commit's kernels/ folder")
    ap.add_argument(
        "--bias", action="store_true", help="A: no bias, B: the compressed distance bias"
    )
    ap.add_argument("--sizes", default="65536,16x4096")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if bool(args.old) == args.bias:
        ap.error("give exactly one of --old and --bias")
    import torch_geometric_nsa.kernels as new

    old = new if args.bias else load_old(args.old)
    H, D, m, c, s, g, topk = 8, 32, 128, 32, 32, 32, 8
    print(
        f"{'size':>10} {'op':>10} {'pass':>5} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'max diff':>9}"
    )
    for spec in args.sizes.split(","):
        n, _, N = spec.rpartition("x")
        sizes = [int(N)] * int(n or 1)
        t = inputs(sizes, H, D, m, c, torch.bfloat16)
        leaves = {k: v.requires_grad_() for k, v in t.items() if k in ("q", "k", "v", "kc", "vc")}
        bias = None
        if args.bias:  # sigma learned per head; centres: the blocks' mean positions
            sigma = (-torch.rand(H, device="cuda")).requires_grad_()
            bias = (sigma, t["pos"], t["pos"].view(-1, c, 3).mean(1))
        fo = ops_of(old, t, m, c, s, g, topk)
        fn = ops_of(new, t, m, c, s, g, topk, bias)
        for name in fn:
            passes = [("fwd", lambda f: f)]
            if name != "select":
                passes.append(("f+b", lambda f: lambda: f().float().sum().backward()))
            for pname, wrap in passes:
                times = {"old": [], "new": []}
                for _ in range(args.rounds):
                    for tag, f in (("old", fo[name]), ("new", fn[name])):
                        times[tag].append(do_bench(wrap(f), warmup=5, rep=30))
                a, b = (sorted(times[k])[len(times[k]) // 2] for k in ("old", "new"))
                with torch.no_grad():
                    diff = (fo[name]().float() - fn[name]().float()).abs().max().item()
                print(
                    f"{spec:>10} {name:>10} {pname:>5} {a:8.3f} {b:8.3f} {b / a:8.2f} {diff:9.2e}"
                )
        del leaves


if __name__ == "__main__":
    main()

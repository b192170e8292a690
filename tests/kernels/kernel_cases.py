"""Shared case builder + checks of the kernel tests (imported by the CUDA grid and by the
interpreter suite that runs in a subprocess with ``TRITON_INTERPRET=1``).

Every check compares the Triton kernels with the float64 reference
(:mod:`torch_geometric_nsa.ops.reference`): float32 needs a relative error <= 1e-4 (outputs and all
gradients); float16/bfloat16 need an error at most 2x that of the reference run in the same dtype,
plus a tiny floor.
"""

from __future__ import annotations

import torch

FP32_TOL = 1e-4
FLOOR = {torch.float16: 1e-5, torch.bfloat16: 1e-4}


def make_case(sizes, m, H, D, c, P=3, tail=0, seed=0, device="cpu"):
    from torch_geometric_nsa.testing import padded_slots

    g = torch.Generator().manual_seed(seed)
    ptr, mask = padded_slots(sizes, m, tail)
    S = mask.numel()

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    case = dict(
        S=S,
        ptr=ptr.to(device),
        mask=mask.to(device),
        q=rnd(S, H, D),
        k=rnd(S, H, D),
        v=rnd(S, H, D),
        pos=rnd(S, P),
        sigma=-rnd(H).abs(),
        kc=rnd(S // c, H, D),
        vc=rnd(S // c, H, D),
    )
    case["block_mask"] = case["mask"].reshape(-1, c).any(1)
    return case


def rel(a, b):
    """||a - b|| / ||b||, with ||b|| floored at 1e-2 * sqrt(numel) + 1 (exactly-zero gradients, e.g. dq
    of a query whose ball holds a single real key, would otherwise divide by rounding noise)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-2 * max(b.numel(), 1) ** 0.5 + 1.0)).item()


def _check(name, got, ref64, ref_same, dtype, errors):
    e = rel(got, ref64)
    if dtype == torch.float32:
        bound = FP32_TOL
    else:
        bound = 2 * rel(ref_same, ref64) + FLOOR[dtype]
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    errors[name] = (e, bound)
    assert e <= bound, f"{name}: rel err {e:.3g} > bound {bound:.3g}"


def _run(fn, inputs, grad_out, diff_names):
    leaves = {
        k: (v.detach().clone().requires_grad_(k in diff_names) if torch.is_tensor(v) else v)
        for k, v in inputs.items()
    }
    out = fn(leaves)
    o = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(o, [leaves[n] for n in diff_names], grad_out.to(o.dtype))
    return out, dict(zip(diff_names, grads))


def check_op(name, kfn, rfn, inputs64, dtype, grad_out, diff_names, errors, extra_cast=()):
    """Run kernel (dtype), reference (dtype) and reference (float64); compare outputs + grads."""

    def cast(d, dt):
        return {
            k: (
                v.to(dt)
                if torch.is_tensor(v) and v.is_floating_point() and k not in extra_cast
                else v
            )
            for k, v in d.items()
        }

    # like flash-attn: the float64 reference runs on the same dtype-rounded inputs
    rounded = cast(inputs64, dtype)
    grad_out = grad_out.to(dtype).double()
    ko, kg = _run(kfn, rounded, grad_out, diff_names)
    ro, rg = _run(rfn, cast(rounded, torch.float64), grad_out, diff_names)
    so, sg = (
        (None, {})
        if dtype == torch.float32
        else _run(rfn, cast(inputs64, dtype), grad_out, diff_names)
    )
    k0 = ko[0] if isinstance(ko, tuple) else ko
    r0 = ro[0] if isinstance(ro, tuple) else ro
    s0 = None if so is None else (so[0] if isinstance(so, tuple) else so)
    _check(f"{name}.o", k0, r0, s0, dtype, errors)
    for n in diff_names:
        _check(f"{name}.d{n}", kg[n], rg[n], sg.get(n), dtype, errors)
    return ko, ro


def importance(q, kc, lse, block_mask, mask, ptr, c, s, g, scale, bias=None):
    """float64 importance [S//g, S//s] (brute force; small inputs only), with the compressed
    branch's distance bias ``(sigma, pos, centre)`` if given."""
    from torch_geometric_nsa.ops.reference import _slot_cloud_bounds

    S, H, D = q.shape
    nc = kc.shape[0]
    in_cloud, start, end = _slot_cloud_bounds(ptr, S)
    beta = torch.arange(nc, device=q.device)
    valid = (
        in_cloud[:, None]
        & (beta >= start[:, None] // c)
        & (beta < end[:, None] // c)
        & block_mask[None, :]
    )
    sc = torch.einsum("ihd,jhd->ihj", q.double(), kc.double()) * scale
    if bias is not None:
        sigma, pos, centre = bias
        dist = (pos.double()[:, None, :] - centre.double()[None, :, :]).norm(dim=-1)
        sc = sc + sigma.double().view(1, -1, 1) * dist[:, None, :]
    l = lse.double()[:, :, None]
    keep = valid[:, None, :] & torch.isfinite(l)
    p = torch.where(keep, torch.exp(sc - torch.where(keep, l, 0.0)), 0.0).sum(1) * mask[:, None]
    return p.reshape(S // g, g, S // s, s // c).sum((1, 3))


def check_select(idx, ref_idx, imp, tol):
    """Equal sets, or (near-ties) sets of equal size whose importance sums agree within tol."""
    assert idx.shape == ref_idx.shape and idx.dtype == torch.int64
    assert ((idx >= 0).sum(1) == (ref_idx >= 0).sum(1)).all(), "different number of chosen blocks"
    srt = torch.where(idx < 0, torch.iinfo(torch.int64).max, idx)
    assert (srt[:, 1:] >= srt[:, :-1]).all(), "idx not ascending / padding not last"
    diff = (idx != ref_idx).any(1)
    if diff.any():
        rows = diff.nonzero().flatten()
        a = torch.where(idx[rows] >= 0, imp[rows].gather(1, idx[rows].clamp_min(0)), 0.0).sum(1)
        b = torch.where(
            ref_idx[rows] >= 0, imp[rows].gather(1, ref_idx[rows].clamp_min(0)), 0.0
        ).sum(1)
        assert ((a - b).abs() <= tol * b.abs() + 1e-12).all(), (
            f"select: {int(diff.sum())} groups differ beyond near-ties"
        )
    return int(diff.sum())


def run_all(
    sizes, m, c, s, g, topk, H, D, dtype, device="cpu", tail=0, seed=0, P=3, kernel_kwargs=None
):
    """Check all four ops on one mixed batch; returns {check: (err, bound)}."""
    from torch_geometric_nsa import kernels as K
    from torch_geometric_nsa.ops import reference as R

    kw = kernel_kwargs or {}
    case = make_case(sizes, m, H, D, c, P=P, tail=tail, seed=seed, device=device)
    S = case["S"]
    gen = torch.Generator().manual_seed(seed + 7)
    gout = torch.randn(S, H, D, generator=gen, dtype=torch.float64).to(device)
    errors = {}
    ptr, mask, bmask = case["ptr"], case["mask"], case["block_mask"]

    # 1. ball
    check_op(
        "ball",
        lambda t: K.ball_attention(
            t["q"], t["k"], t["v"], t["pos"], mask, t["sigma"], m, **kw.get("ball", {})
        ),
        lambda t: R.ball_attention(t["q"], t["k"], t["v"], t["pos"], mask, t["sigma"], m),
        dict(q=case["q"], k=case["k"], v=case["v"], pos=case["pos"], sigma=case["sigma"]),
        dtype,
        gout,
        ["q", "k", "v", "sigma"],
        errors,
        extra_cast=("pos", "sigma"),
    )
    # 2. compressed (+ lse)
    ko, ro = check_op(
        "compressed",
        lambda t: K.compressed_attention(
            t["q"], t["kc"], t["vc"], bmask, ptr, c, **kw.get("compressed", {})
        ),
        lambda t: R.compressed_attention(t["q"], t["kc"], t["vc"], bmask, ptr, c),
        dict(q=case["q"], kc=case["kc"], vc=case["vc"]),
        dtype,
        gout,
        ["q", "kc", "vc"],
        errors,
    )
    klse, rlse = ko[1], ro[1]
    assert klse.dtype == torch.float32 and klse.shape == (S, H)
    assert torch.equal(torch.isfinite(klse), torch.isfinite(rlse)), "lse: -inf pattern differs"
    fin = torch.isfinite(rlse)
    if fin.any():
        lerr = (klse.double()[fin] - rlse[fin]).abs().max().item()
        lb = 1e-4 if dtype == torch.float32 else 0.05
        errors["compressed.lse"] = (lerr, lb)
        assert lerr <= lb, f"lse abs err {lerr}"
    # 3. select (both fed with the same dtype inputs and the float64 reference lse)
    qd, kcd = case["q"].to(dtype), case["kc"].to(dtype)
    lse32 = rlse.float()
    idx = K.select_blocks(qd, kcd, lse32, bmask, mask, ptr, c, s, g, topk, **kw.get("select", {}))
    ridx = R.select_blocks(qd, kcd, lse32, bmask, mask, ptr, c, s, g, topk)
    imp = importance(qd, kcd, lse32, bmask, mask, ptr, c, s, g, D**-0.5)
    ndiff = check_select(idx, ridx, imp, 1e-4 if dtype == torch.float32 else 1e-3)
    errors["select.groups_differing"] = (ndiff, idx.shape[0])
    # 2b./3b. the compressed distance bias (block centroids; positions stay float64, the kernels
    # take them as float32), its gradient in sigma, and the selection on the biased scores
    w = mask.double().view(-1, c, 1)
    centre = (case["pos"].view(-1, c, case["pos"].shape[1]) * w).sum(1) / w.sum(1).clamp(min=1)

    def biased(t):
        return (t["sigma"], case["pos"], centre)

    ko, ro = check_op(
        "compressed+bias",
        lambda t: K.compressed_attention(t["q"], t["kc"], t["vc"], bmask, ptr, c, bias=biased(t)),
        lambda t: R.compressed_attention(
            t["q"], t["kc"], t["vc"], bmask, ptr, c, bias=R.DistanceBias(*biased(t))
        ),
        dict(q=case["q"], kc=case["kc"], vc=case["vc"], sigma=case["sigma"]),
        dtype,
        gout,
        ["q", "kc", "vc", "sigma"],
        errors,
        extra_cast=("sigma",),
    )
    blse32 = ro[1].float()
    bias32 = R.DistanceBias(case["sigma"], case["pos"], centre)
    idx = K.select_blocks(qd, kcd, blse32, bmask, mask, ptr, c, s, g, topk, bias=bias32)
    ridx_b = R.select_blocks(qd, kcd, blse32, bmask, mask, ptr, c, s, g, topk, bias=bias32)
    imp = importance(qd, kcd, blse32, bmask, mask, ptr, c, s, g, D**-0.5, bias=bias32)
    ndiff = check_select(idx, ridx_b, imp, 1e-4 if dtype == torch.float32 else 1e-3)
    errors["select+bias.groups_differing"] = (ndiff, idx.shape[0])
    # 4. selected (with the reference idx)
    check_op(
        "selected",
        lambda t: K.selected_attention(
            t["q"], t["k"], t["v"], mask, ridx, s, g, **kw.get("selected", {})
        ),
        lambda t: R.selected_attention(t["q"], t["k"], t["v"], mask, ridx, s, g),
        dict(q=case["q"], k=case["k"], v=case["v"]),
        dtype,
        gout,
        ["q", "k", "v"],
        errors,
    )
    return errors


#: mixed batches where one cloud's non-finite values used to reach the others (issue 11):
#: (sizes, m, c); s = 2c, g = c, topk = 2
NONFINITE_CASES = [([5, 7, 3], 8, 4), ([20, 50, 9], 16, 8), ([300, 1000, 40], 32, 8)]
#: the same batches at sizes the kernels take (ball and selection block >= 16)
KERNEL_NONFINITE_CASES = [([5, 7, 3], 16, 8), ([20, 50, 9], 16, 8), ([300, 1000, 40], 32, 8)]


def _pipeline(ops, t, ptr, mask, bm, m, c, s, g, topk):
    """All four ops on one batch (selection chained on the compressed LSE)."""
    ob = ops.ball_attention(t["q"], t["k"], t["v"], t["pos"], mask, t["sigma"], m)
    oc, lse = ops.compressed_attention(t["q"], t["kc"], t["vc"], bm, ptr, c)
    idx = ops.select_blocks(t["q"], t["kc"], lse, bm, mask, ptr, c, s, g, topk)
    os_ = ops.selected_attention(t["q"], t["k"], t["v"], mask, idx, s, g)
    return dict(ball=ob, compressed=oc, lse=lse, select=idx, selected=os_)


#: (tensor, value) poisoned by :func:`check_nonfinite_isolation`
POISONS = (
    ("q", float("nan")),
    ("k", float("nan")),
    ("v", float("inf")),
    ("kc", float("nan")),
    ("vc", float("nan")),
    ("vc", float("-inf")),
)


def check_nonfinite_isolation(
    ops, dtype, device="cpu", cases=NONFINITE_CASES, H=2, D=16, poisons=POISONS, last_only=False
):
    """Non-finite values in one cloud (a row of q, k, v, or one compressed block of kc, vc) leave
    every other cloud's outputs of all four ops bit-identical to the clean run's.  ``ops`` holds
    the four functions (``torch_geometric_nsa.kernels`` or ``ops.reference``).  ``last_only``
    poisons only the last cloud of each case (the interpreter's budget)."""
    for sizes, m, c in cases:
        s, g, topk = 2 * c, c, 2
        case = make_case(sizes, m, H, D, c, seed=len(sizes) + m, device=device)
        ptr, mask, bm = case["ptr"], case["mask"], case["block_mask"]
        clean = {n: case[n].to(dtype) for n in ("q", "k", "v", "kc", "vc", "sigma")}
        clean["pos"] = case["pos"].float()
        want = _pipeline(ops, clean, ptr, mask, bm, m, c, s, g, topk)
        bounds = ptr.tolist()
        for b in range(len(sizes) - 1 if last_only else 0, len(sizes)):
            a, e = bounds[b], bounds[b + 1]
            others = torch.ones(case["S"], dtype=torch.bool, device=device)
            others[a:e] = False
            for name, value in poisons:
                t = dict(clean)
                t[name] = clean[name].clone()
                row = (a + sizes[b] // 2) // (c if name in ("kc", "vc") else 1)
                t[name][row] = value
                got = _pipeline(ops, t, ptr, mask, bm, m, c, s, g, topk)
                where = f"sizes {sizes}, m={m}, c={c}: {name}={value} in cloud {b}"
                for out in ("ball", "compressed", "lse", "selected"):
                    x, y = got[out][others], want[out][others]
                    assert torch.equal(x, y), f"{where} changed {out} of other clouds"
                gsel = others.view(-1, g)[:, 0]
                assert torch.equal(got["select"][gsel], want["select"][gsel]), (
                    f"{where} changed the selection of other clouds' groups"
                )
                own = torch.cat(
                    [got[o][~others & mask].flatten() for o in ("ball", "compressed", "selected")]
                )
                assert not torch.isfinite(own).all(), f"{where}: the poison had no effect"


def check_eager_path(K, device="cpu", dtype=torch.float32):
    """Plain eager calls of the four ops run their implementations directly (autograd through a
    ``torch.autograd.Function`` named after the op); under a dispatch mode they go through the
    registered custom ops.  Both must give the same outputs and gradients, bit for bit."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    H, D, m, c, s, g = 2, 16, 64, 16, 32, 32
    case = make_case([100, 37], m, H, D, c, device=device)
    mask, ptr, bm = case["mask"], case["ptr"], case["block_mask"]
    args = [case[n].to(dtype).requires_grad_() for n in ("q", "k", "v", "kc", "vc", "sigma")]

    def run():
        q, k, v, kc_, vc_, sigma = args
        ob = K.ball_attention(q, k, v, case["pos"], mask, sigma, m)
        oc, lse = K.compressed_attention(q, kc_, vc_, bm, ptr, c)
        idx = K.select_blocks(q, kc_, lse, bm, mask, ptr, c, s, g, 2)
        os_ = K.selected_attention(q, k, v, mask, idx, s, g)
        outs = (ob, oc, lse, idx, os_)
        grads = torch.autograd.grad((ob + oc + os_).float().square().sum(), args)
        return outs, grads, (ob.grad_fn.name(), oc.grad_fn.name(), os_.grad_fn.name())

    direct, direct_grads, direct_names = run()
    with Passthrough():
        op, op_grads, op_names = run()
    assert direct_names == (
        "ball_attention_fwdBackward",
        "compressed_attention_fwdBackward",
        "selected_attention_fwdBackward",
    ), direct_names
    assert all(n.startswith("GeneratedBackwardFor_tgnsa_") for n in op_names), op_names
    for a, b in zip(direct + direct_grads, op + op_grads):
        assert torch.equal(a, b)

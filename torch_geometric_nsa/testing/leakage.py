from typing import Callable

import torch
from torch import Tensor


def _split(batch: Tensor):
    ids = torch.unique_consecutive(batch)
    return [(batch == b).nonzero().view(-1) for b in ids.tolist()]


def assert_no_leakage(
    module: Callable[..., Tensor],
    x: Tensor,
    pos: Tensor,
    batch: Tensor,
    atol: float = 1e-5,
    check_grad: bool = True,
    check_nonfinite: bool = True,
    **kwargs,
) -> None:
    r"""Asserts that a point-cloud module treats the clouds of a mixed batch
    independently: its output on the batch equals its outputs on every cloud
    alone (up to :obj:`atol`), the gradient of one cloud's output with
    respect to every other cloud's input is exactly zero, and non-finite
    features in one cloud (a NaN, an inf) leave every other cloud's output
    bit-identical to the clean batch's.

    The module is called as ``module(x, pos, batch, **kwargs)`` on the batch
    and ``module(x_b, pos_b, None, **kwargs)`` on each cloud.  Ship it in your
    own tests for layers stacked around :class:`ErwinNSAConv`.

    Args:
        module (callable): the module (put it in ``eval()`` mode if it uses
            dropout).
        x (torch.Tensor): ``[N, F]`` features.
        pos (torch.Tensor): ``[N, P]`` positions.
        batch (torch.Tensor): ``[N]`` sorted cloud index.
        atol (float): tolerance of the per-cloud comparison.
        check_grad (bool): also check the cross-cloud gradients.
        check_nonfinite (bool): also poison one point of each cloud with NaN,
            then inf, and compare the other clouds bit for bit.
    """
    clouds = _split(batch)
    full = module(x, pos, batch, **kwargs)
    for b, idx in enumerate(clouds):
        alone = module(x[idx], pos[idx], None, **kwargs)
        err = (full[idx] - alone).abs().max().item()
        if not err <= atol:
            raise AssertionError(
                f"cloud {b}: output in the batch differs from "
                f"the output alone by {err:.3e} > {atol}"
            )
    if check_nonfinite and len(clouds) > 1:
        _check_nonfinite(module, x, pos, batch, clouds, full, kwargs)
    if not check_grad or len(clouds) < 2:
        return
    x = x.detach().requires_grad_(True)
    out = module(x, pos, batch, **kwargs)
    for b, idx in enumerate(clouds):
        (grad,) = torch.autograd.grad(out[idx].sum(), x, retain_graph=True)
        others = torch.ones(x.size(0), dtype=torch.bool, device=x.device)
        others[idx] = False
        leak = grad[others].abs().max().item() if others.any() else 0.0
        if leak != 0.0:
            raise AssertionError(
                f"cloud {b}: its output has a gradient of {leak:.3e} w.r.t. other clouds' inputs"
            )


def _check_nonfinite(module, x, pos, batch, clouds, full, kwargs):
    with torch.no_grad():
        for b, idx in enumerate(clouds):
            others = torch.ones(x.size(0), dtype=torch.bool, device=x.device)
            others[idx] = False
            for value in (float("nan"), float("inf")):
                poisoned = x.detach().clone()
                poisoned[idx[idx.numel() // 2]] = value
                out = module(poisoned, pos, batch, **kwargs)
                if not torch.equal(out[others], full[others].detach()):
                    diff = (out[others] - full[others]).abs()
                    raise AssertionError(
                        f"a {value} in cloud {b}'s features changed other clouds' outputs "
                        f"(max change {diff.nan_to_num(float('inf')).max().item():.3e})"
                    )

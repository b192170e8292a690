"""Shared fixtures of the ops tests: slot-ordered random inputs laid out the way the ball tree
lays them out, and an independent brute-force (per-query Python loop) spec of every op."""

import math
from types import SimpleNamespace

import pytest
import torch

from torch_geometric_nsa.testing import padded_slots


def make_inputs(sizes, m, H=2, D=8, P=3, c=None, dtype=torch.float64, tail=0, seed=0):
    """Random slot-ordered inputs for clouds of ``sizes`` points and ball size ``m``.

    Each cloud of n points gets ceil(n / m) * m slots, real points first, pads last; ``tail``
    extra slots of no cloud (mask False) are appended past ``ptr[B]`` (capacity layout).
    """
    g = torch.Generator().manual_seed(seed)
    ptr, mask = padded_slots(sizes, m, tail)
    S = mask.numel()

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    out = SimpleNamespace(
        S=S,
        H=H,
        D=D,
        m=m,
        ptr=ptr,
        mask=mask,
        sizes=list(sizes),
        q=rnd(S, H, D),
        k=rnd(S, H, D),
        v=rnd(S, H, D),
        pos=rnd(S, P),
        sigma=-rnd(H).abs(),
    )
    if c is not None:
        out.c = c
        out.kc, out.vc = rnd(S // c, H, D), rnd(S // c, H, D)
        out.block_mask = mask.reshape(-1, c).any(1)
    return out


def random_sizes(num_clouds, max_n=300, seed=0):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(1, max_n + 1, (num_clouds,), generator=g).tolist()


# ---- brute-force spec: one query at a time, plain Python sets of keys --------------------------
def _attend(scores, vals):
    if scores.shape[0] == 0:
        return torch.zeros(vals.shape[-1], dtype=vals.dtype)
    return torch.softmax(scores, 0) @ vals


def _cloud_of(ptr, i):
    for b in range(ptr.numel() - 1):
        if int(ptr[b]) <= i < int(ptr[b + 1]):
            return b
    return None


def brute_ball(q, k, v, pos, mask, sigma, m, scale=None):
    S, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    o = torch.zeros_like(q)
    for i in range(S):
        b = i // m
        J = [j for j in range(b * m, (b + 1) * m) if mask[j]]
        for h in range(H):
            s = (
                torch.stack(
                    [scale * (q[i, h] @ k[j, h]) + sigma[h] * (pos[i] - pos[j]).norm() for j in J]
                )
                if J
                else q.new_zeros(0)
            )
            o[i, h] = _attend(s, v[J, h] if J else v[:0, h])
    return o


def _bias_of(bias, i, j, h):
    """The distance bias of query ``i`` and block ``j`` in head ``h`` (0 without one)."""
    if bias is None:
        return 0.0
    sigma, pos, centre = bias
    return sigma[h] * (pos[i] - centre[j]).norm()


def brute_compressed(q, kc, vc, block_mask, ptr, c, scale=None, bias=None):
    S, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    o = torch.zeros_like(q)
    lse = torch.full((S, H), -math.inf, dtype=torch.float64)
    for i in range(S):
        b = _cloud_of(ptr, i)
        if b is None:
            continue
        J = [j for j in range(int(ptr[b]) // c, int(ptr[b + 1]) // c) if block_mask[j]]
        if not J:
            continue
        for h in range(H):
            s = torch.stack([scale * (q[i, h] @ kc[j, h]) + _bias_of(bias, i, j, h) for j in J])
            o[i, h] = _attend(s, vc[J, h])
            lse[i, h] = torch.logsumexp(s.double(), 0)
    return o, lse


def brute_select(q, kc, lse, block_mask, mask, ptr, c, s, g, topk, scale=None, bias=None):
    S, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    r = s // c
    idx = torch.full((S // g, topk), -1, dtype=torch.long)
    for G in range(S // g):
        queries = [i for i in range(G * g, (G + 1) * g) if mask[i]]
        b = _cloud_of(ptr, G * g)
        if not queries or b is None:
            continue
        cands = [
            gm
            for gm in range(int(ptr[b]) // s, int(ptr[b + 1]) // s)
            if mask[gm * s : (gm + 1) * s].any()
        ]
        imp = {}
        for gm in cands:
            tot = 0.0
            for i in queries:
                for beta in range(gm * r, (gm + 1) * r):
                    if block_mask[beta]:
                        for h in range(H):
                            score = scale * float(q[i, h] @ kc[beta, h])
                            score += float(_bias_of(bias, i, beta, h))
                            tot += math.exp(score - float(lse[i, h]))
            imp[gm] = tot
        best = sorted(cands, key=lambda gm: (-imp[gm], gm))[:topk]
        for t, gm in enumerate(sorted(best)):
            idx[G, t] = gm
    return idx


def brute_selected(q, k, v, mask, idx, s, g, scale=None):
    S, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    o = torch.zeros_like(q)
    for i in range(S):
        J = [
            j
            for gm in idx[i // g].tolist()
            if gm >= 0
            for j in range(gm * s, (gm + 1) * s)
            if mask[j]
        ]
        for h in range(H):
            sc = torch.stack([scale * (q[i, h] @ k[j, h]) for j in J]) if J else q.new_zeros(0)
            o[i, h] = _attend(sc, v[J, h] if J else v[:0, h])
    return o


@pytest.fixture
def inputs():
    """Factory: ``inputs(sizes, m, H=2, D=8, P=3, c=None, dtype=float64, tail=0, seed=0)``."""
    return make_inputs


@pytest.fixture
def sizes():
    """Factory: ``sizes(num_clouds, max_n=300, seed=0)`` random cloud sizes in 1..max_n."""
    return random_sizes


@pytest.fixture
def brute():
    """The brute-force spec: ``brute.ball``, ``.compressed``, ``.select``, ``.selected``."""
    return SimpleNamespace(
        ball=brute_ball, compressed=brute_compressed, select=brute_select, selected=brute_selected
    )


@pytest.fixture
def small_chunks(monkeypatch):
    """Makes the reference chunk its work into many small pieces (exercises chunk borders)."""
    from torch_geometric_nsa.ops import reference

    monkeypatch.setattr(reference, "MAX_CHUNK_ELEMENTS", 2000)


@pytest.fixture(autouse=True)
def _one_thread():
    """The ops tests run thousands of tiny kernels: one intra-op thread avoids OpenMP barrier
    overhead (which dominates on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

import pytest
import torch

from torch_geometric_nsa.ops import reference as R


def compressed(x):
    return R.compressed_attention(x.q, x.kc, x.vc, x.block_mask, x.ptr, x.c)[1]


def call(x, s, g, topk, lse=None, **kw):
    lse = compressed(x) if lse is None else lse
    return R.select_blocks(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, x.c, s, g, topk, **kw)


def check_format(idx, topk):
    """Valid entries ascending and distinct, then -1 padding."""
    assert idx.dtype == torch.long and idx.shape[1] == topk and not idx.requires_grad
    valid = idx >= 0
    assert torch.equal(valid, valid.cummin(dim=1).values)  # no entry after a -1
    big = torch.where(valid, idx, torch.full_like(idx, 2**40))
    assert (big[:, 1:] > big[:, :-1]).logical_or(~valid[:, 1:]).all()


@pytest.mark.parametrize(
    "m,c,s,g,topk,seed",
    [
        (16, 4, 8, 4, 3, 0),
        (16, 2, 4, 1, 2, 1),  # per-query selection
        (32, 4, 4, 16, 4, 2),  # s == c
        (16, 4, 16, 16, 50, 3),  # topk > number of candidates
    ],
)
def test_matches_brute_force(inputs, sizes, brute, m, c, s, g, topk, seed):
    x = inputs(sizes(3, max_n=150, seed=seed), m, c=c, seed=seed, tail=m)
    lse = compressed(x)
    idx = call(x, s, g, topk, lse=lse)
    check_format(idx, topk)
    expected = brute.select(x.q, x.kc, lse, x.block_mask, x.mask, x.ptr, c, s, g, topk)
    assert torch.equal(idx, expected)


def test_ties_go_to_smaller_block(inputs):
    x = inputs([64, 64], 16, c=4)
    x.q.zero_()  # every block of a cloud gets exactly the same importance
    idx = call(x, 8, 4, 3)
    expected = torch.tensor([[0, 1, 2]] * 16 + [[8, 9, 10]] * 16)
    assert torch.equal(idx, expected)


def test_identical_blocks_tie_exactly(inputs):
    x = inputs([64], 16, c=4)
    x.kc[:] = x.kc[5]  # all compressed keys equal -> exact ties, whatever q
    idx = call(x, 4, 1, 2)
    assert torch.equal(idx, torch.tensor([[0, 1]] * 64))


def test_topk_larger_than_candidates_and_pad_blocks(inputs):
    # cloud 0: one point (selection blocks 1..3 hold only pads), cloud 1: 20 points
    x = inputs([1, 20], 16, c=2)
    idx = call(x, 4, 4, 6)
    check_format(idx, 6)
    assert torch.equal(idx[0], torch.tensor([0, -1, -1, -1, -1, -1]))
    assert torch.equal(idx[1:4], torch.full((3, 6), -1))  # groups of pads only
    # cloud 1: slots 16..47, real 16..35 -> selection blocks 4..8 hold real slots
    assert torch.equal(idx[4], torch.tensor([4, 5, 6, 7, 8, -1]))
    assert torch.equal(idx[9:12], torch.full((3, 6), -1))


def test_group_size_one_is_per_query(inputs, sizes):
    x = inputs(sizes(2, seed=8), 16, c=4, seed=8)
    lse = compressed(x)
    idx = call(x, 8, 1, 2, lse=lse)
    assert idx.shape == (x.S, 2)
    # queries of the same ball generally disagree: selection is really per query
    assert not torch.equal(idx[0], idx[1]) or not torch.equal(idx[0], idx[2])
    pad_rows = ~x.mask
    assert torch.equal(idx[pad_rows], torch.full_like(idx[pad_rows], -1))


def test_tail_groups_and_no_leakage(inputs):
    x = inputs([20, 30], 16, c=4, tail=16)
    lse = compressed(x)
    idx = call(x, 8, 8, 3, lse=lse)
    assert torch.equal(idx[-2:], torch.full((2, 3), -1))  # tail groups
    cloud0 = idx[:4]
    assert ((cloud0 == -1) | (cloud0 < 4)).all()
    x.kc[8:] = 50 * torch.randn_like(x.kc[8:])  # other cloud's keys
    x.q[32:] = 50 * torch.randn_like(x.q[32:])
    assert torch.equal(call(x, 8, 8, 3, lse=lse)[:4], cloud0)


def test_chunking_is_invisible(inputs, sizes, small_chunks):
    x = inputs(sizes(3, seed=9), 16, c=4, seed=9)
    lse = compressed(x)
    R.MAX_CHUNK_ELEMENTS = 2**25
    idx = call(x, 8, 4, 3, lse=lse)
    R.MAX_CHUNK_ELEMENTS = 300
    assert torch.equal(call(x, 8, 4, 3, lse=lse), idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision(inputs, dtype):
    x = inputs([40, 70], 16, c=4, dtype=dtype)
    idx = call(x, 8, 4, 2)
    check_format(idx, 2)

"""``testing.padded_slots``: the layout the ops tests and kernel tests build their inputs on."""

import torch

from torch_geometric_nsa.testing import padded_slots


def test_layout_matches_ball_tree_padding():
    ptr, mask = padded_slots([1, 128, 129, 5], 128, tail=7)
    assert ptr.tolist() == [0, 128, 256, 512, 640]
    assert mask.numel() == 640 + 7
    real = [int(mask[int(a) : int(b)].sum()) for a, b in zip(ptr[:-1], ptr[1:])]
    assert real == [1, 128, 129, 5]
    # real points first, pads last inside every cloud; tail slots are no cloud
    for a, n in zip(ptr[:-1].tolist(), real):
        assert mask[a : a + n].all()
    assert not mask[640:].any()
    assert mask.dtype == torch.bool and ptr.dtype == torch.long

"""Launch-config resolution (``kernels/_config.py``): plain Python, no kernels run."""

import pytest
import torch
from torch_geometric_nsa.kernels import _config


@pytest.fixture
def sm90(monkeypatch):
    monkeypatch.setattr(_config, "arch", lambda device: "sm90")


def sel_fwd(D, rows, **kw):
    return _config.get("sel_fwd", D, torch.bfloat16, torch.device("cpu"), rows=rows, **kw)


def test_entries_measured_at_one_group_tile_apply_to_it_only(sm90):
    one_warp = dict(BN=32, num_warps=1, num_stages=2)
    for D in (64, 128):
        got = sel_fwd(D, 32)
        assert {k: got[k] for k in one_warp} == one_warp
        # 64-row groups: no measured entry, the built-in default (not the 32-row one)
        assert sel_fwd(D, 64) == _config._base("sel_fwd", D, "16", "sm90")
    # head dim 32: a measured entry per group tile; an entry without a row tile applies to
    # every other tile
    assert sel_fwd(32, 32)["num_warps"] == 1 and sel_fwd(32, 64)["num_warps"] == 4
    assert sel_fwd(32, 16)["num_warps"] == 1


def test_explicit_arguments_win_over_the_table(sm90):
    got = sel_fwd(128, 32, block_n=64, num_warps=4)
    assert got["BN"] == 64 and got["num_warps"] == 4 and got["num_stages"] == 2


def test_table_keys_name_known_kernels():
    for key in _config.TABLE:
        assert key[0] in _config.KERNELS and len(key) in (4, 5), key
        # a row tile only in the keys of the kernels whose launches pass one
        assert len(key) == 4 or key[0] in _config.ROW_KEYED, key


def test_a_row_tile_for_a_kernel_without_one_raises():
    with pytest.raises(ValueError, match="ball_fwd"):
        _config.get("ball_fwd", 32, torch.bfloat16, torch.device("cpu"), rows=32)


def test_offsets_widen_to_int64_at_2_31_elements():
    """The selected kernels' I64 switch: int32 offsets only while every tensor fits them."""
    from torch_geometric_nsa.kernels._common import wide_offsets

    small, idx = torch.empty(4, 8, 32), torch.empty(2, 8, dtype=torch.long)
    assert not wide_offsets(small, idx)
    assert not wide_offsets(torch.empty(1).expand(2**31 - 1), idx)
    assert wide_offsets(small, torch.empty(1).expand(2**31))  # stride 0: no memory

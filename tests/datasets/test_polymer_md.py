import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import PolymerMD

h5py = pytest.importorskip("h5py")


def _write(root, split, tid, T=20, N=6, rng=None):
    d = root / "raw" / f"polymer_{split}" / tid
    d.mkdir(parents=True)
    rng = rng or np.random.default_rng(0)
    pos = np.cumsum(rng.normal(0, 0.1, (T, N, 3)), axis=0).astype(np.float32)
    with h5py.File(d / "position.h5", "w") as f:
        f["position"] = pos
    with h5py.File(d / "ptype.h5", "w") as f:
        f["particle_type"] = np.arange(N) % 2
    with h5py.File(d / "bond.h5", "w") as f:
        f["bond_indices"] = np.stack([np.arange(N - 1), np.arange(1, N)], 1)
    return pos


def test_polymer(tmp_path):
    pos = _write(tmp_path, "train", "0")
    _write(tmp_path, "train", "1")
    _write(tmp_path, "test", "7", T=18)
    ds = PolymerMD(str(tmp_path))
    te = PolymerMD(str(tmp_path), split="test")
    assert len(ds) == 2 * (20 - 16) and len(te) == 18 - 16
    d = ds[0]
    assert d.x.shape == (6, 3 * 15 + 2) and d.y.shape == (6, 3)
    assert d.edge_index.shape == (2, 10)
    acc = pos[16] - 2 * pos[15] + pos[14]
    assert np.allclose(d.acc.numpy(), acc, atol=1e-5)
    assert torch.allclose(ds.denormalize(d.y), d.acc, atol=1e-5)
    assert torch.equal(te.stats["acc_std"], ds.stats["acc_std"])
    # split file selects trajectories
    (tmp_path / "raw" / "polymer_train.txt").write_text("1\n")
    ds1 = PolymerMD(str(tmp_path), force_reload=True)
    assert len(ds1) == 4 and ds1.trajs[0]["id"] == "1"


def test_polymer_malformed(tmp_path):
    _write(tmp_path, "train", "0")
    _write(tmp_path, "test", "0")
    with h5py.File(tmp_path / "raw" / "polymer_train" / "0" / "ptype.h5", "w") as f:
        f["wrong_key"] = np.zeros(6)
    with pytest.raises(ValueError, match=r"ptype\.h5.*particle_type"):
        PolymerMD(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="polymer_train"):
        PolymerMD(str(tmp_path / "empty"))

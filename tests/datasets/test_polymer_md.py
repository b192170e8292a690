import os

import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import PolymerMD

h5py = pytest.importorskip("h5py")


def _write(root, split, tid, T=20, N=6, rng=None, ptype=None, bonds=None, folder=None, step=0.1):
    """One trajectory in the benchmark's layout: polymer_<split>/<id>/*.h5."""
    d = root / "raw" / (folder or f"polymer_{split}") / tid
    d.mkdir(parents=True, exist_ok=True)
    rng = rng or np.random.default_rng(0)
    pos = np.cumsum(rng.normal(0, step, (T, N, 3)), axis=0).astype(np.float32)
    with h5py.File(d / "position.h5", "w") as f:
        f["position"] = pos
    with h5py.File(d / "ptype.h5", "w") as f:
        f["particle_type"] = np.arange(N) % 2 if ptype is None else ptype
    with h5py.File(d / "bond.h5", "w") as f:
        f["bond_indices"] = (
            np.stack([np.arange(N - 1), np.arange(1, N)], 1) if bonds is None else bonds
        )
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
    assert not (tmp_path / "empty").exists()  # no empty folders left behind


def test_polymer_malformed_bonds(tmp_path):
    _write(tmp_path, "train", "0", bonds=np.arange(5))  # 1-D
    _write(tmp_path, "test", "0")
    with pytest.raises(ValueError, match=r"bond\.h5.*'bond_indices' has shape \(5,\)"):
        PolymerMD(str(tmp_path))


def _benchmark(tmp_path):
    """The benchmark's layout: splits/{train,val,test_class2}.txt with ids of
    folders under polymer_train/ (train, val) and polymer_test/ (test)."""
    rng = np.random.default_rng(1)
    P = {}
    for tid in ("00003", "00011", "00042", "00107"):  # 00107: in no split file
        P[tid] = _write(tmp_path, "train", tid, T=19 + len(P), rng=rng)
    P["val"] = _write(tmp_path, "train", "00500", T=21, rng=rng, step=10.0)  # larger moves
    P["test"] = _write(tmp_path, "test", "00900", T=18, rng=rng)
    _write(tmp_path, "test", "00901", T=18, rng=rng)  # listed nowhere
    splits = tmp_path / "raw" / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("00042\n00003\n00011\n")
    (splits / "val.txt").write_text("00500\n")
    (splits / "test_class2.txt").write_text("00900\n")
    return P


def test_benchmark_split_files(tmp_path):
    P = _benchmark(tmp_path)
    tr = PolymerMD(str(tmp_path))
    va = PolymerMD(str(tmp_path), split="val")
    te = PolymerMD(str(tmp_path), split="test_class2")
    assert [t["id"] for t in tr.trajs] == ["00042", "00003", "00011"]  # as listed
    assert [t["id"] for t in va.trajs] == ["00500"] and va.trajs[0]["path"].endswith(
        os.path.join("polymer_train", "00500", "position.h5")
    )
    assert [t["id"] for t in te.trajs] == ["00900"] and "polymer_test" in te.trajs[0]["path"]
    assert len(tr) == (21 - 16) + (19 - 16) + (20 - 16) and len(va) == 5 and len(te) == 2
    assert np.allclose(te[0].pos.numpy(), P["test"][15])
    # statistics from the training trajectories only: the validation run is not in them
    train = [P[i].astype(np.float64) for i in ("00042", "00003", "00011")]
    acc = np.concatenate([(p[2:] - 2 * p[1:-1] + p[:-2]).reshape(-1, 3) for p in train])
    assert np.allclose(tr.stats["acc_std"].numpy(), acc.std(0), rtol=1e-4)
    assert torch.equal(va.stats["acc_std"], tr.stats["acc_std"])
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test_class2'\]"):
        PolymerMD(str(tmp_path), split="test")
    # a split file naming a missing trajectory
    (tmp_path / "raw" / "splits" / "val.txt").write_text("00500\n00777\n")
    with pytest.raises(FileNotFoundError, match=r"'00777'.*polymer_train"):
        PolymerMD(str(tmp_path), split="val")


def test_simple_layout_rejects_benchmark_names(tmp_path):
    _write(tmp_path, "train", "0")
    _write(tmp_path, "test", "0")
    with pytest.raises(ValueError, match=r"\['train', 'test'\].*no 'splits/'"):
        PolymerMD(str(tmp_path), split="val")


def test_cache_follows_replaced_trajectory(tmp_path):
    _write(tmp_path, "train", "0", T=30)
    _write(tmp_path, "test", "0")
    a = PolymerMD(str(tmp_path), window=4)
    assert a[0].x.shape == (6, 3 * 3 + 2) and len(a) == 30 - 4
    b = PolymerMD(str(tmp_path))  # another window
    assert b[0].x.shape == (6, 3 * 15 + 2) and len(b) == 30 - 16
    # replace the trajectory by a shorter, different one at the same path
    import shutil

    shutil.rmtree(tmp_path / "raw" / "polymer_train" / "0")
    new = _write(tmp_path, "train", "0", T=19, rng=np.random.default_rng(5))
    c = PolymerMD(str(tmp_path))
    assert c[0].x.shape == (6, 3 * 15 + 2) and len(c) == 19 - 16
    assert np.allclose(c[0].pos.numpy(), new[15])
    assert not torch.equal(c.stats["acc_std"], b.stats["acc_std"])


def test_planted_pickle_is_refused(tmp_path):
    from _evil import plant

    _write(tmp_path, "train", "0")
    _write(tmp_path, "test", "0")
    ds = PolymerMD(str(tmp_path))
    marker = tmp_path / "pwned"
    plant(ds.processed_paths[0], marker)
    for name in ("pre_transform.pt", "pre_filter.pt"):
        plant(tmp_path / "processed" / name, marker)
    with pytest.raises(
        ValueError, match=rf"Refusing to load processed file '{ds.processed_paths[0]}'"
    ):
        PolymerMD(str(tmp_path))
    assert not marker.exists()
    PolymerMD(str(tmp_path), force_reload=True)
    assert not marker.exists()


def test_unseen_particle_type(tmp_path):
    _write(tmp_path, "train", "0")  # types 0, 1
    _write(tmp_path, "test", "5", ptype=np.array([0, 1, 2, 0, 1, 0]))
    assert PolymerMD(str(tmp_path)).num_types == 2
    with pytest.raises(ValueError, match=r"polymer_test/5/ptype\.h5.*particle type 2 is unseen"):
        PolymerMD(str(tmp_path), split="test")
    te = PolymerMD(str(tmp_path), split="test", num_types=3)
    assert te[0].x.shape == (6, 45 + 3) and te[0].x[2, 45:].tolist() == [0, 0, 1]
    _write(tmp_path / "neg", "train", "0", ptype=np.array([0, -1, 0, 0, 0, 0]))
    _write(tmp_path / "neg", "test", "0")
    with pytest.raises(ValueError, match=r"ptype\.h5.*non-negative"):
        PolymerMD(str(tmp_path / "neg"))


class _Shift:
    def __init__(self, by):
        self.by, self.calls = by, 0

    def __call__(self, data):
        self.calls += 1
        data.pos = data.pos + self.by
        return data

    def __repr__(self):
        return f"_Shift(by={self.by})"


def test_pre_transform_runs_once(tmp_path):
    _write(tmp_path, "train", "0", T=22)
    _write(tmp_path, "test", "1", T=19)
    plain, te_plain = PolymerMD(str(tmp_path)), PolymerMD(str(tmp_path), split="test")
    t = _Shift(3.0)
    ds = PolymerMD(str(tmp_path), pre_transform=t)
    assert t.calls == len(plain) + len(te_plain) == 6 + 3
    for i in range(len(ds)):
        assert torch.allclose(ds[i].pos, plain[i].pos + 3) and torch.equal(ds[i].x, plain[i].x)
    assert t.calls == 9  # not again on access
    t2 = _Shift(3.0)
    te = PolymerMD(str(tmp_path), split="test", pre_transform=t2)
    assert t2.calls == 0 and torch.allclose(te[2].pos, te_plain[2].pos + 3)

import warnings

import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import MDTrajectory

mda = pytest.importorskip("MDAnalysis")
pytest.importorskip("MDAnalysisTests")


def _write_pair(tmp_path, frames=12, atoms=5, box=None, jitter=0.1):
    """A tiny PDB topology + DCD trajectory written with MDAnalysis."""
    rng = np.random.default_rng(0)
    u = mda.Universe.empty(atoms, trajectory=True, atom_resindex=[0] * atoms)
    u.add_TopologyAttr("name", [f"C{i}" for i in range(atoms)])
    u.add_TopologyAttr("type", ["C", "H", "C", "O", "H"][:atoms])
    u.add_TopologyAttr("resname", ["ALA"])
    u.add_TopologyAttr("resid", [1])
    u.add_TopologyAttr("bonds", [(0, 1), (1, 2)])
    pos = rng.uniform(1, 9, (atoms, 3)).astype(np.float32)
    top = str(tmp_path / "top.pdb")
    traj = str(tmp_path / "traj.dcd")
    u.atoms.positions = pos
    if box is not None:
        u.dimensions = [box, box, box, 90, 90, 90]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(top)
        P = [pos]
        for _ in range(frames - 1):
            P.append(P[-1] + rng.normal(0, jitter, P[-1].shape).astype(np.float32))
        with mda.Writer(traj, atoms) as w:
            for p in P:
                q = p % box if box is not None else p
                u.atoms.positions = q
                w.write(u.atoms)
    return top, traj, np.stack(P)


def test_default_adk(tmp_path):
    ds = MDTrajectory(root=str(tmp_path))
    te = MDTrajectory(root=str(tmp_path), split="test")
    assert ds.num_atoms == 3341 and len(ds) == 98 - 1 - 4 and len(te) == 102 - 1 - 4
    d = ds[0]
    assert d.x.shape == (3341, 3 * 4 + ds.num_atom_types)
    assert d.y.shape == d.pos.shape == (3341, 3)
    assert d.edge_index.size(1) > 0
    # statistics from the training run only
    assert torch.equal(ds.stats["disp_std"], te.stats["disp_std"])
    assert torch.allclose(ds.denormalize(d.y), d.disp, atol=1e-5)


def test_custom_split_and_minimum_image(tmp_path):
    top, traj, P = _write_pair(tmp_path, frames=20, box=10.0, jitter=0.3)
    ds = MDTrajectory(
        root=str(tmp_path / "r"), topology=top, trajectory=traj, window=2, test_fraction=0.4
    )
    te = MDTrajectory(
        root=str(tmp_path / "r"),
        topology=top,
        trajectory=traj,
        window=2,
        test_fraction=0.4,
        split="test",
    )
    assert len(ds) > 0 and len(te) > 0
    # positions were wrapped into the box; displacements must be the unwrapped ones
    true = np.diff(P, axis=0)
    d = ds[0]
    t = int(d.frame)
    assert np.allclose(d.disp.numpy(), true[t], atol=1e-3)
    assert d.x.shape == (5, 6 + ds.num_atom_types)
    assert d.edge_index.shape == (2, 4)


def test_missing_and_malformed(tmp_path):
    top, traj, _ = _write_pair(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.dcd"):
        MDTrajectory(root=str(tmp_path / "r"), topology=top, trajectory=str(tmp_path / "nope.dcd"))
    bad = tmp_path / "bad.dcd"
    bad.write_bytes(b"this is not a dcd file" * 10)
    with pytest.raises(ValueError, match="bad.dcd"):
        MDTrajectory(root=str(tmp_path / "r2"), topology=top, trajectory=str(bad))


def test_npz_archive_matches_mdanalysis(tmp_path):
    from torch_geometric_nsa.datasets import trajectory_to_npz

    top, traj, _ = _write_pair(tmp_path, frames=25)
    arch = trajectory_to_npz(str(tmp_path / "frames.npz"), top, traj)
    a = MDTrajectory(root=str(tmp_path / "a"), topology=top, trajectory=traj, window=2)
    b = MDTrajectory(root=str(tmp_path / "b"), trajectory=arch, window=2)
    assert len(a) == len(b)
    for key in ("x", "y", "pos", "edge_index", "disp"):
        assert torch.equal(a[3][key], b[3][key])
    bad = tmp_path / "bad.npz"
    np.savez(bad, positions=np.zeros((10, 5, 3)))
    with pytest.raises(ValueError, match=r"bad\.npz.*displacements"):
        MDTrajectory(root=str(tmp_path / "c"), trajectory=str(bad))


# -- trust boundaries (issue 12) ------------------------------------------------
def _npz(path, T=20, N=5, seed=0, types=None, bonds=None):
    rng = np.random.default_rng(seed)
    P = np.cumsum(rng.normal(0, 0.1, (T, N, 3)), axis=0).astype(np.float32)
    np.savez(
        path,
        positions=P,
        displacements=np.diff(P, axis=0),
        types=np.array(types if types is not None else ["C", "H", "C", "O", "H"][:N]),
        bonds=np.array([[0, 1], [1, 2]]) if bonds is None else bonds,
    )
    return str(path)


def test_planted_pickle_is_refused(tmp_path):
    from _evil import plant

    arch = _npz(tmp_path / "a.npz")
    ds = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    cache = ds.processed_paths[0]
    marker = tmp_path / "pwned"
    plant(cache, marker)
    with pytest.raises(ValueError, match=rf"Refusing to load processed file '{cache}'"):
        MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    assert not marker.exists()
    # PyG's own pre_transform.pt / pre_filter.pt are never read (PyG loads them unsafely)
    for name in ("pre_transform.pt", "pre_filter.pt"):
        plant(tmp_path / "r" / "processed" / name, marker)
    MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2, force_reload=True)
    MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    assert not marker.exists()


def test_cache_follows_rewritten_source(tmp_path):
    arch = str(tmp_path / "a.npz")
    _npz(arch, T=20, seed=0)
    a = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    _npz(arch, T=26, seed=1)  # rewritten at the same path
    b = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    assert len(b) > len(a)
    assert not torch.equal(a[0].pos, b[0].pos)
    # every argument that changes the output changes the key
    c = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=3)
    assert c.processed_paths[0] != b.processed_paths[0] and c[0].x.size(1) == 3 * 3 + 3
    # a same-size rewrite is noticed through the modification time
    import os

    _npz(arch, T=26, seed=2)
    st = os.stat(arch)
    os.utime(arch, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    d = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    assert not torch.equal(b[0].pos, d[0].pos)


def test_npz_nan_and_bonds_and_types(tmp_path):
    arch = _npz(tmp_path / "a.npz")
    with np.load(arch) as f:
        a = {k: f[k] for k in f.files}
    a["positions"][7, 2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **a)
    with pytest.raises(ValueError, match=r"nan\.npz.*'positions' is not all finite"):
        MDTrajectory(root=str(tmp_path / "r"), trajectory=str(tmp_path / "nan.npz"))
    bad = _npz(tmp_path / "bonds1d.npz", bonds=np.array([0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"bonds1d\.npz.*'bonds' has shape \(4,\)"):
        MDTrajectory(root=str(tmp_path / "r"), trajectory=bad)
    bad = _npz(tmp_path / "bonds_oob.npz", bonds=np.array([[0, 9]]))
    with pytest.raises(ValueError, match=r"bonds_oob\.npz.*below 5"):
        MDTrajectory(root=str(tmp_path / "r"), trajectory=bad)
    # a test archive whose atom types the training archive never saw
    other = _npz(tmp_path / "other.npz", types=["C", "H", "C", "Zn", "H"])
    with pytest.raises(ValueError, match=r"other\.npz.*atom 3: 'Zn'.*unseen in training: \['Zn'\]"):
        MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, test_trajectory=other, window=2)
    # nothing is left behind by the failures
    assert not (tmp_path / "r").exists()


def test_truncated_dcd(tmp_path):
    top, traj, _ = _write_pair(tmp_path, frames=100)
    data = open(traj, "rb").read()
    cut = tmp_path / "cut.dcd"
    cut.write_bytes(data[: int(len(data) * 0.55)])
    with pytest.raises(ValueError, match=r"cut\.dcd.*truncated"):
        MDTrajectory(root=str(tmp_path / "r"), topology=top, trajectory=str(cut))
    ds = MDTrajectory(root=str(tmp_path / "r"), topology=top, trajectory=traj, window=2)
    assert len(ds) == round(100 * 0.8) - 1 - 2


def test_dcd_nan(tmp_path):
    top, traj, _ = _write_pair(tmp_path, frames=12)
    u = mda.Universe(top, traj)
    bad = str(tmp_path / "nan.dcd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mda.Writer(bad, u.atoms.n_atoms) as w:
            for i, ts in enumerate(u.trajectory):
                if i == 5:
                    u.atoms.positions = np.full((5, 3), np.nan, np.float32)
                w.write(u.atoms)
    with pytest.raises(ValueError, match=r"nan\.dcd.*not all finite.*frame 5"):
        MDTrajectory(root=str(tmp_path / "r"), topology=top, trajectory=bad)


class _Shift:
    """A pre_transform that counts its calls."""

    def __init__(self, by):
        self.by, self.calls = by, 0

    def __call__(self, data):
        self.calls += 1
        data.pos = data.pos + self.by
        data.tag = torch.tensor([7])
        return data

    def __repr__(self):
        return f"_Shift(by={self.by})"


def test_pre_transform_runs_once_and_is_cached(tmp_path):
    arch = _npz(tmp_path / "a.npz", T=30)
    plain = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2)
    te_plain = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2, split="test")
    t = _Shift(10.0)
    ds = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2, pre_transform=t)
    assert t.calls == len(plain) + len(te_plain)  # both splits, once, in process()
    for i in (0, 3, len(ds) - 1):
        for _ in range(2):
            d = ds[i]
            assert torch.allclose(d.pos, plain[i].pos + 10) and int(d.tag) == 7
            assert torch.equal(d.x, plain[i].x) and torch.equal(d.edge_index, plain[i].edge_index)
    assert t.calls == len(plain) + len(te_plain)  # not on access
    t2 = _Shift(10.0)  # same repr: the cache is used
    te = MDTrajectory(
        root=str(tmp_path / "r"), trajectory=arch, window=2, pre_transform=t2, split="test"
    )
    assert t2.calls == 0 and torch.allclose(te[1].pos, te_plain[1].pos + 10)
    t3 = _Shift(-1.0)  # another repr: processed again
    ds3 = MDTrajectory(root=str(tmp_path / "r"), trajectory=arch, window=2, pre_transform=t3)
    assert t3.calls > 0 and torch.allclose(ds3[0].pos, plain[0].pos - 1)

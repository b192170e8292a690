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

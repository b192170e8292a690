import warnings

import numpy as np
import pytest
import torch
from _example_helpers import TINY


@pytest.fixture(scope="session")
def md_files(tmp_path_factory):
    """A tiny PDB + two DCD runs (60 atoms) written with MDAnalysis."""
    mda = pytest.importorskip("MDAnalysis")
    d = tmp_path_factory.mktemp("md")
    rng = np.random.default_rng(0)
    n = 60
    u = mda.Universe.empty(n, trajectory=True, n_residues=n // 6, atom_resindex=np.arange(n) // 6)
    u.add_TopologyAttr("name", [f"A{i}" for i in range(n)])
    u.add_TopologyAttr("type", [["C", "H", "N"][i % 3] for i in range(n)])
    u.add_TopologyAttr("resname", ["GLY"] * (n // 6))
    u.add_TopologyAttr("resid", list(range(1, n // 6 + 1)))
    u.add_TopologyAttr("bonds", [(i, i + 1) for i in range(n - 1)])
    base = rng.uniform(0, 20, (n, 3)).astype(np.float32)
    files = []
    for run in range(2):
        path = str(d / f"run{run}.dcd")
        x = base.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mda.Writer(path, n) as w:
                for _ in range(16):
                    x = x + 0.5 * (base - x) + rng.normal(0, 0.2, x.shape).astype(np.float32)
                    u.atoms.positions = x
                    w.write(u.atoms)
        files.append(path)
    u.atoms.positions = base
    top = str(d / "top.pdb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(top)
    return top, files[0], files[1]


@pytest.fixture
def md_args(md_files, tmp_path):
    top, tr, te = md_files
    return [
        "--topology",
        top,
        "--trajectory",
        tr,
        "--test-trajectory",
        te,
        "--root",
        str(tmp_path / "data"),
    ] + TINY


@pytest.fixture
def shapenet_root(tmp_path):
    for i in range(5):
        d = tmp_path / "shapenet" / "raw" / "preprocessed" / f"{i:03d}"
        d.mkdir(parents=True)
        pos = torch.randn(100, 3)
        torch.save(pos, d / "mesh_points.th")
        torch.save(pos[:, 0] ** 2 - pos[:, 2], d / "pressure.th")
    return str(tmp_path / "shapenet")


@pytest.fixture
def cosmo_root(tmp_path):
    from torch_geometric_nsa.datasets._tfrecord import (
        encode_example,
        encode_tensor_proto,
        write_tfrecord,
    )

    rng = np.random.default_rng(0)
    raw = tmp_path / "cosmo" / "raw"
    raw.mkdir(parents=True)
    for split, count in (("train", 4), ("test", 2)):
        recs = []
        for _ in range(count):
            pos = rng.uniform(0, 1000, (80, 3))
            vel = rng.normal(0, 300, (80, 3))
            recs.append(encode_example({"halos": encode_tensor_proto(np.c_[pos, vel])}))
        write_tfrecord(str(raw / f"halos_{split}_000.tfrecord"), recs)
    return str(tmp_path / "cosmo")


@pytest.fixture
def fake_box(tmp_path, fake_abacus_run):
    """cosmology.py flags for a whole box of 1,500 particles (a fake Abacus run
    with a smooth velocity field plus noise)."""
    rng = np.random.default_rng(0)
    n, box = 1500, 32.0
    pos = rng.uniform(-box / 2, box / 2, (n, 3)).astype(np.float32)
    vel = (20 * np.sin(2 * np.pi * pos / box) + rng.normal(0, 5, (n, 3))).astype(np.float32)
    run = fake_abacus_run(pos, vel, box)
    return ["--abacus-dir", run, "--root", str(tmp_path / "data")]

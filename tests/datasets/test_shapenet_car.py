import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import ShapeNetCar
from torch_geometric_nsa.datasets._vtk import read_legacy_vtk, write_legacy_vtk


def _raw(root, n=5, points=3682, binary=False):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        d = root / "raw" / f"param{i % 2}" / f"{i:04d}"
        d.mkdir(parents=True)
        pos = rng.normal(size=(points, 3)).astype(np.float32)
        press = rng.normal(size=points).astype(np.float32)
        quads = rng.integers(0, points, (8, 4))
        write_legacy_vtk(
            str(d / "quadpress_smpl.vtk"), pos, quads, {"pressure": press}, binary=binary
        )
        np.save(d / "press.npy", press)
        out.append((pos, press))
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_vtk_roundtrip(tmp_path, binary):
    pos = np.random.rand(7, 3).astype(np.float32)
    write_legacy_vtk(
        str(tmp_path / "a.vtk"), pos, [[0, 1, 2, 3]], {"p": np.arange(7.0)}, binary=binary
    )
    P, pd = read_legacy_vtk(str(tmp_path / "a.vtk"))
    assert np.array_equal(P, pos) and np.array_equal(pd["p"], np.arange(7.0))


def test_raw_layout(tmp_path):
    items = _raw(tmp_path)
    ds = ShapeNetCar(str(tmp_path), num_train=3)
    te = ShapeNetCar(str(tmp_path), split="test", num_train=3)
    assert ds.layout == "raw" and len(ds) == 3 and len(te) == 2
    d = ds[0]
    assert d.pos.shape == (3586, 3) and d.y.shape == (3586, 1)
    pos, press = items[0]  # sorted: param0/0000 first
    keep = np.r_[0:16, 112:3682]
    assert np.array_equal(d.pos.numpy(), pos[keep])
    assert torch.allclose(ds.denormalize(d.y).view(-1), torch.from_numpy(press[keep]), atol=1e-4)
    assert torch.equal(te.stats["press_std"], ds.stats["press_std"])


def test_preprocessed_layout(tmp_path):
    for i in range(4):
        d = tmp_path / "raw" / "preprocessed" / f"{i:03d}"
        d.mkdir(parents=True)
        torch.save(torch.randn(3586, 3), d / "mesh_points.th")
        torch.save(torch.randn(3586), d / "pressure.th")
    ds = ShapeNetCar(str(tmp_path), num_train=3)
    assert ds.layout == "preprocessed" and len(ds) == 3
    assert len(ShapeNetCar(str(tmp_path), split="test", num_train=3)) == 1


def test_malformed(tmp_path):
    _raw(tmp_path, n=3, points=50)
    bad = tmp_path / "raw" / "param0" / "0000" / "quadpress_smpl.vtk"
    bad.write_text(
        "# vtk DataFile Version 3.0\nx\nASCII\nDATASET UNSTRUCTURED_GRID\n"
        "POINTS 3 float\n0 0 0 1 1\n"
    )
    with pytest.raises(ValueError, match="quadpress_smpl.vtk"):
        ShapeNetCar(str(tmp_path), num_train=2)
    with pytest.raises(FileNotFoundError, match="param0"):
        ShapeNetCar(str(tmp_path / "empty"))

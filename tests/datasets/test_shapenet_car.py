import os.path as osp

import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import ShapeNetCar
from torch_geometric_nsa.datasets._vtk import read_legacy_vtk, write_legacy_vtk
from torch_geometric_nsa.datasets.shapenet_car import (
    MINI_DIR,
    PRESSURE_MEAN,
    PRESSURE_STD,
    erwin_test_indices,
    normalize_pos,
)


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


def _preprocessed(root, names, points=3):
    """One sample per ``param<i>/<name>``; its pressure is its creation number."""
    for k, (param, name) in enumerate(names):
        d = root / "raw" / f"param{param}" / name
        d.mkdir(parents=True)
        torch.save(torch.full((points, 3), float(k)), d / "mesh_points.th")
        torch.save(torch.full((points,), float(k)), d / "pressure.th")


@pytest.mark.parametrize("binary", [False, True])
def test_vtk_roundtrip(tmp_path, binary):
    pos = np.random.rand(7, 3).astype(np.float32)
    write_legacy_vtk(
        str(tmp_path / "a.vtk"), pos, [[0, 1, 2, 3]], {"p": np.arange(7.0)}, binary=binary
    )
    P, pd = read_legacy_vtk(str(tmp_path / "a.vtk"))
    assert np.array_equal(P, pos) and np.array_equal(pd["p"], np.arange(7.0))


def test_erwin_test_indices_formula():
    idx = erwin_test_indices()
    assert len(idx) == 189 and len(set(idx)) == 189 and max(idx) < 889
    # the first and last of UPT's / Erwin's TEST_INDICES, and the smallest ones
    assert idx[:6] == [550, 592, 229, 547, 62, 464]
    assert idx[-4:] == [713, 607, 651, 168]
    assert sorted(idx)[:5] == [4, 5, 8, 11, 14]
    gen = torch.Generator().manual_seed(0)
    assert idx == torch.randperm(889, generator=gen)[:189].tolist()


def test_erwin_split_of_the_full_set(tmp_path):
    # 889 samples over param0..param8 (99 in most), names whose string order
    # differs from their numeric order and from their creation order
    names = [(p, str(j)) for p in (8, 3, 0, 1, 2, 4, 5, 6, 7) for j in range(99)][:889]
    _preprocessed(tmp_path, names)
    order = sorted(range(889), key=lambda k: (names[k][0], names[k][1]))
    test = ShapeNetCar(str(tmp_path), split="test")
    train = ShapeNetCar(str(tmp_path), split="train")
    assert (len(train), len(test)) == (700, 189)
    got = sorted(int(p) for p in test.press.view(-1, 3)[:, 0].tolist())
    assert got == sorted(order[i] for i in erwin_test_indices())
    # spot checks: ordered sample 550 (the first of Erwin's test indices) is
    # param5/'66' (param0..4 hold 495 samples, and '66' is 55th in string order)
    assert names[order[550]] == (5, sorted(str(j) for j in range(99))[55])
    assert order[550] in got and order[0] not in got  # index 0 is a training car
    assert set(got).isdisjoint(int(p) for p in train.press.view(-1, 3)[:, 0].tolist())


def test_erwin_split_needs_the_full_set(tmp_path):
    _preprocessed(tmp_path, [(0, f"{j:03d}") for j in range(4)])
    with pytest.raises(ValueError, match="889 cars.*holds 4.*test_split='order'"):
        ShapeNetCar(str(tmp_path))
    with pytest.raises(ValueError, match="leave none for testing with num_train=700"):
        ShapeNetCar(str(tmp_path), test_split="order")
    te = ShapeNetCar(str(tmp_path), split="test", test_split="order", num_train=3)
    assert len(te) == 1 and te[0].press[0] == 3
    with pytest.raises(ValueError, match="only used with test_split='order'"):
        ShapeNetCar(str(tmp_path), num_train=3)


def test_raw_layout(tmp_path):
    items = _raw(tmp_path)
    ds = ShapeNetCar(str(tmp_path), test_split="order", num_train=3)
    te = ShapeNetCar(str(tmp_path), split="test", test_split="order", num_train=3)
    assert ds.layout == "raw" and len(ds) == 3 and len(te) == 2
    d = ds[0]
    assert d.pos.shape == (3586, 3) and d.y.shape == (3586, 1)
    pos, press = items[0]  # param0/0000 first
    keep = np.r_[0:16, 112:3682]
    assert np.array_equal(d.pos.numpy(), pos[keep])
    assert torch.allclose(d.x, normalize_pos(d.pos))
    assert torch.allclose(ds.denormalize(d.y).view(-1), torch.from_numpy(press[keep]), atol=1e-4)
    # param0 holds samples 0, 2, 4 and comes before param1 (1, 3)
    assert np.array_equal(te[0].press.numpy(), items[1][1][keep])


def test_preprocessed_layout_erwin_normalisation(tmp_path):
    _preprocessed(tmp_path, [(0, f"{j:03d}") for j in range(4)])
    ds = ShapeNetCar(str(tmp_path), test_split="order", num_train=3)
    assert ds.layout == "preprocessed" and len(ds) == 3
    d = ds[2]
    assert torch.allclose(d.y.view(-1), (d.press - PRESSURE_MEAN) / PRESSURE_STD)
    # Erwin's domain [-2, -1, -4.5] .. [2, 4.5, 6] to the unit cube, then (u - 0.4063) / 0.1531
    u = (torch.tensor([2.0, 2.0, 2.0]) - torch.tensor([-2.0, -1.0, -4.5])) / torch.tensor(
        [4.0, 5.5, 10.5]
    )
    assert torch.allclose(d.x[0], (u - 0.4063) / 0.1531)


def test_shipped_mini_cars(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_GEOMETRIC_NSA_DATA", str(tmp_path))
    train, test = ShapeNetCar(), ShapeNetCar(split="test")
    assert (len(train), len(test)) == (3, 1) and "mini" in repr(test)
    assert osp.isdir(osp.join(str(tmp_path), "ShapeNetCarMini", "processed"))
    car = test[0]
    assert car.pos.shape == (3586, 3) and car.press.shape == (3586,)
    ref = torch.load(osp.join(MINI_DIR, "005", "pressure.th"), weights_only=True)
    assert torch.equal(car.press, ref)
    # real CFD pressure of car 005 (README: mean -32.1); y is up, z along the car
    assert abs(car.press.mean().item() + 32.1) < 0.1
    extent = car.pos.max(0).values - car.pos.min(0).values
    assert extent[2] > extent[0] > extent[1]  # length > width > height
    assert torch.allclose(test.denormalize(car.y).view(-1), car.press, atol=1e-4)


@pytest.mark.parametrize("what", ["pos", "press"])
def test_non_finite_values_name_the_file(tmp_path, what):
    _preprocessed(tmp_path, [(0, f"{j:03d}") for j in range(3)])
    name = "mesh_points.th" if what == "pos" else "pressure.th"
    bad = tmp_path / "raw" / "param0" / "001" / name
    t = torch.load(bad, weights_only=True)
    t.view(-1)[1] = float("nan")
    torch.save(t, bad)
    with pytest.raises(ValueError, match=f"param0/001/{name}.*non-finite"):
        ShapeNetCar(str(tmp_path), test_split="order", num_train=2)


def test_malformed(tmp_path):
    _raw(tmp_path, n=3, points=50)
    bad = tmp_path / "raw" / "param0" / "0000" / "quadpress_smpl.vtk"
    bad.write_text(
        "# vtk DataFile Version 3.0\nx\nASCII\nDATASET UNSTRUCTURED_GRID\n"
        "POINTS 3 float\n0 0 0 1 1\n"
    )
    with pytest.raises(ValueError, match="quadpress_smpl.vtk"):
        ShapeNetCar(str(tmp_path), test_split="order", num_train=2)
    with pytest.raises(FileNotFoundError, match="param0"):
        ShapeNetCar(str(tmp_path / "empty"))


def test_planted_pickle_is_refused_and_cache_follows_sources(tmp_path):
    import sys

    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    from _evil import plant

    _preprocessed(tmp_path, [(0, f"{j:03d}") for j in range(4)])
    ds = ShapeNetCar(str(tmp_path), test_split="order", num_train=3)
    cache = ds.processed_paths[0]
    marker = tmp_path / "pwned"
    plant(cache, marker)
    with pytest.raises(ValueError, match=rf"Refusing to load processed file '{cache}'"):
        ShapeNetCar(str(tmp_path), test_split="order", num_train=3)
    assert not marker.exists()
    # a rewritten car is a new cache (keyed on every source file's size and mtime)
    car = tmp_path / "raw" / "param0" / "000"
    torch.save(torch.zeros(4, 3), car / "mesh_points.th")
    torch.save(torch.zeros(4), car / "pressure.th")
    again = ShapeNetCar(str(tmp_path), test_split="order", num_train=3)
    assert again.processed_paths[0] != cache and again[0].pos.shape == (4, 3)

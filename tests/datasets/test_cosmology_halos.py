import numpy as np
import pytest
import torch

from torch_geometric_nsa.datasets import CosmologyHalos
from torch_geometric_nsa.datasets._tfrecord import (
    crc32c,
    encode_example,
    encode_tensor_proto,
    masked_crc32c,
    parse_example,
    parse_tensor_proto,
    write_tfrecord,
)


def test_crc32c_and_protobuf():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    c = crc32c(b"abc")
    assert masked_crc32c(b"abc") == (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    a = np.random.rand(4, 7).astype(np.float32)
    ex = parse_example(
        encode_example({"t": encode_tensor_proto(a), "f": a[:, 0], "i": np.array([5, -2])})
    )
    assert np.array_equal(parse_tensor_proto(ex["t"][0]), a)
    assert np.array_equal(ex["f"], a[:, 0]) and ex["i"].tolist() == [5, -2]


def _halos(n, rng):
    pos = rng.uniform(0, 1000, (n, 3)).astype(np.float32)
    vel = rng.normal(0, 300, (n, 3)).astype(np.float32)
    return pos, vel


def test_tfrecord_layouts(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    recs, truth = [], []
    for _ in range(3):  # one feature per column, serialized tensors
        pos, vel = _halos(50, rng)
        cols = dict(zip(["x", "y", "z", "v_x", "v_y", "v_z"], np.c_[pos, vel].T))
        recs.append(encode_example({k: encode_tensor_proto(v) for k, v in cols.items()}))
        truth.append((pos, vel))
    write_tfrecord(str(raw / "halos_train_000.tfrecord"), recs)
    pos, vel = _halos(40, rng)  # one [n, 7] tensor
    write_tfrecord(
        str(raw / "halos_test_000.tfrecord"),
        [encode_example({"halos": encode_tensor_proto(np.c_[pos, vel, np.ones(40)])})],
    )
    ds = CosmologyHalos(str(tmp_path))
    te = CosmologyHalos(str(tmp_path), split="test")
    assert ds.source == "tfrecord" and len(ds) == 3 and len(te) == 1
    assert np.allclose(ds[1].pos.numpy(), truth[1][0])
    assert torch.allclose(ds.denormalize(ds[2].y), torch.from_numpy(truth[2][1]), atol=1e-2)
    assert np.allclose(te[0].vel.numpy(), vel)
    assert torch.equal(te.stats["vel_std"], ds.stats["vel_std"])


def test_tfrecord_malformed(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pos, vel = _halos(10, np.random.default_rng(1))
    rec = encode_example({"x": pos[:, 0]})
    write_tfrecord(str(raw / "halos_train_000.tfrecord"), [rec])
    data = bytearray((raw / "halos_train_000.tfrecord").read_bytes())
    data[20] ^= 0xFF  # corrupt the payload: data CRC mismatch
    (raw / "halos_train_000.tfrecord").write_bytes(bytes(data))
    write_tfrecord(str(raw / "halos_test_000.tfrecord"), [rec])
    with pytest.raises(ValueError, match=r"halos_train_000\.tfrecord.*CRC"):
        CosmologyHalos(str(tmp_path))
    write_tfrecord(str(raw / "halos_train_000.tfrecord"), [rec])
    with pytest.raises(ValueError, match=r"halos_train_000\.tfrecord.*expected x, y, z"):
        CosmologyHalos(str(tmp_path), force_reload=True)
    with pytest.raises(FileNotFoundError, match="tfrecord"):
        CosmologyHalos(str(tmp_path / "none"), source="tfrecord")


def test_abacus_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("ABACUS_MINI_N64_L32", raising=False)
    monkeypatch.setenv("TORCH_GEOMETRIC_NSA_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="abacusutils"):
        CosmologyHalos(str(tmp_path / "c"), source="abacus")


def test_abacus_default(tmp_path):
    """Runs where the abacusutils sdist is extracted ($ABACUS_MINI_N64_L32)."""
    pytest.importorskip("abacusnbody")
    import os

    if not os.environ.get("ABACUS_MINI_N64_L32"):
        pytest.skip("set ABACUS_MINI_N64_L32 to the sdist tests/Mini_N64_L32 folder")
    ds = CosmologyHalos(str(tmp_path), source="abacus", subdivisions=2)
    te = CosmologyHalos(str(tmp_path), source="abacus", subdivisions=2, split="test")
    n = sum(d.num_nodes for d in ds) + sum(d.num_nodes for d in te)
    assert n == 64**3 and len(ds) == 4 and len(te) == 4
    assert float(ds[0].x.abs().max()) <= 0.5

"""The small file readers: CRC-32C, TFRecord framing and legacy VTK."""

import os

import numpy as np
import pytest

from torch_geometric_nsa.datasets import CosmologyHalos
from torch_geometric_nsa.datasets import _tfrecord as tfr
from torch_geometric_nsa.datasets._vtk import read_legacy_vtk, read_vtk, write_legacy_vtk


# -- CRC-32C -------------------------------------------------------------------
def test_crc32c_backends_agree():
    rng = np.random.default_rng(0)
    blobs = [b"", b"a", b"123456789"] + [rng.bytes(n) for n in (3, 64, 1000, 70001)]
    assert tfr.crc32c_pure(b"123456789") == 0xE3069283  # the CRC-32C check value
    fast = []
    for mod, fn in (("google_crc32c", "value"), ("crc32c", "crc32c")):
        try:
            fast.append(getattr(__import__(mod), fn))
        except ImportError:
            pass
    if not fast:
        pytest.skip("neither google-crc32c nor crc32c is installed")
    for f in fast:
        for b in blobs:
            assert int(f(b)) == tfr.crc32c_pure(b)
    assert tfr.CRC32C_BACKEND in ("google-crc32c", "crc32c")
    for b in blobs:
        assert tfr.crc32c(b) == tfr.crc32c_pure(b)
        assert tfr.masked_crc32c(b) == tfr.masked_crc32c(bytearray(b))


def test_crc32c_pure_fallback(monkeypatch):
    monkeypatch.setattr(tfr, "_FAST", None)
    data = np.random.default_rng(1).bytes(5000)
    assert tfr.crc32c(data) == tfr.crc32c_pure(data)
    assert tfr.crc32c(b"123456789") == 0xE3069283


# -- TFRecord ------------------------------------------------------------------
def _example():
    rng = np.random.default_rng(0)
    cols = {k: rng.normal(size=8).astype(np.float32) for k in ("x", "y", "z", "v_x", "v_y", "v_z")}
    return tfr.encode_example(cols)


def _halos_file(path):
    tfr.write_tfrecord(str(path), [_example()])


@pytest.mark.parametrize(
    "case, message",
    [
        ("text", r"length CRC mismatch in record 0 at byte 0"),
        ("short", r"truncated header of record 1 at byte"),
        ("length", r"record 0 at byte 0 claims \d+ bytes, file ends first"),
    ],
)
def test_tfrecord_bad_headers_name_the_file(tmp_path, case, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = raw / "halos_test_000.tfrecord"
    _halos_file(good)
    bad = raw / "halos_train_000.tfrecord"
    if case == "text":
        bad.write_bytes(b"this is not a tfrecord file at all\n" * 3)
    elif case == "short":
        bad.write_bytes(good.read_bytes() + b"\x05\x00\x00")
    else:  # a length field far past the end, with a valid length CRC
        import struct

        header = struct.pack("<Q", 10**6)
        body = good.read_bytes()[12:]
        bad.write_bytes(header + struct.pack("<I", tfr.masked_crc32c(header)) + body)
    with pytest.raises(ValueError, match=rf"halos_train_000\.tfrecord'.*{message}"):
        CosmologyHalos(str(tmp_path))
    assert not (tmp_path / "processed").exists()


def test_tfrecord_bad_payload_names_file_and_record(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _halos_file(raw / "halos_test_000.tfrecord")
    good = _example()
    bad_key = tfr._ld(1, tfr._ld(1, tfr._ld(1, b"\xff\xfe") + tfr._ld(2, b"")))
    for payload, what in ((b"\x0a\xff\xff\xff", "truncated"), (bad_key, "UTF-8")):
        tfr.write_tfrecord(str(raw / "halos_train_000.tfrecord"), [good, payload])
        with pytest.raises(
            ValueError,
            match=rf"halos_train_000\.tfrecord'.*record 1 is not a tf.train.Example.*{what}",
        ):
            CosmologyHalos(str(tmp_path), force_reload=True)


# -- legacy VTK ----------------------------------------------------------------
_HEAD = "# vtk DataFile Version 3.0\nt\nASCII\nDATASET POLYDATA\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("POINTS abc float\n0 0 0\n", r"point count 'abc' is not an integer"),
        ("POINTS 1\n0 0 0\n", r"'POINTS 1' lacks its data type"),
        ("POINTS -2 float\n", r"negative point count -2"),
        ("POINTS 1 float\n0 0 0\nPOINT_DATA\n", r"'POINT_DATA' lacks its count"),
        ("POINTS 1 float\n0 0 0\nSCALARS p float\nLOOKUP_TABLE default\n1\n", r"before any"),
        ("POINTS 1 float\n0 0 0\nCELLS x 2\n", r"cell count 'x' is not an integer"),
        ("POINTS 1 float\n0 0 0\nPOINT_DATA 1\nFIELD f two\n", r"array count 'two'"),
        ("POINTS 2 float\n0 0 0 1 1\n", r"expected 6 values, found 5"),
        ("POINTS 1 float\n0 0 zero\n", r"non-numeric value"),
        (
            "POINTS 2 float\n0 0 0 1 1 1\nPOINT_DATA 3\nSCALARS p float\nLOOKUP_TABLE d\n1 2 3\n",
            r"point data 'p' has 3 values for 2 points",
        ),
        ("POINTS 1 float\n0 0 0\nBOGUS 1\n", r"unexpected keyword 'BOGUS'"),
    ],
)
def test_vtk_bad_headers_name_the_file(tmp_path, body, message):
    path = tmp_path / "bad.vtk"
    path.write_text(_HEAD + body)
    with pytest.raises(ValueError, match=rf"Malformed data file '.*bad\.vtk': .*{message}"):
        read_legacy_vtk(str(path))


def _mesh(rng, n=300):
    P = rng.normal(size=(n, 3)).astype(np.float32)
    Q = rng.integers(0, n, (n - 4, 4))
    return P, Q, {"pressure": rng.normal(size=n).astype(np.float32)}


@pytest.mark.parametrize("binary", [False, True])
def test_vtk_reader_matches_meshio(tmp_path, binary):
    meshio = pytest.importorskip("meshio")
    P, Q, pd = _mesh(np.random.default_rng(0))
    path = str(tmp_path / "car.vtk")
    write_legacy_vtk(path, P, Q, pd, binary=binary)
    ours, ours_pd = read_legacy_vtk(path)
    m = meshio.read(path)
    assert np.array_equal(ours, m.points.astype(np.float32)) and np.array_equal(ours, P)
    assert np.array_equal(ours_pd["pressure"], m.point_data["pressure"].reshape(-1))
    assert np.array_equal(m.cells_dict["quad"], Q)
    # XML VTK, which only meshio reads, through the same entry point
    vtu = str(tmp_path / "car.vtu")
    meshio.write(vtu, m)
    xp, xpd = read_vtk(vtu)
    assert np.array_equal(xp, P) and np.array_equal(xpd["pressure"], pd["pressure"])
    bad = tmp_path / "bad.vtu"
    bad.write_text("<VTKFile broken")
    with pytest.raises(ValueError, match=r"bad\.vtu"):
        read_vtk(str(bad))


def test_read_vtk_without_meshio(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_meshio(name, *a, **k):
        if name == "meshio":
            raise ImportError("no meshio")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_meshio)
    P, Q, pd = _mesh(np.random.default_rng(1), n=20)
    write_legacy_vtk(str(tmp_path / "a.vtk"), P, Q, pd)
    assert np.array_equal(read_vtk(str(tmp_path / "a.vtk"))[0], P)  # legacy needs no meshio
    with pytest.raises(ImportError, match="pip install meshio"):
        read_vtk(str(tmp_path / "a.vtu"))
    assert os.path.exists(tmp_path / "a.vtk")

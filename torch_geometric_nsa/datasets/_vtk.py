"""A reader (and a small writer, for tests) of legacy VTK files.

Reads ``POINTS`` and the ``POINT_DATA`` arrays (``SCALARS``, ``VECTORS``,
``NORMALS``, ``FIELD``) of ASCII and BINARY (big-endian) legacy files of any
dataset type with explicit points, skipping cells.  Enough for ShapeNet-Car's
``quadpress_smpl.vtk``; not a general VTK implementation.
"""

from typing import Dict, Tuple

import numpy as np

from ._utils import DataFormatError

_TYPES = {
    "bit": ">u1",
    "unsigned_char": ">u1",
    "char": ">i1",
    "unsigned_short": ">u2",
    "short": ">i2",
    "unsigned_int": ">u4",
    "int": ">i4",
    "unsigned_long": ">u8",
    "long": ">i8",
    "float": ">f4",
    "double": ">f8",
    "vtkidtype": ">i4",
    "vtktypeint64": ">i8",
    "vtktypeint32": ">i4",
}


class _Reader:
    def __init__(self, buf: bytes, path: str, binary: bool, pos: int):
        self.buf, self.path, self.binary, self.pos = buf, path, binary, pos

    def fail(self, msg: str):
        raise DataFormatError(f"Malformed data file '{self.path}': {msg}")

    def line(self) -> str:
        while self.pos < len(self.buf):
            end = self.buf.find(b"\n", self.pos)
            end = len(self.buf) if end < 0 else end
            text = self.buf[self.pos : end].decode("latin-1").strip()
            self.pos = end + 1
            if text:
                return text
        return ""

    def array(self, count: int, vtype: str) -> np.ndarray:
        dt = _TYPES.get(vtype.lower())
        if dt is None:
            self.fail(f"unknown data type '{vtype}'")
        if self.binary:
            n = count * np.dtype(dt).itemsize
            if self.pos + n > len(self.buf):
                self.fail(f"binary array of {count} values runs past the end")
            arr = np.frombuffer(self.buf, dt, count=count, offset=self.pos)
            self.pos += n
            if self.pos < len(self.buf) and self.buf[self.pos : self.pos + 1] == b"\n":
                self.pos += 1
            return arr.astype(np.dtype(dt).newbyteorder("="))
        vals = []
        while len(vals) < count:
            text = self.line()
            if not text:
                self.fail(f"expected {count} values, found {len(vals)}")
            vals += text.split()
        if len(vals) != count:
            self.fail(f"expected {count} values on the lines, found {len(vals)}")
        try:
            return np.array(vals, dtype=np.dtype(dt).newbyteorder("="))
        except ValueError:
            self.fail(f"non-numeric value among {count} {vtype} values")


def read_legacy_vtk(path: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Returns ``(points [N, 3] float32, {name: point-data array})``."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"Missing data file '{path}'") from None
    r = _Reader(buf, path, False, 0)
    if not r.line().startswith("# vtk DataFile"):
        r.fail("not a legacy VTK file (first line must be '# vtk DataFile Version x.x')")
    r.line()  # title
    mode = r.line().upper()
    if mode not in ("ASCII", "BINARY"):
        r.fail(f"third line must be ASCII or BINARY, not '{mode}'")
    r.binary = mode == "BINARY"
    points, point_data, n_points = None, {}, None
    section = None
    while True:
        text = r.line()
        if not text:
            break
        tok = text.split()
        key = tok[0].upper()
        if key == "DATASET":
            continue
        if key == "POINTS":
            if len(tok) < 3:
                r.fail(f"bad POINTS line '{text}'")
            n = int(tok[1])
            points = r.array(3 * n, tok[2]).reshape(n, 3).astype(np.float32)
        elif key in ("CELLS", "POLYGONS", "LINES", "VERTICES", "TRIANGLE_STRIPS"):
            n, size = int(tok[1]), int(tok[2])
            nxt = r.pos
            peek = r.line()
            if peek.upper().startswith("OFFSETS"):  # VTK 5.1 layout
                r.array(n, peek.split()[1])
                conn = r.line().split()
                r.array(size, conn[1])
            else:
                r.pos = nxt
                r.array(size, "int")
        elif key == "CELL_TYPES":
            r.array(int(tok[1]), "int")
        elif key in ("POINT_DATA", "CELL_DATA"):
            section = key
            n_points = int(tok[1])
        elif key == "SCALARS":
            ncomp = int(tok[3]) if len(tok) > 3 else 1
            lut = r.line()
            if not lut.upper().startswith("LOOKUP_TABLE"):
                r.fail(f"SCALARS '{tok[1]}' without LOOKUP_TABLE")
            arr = r.array(n_points * ncomp, tok[2]).reshape(n_points, ncomp)
            if section == "POINT_DATA":
                point_data[tok[1]] = arr.squeeze(1) if ncomp == 1 else arr
        elif key in ("VECTORS", "NORMALS"):
            arr = r.array(n_points * 3, tok[2]).reshape(n_points, 3)
            if section == "POINT_DATA":
                point_data[tok[1]] = arr
        elif key == "FIELD":
            for _ in range(int(tok[2])):
                ftok = r.line().split()
                if len(ftok) < 4:
                    r.fail("bad FIELD array header")
                ncomp, ntup = int(ftok[1]), int(ftok[2])
                arr = r.array(ncomp * ntup, ftok[3]).reshape(ntup, ncomp)
                if section == "POINT_DATA":
                    point_data[ftok[0]] = arr.squeeze(1) if ncomp == 1 else arr
        elif key in ("LOOKUP_TABLE", "METADATA", "INFORMATION", "NAME", "DATA"):
            continue
        else:
            r.fail(f"unexpected keyword '{tok[0]}'")
    if points is None:
        r.fail("no POINTS section")
    if not np.isfinite(points).all():
        r.fail("POINTS are not all finite")
    return points, point_data


def write_legacy_vtk(
    path: str,
    points: np.ndarray,
    quads=None,
    point_data: Dict[str, np.ndarray] = None,
    binary: bool = False,
):
    """Writes an UNSTRUCTURED_GRID legacy file with quads and scalar point data."""
    points = np.asarray(points, np.float32)
    quads = np.zeros((0, 4), np.int32) if quads is None else np.asarray(quads, np.int32)
    head = [
        "# vtk DataFile Version 3.0",
        "written by torch_geometric_nsa",
        "BINARY" if binary else "ASCII",
        "DATASET UNSTRUCTURED_GRID",
    ]
    with open(path, "wb") as f:

        def w(s):
            f.write((s + "\n").encode())

        def arr(a, fmt):
            if binary:
                f.write(np.ascontiguousarray(a).astype(fmt).tobytes())
                f.write(b"\n")
            else:
                for row in np.atleast_2d(a):
                    w(" ".join(str(v) for v in row.ravel()))

        for h in head:
            w(h)
        w(f"POINTS {len(points)} float")
        arr(points, ">f4")
        cells = np.concatenate([np.full((len(quads), 1), 4, np.int32), quads], 1)
        w(f"CELLS {len(quads)} {cells.size}")
        arr(cells, ">i4")
        w(f"CELL_TYPES {len(quads)}")
        arr(np.full((len(quads), 1), 9, np.int32), ">i4")
        if point_data:
            w(f"POINT_DATA {len(points)}")
            for name, vals in point_data.items():
                w(f"SCALARS {name} float 1")
                w("LOOKUP_TABLE default")
                arr(np.asarray(vals, np.float32).reshape(-1, 1), ">f4")

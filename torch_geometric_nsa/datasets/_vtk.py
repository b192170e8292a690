"""A reader (and a small writer, for tests) of legacy VTK files.

Reads ``POINTS`` and the ``POINT_DATA`` arrays (``SCALARS``, ``VECTORS``,
``NORMALS``, ``FIELD``) of ASCII and BINARY (big-endian) legacy files of any
dataset type with explicit points, skipping cells.  Enough for ShapeNet-Car's
``quadpress_smpl.vtk``; not a general VTK implementation.

:func:`read_vtk` also opens XML VTK (``.vtu``) and the other mesh formats of
`meshio <https://github.com/nschloe/meshio>`_ when it is installed (an
optional dependency).  Legacy files stay with the reader here: on a
ShapeNet-Car-sized file (3,586 points, 3,582 quads) it takes 21 ms (ASCII)
and 0.1 ms (binary), meshio 5.3 26 ms and 0.3 ms; ``tests/datasets``
checks that the two agree.
"""

import os.path as osp
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

    def count(self, tok, i: int, what: str) -> int:
        """The non-negative integer ``tok[i]`` of a section header line."""
        line = " ".join(tok)
        if len(tok) <= i:
            self.fail(f"header line '{line}' lacks its {what}")
        try:
            n = int(tok[i])
        except ValueError:
            self.fail(f"header line '{line}': {what} '{tok[i]}' is not an integer")
        if n < 0:
            self.fail(f"header line '{line}': negative {what} {n}")
        return n

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
        # whole lines until `count` tokens, then one numpy conversion
        buf, pos, n = self.buf, self.pos, 0
        while n < count:
            if pos >= len(buf):
                self.fail(f"expected {count} values, found {n}")
            end = buf.find(b"\n", pos)
            end = len(buf) if end < 0 else end
            n += len(buf[pos:end].split())
            pos = end + 1
        if n != count:
            self.fail(f"expected {count} values on the lines, found {n}")
        tokens = buf[self.pos : pos].split()
        self.pos = pos
        try:
            return np.array(tokens, dtype=np.dtype(dt).newbyteorder("="))
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
    try:
        return _parse(r)
    except DataFormatError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError, MemoryError) as e:
        raise DataFormatError(f"Malformed data file '{path}': {type(e).__name__}: {e}") from e


def _parse(r: _Reader) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
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
            n = r.count(tok, 1, "point count")
            if len(tok) < 3:
                r.fail(f"header line '{text}' lacks its data type")
            points = r.array(3 * n, tok[2]).reshape(n, 3).astype(np.float32)
        elif key in ("CELLS", "POLYGONS", "LINES", "VERTICES", "TRIANGLE_STRIPS"):
            n, size = r.count(tok, 1, "cell count"), r.count(tok, 2, "size")
            nxt = r.pos
            peek = r.line()
            if peek.upper().startswith("OFFSETS"):  # VTK 5.1 layout
                ptok = peek.split()
                if len(ptok) < 2:
                    r.fail(f"header line '{peek}' lacks its data type")
                r.array(n, ptok[1])
                conn = r.line().split()
                if len(conn) < 2 or conn[0].upper() != "CONNECTIVITY":
                    r.fail(f"expected 'CONNECTIVITY <type>' after OFFSETS, not '{' '.join(conn)}'")
                r.array(size, conn[1])
            else:
                r.pos = nxt
                r.array(size, "int")
        elif key == "CELL_TYPES":
            r.array(r.count(tok, 1, "cell count"), "int")
        elif key in ("POINT_DATA", "CELL_DATA"):
            section = key
            n_points = r.count(tok, 1, "count")
        elif key in ("SCALARS", "VECTORS", "NORMALS", "FIELD") and n_points is None:
            r.fail(f"'{text}' before any POINT_DATA or CELL_DATA line")
        elif key == "SCALARS":
            if len(tok) < 3:
                r.fail(f"header line '{text}' lacks a name or data type")
            ncomp = r.count(tok, 3, "component count") if len(tok) > 3 else 1
            lut = r.line()
            if not lut.upper().startswith("LOOKUP_TABLE"):
                r.fail(f"SCALARS '{tok[1]}' without LOOKUP_TABLE")
            arr = r.array(n_points * ncomp, tok[2]).reshape(n_points, ncomp)
            if section == "POINT_DATA":
                point_data[tok[1]] = arr.squeeze(1) if ncomp == 1 else arr
        elif key in ("VECTORS", "NORMALS"):
            if len(tok) < 3:
                r.fail(f"header line '{text}' lacks a name or data type")
            arr = r.array(n_points * 3, tok[2]).reshape(n_points, 3)
            if section == "POINT_DATA":
                point_data[tok[1]] = arr
        elif key == "FIELD":
            for _ in range(r.count(tok, 2, "array count")):
                ftok = r.line().split()
                if len(ftok) < 4:
                    r.fail(f"bad FIELD array header '{' '.join(ftok)}'")
                ncomp = r.count(ftok, 1, "component count")
                ntup = r.count(ftok, 2, "tuple count")
                arr = r.array(ncomp * ntup, ftok[3]).reshape(ntup, ncomp)
                if section == "POINT_DATA":
                    point_data[ftok[0]] = arr.squeeze(1) if ncomp == 1 else arr
        elif key in ("LOOKUP_TABLE", "METADATA", "INFORMATION", "NAME", "DATA"):
            continue
        else:
            r.fail(f"unexpected keyword '{tok[0]}'")
    if points is None:
        r.fail("no POINTS section")
    for name, arr in point_data.items():
        if len(arr) != len(points):
            r.fail(f"point data '{name}' has {len(arr)} values for {len(points)} points")
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


def read_vtk(path: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Returns ``(points [N, 3] float32, {name: point-data array})`` of a
    legacy ``.vtk`` file (read here) or of any mesh file that ``meshio``
    reads (``.vtu`` and others; needs ``pip install meshio``)."""
    if path.lower().endswith(".vtk"):
        return read_legacy_vtk(path)
    try:
        import meshio
    except ImportError as e:
        raise ImportError(
            f"reading '{path}' (not a legacy .vtk file) needs meshio: pip install meshio"
        ) from e
    if not osp.isfile(path):
        raise FileNotFoundError(f"Missing data file '{path}'")
    try:
        mesh = meshio.read(path)
    except (Exception, SystemExit) as e:  # meshio 5.3 calls sys.exit on unreadable files
        what = (
            "meshio could not read it" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        )
        raise DataFormatError(f"Malformed data file '{path}': {what}") from None
    points = np.asarray(mesh.points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise DataFormatError(f"Malformed data file '{path}': points of shape {points.shape}")
    if points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((len(points), 1), np.float32)], 1)
    if not np.isfinite(points).all():
        raise DataFormatError(f"Malformed data file '{path}': POINTS are not all finite")
    point_data = {}
    for name, arr in mesh.point_data.items():
        arr = np.asarray(arr)
        point_data[name] = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
    return points, point_data

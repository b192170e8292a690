"""TFRecord files and ``tf.train.Example`` payloads without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

with CRC-32C (Castagnoli) and ``mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8``.
The CRC is computed by ``google-crc32c`` or ``crc32c`` when one is installed
(hundreds of MB/s), else by a pure-Python table loop (about 8 MB/s).
The payload is a protobuf ``tf.train.Example``::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     // entries: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Bytes values written with ``tf.io.serialize_tensor`` are ``TensorProto``
messages (``dtype = 1``, ``tensor_shape = 2`` with ``dim = 2 {size = 1}``,
``tensor_content = 4`` raw little-endian, or typed ``*_val`` fields); they are
decoded to numpy arrays by :func:`parse_tensor_proto`.  Writers for all of it
(:func:`write_tfrecord`, :func:`encode_example`, :func:`encode_tensor_proto`)
exist for tests.
"""

import struct
from typing import Dict, Iterator, List, Tuple, Union

import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)
_MASK_DELTA = 0xA282EAD8


def crc32c_pure(data: bytes) -> int:
    """CRC-32C of ``data`` in pure Python (the fallback)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c():
    """``(name, function)`` of an installed CRC-32C package, or ``("python", None)``."""
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":  # its pure-Python fallback is no faster
            return "google-crc32c", google_crc32c.value
    except ImportError:
        pass
    try:
        from crc32c import crc32c as fast

        return "crc32c", fast
    except ImportError:
        pass
    return "python", None


#: Which implementation :func:`crc32c` uses: "google-crc32c", "crc32c" or "python".
CRC32C_BACKEND, _FAST = _fast_crc32c()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (``crc32c(b'123456789') == 0xE3069283``), by
    ``google-crc32c`` or ``crc32c`` when installed, else in pure Python."""
    if _FAST is not None:
        return int(_FAST(bytes(data)))
    return crc32c_pure(data)


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """A TFRecord file or one of its records is malformed."""


def read_tfrecord(path: str, verify: bool = True) -> Iterator[bytes]:
    """Yields the records of the TFRecord file ``path``; raises
    :class:`TFRecordError` naming the file and the offset on bad framing."""
    with open(path, "rb") as f:
        buf = f.read()
    off, i = 0, 0
    while off < len(buf):
        if off + 12 > len(buf):
            raise TFRecordError(
                f"Malformed TFRecord file '{path}': truncated header of record {i} at byte {off}"
            )
        header = buf[off : off + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", buf[off + 8 : off + 12])
        if verify and masked_crc32c(header) != len_crc:
            raise TFRecordError(
                f"Malformed TFRecord file '{path}': length CRC mismatch in record {i} at byte {off}"
            )
        start, end = off + 12, off + 12 + length
        if end + 4 > len(buf):
            raise TFRecordError(
                f"Malformed TFRecord file '{path}': record {i} "
                f"at byte {off} claims {length} bytes, file ends first"
            )
        data = buf[start:end]
        (data_crc,) = struct.unpack("<I", buf[end : end + 4])
        if verify and masked_crc32c(data) != data_crc:
            raise TFRecordError(
                f"Malformed TFRecord file '{path}': data CRC mismatch in record {i} at byte {off}"
            )
        yield data
        off, i = end + 4, i + 1


def write_tfrecord(path: str, records: List[bytes]) -> None:
    with open(path, "wb") as f:
        for data in records:
            header = struct.pack("<Q", len(data))
            f.write(header)
            f.write(struct.pack("<I", masked_crc32c(header)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))


# -- protobuf wire format ------------------------------------------------------
def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise TFRecordError("varint too long")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """Yields ``(field_number, wire_type, value)`` of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = bytes(buf[pos : pos + 8]), pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise TFRecordError("truncated length-delimited field")
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise TFRecordError(f"unsupported wire type {wt}")
        if pos > len(buf):
            raise TFRecordError("truncated field")
        yield num, wt, val


def _packed_varints(buf: bytes) -> List[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def parse_example(buf: bytes) -> Dict[str, Union[np.ndarray, List[bytes]]]:
    """Decodes a serialized ``tf.train.Example`` into ``{key: value}`` where a
    value is a float32 array, an int64 array or a list of bytes."""
    out: Dict[str, Union[np.ndarray, List[bytes]]] = {}
    for num, wt, features in _fields(buf):
        if num != 1 or wt != 2:
            continue
        for n2, w2, entry in _fields(features):
            if n2 != 1 or w2 != 2:
                continue
            key, feature = None, b""
            for n3, _, v in _fields(entry):
                if n3 == 1:
                    try:
                        key = bytes(v).decode("utf-8")
                    except (UnicodeDecodeError, TypeError):
                        raise TFRecordError("feature key is not UTF-8 text") from None
                elif n3 == 2:
                    feature = v
            if key is None:
                raise TFRecordError("feature map entry without a key")
            value: Union[np.ndarray, List[bytes]] = []
            for kind, _, lst in _fields(feature):
                if kind == 1:
                    value = [v for n, _, v in _fields(lst) if n == 1]
                elif kind == 2:
                    parts = []
                    for n, w, v in _fields(lst):
                        if n == 1:
                            if not isinstance(v, bytes) or len(v) % 4:
                                raise TFRecordError("float list of a length not a multiple of 4")
                            parts.append(
                                np.frombuffer(v, "<f4")
                                if w == 2
                                else np.frombuffer(v, "<f4", count=1)
                            )
                    value = (np.concatenate(parts) if parts else np.zeros(0, np.float32)).astype(
                        np.float32
                    )
                elif kind == 3:
                    ints: List[int] = []
                    for n, w, v in _fields(lst):
                        if n == 1:
                            if w == 2:
                                ints += _packed_varints(v)
                            else:
                                ints.append(v - (1 << 64) if v >= 1 << 63 else v)
                    value = np.array(ints, dtype=np.int64)
            out[key] = value
    return out


def _key(num: int, wt: int) -> bytes:
    return _enc_varint((num << 3) | wt)


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(payload)) + payload


def encode_example(features: Dict[str, Union[np.ndarray, List[bytes], bytes]]) -> bytes:
    """Serializes ``{key: value}`` as a ``tf.train.Example`` (float arrays as
    FloatList, integer arrays as Int64List, bytes as BytesList)."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, (bytes, bytearray)):
            value = [bytes(value)]
        if isinstance(value, list):
            feature = _ld(1, b"".join(_ld(1, v) for v in value))
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                feature = _ld(2, _ld(1, arr.astype("<f4").tobytes()))
            else:
                feature = _ld(3, _ld(1, b"".join(_enc_varint(int(v)) for v in arr.ravel())))
        entries += _ld(1, _ld(1, key.encode()) + _ld(2, feature))
    return _ld(1, entries)


# -- TensorProto -------------------------------------------------------------
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "<u1", 5: "<i2", 6: "<i1", 9: "<i8", 10: "?", 19: "<f2"}
_DT_FLOAT = 1


def parse_tensor_proto(buf: bytes) -> np.ndarray:
    """Decodes a ``TensorProto`` (``tf.io.serialize_tensor`` output)."""
    dtype, shape, content = None, [], None
    floats: List[np.ndarray] = []
    for num, wt, val in _fields(buf):
        if num == 1 and wt == 0:
            dtype = val
        elif num == 2 and wt == 2:
            for n, _, dim in _fields(val):
                if n == 2:
                    size = 0
                    for n2, _, v in _fields(dim):
                        if n2 == 1:
                            size = v
                    shape.append(size)
        elif num == 4 and wt == 2:
            content = val
        elif num == 5:  # float_val
            if not isinstance(val, bytes) or len(val) % 4:
                raise TFRecordError("TensorProto float_val of a length not a multiple of 4")
            floats.append(
                np.frombuffer(val, "<f4") if wt == 2 else np.frombuffer(val, "<f4", count=1)
            )
    if dtype not in _DTYPES:
        raise TFRecordError(f"TensorProto with unsupported or missing dtype {dtype}")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        if len(content) % np.dtype(_DTYPES[dtype]).itemsize:
            raise TFRecordError(f"TensorProto content of {len(content)} bytes for dtype {dtype}")
        arr = np.frombuffer(content, _DTYPES[dtype])
    elif floats:
        arr = np.concatenate(floats)
        if arr.size == 1 and count > 1:
            arr = np.full(count, arr[0], dtype=np.float32)
    else:
        arr = np.zeros(0, _DTYPES[dtype])
    if arr.size != count:
        raise TFRecordError(f"TensorProto holds {arr.size} values for shape {shape}")
    return arr.reshape(shape).copy()


def encode_tensor_proto(arr: np.ndarray) -> bytes:
    """Serializes a float32 array as ``tf.io.serialize_tensor`` does."""
    arr = np.ascontiguousarray(arr, dtype="<f4")
    shape = b"".join(_ld(2, _key(1, 0) + _enc_varint(int(s))) for s in arr.shape)
    return _key(1, 0) + _enc_varint(_DT_FLOAT) + _ld(2, shape) + _ld(4, arr.tobytes())

"""The IDX file format of MNIST (LeCun et al.), raw or gzip-compressed.

An IDX file is a 4-byte magic number -- two zero bytes, a type code (0x08
unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E
float64) and the number of dimensions -- then each dimension as a big-endian
uint32, then the values, big-endian, in C order. MNIST's images are
``0x00000803`` (N, 28, 28) and its labels ``0x00000801`` (N,).

Everything is checked: the magic number, the header length, and that the
data is exactly as long as the dimensions say (a truncated download is a
ValueError naming the file, never a silently short array).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"

__all__ = ["read_idx", "write_idx", "IDX_TYPES"]


#: Largest IDX payload ``read_idx`` accepts (full MNIST's training images
#: are 47 MB): a gzip file of a few MB can declare and hold gigabytes.
MAX_IDX_BYTES = 2**31


def _declared_bytes(head: bytes) -> int:
    """The payload size a complete IDX header declares (0 if it is not one:
    read_idx then says what is wrong)."""
    if len(head) < 4 or head[2] not in IDX_TYPES or len(head) != 4 + 4 * \
            head[3]:
        return 0
    shape = struct.unpack(f">{head[3]}I", head[4:])
    return math.prod(shape) * IDX_TYPES[head[2]].itemsize


def _read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by content, not name).

    A gzip file is decompressed as a stream: its header first, then what
    the header declares (if within MAX_IDX_BYTES) and one byte more, to
    find trailing data, so that a small file cannot ask for gigabytes.
    """
    with open(path, "rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            handle.seek(0)
            return handle.read()
        handle.seek(0)
        try:
            with gzip.GzipFile(fileobj=handle) as stream:
                head = stream.read(4)
                if len(head) == 4:
                    head += stream.read(4 * head[3])
                declared = _declared_bytes(head)
                if declared > MAX_IDX_BYTES:
                    raise ValueError(
                        f"{os.fspath(path)}: the IDX header declares "
                        f"{declared} bytes, more than MAX_IDX_BYTES "
                        f"({MAX_IDX_BYTES})")
                return head + stream.read(declared + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{os.fspath(path)}: corrupt or truncated gzip "
                             f"data ({exc})") from None


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or raw), native byte order.

    Raises ValueError for a wrong magic number, a truncated header or data,
    or trailing bytes; FileNotFoundError when the file does not exist.
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{name}: {len(raw)} bytes is too short for an IDX "
                         "file (a 4-byte magic number comes first)")
    zero_a, zero_b, type_code, ndim = raw[:4]
    magic = int.from_bytes(raw[:4], "big")
    if zero_a or zero_b or type_code not in IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{name}: not an IDX file (magic number 0x{magic:08x}; expected "
            "0x0000TTDD with a type TT in 08, 09, 0B, 0C, 0D, 0E and DD >= 1 "
            "dimensions)")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{name}: truncated IDX header ({len(raw)} bytes, "
                         f"{header_size} needed for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise ValueError(f"{name}: the IDX header declares {expected} bytes, "
                         f"more than MAX_IDX_BYTES ({MAX_IDX_BYTES})")
    found = len(raw) - header_size
    if found < expected:
        raise ValueError(
            f"{name}: truncated IDX data: shape {shape} needs {expected} "
            f"bytes, the file holds {found}")
    if found > expected:
        raise ValueError(
            f"{name}: unexpected bytes after the IDX data of shape {shape}")
    values = np.frombuffer(raw, dtype=dtype, count=math.prod(shape),
                           offset=header_size)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress`` or the name ends
    in ``.gz``). Its dtype must be one IDX can hold."""
    array = np.asarray(array)
    for type_code, dtype in IDX_TYPES.items():
        if array.dtype.newbyteorder(">") == dtype or array.dtype == dtype:
            break
    else:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(payload) if compress else payload)

"""The IDX format of MNIST / Fashion-MNIST, parsed with numpy (no torchvision).

Layout (big-endian): two zero bytes, a dtype code, the number of dimensions ``k``, then ``k``
uint32 sizes, then the values in C order. Files may be gzip-compressed (detected from the first two
bytes, not the file name).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["parse_idx", "read_idx"]

# IDX dtype code -> numpy dtype (big-endian as stored)
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file (optionally gzipped) into an array of its declared shape.

    Raises ValueError, naming ``name``, on a wrong magic number, an unknown dtype code, or a length
    that does not match the header (truncated or trailing bytes). Returns a native-endian array.
    """
    data = bytes(data)
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{name}: corrupt gzip data ({err})") from None
    if len(data) < 4:
        raise ValueError(f"{name}: not an IDX file: {len(data)} bytes, the header alone needs at least 4")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file: wrong magic number 0x{data[:4].hex()} "
            "(expected 0x0000 followed by a dtype code and the number of dimensions)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise ValueError(f"{name}: unknown IDX dtype code 0x{code:02X} (allowed: {allowed})")
    if ndim == 0:
        raise ValueError(f"{name}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header: {len(data)} bytes, the header needs {header}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{name}: IDX file {what}: header declares shape {shape} of {dtype.name} "
            f"({expected} bytes in all) but the file has {len(data)} bytes"
        )
    try:
        values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError as err:  # e.g. shape (0, 2**31, 2**31): empty, yet too big for numpy
        raise ValueError(f"{name}: IDX shape {shape} cannot be represented ({err})") from None
    return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) from ``path``; see :func:`parse_idx`."""
    with open(path, "rb") as fh:
        return parse_idx(fh.read(), name=os.fspath(path))

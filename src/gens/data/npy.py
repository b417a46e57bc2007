"""A strict ``.npy`` reader: numeric arrays only, never unpickles, checks the file length.

The header is parsed by numpy's own ``read_magic`` / ``read_array_header_*``; the data are read only
after the declared size has been checked against the file, so a corrupt header can neither make us
allocate a huge array nor return a short one.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.lib import format as npformat

__all__ = ["read_npy"]

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Return the array stored in the ``.npy`` file at ``path``.

    Raises ValueError naming the file if it is not a valid ``.npy`` file, holds an object (pickled)
    or non-numeric array, or is shorter/longer than its header says.
    """
    name = os.fspath(path)
    size = os.path.getsize(name)
    with open(name, "rb") as fh:
        try:
            version = npformat.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npformat.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported format version {version}")
        except Exception as err:  # numpy raises several types on garbage headers
            raise ValueError(f"{name}: not a valid .npy file ({type(err).__name__}: {err})") from None
        if dtype.hasobject:
            raise ValueError(
                f"{name}: holds an object array (e.g. images of mixed sizes or pickled data), which is "
                "not loaded for safety; save a numeric array of equal-sized images, e.g. uint8 (n, H, W)"
            )
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(
                f"{name}: dtype {dtype} is not supported; expected a plain numeric array "
                "(uint8 in 0..255, or float in [0, 1])"
            )
        count = int(np.prod(shape, dtype=object))
        offset = fh.tell()
        expected = offset + count * dtype.itemsize
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise ValueError(
                f"{name}: .npy file {what}: header declares shape {shape} of {dtype} "
                f"({expected} bytes in all) but the file has {size} bytes"
            )
        data = fh.read(count * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype, count=count)
    try:
        array = array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
    except ValueError as err:  # e.g. shape (0, 2**40, 2**40): empty, yet too big for numpy
        raise ValueError(f"{name}: .npy shape {shape} cannot be represented ({err})") from None
    return np.ascontiguousarray(array.astype(dtype.newbyteorder("=")))

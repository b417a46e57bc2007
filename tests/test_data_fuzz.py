"""Fuzzing the IDX and .npy readers: corrupt bytes must give ValueError or a valid array, never
another exception, a huge allocation or a hang."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gens.data import load_dataset, parse_idx, read_npy
from gens.data.idx import IDX_DTYPES

FUZZ = settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def idx_header(code: int, dims: list[int]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def check_idx(data: bytes):
    """parse_idx(data) raises ValueError or returns an array consistent with its header."""
    try:
        out = parse_idx(data, "fuzz")
    except ValueError as err:
        assert str(err).startswith("fuzz: ") and "\n" not in str(err)
        return None
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    code, ndim = raw[2], raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    assert out.shape == dims and out.dtype == IDX_DTYPES[code].newbyteorder("=")
    assert len(raw) == 4 + 4 * ndim + out.size * out.itemsize
    return out


@FUZZ
@given(st.binary(max_size=200))
def test_idx_random_bytes(data):
    check_idx(data)
    check_idx(gzip.compress(data))  # valid gzip around garbage


@FUZZ
@given(
    code=st.sampled_from(sorted(IDX_DTYPES) + [0x00, 0x07, 0x0A, 0x0F, 0xFF]),
    dims=st.lists(st.one_of(st.integers(0, 5), st.integers(2**31, 2**32 - 1)), min_size=0, max_size=4),
    extra=st.integers(-6, 6),
)
def test_idx_headers_with_wrong_lengths(code, dims, extra):
    """Plausible headers (including 4-billion-long dimensions) with payloads a few bytes off."""
    itemsize = IDX_DTYPES[code].itemsize if code in IDX_DTYPES else 1
    n = int(np.prod(dims, dtype=object)) * itemsize
    payload = bytes(max(0, min(n, 10_000) + extra))
    out = check_idx(idx_header(code, dims) + payload)
    if out is not None:  # only an exact payload under a valid code and at least one dimension
        assert len(payload) == n and code in IDX_DTYPES and dims
    elif code in IDX_DTYPES and dims and len(payload) == n and max(dims) < 2**31:
        pytest.fail("a valid IDX file was rejected")


@FUZZ
@given(st.data())
def test_idx_corrupted_valid_file(data):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = idx_header(0x08, [2, 3, 4]) + a.tobytes()
    blob = bytearray(gzip.compress(good) if data.draw(st.booleans()) else good)
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "append"]))
        if action == "flip" and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[data.draw(st.integers(0, len(blob))) :]
        else:
            blob += data.draw(st.binary(min_size=1, max_size=8))
    check_idx(bytes(blob))


@pytest.fixture(scope="module")
def npy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("npyfuzz")


def check_npy(path):
    """read_npy: ValueError, or exactly what np.load reads; load_dataset: ValueError or valid data."""
    try:
        out = read_npy(path)
    except ValueError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        out = None
    if out is not None:
        np.testing.assert_array_equal(out, np.load(path, allow_pickle=False))
    try:
        X, y = load_dataset(f"npy:{path}")
    except ValueError as err:
        assert "\n" not in str(err)
        return
    assert out is not None and y is None
    assert X.dtype == np.float32 and X.ndim in (2, 4) and X.shape[0] == out.shape[0] > 0
    assert np.isfinite(X).all() and X.min() >= 0.0 and X.max() <= 1.0


MAGICS = [b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", b"\x93NUMPY\x01\x00\x76\x00{'descr': '"]


@FUZZ
@given(prefix=st.sampled_from(MAGICS), data=st.binary(max_size=300))
def test_npy_random_bytes(npy_dir, prefix, data):
    path = npy_dir / "random.npy"
    path.write_bytes(prefix + data)  # the prefixes make the garbage reach the header parser
    check_npy(path)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


ARRAYS = st.sampled_from(
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(0, 1, 12).reshape(3, 4),
        np.full((1, 2, 2, 3), 0.25, dtype=np.float32),
        np.arange(8, dtype=np.int16).reshape(2, 2, 2),
    ]
)


@FUZZ
@given(a=ARRAYS, data=st.data())
def test_npy_corrupted_valid_file(npy_dir, a, data):
    blob = bytearray(npy_bytes(a))
    header_end = blob.index(b"\n") + 1
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip_header", "flip", "cut", "append", "shape"]))
        if action == "flip_header" and blob:
            i = data.draw(st.integers(0, min(header_end, len(blob)) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        elif action == "flip" and blob:
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del blob[data.draw(st.integers(0, len(blob))) :]
        elif action == "append":
            blob += data.draw(st.binary(min_size=1, max_size=8))
        else:  # rewrite the declared shape, keeping the header length
            shape = data.draw(st.lists(st.integers(0, 2**40), max_size=5))
            text = bytes(blob[:header_end]).decode("latin1")
            start, stop = text.find("'shape': ("), text.find(")", text.find("'shape': ("))
            if start >= 0 and stop > start:
                new = text[:start] + f"'shape': ({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})" + text[stop + 1 :]
                blob[:header_end] = new.encode("latin1")
    path = npy_dir / "corrupt.npy"
    path.write_bytes(bytes(blob))
    check_npy(path)

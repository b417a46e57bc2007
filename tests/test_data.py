"""Data loading: each format is written here in its real layout and read back through gens.data."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from gens.data import MissingDataError, available_splits, load_dataset, parse_idx, read_npy

MNIST = "/work/shared/data/mnist"
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of ``a``, written with struct (independent of the parser)."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[a.dtype.type], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(folder, split, images, labels, gz=True, dot=False):
    os.makedirs(folder, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for what, arr, rank in (("images", images, 3), ("labels", labels, 1)):
        name = f"{prefix}-{what}{'.' if dot else '-'}idx{rank}-ubyte" + (".gz" if gz else "")
        data = idx_bytes(arr)
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(gzip.compress(data) if gz else data)


def tiny_mnist(rng, n=12, h=5, w=4):
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


# ------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_parse_idx_round_trips_every_dtype(dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - 20).astype(dtype)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = parse_idx(idx_bytes(a))
    assert out.shape == a.shape and out.dtype == a.dtype
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(parse_idx(gzip.compress(idx_bytes(a))), a)


@pytest.mark.parametrize("gz,dot", [(True, False), (False, False), (False, True), (True, True)])
def test_idx_folder_gz_and_raw(tmp_path, gz, dot):
    rng = np.random.default_rng(0)
    xtr, ytr = tiny_mnist(rng)
    xte, yte = tiny_mnist(rng, n=7)
    write_idx(tmp_path, "train", xtr, ytr, gz=gz, dot=dot)
    write_idx(tmp_path, "test", xte, yte, gz=gz, dot=dot)
    for source in (str(tmp_path), f"mnist:{tmp_path}", f"fashion-mnist:{tmp_path}"):
        X, y = load_dataset(source)
        assert X.shape == (12, 1, 5, 4) and X.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_allclose(X[:, 0], xtr / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(y, ytr)
    X, y = load_dataset(tmp_path, "test", limit=3)
    np.testing.assert_allclose(X[:, 0], xte[:3] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y, yte[:3])
    assert available_splits(str(tmp_path)) == ("train", "test")


def test_idx_errors(tmp_path):
    rng = np.random.default_rng(1)
    x, y = tiny_mnist(rng)
    good = idx_bytes(x)
    with pytest.raises(ValueError, match="truncated"):
        parse_idx(good[:-1], "f")
    with pytest.raises(ValueError, match="truncated IDX header"):
        parse_idx(good[:9], "f")
    with pytest.raises(ValueError, match="trailing bytes"):
        parse_idx(good + b"\0", "f")
    with pytest.raises(ValueError, match="wrong magic number"):
        parse_idx(b"\x01" + good[1:], "f")
    with pytest.raises(ValueError, match="unknown IDX dtype code 0x07"):
        parse_idx(good[:2] + b"\x07" + good[3:], "f")
    with pytest.raises(ValueError, match="corrupt gzip"):
        parse_idx(gzip.compress(good)[:-5], "f")
    # the file name is in the message
    write_idx(tmp_path, "train", x, y, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: IDX file truncated"):
        load_dataset(str(tmp_path))


def test_idx_label_mismatch_nan_and_missing_files(tmp_path):
    rng = np.random.default_rng(2)
    x, y = tiny_mnist(rng)
    write_idx(tmp_path / "a", "train", x, y[:-1])
    with pytest.raises(ValueError, match="11 labels but .* 12 images"):
        load_dataset(str(tmp_path / "a"))
    xf = (x / 255.0).astype(np.float32)
    xf[0, 0, 0] = np.nan
    write_idx(tmp_path / "b", "train", xf, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_dataset(str(tmp_path / "b"))
    write_idx(tmp_path / "c", "train", np.zeros((0, 5, 4), np.uint8), np.zeros(0, np.uint8))
    with pytest.raises(ValueError, match="holds no data"):
        load_dataset(str(tmp_path / "c"))
    # labels missing: say which names were looked for
    os.remove(tmp_path / "a" / "train-labels-idx1-ubyte.gz")
    with pytest.raises(MissingDataError, match=r"train-labels-idx1-ubyte\[\.gz\], train-labels\.idx1-ubyte"):
        load_dataset(f"mnist:{tmp_path / 'a'}")
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte"):
        load_dataset(f"mnist:{tmp_path / 'b'}", "test")
    assert available_splits(f"mnist:{tmp_path / 'b'}") == ("train",)
    err = pytest.raises(FileNotFoundError, load_dataset, f"mnist:{tmp_path / 'nope'}")
    assert "does not exist" in str(err.value) and isinstance(err.value, ValueError)


@pytest.mark.skipif(not os.path.isdir(MNIST), reason="real MNIST not present")
def test_real_mnist():
    X, y = load_dataset(f"mnist:{MNIST}", "test")
    assert X.shape == (10000, 1, 28, 28) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 1.0
    # published MNIST test-set class counts
    np.testing.assert_array_equal(np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    X, y = load_dataset(MNIST, "train")
    assert X.shape == (60000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])


# ---------------------------------------------------------------------------------------- digits


def test_digits_split_matches_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    Xtr, ytr = load_dataset("digits")
    Xte, yte = load_dataset("digits", "test")
    assert Xtr.shape == (1437, 1, 8, 8) and Xte.shape == (360, 1, 8, 8)
    np.testing.assert_allclose(np.concatenate([Xtr, Xte])[:, 0], ref.images / 16.0, atol=1e-7)
    np.testing.assert_array_equal(np.concatenate([ytr, yte]), ref.target)
    assert Xtr.min() == 0.0 and Xtr.max() == 1.0
    assert np.bincount(yte).min() >= 30  # every class present in the test split


# ------------------------------------------------------------------------------------------ SVHN


def write_svhn(path, n, rng, labels=None):
    from scipy.io import savemat

    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (rng.integers(1, 11, size=(n, 1)) if labels is None else labels).astype(np.uint8)
    savemat(path, {"X": X, "y": y})
    return X, y


def test_svhn_folder_and_file(tmp_path):
    rng = np.random.default_rng(3)
    Xm, ym = write_svhn(tmp_path / "train_32x32.mat", 9, rng, labels=np.array([[10], [1], [2], [3], [4], [5], [6], [7], [10]]))
    Xt, _ = write_svhn(tmp_path / "test_32x32.mat", 4, rng)
    X, y = load_dataset(f"svhn:{tmp_path}")
    assert X.shape == (9, 3, 32, 32) and X.dtype == np.float32
    for i in range(9):
        np.testing.assert_allclose(X[i], Xm[:, :, :, i].transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, [0, 1, 2, 3, 4, 5, 6, 7, 0])
    X, _ = load_dataset(str(tmp_path), "test")  # a folder of SVHN files is recognised
    np.testing.assert_allclose(X[2], Xt[:, :, :, 2].transpose(2, 0, 1) / 255.0, atol=1e-7)
    X, y = load_dataset(str(tmp_path / "test_32x32.mat"))  # a .mat path is one split
    assert X.shape == (4, 3, 32, 32)
    assert available_splits(f"svhn:{tmp_path}") == ("train", "test")
    with pytest.raises(MissingDataError, match="extra_32x32.mat"):
        load_dataset(f"svhn:{tmp_path}", "extra")
    with pytest.raises(ValueError, match="only a 'train' split"):
        load_dataset(str(tmp_path / "test_32x32.mat"), "test")


def test_svhn_errors(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "keys.mat", {"images": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(ValueError, match=r"keys.mat: expected keys 'X'.*found \['images'\]"):
        load_dataset(str(tmp_path / "keys.mat"))
    savemat(tmp_path / "shape.mat", {"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(ValueError, match="shape.mat: 'X' must have shape"):
        load_dataset(f"svhn:{tmp_path / 'shape.mat'}")
    savemat(tmp_path / "lab.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]])})
    with pytest.raises(ValueError, match="must lie in 1..10"):
        load_dataset(str(tmp_path / "lab.mat"))
    savemat(tmp_path / "n.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        load_dataset(str(tmp_path / "n.mat"))
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    with pytest.raises(ValueError, match="junk.mat: not a readable .mat file"):
        load_dataset(str(tmp_path / "junk.mat"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="train_32x32.mat"):
        load_dataset(f"svhn:{empty}")


# --------------------------------------------------------------------------------- image folders


def test_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "sub").mkdir()
    # 30 wide x 20 high: red and blue strips either side of a green 20 x 20 centre -> cropped away
    a = np.zeros((20, 30, 3), np.uint8)
    a[:, :5] = (255, 0, 0)
    a[:, 5:25] = (0, 255, 0)
    a[:, 25:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "a.png")
    b = np.random.default_rng(4).integers(0, 256, size=(8, 8), dtype=np.uint8)
    Image.fromarray(b, mode="L").save(tmp_path / "sub" / "b.PNG")  # grey, already 8 x 8: kept exactly
    c = np.full((16, 12, 3), (10, 200, 30), np.uint8)
    Image.fromarray(c).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(np.zeros((9, 9, 4), np.uint8)).save(tmp_path / "d.png")  # RGBA
    (tmp_path / "notes.txt").write_text("ignored")
    X, y = load_dataset(f"images:{tmp_path}", image_size=8)
    assert y is None and X.shape == (4, 3, 8, 8) and X.dtype == np.float32  # a, c, d, sub/b
    np.testing.assert_array_equal(X[0, 1], 1.0)
    np.testing.assert_array_equal(X[0, [0, 2]], 0.0)
    np.testing.assert_allclose(X[1], np.array([10, 200, 30])[:, None, None] / 255.0 * np.ones((3, 8, 8)), atol=6 / 255)
    np.testing.assert_array_equal(X[3], np.repeat(b[None] / 255.0, 3, axis=0).astype(np.float32))
    X, _ = load_dataset(f"images:{tmp_path}", limit=2)
    assert X.shape == (2, 3, 64, 64)  # default image_size 64
    with pytest.raises(ValueError, match="only a 'train' split"):
        load_dataset(f"images:{tmp_path}", "test")


def test_image_folder_errors(tmp_path):
    from PIL import Image

    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="bad.png: corrupt or unreadable image"):
        load_dataset(f"images:{tmp_path}")
    os.remove(tmp_path / "bad.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8) + 99).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cut.jpg: corrupt or unreadable image"):
        load_dataset(f"images:{tmp_path}")
    os.remove(tmp_path / "cut.jpg")
    with pytest.raises(MissingDataError, match="no .png/.jpg/.jpeg files found"):
        load_dataset(f"images:{tmp_path}")
    with pytest.raises(ValueError, match="expects a folder"):
        (tmp_path / "f.png").write_bytes(b"")
        load_dataset(f"images:{tmp_path / 'f.png'}")


# ------------------------------------------------------------------------------------------- npy


def test_npy_layouts_and_labels(tmp_path):
    rng = np.random.default_rng(5)
    u8 = rng.integers(0, 256, size=(6, 7, 5), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    X, y = load_dataset(str(tmp_path / "u8.npy"))
    assert X.shape == (6, 1, 7, 5) and y is None
    np.testing.assert_allclose(X[:, 0], u8 / 255.0, atol=1e-7)
    f = rng.random((4, 3, 6, 6)).astype(np.float64)
    np.save(tmp_path / "f.npy", f)
    np.save(tmp_path / "f_labels.npy", np.array([3, -1, 0, 2]))
    X, y = load_dataset(f"npy:{tmp_path / 'f.npy'}")
    np.testing.assert_allclose(X, f, rtol=1e-6)
    np.testing.assert_array_equal(y, [3, -1, 0, 2])
    hwc = rng.integers(0, 256, size=(3, 10, 9, 3), dtype=np.uint8)
    np.save(tmp_path / "hwc.npy", hwc)
    X, _ = load_dataset(str(tmp_path / "hwc.npy"))
    np.testing.assert_allclose(X, hwc.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    flat = rng.random((5, 11)).astype(np.float32)
    np.save(tmp_path / "flat.npy", flat)
    X, _ = load_dataset(str(tmp_path / "flat.npy"), limit=2)
    np.testing.assert_array_equal(X, flat[:2])
    # Fortran order, big-endian and int16 read as numpy writes them
    for name, arr in {
        "fort": np.asfortranarray(u8),
        "be": f.astype(">f8"),
        "i16": u8.astype(np.int16),
    }.items():
        np.save(tmp_path / f"{name}.npy", arr)
        np.testing.assert_array_equal(read_npy(tmp_path / f"{name}.npy"), np.load(tmp_path / f"{name}.npy"))


@pytest.mark.parametrize(
    "array,match",
    [
        (np.full((2, 3, 3), 2.0), r"must lie in \[0, 1\], got \[2, 2\]; scale the data"),
        (np.array([[[0.5, np.nan]]]), "NaN or infinite"),
        (np.array([[[0.5, np.inf]]]), "NaN or infinite"),
        (np.zeros((0, 4, 4), np.uint8), "holds no data"),
        (np.full((2, 2, 2), 300, np.int32), "0..255, got 300..300"),
        (np.zeros((2, 2, 2), np.complex64), "dtype complex64 is not supported"),
        (np.array(["ab", "cd"]), "dtype <U2 is not supported"),
        (np.zeros(5, np.uint8), r"expected shape \(n, H, W\).*got \(5,\)"),
        (np.zeros((1, 1, 1, 1, 1), np.uint8), r"got \(1, 1, 1, 1, 1\)"),
    ],
)
def test_npy_errors(tmp_path, array, match):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset(str(tmp_path / "x.npy"))
    assert str(err.value).startswith(str(tmp_path / "x.npy")) and "\n" not in str(err.value)


def test_npy_object_truncated_and_bad_labels(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    with pytest.raises(ValueError, match="object array .*mixed sizes"):
        load_dataset(str(tmp_path / "ragged.npy"))
    np.save(tmp_path / "t.npy", np.zeros((3, 4, 4), np.uint8))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-1])
    with pytest.raises(ValueError, match=r"truncated: header declares shape \(3, 4, 4\)"):
        load_dataset(str(tmp_path / "t.npy"))
    (tmp_path / "g.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="g.npy: not a valid .npy file"):
        load_dataset(str(tmp_path / "g.npy"))
    np.save(tmp_path / "l.npy", np.zeros((3, 4, 4), np.uint8))
    np.save(tmp_path / "l_labels.npy", np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"l_labels.npy: labels must have shape \(3,\)"):
        load_dataset(str(tmp_path / "l.npy"))
    np.save(tmp_path / "l_labels.npy", np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match="whole numbers"):
        load_dataset(str(tmp_path / "l.npy"))


def test_source_and_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="^source: must be a non-empty string"):
        load_dataset(123)
    with pytest.raises(MissingDataError, match="^source: .*nope does not exist"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="^source: mnist: needs a path"):
        load_dataset("mnist:")
    with pytest.raises(ValueError, match="^source: folder .* has neither IDX files .* write 'images:"):
        load_dataset(str(tmp_path))
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="^source: cannot tell the format"):
        load_dataset(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="^split: must be one of 'train', 'test'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="^limit: must be an integer >= 1"):
        load_dataset("digits", limit=0)
    with pytest.raises(ValueError, match="^image_size: must be an integer >= 1"):
        load_dataset("digits", image_size=0)
    np.save(tmp_path / "flat.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="^image_size: only images"):
        load_dataset(str(tmp_path / "flat.npy"), image_size=4)


def test_image_size_resizes_any_source():
    X, _ = load_dataset("digits", limit=3, image_size=16)
    assert X.shape == (3, 1, 16, 16) and 0.0 <= X.min() and X.max() <= 1.0
    # upsampling keeps the mean intensity close to the original (bilinear interpolation)
    X8, _ = load_dataset("digits", limit=3)
    np.testing.assert_allclose(X.mean(axis=(1, 2, 3)), X8.mean(axis=(1, 2, 3)), atol=0.03)

"""``load_dataset``: read a data set into memory as float32 images in [0, 1].

Sources (a string):

- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, values 0..16 divided by 16). Split:
  the first 1437 images (80%) are "train", the last 360 are "test"; no shuffling, so the split is
  the same on every machine and numpy version.
- ``"mnist:FOLDER"``, ``"fashion-mnist:FOLDER"``, ``"idx:FOLDER"`` or just ``FOLDER``: IDX files
  ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` ("train") and ``t10k-*`` ("test"),
  raw or ``.gz`` (``train-images.idx3-ubyte`` is accepted too).
- ``"svhn:FOLDER"`` (``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``) or a ``.mat``
  path: keys ``X`` (32, 32, 3, n) and ``y`` (n, 1), label 10 meaning digit 0.
- ``"images:FOLDER"``: every .png/.jpg/.jpeg below FOLDER (sorted), converted to RGB, centre-cropped
  to a square and resized to ``image_size`` (default 64). No labels. Only a "train" split.
- ``"npy:FILE"`` or a path ending in ``.npy``: shape (n, H, W), (n, C, H, W), (n, H, W, C) with C in
  {1, 3, 4} (moved to channels-first), or flat (n, d). uint8 (or other integers in 0..255) are
  divided by 255; floats must already lie in [0, 1]. Labels are read from ``<stem>_labels.npy``
  next to the file when it exists. Only a "train" split.

Every failure raises ValueError with one line naming the file and what was expected; a missing
file or folder raises :class:`MissingDataError`, which is both a ValueError and a FileNotFoundError.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gens._validation import check_choice, check_int
from gens.data.idx import read_idx
from gens.data.npy import read_npy

__all__ = ["load_dataset", "available_splits", "parse_source", "Source", "MissingDataError"]

SCHEMES = {"mnist": "idx", "fashion-mnist": "idx", "idx": "idx", "svhn": "svhn", "images": "images", "npy": "npy"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_IMAGE_SIZE = 64
DIGITS_N_TRAIN = 1437  # first 80% of sklearn's 1797 digits
IDX_PREFIX = {"train": "train", "test": "t10k"}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
USAGE = (
    "'digits', 'mnist:FOLDER', 'fashion-mnist:FOLDER', 'svhn:FOLDER', 'svhn:FILE.mat', "
    "'images:FOLDER', 'npy:FILE.npy', a FILE.npy / FILE.mat path, or a FOLDER of IDX or SVHN files"
)


class MissingDataError(ValueError, FileNotFoundError):
    """A data file or folder does not exist (catchable as ValueError or FileNotFoundError)."""


@dataclass(frozen=True)
class Source:
    """A parsed source string: ``kind`` is digits | idx | svhn | images | npy."""

    kind: str
    path: str | None = None


def parse_source(source) -> Source:
    """Turn a source string (see the module docstring) into a :class:`Source`; checks paths exist."""
    if isinstance(source, Source):
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source: must be a non-empty string: {USAGE}; got {source!r}")
    text = source.strip()
    if text.lower() == "digits":
        return Source("digits")
    scheme, sep, rest = text.partition(":")
    if sep and scheme.lower() in SCHEMES:
        kind, path = SCHEMES[scheme.lower()], os.path.expanduser(rest)
        if not rest:
            raise ValueError(f"source: {scheme}: needs a path after the colon, e.g. '{scheme}:/data/{scheme}'")
        if not os.path.exists(path):
            raise MissingDataError(f"source: {path} does not exist (from {source!r})")
        if kind in ("idx", "images") and not os.path.isdir(path):
            raise ValueError(f"source: {scheme}: expects a folder, but {path} is a file")
        if kind == "npy" and os.path.isdir(path):
            raise ValueError(f"source: npy: expects a .npy file, but {path} is a folder")
        return Source(kind, path)
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise MissingDataError(f"source: {path} does not exist; expected {USAGE}")
    if os.path.isfile(path):
        if path.lower().endswith(".npy"):
            return Source("npy", path)
        if path.lower().endswith(".mat"):
            return Source("svhn", path)
        raise ValueError(f"source: cannot tell the format of file {path}; expected a .npy or .mat file")
    if _find_idx(path, "train", "images") is not None:
        return Source("idx", path)
    if any(os.path.isfile(os.path.join(path, f)) for f in SVHN_FILES.values()):
        return Source("svhn", path)
    raise ValueError(
        f"source: folder {path} has neither IDX files ({_idx_names('train', 'images')[0]}[.gz], ...) nor "
        f"SVHN files ({', '.join(SVHN_FILES.values())}); for a folder of images write 'images:{path}'"
    )


def available_splits(source) -> tuple[str, ...]:
    """The splits ``load_dataset`` can read from ``source`` ("train" always, "test" where it exists)."""
    src = parse_source(source)
    if src.kind == "digits":
        return ("train", "test")
    if src.kind == "idx":
        return ("train",) + (("test",) if _find_idx(src.path, "test", "images") else ())
    if src.kind == "svhn" and os.path.isdir(src.path):
        found = tuple(s for s, f in SVHN_FILES.items() if os.path.isfile(os.path.join(src.path, f)))
        return found if "train" in found else ("train",) + found
    return ("train",)


def load_dataset(source, split: str = "train", *, image_size: int | None = None, limit: int | None = None):
    """Load ``split`` of ``source`` into memory.

    Returns ``(X, y)``: X float32 in [0, 1] of shape (n, C, H, W) (or (n, d) for flat .npy data),
    y int64 of shape (n,) or None. ``limit`` keeps the first ``limit`` samples; ``image_size``
    centre-crops to a square and resizes to (image_size, image_size).
    """
    src = parse_source(source)
    if src.kind in ("images", "npy") or (src.kind == "svhn" and os.path.isfile(src.path)):
        if split != "train":  # a single file or a folder of images is one split
            raise ValueError(f"split: {src.path} has only a 'train' split; got {split!r}")
    check_choice("split", split, ("train", "test", "extra") if src.kind == "svhn" else ("train", "test"))
    if limit is not None:
        limit = check_int("limit", limit, minimum=1)
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=1)
    if src.kind == "images":
        return _load_images(src.path, image_size or DEFAULT_IMAGE_SIZE, limit), None
    if src.kind == "digits":
        x, y, name = *_load_digits(split), "digits"
    elif src.kind == "idx":
        x, y, name = _load_idx(src.path, split)
    elif src.kind == "svhn":
        x, y, name = _load_svhn(src.path, split)
    else:
        x, y, name = *_load_npy(src.path), src.path
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    x = to_unit_float(to_channels_first(x, name), name)
    if image_size is not None:
        x = crop_resize(x, image_size, name)
    return x, y


# ---------------------------------------------------------------------------------------- checks


def to_unit_float(x: np.ndarray, name: str) -> np.ndarray:
    """Convert to float32 in [0, 1]: uint8/integers in 0..255 are divided by 255, floats must be in [0, 1]."""
    if x.size == 0:
        raise ValueError(f"{name}: holds no data (shape {x.shape}); expected at least one sample")
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer pixel values must lie in 0..255, got {lo}..{hi}")
        out = x.astype(np.float32)
        out /= 255.0
        return out
    if np.issubdtype(x.dtype, np.floating):
        _check_finite(name, x)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{name}: float values must lie in [0, 1], got [{lo:g}, {hi:g}]; scale the data first "
                "(e.g. x / 255, or (x - x.min()) / (x.max() - x.min()))"
            )
        return np.ascontiguousarray(x, dtype=np.float32)
    raise ValueError(f"{name}: dtype {x.dtype} is not supported; expected uint8 in 0..255 or float in [0, 1]")


def check_labels(y, n: int, name: str) -> np.ndarray:
    """Return labels as int64 (n,); integers >= -1 (-1 = unlabelled); floats must be whole numbers."""
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: labels must have shape ({n},) to match the data, got {y.shape}")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        _check_finite(name, y)
        if n and not np.all(y == np.round(y)):
            raise ValueError(f"{name}: labels must be whole numbers, got non-integer floats")
    if n and (y.min() < -1 or y.max() >= 2**31):
        raise ValueError(f"{name}: labels must be integers in [0, 2**31) or -1 (unlabelled), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _check_finite(name: str, x: np.ndarray) -> None:
    """Like gens._validation.check_finite, without importing torch (load_dataset stays torch-free)."""
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise ValueError(f"{name}: must hold only finite values, found {bad} NaN or infinite entries")


def to_channels_first(x: np.ndarray, name: str) -> np.ndarray:
    """(n, d) stays flat; (n, H, W) -> (n, 1, H, W); (n, H, W, C) with C in 1,3,4 -> (n, C, H, W)."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3, 4):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise ValueError(f"{name}: expected shape (n, H, W), (n, C, H, W) or (n, d), got {x.shape}")


def crop_resize(x: np.ndarray, size: int, name: str) -> np.ndarray:
    """Centre-crop (n, C, H, W) images to a square and resize to (size, size), bilinear with antialiasing."""
    if x.ndim != 4:
        raise ValueError(f"image_size: only images (n, C, H, W) can be resized, {name} has shape {x.shape}")
    h, w = x.shape[2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[:, :, top : top + s, left : left + s]
    if s == size:
        return np.ascontiguousarray(x)
    import torch

    out = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(x)), size=(size, size), mode="bilinear", antialias=True
    )
    return out.clamp_(0.0, 1.0).numpy()


# --------------------------------------------------------------------------------------- sources


def _load_digits(split: str):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    part = slice(None, DIGITS_N_TRAIN) if split == "train" else slice(DIGITS_N_TRAIN, None)
    return x[part], y[part]


def _idx_names(split: str, what: str) -> list[str]:
    prefix, rank = IDX_PREFIX[split], 3 if what == "images" else 1
    return [f"{prefix}-{what}-idx{rank}-ubyte", f"{prefix}-{what}.idx{rank}-ubyte"]


def _find_idx(folder: str, split: str, what: str) -> str | None:
    for base in _idx_names(split, what):
        for name in (base + ".gz", base):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def _load_idx(folder: str, split: str):
    paths = {}
    for what in ("images", "labels"):
        paths[what] = _find_idx(folder, split, what)
        if paths[what] is None:
            tried = ", ".join(f"{n}[.gz]" for n in _idx_names(split, what))
            raise MissingDataError(f"{folder}: no {split} {what} file found; looked for {tried}")
    x = read_idx(paths["images"])
    if x.ndim < 2:
        raise ValueError(f"{paths['images']}: expected images of shape (n, H, W), got {x.shape}")
    y = read_idx(paths["labels"])
    if y.ndim != 1:
        raise ValueError(f"{paths['labels']}: expected labels of shape (n,), got {y.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{paths['labels']}: has {y.shape[0]} labels but {paths['images']} has {x.shape[0]} images"
        )
    return x, check_labels(y, x.shape[0], paths["labels"]), paths["images"]


def _load_svhn(path: str, split: str):
    if os.path.isdir(path):
        folder, path = path, os.path.join(path, SVHN_FILES[split])
        if not os.path.isfile(path):
            raise MissingDataError(f"{folder}: no {split} split; looked for {SVHN_FILES[split]}")
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) files are not supported ({err})") from None
    except Exception as err:  # scipy raises many types on corrupt files
        raise ValueError(f"{path}: not a readable .mat file ({type(err).__name__}: {err})") from None
    if "X" not in mat or "y" not in mat:
        from scipy.io import whosmat

        found = sorted(name for name, _, _ in whosmat(path))
        raise ValueError(f"{path}: expected keys 'X' (32, 32, 3, n) and 'y' (n, 1) as in SVHN, found {found}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[2] != 3:
        raise ValueError(f"{path}: 'X' must have shape (H, W, 3, n) as in SVHN, got {x.shape}")
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (n, 3, H, W)
    y = check_labels(y, x.shape[0], f"{path} 'y'")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise ValueError(f"{path}: SVHN labels 'y' must lie in 1..10 (10 = digit 0), got {y.min()}..{y.max()}")
    y[y == 10] = 0
    return x, y, path


def _load_npy(path: str):
    x = read_npy(path)
    if x.ndim < 2 or x.ndim > 4:
        raise ValueError(f"{path}: expected shape (n, H, W), (n, C, H, W) or (n, d), got {x.shape}")
    stem = path[: -len(".npy")] if path.lower().endswith(".npy") else path
    labels = stem + "_labels.npy"
    y = check_labels(read_npy(labels), x.shape[0], labels) if os.path.isfile(labels) else None
    return x, y


def _load_images(folder: str, size: int, limit: int | None) -> np.ndarray:
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(folder)
        for f in names
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise MissingDataError(f"{folder}: no .png/.jpg/.jpeg files found (searched recursively)")
    files = files[:limit] if limit else files
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda f: _read_image(f, size), files)):
            out[i] = image
    return to_unit_float(out, folder)


def _read_image(path: str, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size): RGB, centre-cropped to a square, resized (bilinear)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != size:
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as err:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"{path}: corrupt or unreadable image ({type(err).__name__}: {err})") from None

"""``GensDataModule``: in-memory train / val / test loaders for any source of ``load_dataset``."""

from __future__ import annotations

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, TensorDataset

from gens._validation import check_float, check_int
from gens.data.loaders import (
    available_splits,
    check_labels,
    crop_resize,
    load_dataset,
    to_channels_first,
    to_unit_float,
)

__all__ = ["GensDataModule"]


class GensDataModule(LightningDataModule):
    """Train / validation / test dataloaders over data held in memory.

    Args:
        source_or_arrays: a source string for :func:`gens.data.load_dataset` ("digits",
            "mnist:/folder", ...), an array or tensor X of shape (n, C, H, W), (n, H, W) or (n, d)
            (uint8 in 0..255 or float in [0, 1]), or a tuple ``(X, y)`` as ``load_dataset`` returns.
        batch_size: minibatch size of every loader.
        val_fraction: share of the training split held out for validation, in [0, 1). The split is a
            permutation drawn by ``np.random.RandomState(seed)``, so it is the same on every run.
        seed: seeds the train/val split and the shuffling of the training loader.
        limit: keep only the first ``limit`` samples of each split (before the train/val split).
        num_workers: DataLoader workers (0 = load in the main process; the data are in memory).
        image_size: centre-crop and resize images to (image_size, image_size).
        y: labels (n,) for array input (int, -1 = unlabelled).

    Batches are ``(x,)`` or, when there are labels, ``(x, y)``: x float32, y int64.
    ``test_dataloader`` uses the source's test split when it has one, else the validation split
    (with a warning). The data are loaded on first use (``setup``, ``data_shape``, ``n_train``, ...).
    """

    def __init__(
        self,
        source_or_arrays,
        batch_size: int = 100,
        val_fraction: float = 0.1,
        seed: int = 0,
        limit: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        *,
        y=None,
    ):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.val_fraction = check_float("val_fraction", val_fraction, 0.0, 1.0, max_inclusive=False)
        self.seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
        self.limit = None if limit is None else check_int("limit", limit, minimum=1)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.image_size = None if image_size is None else check_int("image_size", image_size, minimum=1)
        self._splits = None  # name -> (X tensor, y tensor or None)
        # one stream for the whole run, so a reloaded train loader does not repeat the first order
        self._generator = torch.Generator().manual_seed(self.seed)
        if isinstance(source_or_arrays, str) or hasattr(source_or_arrays, "__fspath__"):
            if y is not None:
                raise ValueError("y: labels can only be given with array input; a source brings its own")
            self.source = str(source_or_arrays)
            self._has_test = "test" in available_splits(self.source)  # also checks the path exists
            self._arrays = None
        else:
            if isinstance(source_or_arrays, tuple) and len(source_or_arrays) == 2 and y is None:
                source_or_arrays, y = source_or_arrays
            self.source = None
            self._has_test = False
            self._arrays = _check_arrays(source_or_arrays, y, self.limit, self.image_size)
        self.save_hyperparameters(ignore=["source_or_arrays", "y"])  # arrays stay out of checkpoints
        self.hparams["source"] = self.source or "<arrays>"

    # ------------------------------------------------------------------------------ loading

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        if self._arrays is not None:
            x, y = self._arrays
            self._arrays = None
        else:
            x, y = load_dataset(self.source, "train", image_size=self.image_size, limit=self.limit)
        n = x.shape[0]
        n_val = int(self.val_fraction * n + 0.5)  # round half up
        if n - n_val < 1:
            raise ValueError(f"val_fraction: {self.val_fraction:g} of {n} samples leaves no training data")
        perm = np.random.RandomState(self.seed).permutation(n)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self._splits = {"train": _tensors(x, y, train), "val": _tensors(x, y, val)}
        if self._has_test:
            self._splits["test"] = _tensors(
                *load_dataset(self.source, "test", image_size=self.image_size, limit=self.limit)
            )

    def _get(self, split: str):
        self.setup()
        return self._splits[split]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W), or (d,) for flat data."""
        return tuple(self._get("train")[0].shape[1:])

    @property
    def n_train(self) -> int:
        """Number of training samples (after the validation split)."""
        return int(self._get("train")[0].shape[0])

    @property
    def n_val(self) -> int:
        return int(self._get("val")[0].shape[0])

    @property
    def has_test_split(self) -> bool:
        return self._has_test

    def train_tensor(self) -> torch.Tensor:
        """All training samples, float32 (n_train, *data_shape) (random access for the GEN bank)."""
        return self._get("train")[0]

    def train_labels(self) -> torch.Tensor | None:
        """Training labels, int64 (n_train,), or None when the data are unlabelled."""
        return self._get("train")[1]

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(X, y)`` of "train", "val" or "test" (test falls back to val without a test split)."""
        if split == "test" and not self._has_test:
            split = "val"
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: must be one of 'train', 'val', 'test'; got {split!r}")
        return self._get(split)

    # --------------------------------------------------------------------------- dataloaders

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        x, y = self._get(split)
        dataset = TensorDataset(x) if y is None else TensorDataset(x, y)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=self._generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        if self.n_val == 0:
            return []  # val_fraction = 0: Lightning skips validation
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self._has_test:
            return self._loader("test", shuffle=False)
        rank_zero_warn(f"{self.source or 'array input'} has no test split; testing on the validation split")
        if self.n_val == 0:
            raise ValueError("val_fraction: is 0 and the data have no test split, so there is nothing to test on")
        return self._loader("val", shuffle=False)


def _check_arrays(x, y, limit, image_size):
    """Validate array input and return (float32 array in [0, 1], int64 labels or None)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        x = np.asarray(x)
    except ValueError as err:  # a list of images of different sizes
        raise ValueError(
            f"X: images must all have the same size (got a ragged sequence: {err}); "
            "resize them first or save them as an image folder and use 'images:FOLDER'"
        ) from None
    if x.dtype == object:
        raise ValueError("X: images must all have the same size and be numeric, got an object array")
    if x.ndim < 2 or x.ndim > 4:
        raise ValueError(f"X: expected shape (n, H, W), (n, C, H, W) or (n, d), got {x.shape}")
    if y is not None:
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        y = check_labels(y, x.shape[0], "y")[:limit]
    x = to_unit_float(to_channels_first(x[:limit], "X"), "X")
    if image_size is not None:
        x = crop_resize(x, image_size, "X")
    return x, y


def _tensors(x: np.ndarray, y: np.ndarray | None, index: np.ndarray | None = None):
    if index is not None:
        x, y = x[index], (None if y is None else y[index])
    return torch.from_numpy(np.ascontiguousarray(x)), (None if y is None else torch.from_numpy(y))

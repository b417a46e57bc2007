"""Data: ``load_dataset`` (digits, MNIST/Fashion-MNIST IDX, SVHN .mat, image folders, .npy) and
``GensDataModule`` (Lightning loaders over in-memory tensors).

``GensDataModule`` is imported lazily so that ``from gens.data import load_dataset`` does not import
torch or lightning.
"""

from __future__ import annotations

from gens.data.idx import parse_idx, read_idx
from gens.data.loaders import MissingDataError, available_splits, load_dataset, parse_source
from gens.data.npy import read_npy

__all__ = [
    "GensDataModule",
    "MissingDataError",
    "available_splits",
    "load_dataset",
    "parse_idx",
    "parse_source",
    "read_idx",
    "read_npy",
]


def __getattr__(name: str):
    if name == "GensDataModule":
        from gens.data.datamodule import GensDataModule

        return GensDataModule
    raise AttributeError(f"module 'gens.data' has no attribute {name!r}")

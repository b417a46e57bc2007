"""GensDataModule: splits, batches, sources with and without a test split, errors, and a Lightning fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gens.data import GensDataModule, MissingDataError, load_dataset

# ---------------------------------------------------------------------------------- data module


def test_datamodule_arrays_split_and_batches():
    rng = np.random.default_rng(6)
    X = rng.integers(0, 256, size=(50, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, size=50)
    dm = GensDataModule(X, batch_size=8, val_fraction=0.2, seed=1, y=y)
    assert dm.data_shape == (1, 4, 4) and dm.n_train == 40 and dm.n_val == 10
    tr, va = dm.train_tensor(), dm.split_tensors("val")[0]
    assert tr.dtype == torch.float32 and dm.train_labels().dtype == torch.int64
    # train and val partition the data: every row appears exactly once
    key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))  # noqa: E731
    assert key(torch.cat([tr, va])) == key(torch.from_numpy(X / 255.0).float())
    # labels stay attached to their images
    full = {tuple(r): l for r, l in zip((X.reshape(50, -1) / 255.0).astype(np.float32).tolist(), y)}
    assert all(full[tuple(r)] == l for r, l in zip(tr.flatten(1).tolist(), dm.train_labels().tolist()))
    # deterministic by seed
    same = GensDataModule(X, val_fraction=0.2, seed=1, y=y).train_tensor()
    other = GensDataModule(X, val_fraction=0.2, seed=2, y=y).train_tensor()
    assert torch.equal(same, tr) and not torch.equal(other, tr)
    # train loader: shuffled, (x, y) batches, each sample once per epoch
    batches = list(dm.train_dataloader())
    assert all(len(b) == 2 and b[0].dtype == torch.float32 and b[1].dtype == torch.int64 for b in batches)
    seen = torch.cat([b[0] for b in batches])
    assert key(seen) == key(tr) and not torch.equal(seen, tr)
    # the order is reproducible from the seed, and a reloaded loader continues the stream
    fresh = GensDataModule(X, batch_size=8, val_fraction=0.2, seed=1, y=y)
    assert torch.equal(torch.cat([b[0] for b in fresh.train_dataloader()]), seen)
    assert not torch.equal(torch.cat([b[0] for b in dm.train_dataloader()]), seen)
    assert [len(b[0]) for b in dm.val_dataloader()] == [8, 2]


def test_datamodule_sources_and_test_split(tmp_path):
    dm = GensDataModule("digits", batch_size=500, val_fraction=0.1)
    assert dm.n_train == 1293 and dm.n_val == 144 and dm.has_test_split
    assert sum(len(b[0]) for b in dm.test_dataloader()) == 360
    # tuple input as load_dataset returns it; unlabelled -> (x,) batches; torch input
    dm = GensDataModule(load_dataset("digits", limit=20), val_fraction=0.5)
    assert dm.n_train == 10 and dm.train_labels() is not None
    dm = GensDataModule(torch.rand(20, 6), val_fraction=0.0, batch_size=7)
    assert dm.data_shape == (6,) and dm.train_labels() is None
    assert all(len(b) == 1 for b in dm.train_dataloader()) and dm.val_dataloader() == []
    np.save(tmp_path / "x.npy", np.zeros((10, 3, 4, 4), np.uint8))
    dm = GensDataModule(str(tmp_path / "x.npy"), val_fraction=0.3)
    with pytest.warns(UserWarning, match="no test split"):
        loader = dm.test_dataloader()
    assert len(loader.dataset) == 3


def test_datamodule_errors(tmp_path):
    X = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="^batch_size"):
        GensDataModule(X, batch_size=0)
    with pytest.raises(ValueError, match="^val_fraction"):
        GensDataModule(X, val_fraction=1.0)
    with pytest.raises(ValueError, match=r"^y: labels must have shape \(10,\)"):
        GensDataModule(X, y=np.zeros(9))
    with pytest.raises(ValueError, match="^y: labels can only be given with array input"):
        GensDataModule("digits", y=np.zeros(9))
    with pytest.raises(ValueError, match="^X: images must all have the same size"):
        GensDataModule([np.zeros((4, 4)), np.zeros((5, 5))])
    with pytest.raises(ValueError, match=r"^X: float values must lie in \[0, 1\]"):
        GensDataModule(X + 2)
    with pytest.raises(ValueError, match="^X: must hold only finite values"):
        GensDataModule(X + np.nan)
    with pytest.raises(MissingDataError):
        GensDataModule(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="^val_fraction: 0.5 of 1 samples leaves no training data"):
        GensDataModule(X[:1], val_fraction=0.5).setup()


def test_datamodule_drives_a_lightning_fit():
    import lightning as L

    class AE(L.LightningModule):
        def __init__(self, d):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 2), torch.nn.Linear(2, d))
            self.seen = {"train": 0, "val": 0, "test": 0}

        def _step(self, batch, stage):
            x = batch[0]
            self.seen[stage] += len(x)
            loss = (self.net(x) - x.flatten(1)).pow(2).mean()
            self.log(f"{stage}_loss", loss)
            return loss

        def training_step(self, batch, i):
            return self._step(batch, "train")

        def validation_step(self, batch, i):
            return self._step(batch, "val")

        def test_step(self, batch, i):
            return self._step(batch, "test")

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    dm = GensDataModule("digits", batch_size=256, limit=600)
    model = AE(64)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen == {"train": 540, "val": 60, "test": 360}

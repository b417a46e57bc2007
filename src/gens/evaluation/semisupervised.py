"""Sec. 5.4: semi-supervised clustering with a K-mode mixture target, and the paper's Fig. 3.

    res = semisupervised_protocol("mnist:/data/mnist", n_labels=10000, n_unlabelled=40000, latent_dim=8,
                                  epochs=50, seed=0, figure="fig3.png")
    res["test_accuracy"]                      # argmax_k p(k | E(x)) against the test labels

The protocol (the paper: MNIST, 10 modes, 10K labelled + 40K unlabelled, m = 10K):

1. The training split is permuted with ``seed``; its first ``n_labels + n_unlabelled`` samples are the
   training set and the next ``n_val`` (default: the rest, at most 10K) a labelled validation set that
   only monitors ``val/acc``. The test split is the source's own.
2. ``n_labels`` training samples keep their labels, balanced over the classes and chosen with ``seed``
   (``gens.methods.semisupervised.select_labelled``); the others get y = -1.
3. A ``SemiSupervisedGENModule`` is trained (``gens.training.train``); the test accuracy is the share of
   test samples whose most probable component is their label.

Command line (``gens semisupervised``, ``gens.cli.semisupervised``; prints a markdown table, one row per
(labels, latent_dim); ``--figure`` writes Fig. 3 per row)::

    gens semisupervised --data mnist:/data/mnist --labels 10000 1000 100 \
        --latent-dim 8 2 --epochs 50 --accelerator auto --figure fig3.png
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from gens._validation import check_float, check_int

__all__ = ["semisupervised_protocol", "split_semisupervised", "fig3", "mode_projection", "markdown_row", "HEADER"]

HEADER = ("| data | labels | unlabelled | l | epochs trained | seed | test acc | test error | unlabelled acc | recon MSE "
          "| h | minutes |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def split_semisupervised(y, n_labels: int, n_unlabelled: int, n_val: int | None = None, seed: int = 0,
                         n_classes: int | None = None):
    """Choose the training, labelled and validation samples of the protocol (module docstring, steps 1-2).

    y: (n,) labels of the source's training split. Returns (train_idx (n_l + n_u,), y_semi (n_l + n_u,) with
    -1 for unlabelled, val_idx (n_val,)); all indices into y.
    """
    from gens.methods.semisupervised import select_labelled

    y = np.asarray(y, dtype=np.int64)
    n_labels = check_int("n_labels", n_labels, minimum=0)
    n_unlabelled = check_int("n_unlabelled", n_unlabelled, minimum=0)
    n_train = n_labels + n_unlabelled
    if n_train < 2 or n_train > len(y):
        raise ValueError(f"n_unlabelled: n_labels + n_unlabelled must be in 2..{len(y)} (the training split), "
                         f"got {n_labels} + {n_unlabelled}")
    rest = len(y) - n_train
    n_val = min(rest, 10000) if n_val is None else check_int("n_val", n_val, minimum=0, maximum=rest)
    perm = np.random.RandomState(check_int("seed", seed, minimum=0, maximum=2**32 - 1)).permutation(len(y))
    train_idx, val_idx = perm[:n_train], perm[n_train:n_train + n_val]
    y_semi = np.full(n_train, -1, dtype=np.int64)
    keep = select_labelled(y[train_idx], n_labels, seed, n_classes)
    y_semi[keep] = y[train_idx][keep]
    return train_idx, y_semi, val_idx


def _datamodule(x_train, y_train, x_val, y_val, x_test, y_test, batch_size: int, seed: int):
    """In-memory LightningDataModule with explicit train / val / test splits (train_tensor, train_labels)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class SplitDataModule(L.LightningDataModule):
        data_shape = tuple(x_train.shape[1:])

        def train_tensor(self):
            return x_train

        def train_labels(self):
            return y_train

        def train_dataloader(self):
            return DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))

        def val_dataloader(self):
            return [] if len(x_val) == 0 else DataLoader(TensorDataset(x_val, y_val), batch_size=1000)

        def test_dataloader(self):
            return DataLoader(TensorDataset(x_test, y_test), batch_size=1000)

    return SplitDataModule()


def semisupervised_protocol(source: str, n_labels: int, n_unlabelled: int, modes: int = 10, latent_dim: int = 8,
                            epochs: int | None = None, seed: int = 0, *, steps: int | None = None,
                            n_val: int | None = None, batch_size: int = 100,
                            accelerator: str = "auto", devices=1, figure=None, progress: bool = False,
                            limit_test: int | None = None, max_minutes: float | None = None,
                            **module_kwargs) -> dict:
    """Train a semi-supervised GEN on ``source`` and measure its test accuracy (module docstring).

    ``module_kwargs`` go to ``SemiSupervisedGENModule`` (lam, sup_weight, supervision, labelled_batch,
    bank_size, hidden, arch, mode_scale, ...). ``figure``: path of the Fig. 3 PNG (test latents coloured by
    label over the target's density). ``max_minutes``: stop training after this wall time (Lightning's
    ``max_time``; ``epochs_trained`` says how far it got). Budget: ``epochs`` / ``steps`` as
    ``gens.training.train`` takes them (neither: ``gens.training.DEFAULT_STEPS`` steps). Returns a dict: test_accuracy, test_error,
    unlabelled_accuracy (the training samples without labels), labelled_accuracy, val_accuracy, recon_mse
    (test, per pixel), bandwidth, seconds, epochs_trained and the settings.
    """
    import torch

    from gens.data import load_dataset
    from gens.training import budget, train

    modes = check_int("modes", modes, minimum=2)
    latent_dim = check_int("latent_dim", latent_dim, minimum=1)
    budget(epochs, steps)  # a bad budget fails before the data are read
    x, y = load_dataset(source, "train")
    if y is None:
        raise ValueError(f"source: {source} has no labels; the semi-supervised protocol needs them")
    try:
        x_test, y_test = load_dataset(source, "test", limit=limit_test)
    except ValueError as err:
        raise ValueError(f"source: {source} has no test split ({err})") from None
    train_idx, y_semi, val_idx = split_semisupervised(y, n_labels, n_unlabelled, n_val, seed, modes)
    t = torch.from_numpy
    xt, yt = t(x[train_idx]), t(y_semi)
    dm = _datamodule(xt, yt, t(x[val_idx]), t(y[val_idx].astype(np.int64)), t(x_test), t(y_test.astype(np.int64)),
                     batch_size, seed)
    trainer_kwargs = {"accelerator": accelerator, "devices": devices, "enable_progress_bar": progress,
                      "enable_model_summary": progress, "num_sanity_val_steps": 0}
    if max_minutes is not None:
        trainer_kwargs["max_time"] = {"seconds": check_float("max_minutes", max_minutes, minimum=0.0,
                                                             min_inclusive=False) * 60}
    start = time.perf_counter()
    module, trainer = train("semisupervised", dm, latent_dim=latent_dim, max_epochs=epochs, max_steps=steps,
                            batch_size=batch_size,
                            seed=seed, trainer_kwargs=trainer_kwargs, n_modes=modes, **module_kwargs)
    seconds = time.perf_counter() - start
    module = module.eval()
    dev = next(module.parameters()).device
    with torch.no_grad():
        z_test = torch.cat([module.encode(c.to(dev)).double() for c in t(x_test).split(1000)])
        recon = float(sum(((module.decode(z.float()).cpu() - c) ** 2).sum()
                          for z, c in zip(z_test.split(1000), t(x_test).split(1000))) / x_test.size)
    pred_test = module.component_logits(z_test).argmax(1).cpu().numpy()
    pred_train = module.predict(xt).numpy()
    y_train = y[train_idx]
    labelled = y_semi >= 0
    val_pred = module.predict(t(x[val_idx])).numpy() if len(val_idx) else np.zeros(0, dtype=np.int64)
    res = {
        "data": source, "n_labels": int(labelled.sum()), "n_unlabelled": int((~labelled).sum()), "modes": modes,
        "latent_dim": latent_dim, "epochs": epochs, "steps": steps, "epochs_trained": int(trainer.current_epoch), "seed": seed,
        "test_accuracy": float((pred_test == y_test).mean()),
        "unlabelled_accuracy": _acc(pred_train[~labelled], y_train[~labelled]),
        "labelled_accuracy": _acc(pred_train[labelled], y_train[labelled]),
        "val_accuracy": _acc(val_pred, y[val_idx]),
        "recon_mse": recon, "bandwidth": float(module.bandwidth_h), "seconds": round(seconds, 1),
        "device": str(dev), "module_kwargs": module_kwargs,
    }
    res["test_error"] = 1.0 - res["test_accuracy"]
    if figure is not None:
        res["figure"] = str(fig3(z_test.cpu().numpy(), y_test, module.target, figure,
                                 title=f"GEN test latents (l={latent_dim}), {res['n_labels']} labels: "
                                       f"acc {res['test_accuracy']:.4f}"))
    return res


def _acc(pred, y) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else math.nan


def mode_projection(means) -> np.ndarray:
    """A linear map A: (2, l) that sends the K mode means (K, l) as near as it can to a regular K-gon.

    The K-gon's corners are assigned so that antipodal means (mu_j = -mu_i) land on opposite corners;
    then A^T = pinv(means) @ corners (least squares). For ``mixture_on_simplex`` targets (circle,
    simplex or cross-polytope means) every mean lands exactly on its corner, so the modes do not overlap
    in the picture as they do on principal axes. l = 2: the identity.
    """
    means = np.asarray(means, dtype=np.float64)
    k, l = means.shape
    if l == 2:
        return np.eye(2)
    slot = -np.ones(k, dtype=np.int64)
    free = list(range(k))
    scale = np.abs(means).max() or 1.0
    for i in range(k):  # antipodal pairs first, on opposite corners
        if slot[i] >= 0 or k % 2:
            continue
        j = [j for j in range(i + 1, k) if slot[j] < 0 and np.allclose(means[j], -means[i], atol=1e-9 * scale)]
        pair = [c for c in free if c < k // 2 and c + k // 2 in free]
        if j and pair:
            slot[i], slot[j[0]] = pair[0], pair[0] + k // 2
            free.remove(pair[0])
            free.remove(pair[0] + k // 2)
    for i in range(k):
        if slot[i] < 0:
            slot[i] = free.pop(0)
    angle = 2.0 * np.pi * slot / k
    radius = np.linalg.norm(means, axis=1).mean() or 1.0
    corners = radius * np.stack([np.cos(angle), np.sin(angle)], 1)
    return (np.linalg.pinv(means) @ corners).T


def fig3(z, labels, target, path, title: str | None = None) -> Path:
    """The paper's Fig. 3: latents z (n, l) coloured by label over the target mixture's density.

    l = 2 is drawn as it is. Larger l is drawn through ``mode_projection`` (a linear map that puts the
    mode means on a regular polygon), with the target's exact marginal density in that plane (each
    component N(mu, S) maps to N(A mu, A S A^T)); ``gens.plots.latent_scatter`` draws it.
    """
    from gens import plots

    z = np.asarray(z, dtype=np.float64)
    means, covs = target.means.numpy(), target.covs.numpy()
    a = mode_projection(means)
    if z.shape[1] != 2:
        z, means, covs = z @ a.T, means @ a.T, np.einsum("ij,kjl,ml->kim", a, covs, a)
        title = (title + "\n" if title else "") + f"linear map of the l={target.dim} latents onto the modes' plane"
    return plots.latent_scatter(z, path, labels=np.asarray(labels), weights=target.weights.numpy(), means=means,
                                covs=covs, title=title)


def markdown_row(res: dict) -> str:
    """One row of ``HEADER`` from a ``semisupervised_protocol`` result."""
    return (f"| {res['data']} | {res['n_labels']} | {res['n_unlabelled']} | {res['latent_dim']} | {res['epochs_trained']} "
            f"| {res['seed']} | {res['test_accuracy']:.4f} | {res['test_error']:.4f} | "
            f"{res['unlabelled_accuracy']:.4f} | {res['recon_mse']:.4f} | {res['bandwidth']:.3f} | "
            f"{res['seconds'] / 60:.1f} |")


def main(argv=None) -> int:
    """The old ``python -m gens.evaluation.semisupervised ARGS``: now ``gens semisupervised ARGS``."""
    import sys

    from gens.cli import main as gens_main

    return gens_main(["semisupervised", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())

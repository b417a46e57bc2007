"""A thin programmatic trainer: ``train(method, data, ...) -> (module, trainer)``.

    module, trainer = train("gen", "mnist:/data/mnist", latent_dim=8)              # DEFAULT_STEPS steps
    module, trainer = train("gen", "mnist:/data/mnist", latent_dim=8, max_epochs=12)
    module, trainer = train("aae", X, latent_dim=8, trainer_kwargs={"devices": 2, "strategy": "ddp"})

- ``data``: a source string or an array / tensor / (X, y) tuple for ``gens.data.GensDataModule``, or a
  ready ``LightningDataModule``.
- The budget: ``max_steps`` optimiser steps (default ``DEFAULT_STEPS`` when neither it nor ``max_epochs`` is
  given), ``max_epochs`` epochs, or whichever comes first when both are given. Steps, not epochs, so that
  the regulariser gets the same number of updates on 1K samples as on 60K.
- ``trainer_kwargs`` go to ``lightning.Trainer`` (accelerator "auto" by default; ``devices``,
  ``num_nodes``, ``strategy``, ``logger``, ``callbacks``... pass through). Seeding:
  ``lightning.seed_everything(seed, workers=True)`` before the module is built.
- ``module_kwargs`` go to the method's module (``gens.methods.METHODS[method]``), e.g. ``lam``,
  ``objective``, ``bank_mode``, ``bank_size``, ``hidden``, ``arch``, ``target_spec``.
- ``DivergenceGuard`` (always added) stops training with ``TrainingDiverged`` when a training loss is
  NaN or infinite, with advice on what to change; ``gens.fidelity.FidelityMonitor`` (always added; find it
  with ``fidelity_monitor(trainer)``) measures the validation latents against the predicted distribution
  every epoch and warns at the end when they inflated or a direction collapsed.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from gens._validation import check_int

__all__ = ["train", "encode_all", "DivergenceGuard", "TrainingDiverged", "DEFAULT_EPOCHS", "DEFAULT_STEPS",
           "budget", "standard_callbacks",
           "fidelity_monitor"]

DEFAULT_EPOCHS = 12  # the budget of the paper's runs and of earlier gens versions (max_epochs=DEFAULT_EPOCHS)
DEFAULT_STEPS = 6000  # the default budget in optimiser steps (BENCHMARKS.md, "Robustness")


def budget(max_epochs: int | None, max_steps: int | None) -> dict:
    """Trainer keywords of a budget: ``max_steps`` / ``max_epochs`` (None: unlimited; both None: DEFAULT_STEPS)."""
    if max_epochs is None and max_steps is None:
        max_steps = DEFAULT_STEPS
    return {"max_epochs": -1 if max_epochs is None else check_int("max_epochs", max_epochs, minimum=1),
            "max_steps": -1 if max_steps is None else check_int("max_steps", max_steps, minimum=1)}


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class DivergenceGuard(L.Callback):
    """Raise ``TrainingDiverged`` as soon as a training step returns a non-finite loss."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"training diverged: the loss is {float(loss)} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}. Lower the learning rate (lr) or the regulariser weight (lam); for a GEN use "
                "objective='nonsaturating' (the literal eq. 3 term is unbounded below)."
            )


def standard_callbacks() -> list:
    """The callbacks every training path adds: ``DivergenceGuard`` and ``gens.fidelity.FidelityMonitor``."""
    from gens.fidelity import FidelityMonitor

    return [DivergenceGuard(), FidelityMonitor()]


def fidelity_monitor(trainer):
    """The trainer's ``FidelityMonitor`` (None if it has none)."""
    from gens.fidelity import FidelityMonitor

    return next((c for c in trainer.callbacks if isinstance(c, FidelityMonitor)), None)


def train(method: str, data, *, latent_dim: int = 8, max_epochs: int | None = None, max_steps: int | None = None,
          batch_size: int = 100,
          seed: int = 0, trainer_kwargs: dict | None = None, datamodule_kwargs: dict | None = None,
          **module_kwargs):
    """Train ``method`` ("gen", "ae", "vae", "aae", "wae") on ``data``; return ``(module, trainer)``."""
    from gens.data import GensDataModule
    from gens.methods import build_module

    limits = budget(max_epochs, max_steps)
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    L.seed_everything(seed, workers=True, verbose=False)
    if isinstance(data, L.LightningDataModule):
        dm = data
    else:
        dm = GensDataModule(data, batch_size=batch_size, seed=seed, **(datamodule_kwargs or {}))
    module = build_module(method, list(_data_shape(dm)), latent_dim, **module_kwargs)
    kw = dict(**limits, accelerator="auto", logger=False, enable_checkpointing=False,
              enable_model_summary=False)
    kw.update(trainer_kwargs or {})
    kw["callbacks"] = [*list(kw.get("callbacks") or []), *standard_callbacks()]
    trainer = L.Trainer(**kw)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def _data_shape(dm) -> tuple:
    """Shape of one sample: ``dm.data_shape`` when the datamodule has it, else from its first train batch."""
    if hasattr(dm, "data_shape"):
        return tuple(dm.data_shape)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(x.shape[1:])


def encode_all(module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Encode x: (n, *data_shape) in batches without gradients -> (n, l) on the CPU."""
    device = next(module.parameters()).device
    with torch.no_grad():
        return torch.cat([module.encode(c.to(device)).float().cpu() for c in x.split(batch_size)])

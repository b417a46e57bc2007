"""The one training path: ``fit(module, datamodule, ...)``, and ``train(method, data, ...) -> (module, trainer)``.

Every trainer in gens goes through :func:`fit`: ``gens train`` (``gens.runs.train_run``), the estimators'
``fit`` (``gens.estimators``) and :func:`train` (``gens reproduce``, the protocols). So the same seed, data
and options give bit-identical weights through all three on the CPU (``tests/test_one_path.py``):

- :func:`make_datamodule`: a ``gens.data.GensDataModule`` whose single-process train loader draws its order
  from an ``gens.checkpoint.EpochSampler`` ((seed, epoch) alone: resumable to the batch);
- :func:`build`: ``lightning.seed_everything(seed, workers=True)``, then the method's module;
- :func:`fit`: the budget (:func:`budget`), ``gens.checkpoint.ResumeCallback`` (reseeds torch / numpy /
  random from (seed, step) before every batch), ``gens.averaging.WeightAverage`` (``weight_average`` > 0,
  default the module's method's ``WEIGHT_AVERAGE[method]``: 0.999 for the GEN, 0 for the others: an
  exponential moving average of the weights, updated after every optimiser step, in the module during
  validation and at the end: the trained model is the average; 0: the last step's weights), :func:`standard_callbacks` (``DivergenceGuard``: stops with ``TrainingDiverged`` on a
  NaN / infinite loss; ``gens.fidelity.FidelityMonitor``: the validation latents of the averaged model against
  the predicted distribution every epoch, find it with :func:`fidelity_monitor`), no sanity validation, the
  warning filters that do not apply to in-memory data, hardware errors as one ValueError, and Ctrl-C as
  KeyboardInterrupt.

    module, trainer = train("gen", "mnist:/data/mnist", latent_dim=8)              # DEFAULT_STEPS steps
    module, trainer = train("gen", "mnist:/data/mnist", latent_dim=8, max_epochs=12)
    module, trainer = train("aae", X, latent_dim=8, trainer_kwargs={"devices": 2, "strategy": "ddp"})

- ``data``: a source string or an array / tensor / (X, y) tuple, or a ready ``LightningDataModule`` (used as
  it is: without an ``EpochSampler`` its order is its own).
- The budget: ``max_steps`` optimiser steps (default ``DEFAULT_STEPS`` when neither it nor ``max_epochs`` is
  given), ``max_epochs`` epochs, or whichever comes first when both are given. Steps, not epochs, so that
  the regulariser gets the same number of updates on 1K samples as on 60K.
- ``weight_average``: the decay of the weights' moving average (``gens.averaging``; a float in [0, 1); None,
  the default: the method's, ``gens.config.WEIGHT_AVERAGE``, resolved by :func:`fit` from the module's
  ``method_name``: 0.999 for the GEN, 0 for the others, whose last weights are kept unless asked); checkpoints hold the average as ``state_dict`` and the live weights as ``current_model_state``, and a
  resume restores both.
- ``trainer_kwargs`` go to ``lightning.Trainer`` (accelerator "auto" by default; ``devices``, ``num_nodes``,
  ``strategy``, ``logger``, ``callbacks``... pass through). ``datamodule_kwargs`` to the datamodule
  (``val_fraction`` 0.1 by default, ``limit``, ...). ``module_kwargs`` to the method's module
  (``gens.methods.METHODS[method]``, options and defaults in ``gens.config``).
"""

from __future__ import annotations

import logging
import math
import signal
import warnings
from contextlib import contextmanager

import lightning as L
import torch

from gens._validation import check_int
from gens.averaging import LiveWeights, WeightAverage, check_weight_average, module_method, resolve_weight_average
from gens.config import DEFAULT_STEPS, PAPER_EPOCHS, WEIGHT_AVERAGE
from gens.data import GensDataModule

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_STEPS",
    "WEIGHT_AVERAGE",
    "DivergenceGuard",
    "EpochHistory",
    "ResumableDataModule",
    "TrainingDiverged",
    "budget",
    "build",
    "encode_all",
    "fidelity_monitor",
    "fit",
    "last_epoch",
    "make_datamodule",
    "quiet",
    "standard_callbacks",
    "train",
]

DEFAULT_EPOCHS = PAPER_EPOCHS  # the budget of the paper's runs and of earlier gens versions (max_epochs=DEFAULT_EPOCHS)
# DEFAULT_STEPS, the default budget in optimiser steps, is declared in gens.config (torch-free: --help shows it)


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


class EpochHistory(L.Callback):
    """Collects per-epoch means of the train/* step metrics and the val/* metrics (the estimators' ``history_``)."""

    def __init__(self):
        self.rows, self._sums, self._count = [], {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/"):
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": int(trainer.current_epoch)}
        row.update({k: s / max(1, self._count) for k, s in self._sums.items()})
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.rows.append(row)
        self._sums, self._count = {}, 0


def standard_callbacks() -> list:
    """The callbacks every training path adds: ``DivergenceGuard`` and ``gens.fidelity.FidelityMonitor``."""
    from gens.fidelity import FidelityMonitor

    return [DivergenceGuard(), FidelityMonitor()]


def last_epoch(trainer) -> bool:
    """Whether the training epoch ending now is the last: ``max_epochs`` or ``max_steps`` reached, or a stop
    asked for (``trainer.should_stop``)."""
    epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else math.inf
    steps = trainer.max_steps if trainer.max_steps not in (None, -1) else math.inf
    return trainer.current_epoch + 1 >= epochs or trainer.global_step >= steps or bool(trainer.should_stop)


def fidelity_monitor(trainer):
    """The trainer's ``FidelityMonitor`` (None if it has none)."""
    from gens.fidelity import FidelityMonitor

    return next((c for c in trainer.callbacks if isinstance(c, FidelityMonitor)), None)


# ------------------------------------------------------------------------------- data and module


class ResumableDataModule(GensDataModule):
    """A ``GensDataModule`` whose single-process train loader is an ``EpochSampler`` ((seed, epoch) alone, so
    resumable to the batch by ``ResumeCallback``); under DDP Lightning's distributed sampler."""

    _sampler = None

    @property
    def train_sampler(self):
        from gens.checkpoint import EpochSampler

        if self._sampler is None:
            self._sampler = EpochSampler(self.n_train, seed=self.seed)
        return self._sampler

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:  # DDP: Lightning's distributed sampler
            return super().train_dataloader()
        x, y = self.split_tensors("train")
        ds = TensorDataset(x) if y is None else TensorDataset(x, y)
        return DataLoader(ds, batch_size=self.batch_size, sampler=self.train_sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)


def make_datamodule(data, *, batch_size: int = 100, val_fraction: float = 0.1, seed: int = 0, **kwargs):
    """The training data of every path: a :class:`ResumableDataModule` (``kwargs``: limit, y, image_size, ...)."""
    return ResumableDataModule(data, batch_size=batch_size, val_fraction=val_fraction, seed=seed, **kwargs)


def build(method: str, datamodule, latent_dim: int, *, seed: int, **module_kwargs):
    """Seed everything from ``seed``, then build ``method``'s module for the datamodule's sample shape."""
    from gens.methods import build_module

    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    L.seed_everything(seed, workers=True, verbose=False)
    return build_module(method, list(_data_shape(datamodule)), latent_dim, **module_kwargs)


def _data_shape(dm) -> tuple:
    """Shape of one sample: ``dm.data_shape`` when the datamodule has it, else from its first train batch."""
    if hasattr(dm, "data_shape"):
        return tuple(dm.data_shape)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return tuple(x.shape[1:])


# ----------------------------------------------------------------------------------------- fitting


_IGNORED = (".*does not have many workers.*", ".*Checkpoint directory.*exists and is not empty.*",
            ".*number of training batches.*log_every_n_steps.*", ".*Total length of .* across ranks is zero.*",
            r".*isinstance\(treespec, LeafSpec\).*")


@contextmanager
def quiet(enabled: bool = True):
    """Filter the warnings that do not apply to in-memory data; ``enabled``: also Lightning's info lines (GPU
    available, tips, fit stopped) and the GPU-not-used warning."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")] if enabled \
        else []
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _IGNORED + ((".*GPU available but not used.*",) if enabled else ()):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit(module, datamodule, *, seed: int, max_epochs: int | None = None, max_steps: int | None = None,
        weight_average: float | None = None, callbacks=(), logger=False, ckpt_path=None,
        resume_hint: str | None = None, quiet_logs: bool = False, before_fit=None, **trainer_kwargs):
    """Train ``module`` on ``datamodule`` (see the module docstring); returns the ``lightning.Trainer``.

    ``seed``: the seed ``build`` used (per-step reseeding, ``ResumeCallback``); ``weight_average``: the decay
    of the weights' moving average that ``module`` holds at the end (0: the last step's weights; None: the
    method's default, ``gens.config.WEIGHT_AVERAGE[module.method_name]``, resolved here for every path);
    ``callbacks`` come after the standard ones; ``ckpt_path``: continue from a checkpoint; ``resume_hint``:
    the command a Ctrl-C names;
    ``quiet_logs``: silence Lightning's info lines; ``before_fit(trainer)`` runs once the Trainer is built (a
    hardware error has been raised by then). ``trainer_kwargs`` go to ``lightning.Trainer`` (defaults:
    accelerator "auto", no checkpointing, no model summary, no sanity validation).
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import Checkpoint

    from gens.checkpoint import ResumeCallback

    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    decay = resolve_weight_average(weight_average, module_method(module))
    resume = ResumeCallback(seed, sampler=getattr(datamodule, "train_sampler", None),
                            batch_size=getattr(datamodule, "batch_size", None))
    kw = {"accelerator": "auto", "enable_checkpointing": False, "enable_model_summary": False,
          "num_sanity_val_steps": 0}
    kw.update(trainer_kwargs)
    averaging = [WeightAverage(decay)] if decay > 0 else [LiveWeights()] if ckpt_path is not None else []
    kw.update(budget(max_epochs, max_steps), logger=logger,
              callbacks=[resume, *averaging, *standard_callbacks(), *list(callbacks or [])])
    if any(isinstance(c, Checkpoint) for c in kw["callbacks"]):
        kw["enable_checkpointing"] = True
    hw = {k: kw[k] for k in ("accelerator", "devices", "num_nodes", "strategy") if k in kw}
    with quiet(quiet_logs):
        try:
            trainer = L.Trainer(**kw)
        except (MisconfigurationException, ValueError, RuntimeError) as err:
            text = " ".join(str(err).split())
            raise ValueError(f"accelerator: cannot train with {', '.join(f'{k}={v!r}' for k, v in hw.items())} on "
                             f"this machine: {text}") from None
        if before_fit is not None:
            before_fit(trainer)
        _fit(trainer, module, datamodule, ckpt_path, resume_hint)
    return trainer


def _fit(trainer, module, dm, ckpt_path, resume_hint) -> None:
    """``trainer.fit``; Ctrl-C raises KeyboardInterrupt (Lightning calls sys.exit(1) and ignores SIGINT after)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=None if ckpt_path is None else str(ckpt_path),
                    weights_only=True)
    except SystemExit:
        if not trainer.interrupted:
            raise
        raise KeyboardInterrupt(f"continue from the last checkpoint with `{resume_hint}`" if resume_hint else "") \
            from None
    finally:
        if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            try:
                signal.signal(signal.SIGINT, handler)
            except ValueError:  # not the main thread
                pass


def train(method: str, data, *, latent_dim: int = 8, max_epochs: int | None = None, max_steps: int | None = None,
          batch_size: int = 100, seed: int = 0, weight_average: float | None = None,
          trainer_kwargs: dict | None = None, datamodule_kwargs: dict | None = None, **module_kwargs):
    """Train ``method`` ("gen", "ae", "vae", "aae", "wae", "semisupervised") on ``data``; return ``(module, trainer)``.

    The returned module holds the weights' moving average (``weight_average``; 0: the last step's weights;
    None: the method's default, ``gens.config.WEIGHT_AVERAGE``: 0.999 for the GEN, 0 for the others)."""
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    budget(max_epochs, max_steps)  # a bad budget fails before anything is built
    if weight_average is not None:  # None: the method's default, resolved by fit from the module
        check_weight_average(weight_average)
    if isinstance(data, L.LightningDataModule):
        dm = data
    else:
        dm = make_datamodule(data, batch_size=batch_size, seed=seed, **(datamodule_kwargs or {}))
    module = build(method, dm, latent_dim, seed=seed, **module_kwargs)
    tk = dict(trainer_kwargs or {})
    callbacks, logger = tk.pop("callbacks", None) or [], tk.pop("logger", False)
    trainer = fit(module, dm, seed=seed, max_epochs=max_epochs, max_steps=max_steps, weight_average=weight_average,
                  callbacks=callbacks, logger=logger, **tk)
    return module, trainer


def encode_all(module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Encode x: (n, *data_shape) in batches without gradients -> (n, l) on the CPU."""
    device = next(module.parameters()).device
    with torch.no_grad():
        return torch.cat([module.encode(c.to(device)).float().cpu() for c in x.split(batch_size)])

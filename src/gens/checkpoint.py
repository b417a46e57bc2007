"""Safe checkpoints: atomic writes, weights-only loading, and exact resume.

- ``atomic_save(obj, path)``: ``torch.save`` into a temporary file in the same folder, flush + fsync,
  then ``os.replace`` (atomic on POSIX and Windows) and fsync the folder: a reader sees the old file or
  the new one, never a partial one, even if the process is killed mid-write.
- ``load_checkpoint(path)``: ``torch.load(weights_only=True)``: only tensors and plain containers are
  unpickled, so loading never executes code from the file; anything else raises
  ``UnsafeCheckpointError`` (a ValueError) and nothing in the file runs.
- ``AtomicCheckpointIO``: the Lightning ``CheckpointIO`` plugin doing both for the Trainer
  (``Trainer(plugins=[AtomicCheckpointIO()])``), so ``ModelCheckpoint`` and ``fit(ckpt_path=...)`` are
  atomic and weights-only too.
- ``module_from_checkpoint(path_or_dict)``: rebuild a gens LightningModule from a weights-only load
  (hyperparameters + state dict), never through ``load_from_checkpoint``. With weight averaging
  (``gens.averaging``, the default) ``state_dict`` is the average, the trained model; the live weights
  (``current_model_state``) and ``averaging_state`` are only for resuming.
- Exact resume: ``EpochSampler`` (a training-set permutation drawn from (seed, epoch) alone, able to
  skip the batches already trained) and ``ResumeCallback`` (stores the position in the epoch in the
  checkpoint; reseeds torch / numpy / random from (seed, global step) before every training batch, so
  the random numbers a step draws do not depend on what ran before it: validation, loader start-up or a
  restart). Together, a run killed mid-epoch and resumed from its last checkpoint ends with the same
  weights as an uninterrupted run (``tests/test_resume.py``).
- ``LastCheckpoint(path, every)``: ``gens train``'s last.ckpt, written so that Lightning resumes it exactly,
  with a step budget too, whether the run was killed or finished and is given a larger budget.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Checkpoint
from torch.utils.data import Sampler

__all__ = [
    "AtomicCheckpointIO",
    "EpochSampler",
    "LastCheckpoint",
    "ResumeCallback",
    "UnsafeCheckpointError",
    "atomic_save",
    "load_checkpoint",
    "method_name",
    "module_from_checkpoint",
    "step_seed",
]


class UnsafeCheckpointError(ValueError):
    """The file holds objects that weights-only loading refuses (it would have to run code to load)."""


def atomic_save(obj: Any, path) -> Path:
    """Write ``torch.save(obj)`` to ``path`` atomically (temp file in the same folder + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path, map_location="cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``; never executes code from the file.

    Raises FileNotFoundError for a missing file and ``UnsafeCheckpointError`` (ValueError) for a file
    that holds anything but tensors and plain containers (e.g. a crafted pickle) or is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"checkpoint: refused to load {path}: weights-only loading allows only tensors and plain "
            f"containers, and this file holds something else; nothing in it was run. torch says: {_one_line(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UnsafeCheckpointError(f"checkpoint: {path} is not a readable torch checkpoint ({_one_line(err)})") \
            from None


def _one_line(err: BaseException) -> str:
    """An exception's whole message on one line (terminal colour codes and line breaks removed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    return " ".join(text.split()) or type(err).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic saves (:func:`atomic_save`), weights-only loads (always)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint: storage_options are not supported")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # weights_only is forced: a checkpoint that needs arbitrary unpickling is refused
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


# ---------------------------------------------------------------------------------- rebuilding modules


def method_name(module) -> str:
    """The ``gens.methods.METHODS`` key of a module instance."""
    from gens.methods import METHODS

    for name, cls in METHODS.items():
        if type(module) is cls:
            return name
    raise ValueError(f"module: {type(module).__name__} is not one of gens.methods.METHODS")


def module_from_checkpoint(checkpoint, method: str | None = None, map_location="cpu"):
    """Rebuild a gens LightningModule from a checkpoint path or an already loaded dict (weights-only).

    The method comes from ``checkpoint["gens"]["method"]`` (written by :class:`ResumeCallback` and by
    the estimators' ``save``) unless given. Returns the module in eval mode on the CPU.
    """
    from gens.methods import METHODS, build_module

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location)
    method = method or ckpt.get("gens", {}).get("method")
    if method not in METHODS:
        raise ValueError(f"method: the checkpoint does not say which method it holds; pass one of {list(METHODS)}")
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "data_shape" not in hp or "latent_dim" not in hp or "state_dict" not in ckpt:
        raise ValueError("checkpoint: lacks 'hyper_parameters' (data_shape, latent_dim) or 'state_dict'")
    try:
        module = build_module(method, hp.pop("data_shape"), hp.pop("latent_dim"), **hp)
        module.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as err:  # another method's hyperparameters or weights
        raise ValueError(f"checkpoint: its hyperparameters or weights do not fit a {method!r} model "
                         f"({_one_line(err)[:300]})") from None
    return module.eval()


# -------------------------------------------------------------------------------------- exact resume


def step_seed(seed: int, step: int) -> int:
    """A 32-bit seed mixed from (seed, step) with numpy's SeedSequence (well spread for nearby steps)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Indices 0..n-1 in the order ``torch.randperm(n)`` draws from a generator seeded by (seed, epoch).

    The order depends on nothing but (seed, epoch), so a restarted process reproduces it. Lightning calls
    ``set_epoch`` before every epoch; ``resume_at(epoch, skip)`` makes the next iteration of that epoch
    start after its first ``skip`` indices (the samples already trained on). ``shuffle=False`` gives 0..n-1.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        self.epoch = int(epoch)
        self._skip = (int(epoch), int(skip))

    def order(self, epoch: int) -> torch.Tensor:
        """The full permutation of ``epoch``: (n,) int64."""
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(step_seed(self.seed, epoch)))

    def __iter__(self):
        idx = self.order(self.epoch)
        if self._skip is not None and self._skip[0] == self.epoch:
            idx = idx[self._skip[1] :]
        self._skip = None
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.n


class ResumeCallback(Callback):
    """Makes a run resumable to the same result, and tags checkpoints with the gens method.

    - Before every training batch, seeds torch, numpy and ``random`` from ``step_seed(seed, global_step)``.
    - Its checkpoint state records the epoch and the number of batches trained in it; on restore it
      tells ``sampler`` (an :class:`EpochSampler`) to skip those batches.
    - Adds ``checkpoint["gens"] = {"method", "version"}`` (read by :func:`module_from_checkpoint`).
    """

    def __init__(self, seed: int, sampler: EpochSampler | None = None, batch_size: int | None = None):
        self.seed = int(seed)
        self.sampler = sampler
        self.batch_size = batch_size
        self.epoch = 0
        self.batches_done = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            self.epoch, self.batches_done = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = step_seed(self.seed, trainer.global_step)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last)
        self.epoch, self.batches_done = trainer.current_epoch, batch_idx + 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        if self.sampler is not None and self.batches_done > 0:
            self.sampler.resume_at(self.epoch, self.batches_done * int(self.batch_size))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        from gens import __version__

        try:
            method = method_name(pl_module)
        except ValueError:
            method = None
        checkpoint["gens"] = {"method": method, "version": __version__}


class LastCheckpoint(Checkpoint):
    """Save ``path`` after every ``every``-th training batch (counted over the whole run) and when training
    ends (the last epoch, or max_steps reached); ``every = 0``: after every epoch. A ``Checkpoint``, so Lightning
    runs it after the other callbacks' hooks (their state is up to date when it saves).

    Each file holds a fit-loop state that Lightning resumes exactly, with a step budget too (with max_steps
    Lightning treats every restore as a restart):

    - mid-epoch, the state of the batch's end (a killed run's, and the final one of a run that reached
      max_steps mid-epoch: Lightning ends that epoch early, and its state there says the epoch is done, so a
      larger ``--steps`` would skip the rest of the epoch);
    - after an epoch's last batch, the save waits for the epoch's end (the finished model: after the epoch-end
      hooks, e.g. the AE's latent moments) and holds the state after the batch's validation, where
      Lightning's ModelCheckpoint saves; the resume runs the epoch's end again (the hooks recompute the same).
      Lightning's own state at ``on_train_epoch_end``, restored with max_steps, runs the epoch's end again and
      counts it twice (the sampler gets epoch e + 1 in epoch e from then on, and ``max_epochs`` stops one
      epoch early); the state of the last batch's end skips the next epoch's start hooks.
    """

    def __init__(self, path, every: int):
        self.path, self.every = path, int(every)
        self._batch_end = None  # the fit loop's state at the end of the last batch that is not an epoch's last
        self._due = False  # a periodic save fell on an epoch's last batch: written at the epoch's end
        self._saving = False  # saving from on_train_epoch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loop = trainer.fit_loop.epoch_loop
        periodic = bool(self.every) and (loop.total_batch_idx + 1) % self.every == 0  # batches trained so far
        if loop.batch_progress.is_last_batch:
            self._due = self._due or periodic
            return
        # the state an epoch-end save after a mid-epoch stop needs (copied only where the loop can stop here:
        # a deep copy every batch costs ~0.2 ms)
        if trainer.should_stop or (trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps):
            self._batch_end = copy.deepcopy(trainer.fit_loop.state_dict())
        if periodic:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer, pl_module):
        last_epoch = trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        if not self.every or self._due or last_epoch or last_step:
            self._due, self._saving = False, True
            try:
                trainer.save_checkpoint(self.path, weights_only=False)
            finally:
                self._saving = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._saving or "loops" not in checkpoint:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # back to the state after validation
            loop = checkpoint["loops"]["fit_loop"]
            for p in (loop["epoch_progress"]["total"], loop["epoch_progress"]["current"]):
                p["processed"] -= p["processed"] == p["started"]  # counted at the epoch's end, before its hooks
            loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1  # counted after validation
        elif self._batch_end is not None:
            checkpoint["loops"]["fit_loop"] = copy.deepcopy(self._batch_end)

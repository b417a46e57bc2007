"""The trained model as an exponential moving average of the weights (``gens.training.fit``'s ``weight_average``).

The decay defaults per method (``gens.config.WEIGHT_AVERAGE``: 0.999 for the GEN, 0 for the others, i.e. the last
step's weights); ``resolve_weight_average(value, method)`` turns None into it and ``check_weight_average`` checks a
number (both torch-free, in ``gens.config``, and re-exported here), ``module_method(module)`` names a module's
method (its class's ``method_name``).

``WeightAverage(decay)`` is a ``lightning.pytorch.callbacks.WeightAveraging``: after every optimiser step (at
the batch's end; the AAE's two optimisers make one update per batch) the average of the module's parameters
moves as avg <- d avg + (1 - d) w, with d = min(decay, (1 + n) / (10 + n)) after n updates (the first update
copies w, so early averages are not dominated by the initial weights). During validation the average is in
the module; when training ends it stays there: the trained model (``fit`` returns it). The regulariser acts
on the live weights (the GEN's bank is re-encoded by the live encoder).

Buffers are not averaged (``use_buffers=False``): the module's own buffers (the GEN's bandwidth, the AE's
latent moments) stay in place whatever is swapped, and are saved as they are.

Checkpoints keep Lightning's layout: ``state_dict`` holds the average (so ``gens.estimators.load``, ``gens.runs.load_run``
and ``gens.checkpoint.module_from_checkpoint`` load the trained model), ``current_model_state`` the live
weights and ``averaging_state`` the update count; ``fit(ckpt_path=...)`` restores both and continues exactly.
A checkpoint without them (trained with ``weight_average=0`` or by an older gens) resumes with the average
started afresh from its weights (with a warning); one with them resumed with ``weight_average=0`` continues
from its live weights (:class:`LiveWeights`).

``averaged_weights(trainer, module)``: a context manager that swaps the average into ``module`` and the live
weights back after (exact copies); a no-op without a ``WeightAverage`` or while the average is already in
place. ``gens.fidelity.FidelityMonitor`` measures under it, and the AE fits its final latent Gaussian under it.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from gens.config import WEIGHT_AVERAGE, check_weight_average, resolve_weight_average

__all__ = ["LiveWeights", "WeightAverage", "averaged_weights", "check_weight_average", "ema_update",
           "module_method", "resolve_weight_average", "weight_average_of"]


def module_method(module) -> str | None:
    """The name in ``gens.methods.METHODS`` of ``module``'s method (its class's ``method_name``; a subclass of a
    method's module inherits it), or None for a module of no gens method."""
    name = getattr(type(module), "method_name", None)
    return name if isinstance(name, str) and name in WEIGHT_AVERAGE else None


def ema_update(averages: list[torch.Tensor], currents: list[torch.Tensor], num_averaged: torch.Tensor, *,
               decay: float) -> None:
    """In place, for every pair: avg <- d avg + (1 - d) current with d = min(decay, (1 + n) / (10 + n)),
    n = ``num_averaged`` (the updates so far, a 0-d tensor): ``AveragedModel``'s ``multi_avg_fn`` (tensors of one
    device and dtype per call). One fused ``_foreach_lerp_`` (lerp(avg, current, 1 - d)), no host sync."""
    if not averages:
        return
    n = num_averaged.to(device=averages[0].device, dtype=averages[0].dtype)
    w = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
    torch._foreach_lerp_(averages, currents, [w] * len(averages))


class WeightAverage(WeightAveraging):
    """The exponential moving average of the module's parameters with warm-up (see the module docstring).

    decay: in [0, 1) (by default the GEN's, ``gens.config.WEIGHT_AVERAGE["gen"]``). ``state_dict``: the step of
    the last update (the average itself travels in the checkpoint's ``state_dict`` / ``averaging_state``)."""

    def __init__(self, decay: float = WEIGHT_AVERAGE["gen"]):
        self.decay = check_weight_average(decay)
        super().__init__(use_buffers=False, multi_avg_fn=functools.partial(ema_update, decay=self.decay))
        self._swapped = False  # the average is in the module (validation, averaged_weights)
        self._final = False  # training ended: the module holds the average for good

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._swapped = self._final = False

    def on_fit_start(self, trainer, pl_module) -> None:
        # setup() copies the module before the strategy moves it to its device: follow it there
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._final = True

    def _pairs(self, pl_module):
        """(average parameter, module parameter) pairs: parameters only, buffers stay the module's."""
        return zip(self._average_model.module.parameters(), pl_module.parameters(), strict=True)

    @torch.no_grad()
    def _swap_models(self, pl_module) -> None:
        for avg, cur in self._pairs(pl_module):
            tmp = avg.detach().clone()
            avg.detach().copy_(cur.detach())
            cur.detach().copy_(tmp)
        self._swapped = not self._swapped

    @torch.no_grad()
    def _copy_average_to_current(self, pl_module) -> None:
        for avg, cur in self._pairs(pl_module):
            cur.detach().copy_(avg.detach())

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Lightning's layout (module docstring), with the module's own buffers in ``state_dict``."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        live = checkpoint.get("current_model_state")
        if live is not None:
            params = {name for name, _ in pl_module.named_parameters()}
            average = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: average[k] if k in params else v for k, v in live.items()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._average_model is None or ("current_model_state" in checkpoint and "averaging_state" in checkpoint):
            return super().on_load_checkpoint(trainer, pl_module, checkpoint)
        rank_zero_warn("weight_average: the checkpoint was written without weight averaging; the average starts "
                       "afresh from its weights (the steps before it are not in the trained model)")
        self._average_model.module.load_state_dict(checkpoint["state_dict"], strict=False)  # 0 updates: replaced


class LiveWeights(Callback):
    """Resuming without averaging from a checkpoint written with it: continue from its live weights
    (``current_model_state``), not from the average Lightning loads from ``state_dict``."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "current_model_state" in checkpoint:
            pl_module.load_state_dict(checkpoint["current_model_state"])


def weight_average_of(trainer) -> WeightAverage | None:
    """The trainer's ``WeightAverage`` callback (None if it has none or no trainer is attached)."""
    callbacks = getattr(trainer, "callbacks", None) or ()
    return next((c for c in callbacks if isinstance(c, WeightAverage)), None)


@contextmanager
def averaged_weights(trainer, module):
    """Within the block ``module`` holds the average of the trainer's ``WeightAverage`` (the live weights are
    put back after, exactly); a no-op without one, before fit set it up, or while the average is in place."""
    cb = weight_average_of(trainer)
    if cb is None or cb._average_model is None or cb._swapped or cb._final:
        yield module
        return
    cb._swap_models(module)
    try:
        yield module
    finally:
        if cb._swapped:
            cb._swap_models(module)

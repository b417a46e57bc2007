"""Latent fidelity: how close the encoded distribution is to the one the theory predicts.

For a GEN the prediction is Sec. 4's: the latents q solve q * G_h = p_t, so q is p_t shrunk by the
kernel (``module.latent_distribution()``; N(0, (1 - h^2) I) for N(0, I)); for the other methods it is
their prior. ``latent_fidelity(z, predicted, ...)`` measures, on latents z: (n, l) of held-out samples:

- ``eig_min`` / ``eig_max``: the extreme eigenvalues of P^{-1/2} S P^{-1/2}, S the latents' covariance and
  P the predicted one (1 on target; below 0.5: a direction collapses; above 1.69: the latents inflate);
- ``std_min`` / ``std_max``: the extreme ratios sqrt(S_jj / P_jj) of per-dimension std to the predicted;
- ``gap``: the whitened leave-one-out KDE entropy (paper Table 2) of as many draws from the prediction
  minus that of z (0 on target; positive: z is less Gaussian / more clustered than predicted);
- ``jsd`` (when a bank is given): eq. 2's estimate + 2 log 2 between the KDE of ``bank`` and p_t, with z
  as the encoded queries (independent of the bank) and as many p_t draws: twice the JSD, in nats, in
  [0, 2 log 2] for exact densities (0 on target). The KDE estimate can fall below 0 when the latents are
  much sparser than the kernel (inflated latents: p_e at a query far below the true density).

``FidelityMonitor`` is a Lightning callback that measures this every epoch on (up to ``max_samples``)
validation latents (training latents when there is no validation split), logs ``fidelity/*`` (so metrics.csv and the estimators' ``history_`` hold it), keeps
``history`` and warns once, at the end of training, when the latents inflated or a direction collapsed. With
weight averaging (``gens.averaging``) it measures the averaged weights, so the last record describes the
trained model.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import torch

__all__ = ["latent_fidelity", "predicted_covariance", "fidelity_problems", "FidelityMonitor", "FidelityWarning",
           "STD_RANGE", "EIG_MIN"]

STD_RANGE = (0.7, 1.3)  # per-dimension std within this factor of the predicted
EIG_MIN = 0.5  # smallest covariance eigenvalue at least this factor of the predicted


class FidelityWarning(UserWarning):
    """The trained latents are far from the predicted distribution (inflated or collapsed)."""


def predicted_covariance(target) -> torch.Tensor:
    """Covariance (l, l) float64 of a ``gens.targets`` mixture: sum_k w_k (C_k + mu_k mu_k^T) - mu mu^T."""
    w, mu, c = target.weights.double(), target.means.double(), target.covs.double()
    mean = w @ mu
    second = torch.einsum("k,kij->ij", w, c) + torch.einsum("k,ki,kj->ij", w, mu, mu)
    return second - torch.outer(mean, mean)


def latent_fidelity(z: torch.Tensor, predicted, bank: torch.Tensor | None = None, target=None,
                    h: float | None = None, seed: int = 0) -> dict:
    """The fidelity numbers of the module docstring for latents z: (n, l), n >= l + 2.

    predicted: the ``gens.targets.Target`` the latents should follow; bank (m, l), target p_t and h: for
    ``jsd`` (omitted when any is None). Draws are seeded with ``seed``."""
    from gens.divergence import jsd_estimate
    from gens.evaluation.entropy import latent_entropy

    z = torch.as_tensor(z).detach().double().cpu()
    n, dim = z.shape
    if n < dim + 2:
        raise ValueError(f"z: needs at least latent_dim + 2 = {dim + 2} rows, got {n}")
    S = torch.cov(z.T).reshape(dim, dim)
    P = predicted_covariance(predicted)
    evals, evecs = torch.linalg.eigh(P)
    root = evecs @ torch.diag(evals.clamp_min(1e-300).rsqrt()) @ evecs.T
    rel = torch.linalg.eigvalsh(root @ S @ root)
    ratio = (torch.diagonal(S) / torch.diagonal(P)).sqrt()
    g = torch.Generator().manual_seed(seed)
    ref = predicted.sample(n, generator=g, dtype=torch.float64)
    out = {"eig_min": float(rel[0]), "eig_max": float(rel[-1]), "std_min": float(ratio.min()),
           "std_max": float(ratio.max()), "mean_abs": float(z.abs().mean())}
    try:
        out["gap"] = latent_entropy(ref) - latent_entropy(z)
    except ValueError:  # a singular (collapsed) direction cannot be whitened
        out["gap"] = math.inf
    if bank is not None and target is not None and h is not None and len(bank) >= 2:
        z_t = target.sample(n, generator=g, dtype=torch.float64)
        out["jsd"] = float(jsd_estimate(bank.double().cpu(), z, z_t, target, h)) + 2 * math.log(2)
    return out


def fidelity_problems(record: dict) -> list[str]:
    """What is wrong with a ``latent_fidelity`` record, as short phrases (empty: within the ranges)."""
    lo, hi = STD_RANGE
    out = []
    if record["std_max"] > hi or record["eig_max"] > hi * hi:
        out.append(f"the latents inflate (per-dimension std up to {record['std_max']:.2f}x, covariance "
                   f"eigenvalue up to {record['eig_max']:.2f}x the predicted: the regulariser lost to the reconstruction; "
                   "raise coverage or lam)")
    if record["eig_max"] < EIG_MIN:
        out.append(f"the latents are too narrow (every covariance eigenvalue at most {record['eig_max']:.2f}x the "
                   "predicted: under-trained; train longer)")
    elif record["eig_min"] < EIG_MIN or record["std_min"] < lo:
        out.append(f"a latent direction collapses (smallest covariance eigenvalue {record['eig_min']:.2f}x, "
                   f"per-dimension std down to {record['std_min']:.2f}x the predicted: raise lam or bank_size, or lower "
                   "latent_dim)")
    return out


class FidelityMonitor(L.Callback):
    """Measure ``latent_fidelity`` on validation latents after every training epoch (see the module docstring).

    max_samples: validation samples used (the first ones; fewer when the split is smaller). Without a
    validation split the first training samples are used instead (and ``jsd`` is left out).
    ``min_interval``: at most one measurement per this many steps (small data sets have epochs of a few
    steps), and always one after the last epoch. ``history``: one
    dict per measurement (with ``epoch`` and ``step``). The interval counts from the last measurement it
    asked for, not from one taken only because training ended: a finished run extended with ``--resume``
    measures at the steps an uninterrupted run does (plus the first call's final measurement)."""

    def __init__(self, max_samples: int = 2000, min_interval: int = 100, warn: bool = True):
        from gens._validation import check_int

        self.max_samples = check_int("max_samples", max_samples, minimum=2)
        self.min_interval = check_int("min_interval", min_interval, minimum=0)
        self.warn = bool(warn)
        self.history: list[dict] = []
        self._scheduled = -math.inf  # the step of the last measurement due by min_interval
        self._x = None
        self.source = None  # "val" or "train": where the measured samples come from

    def _samples(self, trainer):
        """Validation samples (``source`` "val"); without a validation split the first training samples
        (``source`` "train": then no ``jsd``, since the bank may hold the same samples)."""
        if self._x is None:
            dm = getattr(trainer, "datamodule", None)
            x, self.source = torch.empty(0), None
            if dm is not None and hasattr(dm, "split_tensors"):
                if getattr(dm, "n_val", 0) > 0:
                    x, self.source = dm.split_tensors("val")[0][: self.max_samples], "val"
                elif hasattr(dm, "train_tensor"):
                    x, self.source = dm.train_tensor()[: self.max_samples], "train"
            self._x = x
        return self._x

    @torch.no_grad()
    def measure(self, trainer, module) -> dict | None:
        """The ``latent_fidelity`` record of ``module`` (its averaged weights when the trainer averages them);
        None on ranks other than 0, with too few samples or non-finite latents."""
        x = self._samples(trainer)
        if len(x) < module.latent_dim + 2 or not trainer.is_global_zero:
            return None
        from gens.averaging import averaged_weights

        with averaged_weights(trainer, module):
            return self._measure(trainer, module, x)

    def _measure(self, trainer, module, x) -> dict | None:
        from gens.training import encode_all

        was = module.training
        module.eval()
        try:
            z = encode_all(module, x).double()
            try:
                predicted = module.latent_distribution()
            except ValueError:  # h >= 1: no shrunk target
                return None
            bank, target, h = None, getattr(module, "target", None), None
            samples = getattr(getattr(module, "bank_strategy", None), "samples", None)
            if self.source == "val" and samples is not None and math.isfinite(float(module.bandwidth_h)):
                bank = encode_all(module, samples, batch_size=2048).double()
                h = float(module.bandwidth_h)
            if not bool(torch.isfinite(z).all()):
                return None
            return latent_fidelity(z, predicted, bank, target, h, seed=trainer.current_epoch)
        finally:
            module.train(was)

    def on_train_epoch_end(self, trainer, module):
        from gens.training import last_epoch

        final = last_epoch(trainer)
        due = trainer.global_step - self._scheduled >= self.min_interval
        if not due and not final:
            return
        rec = self.measure(trainer, module)
        if rec is None:
            return
        if due:
            self._scheduled = trainer.global_step
        for k, v in rec.items():
            if math.isfinite(v):
                module.log(f"fidelity/{k}", float(v), on_step=False, on_epoch=True, rank_zero_only=True)
        self.history.append({"epoch": int(trainer.current_epoch), "step": int(trainer.global_step), **rec})

    def on_train_end(self, trainer, module):
        if not self.warn or not self.history:
            return
        problems = fidelity_problems(self.history[-1])
        if problems:
            warnings.warn(
                f"latents: {'; '.join(problems)} on validation data after {self.history[-1]['step']} steps "
                "(a run folder's fidelity.png shows how it went)", FidelityWarning,
                stacklevel=2)

    def state_dict(self) -> dict:
        return {"history": self.history, "scheduled": self._scheduled}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        last = self.history[-1]["step"] if self.history else -math.inf  # a checkpoint from before "scheduled"
        self._scheduled = float(state.get("scheduled", last))

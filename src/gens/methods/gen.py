"""GEN: the Generative Encoding Network of Algorithm 1 as a LightningModule.

Per minibatch x (n, *data_shape), with z' = E(x) and a lagged bank Z (m, l) of detached latents:

    loss = recon(x, D(z')) + lam * (J(z') + coverage * C(z'))
    J = gen_jsd_term(z', Z, p_t, h, form=objective)   (eq. 3: the latent-sample half of eq. 2)
    C = gen_coverage_term(z', Z, p_t, h, z_t)         (the target-sample half of eq. 2; z_t ~ p_t, n draws)

The JSD terms depend on the encoder only (the bank is detached), so one Adam step on ``loss`` is
exactly Algorithm 1's two updates: the encoder gets recon + lam * (J + coverage C), the decoder recon alone.

- ``coverage`` (default 1; 0 = the paper's eq. 3 alone): the weight of eq. 2's other half, scored at fresh
  target draws under the KDE of the bank and the minibatch (``gens.divergence.gen_coverage_term``). Eq. 3
  only pushes latents out of over-dense regions (its push vanishes where p_e << p_t); nothing draws them
  into regions the target fills, so on small data or long budgets the reconstruction spreads them and they
  inflate (digits, 6000 steps: per-dimension std 26-46x the predicted with coverage 0, 0.90-1.14x with 1;
  BENCHMARKS.md, "Robustness"). Both halves have the stationary point p_e = p_t, so Sec. 4's prediction
  is unchanged.

- ``objective``: ``"literal"`` (eq. 3: log[p_e / (p_e + p_t)], unbounded below: a latent beyond the
  bank's reach is pushed further out, ever harder), ``"nonsaturating"`` (-log[p_t / (p_e + p_t)], same
  stationary point; its push vanishes where p_e << p_t and it pulls back hard where p_e > p_t; the
  default), ``"kl"`` (log(p_e + eps) - log(p_t + eps), eps = ``eps`` or 1e-3 times the target's peak
  density). See ``gens.divergence.gen_jsd_term``. Any name registered with
  ``gens.divergence.register_objective`` is accepted too.
- ``lam`` weighs J against the per-pixel mean squared error, so its meaning does not depend on the
  image size (the paper's lambda multiplies a per-image sum).
- The bank (``gens.bank.LatentBank``), kept by the strategy ``bank_strategy`` = ``gens.bank.BANKS[bank_mode]``
  (``gens.bank.BankStrategy``: set-up at train start, per-step refresh or push, the rows a query may not
  see, the checkpoint state; ``gens.bank.register_bank`` adds one): ``"refresh"`` (the paper) re-encodes m
  training samples without gradients every ``refresh_every`` (kb) minibatches; ``"queue"`` keeps the
  detached latents of the most recent minibatches (first filled by encoding m samples); ``"ema-queue"`` fills
  the queue with the minibatch encoded by a moving-average copy of the encoder (``gens.bank.EMAQueueBank``,
  one extra no-grad encoder forward per step instead of m / kb). m = ``bank_size``
  is capped at the number of training samples, with a warning. Samples come from ``trainer.datamodule.train_tensor()`` or else the train
  dataloader's dataset. Checkpoints keep the strategy's state and the batch counter (``gen_bank``).
- ``leave_one_out=True`` drops from the bank, for each training minibatch, the rows the strategy hides from
  it (``BankStrategy.hidden_rows``: the rows that encode the minibatch's own samples, matched by content,
  ``gens.bank.sample_keys``; in the queues these exist once the queue holds more than an epoch). The eq. 3 estimate
  needs query latents independent of the KDE's samples (``gens.divergence.jsd_estimate``); a query's own
  lagged encoding sits at distance ~0 and, at h = 0.40 for m = 10^4 and l = 8, its kernel alone is ~0.6x
  the sum over every other bank row (median, measured on trained MNIST latents): the query sees a false
  over-density and is pulled toward the target's mode.
- ``bandwidth``: h; None = h_opt(p_t, m) from ``gens.bandwidth.optimal_bandwidth`` (cached), computed
  when training starts and kept in the ``bandwidth_h`` buffer, so checkpoints carry it.
  ``bandwidth_correction=True`` uses h / sqrt(1 + h^2) (``gens.bandwidth.corrected_bandwidth``). A resolved
  h >= 1 (given, or from h_opt) raises ValueError before the first step (construction or ``on_train_start``).
  ``bandwidth_scale`` multiplies the resolved h_opt (not a given ``bandwidth``): the regulariser only sees
  q * G_h, so structure of q finer than h goes unpenalised; a smaller h constrains finer scales at the
  price of a noisier KDE (measured in BENCHMARKS.md, "Training defaults").
- Generation (Sec. 4): ``latent_distribution()`` is p_t shrunk by the kernel (N(0, (1 - h^2) I) for
  N(0, I); every mixture component's covariance minus h^2 I); ``sample`` decodes draws from it.

Experimental (``gens.config.experimental_options``: keywords of this module only, not ``gens train`` flags or
estimator parameters; measured to change nothing beyond seed noise, BENCHMARKS.md "Training defaults"):

- ``query_noise=True`` evaluates J at z' + h * eps, eps ~ N(0, I) (training only): the term of the
  kernel-smoothed latents q * G_h, whose density the bank's KDE estimates. For the literal form this is the
  gradient of the JSD between q * G_h and p_t with the bank held fixed; the stationary point is unchanged.
- ``bank_reshuffle=True`` draws a new set of m bank samples every epoch.

Extra logged values: ``z_abs`` (mean |z'| of the minibatch; a runaway shows here first).
"""

from __future__ import annotations

import math
import warnings

import torch

from gens._validation import check_float, check_int
from gens.bank import BANKS
from gens.methods.base import BaseAutoencoder, make_target, sample_source
from gens.registry import OBJECTIVES

__all__ = ["DEFAULT_BANDWIDTH_SCALE", "DEFAULT_COVERAGE", "DEFAULT_LAM", "OBJECTIVES", "GENModule"]
# chosen by the MNIST sweep in BENCHMARKS.md ("Training defaults"): against lam = 0.01 at h_opt, the whitened
# entropy of 10000 test latents rose from 10.69 to 11.03-11.04 (two seeds) for test MSE 0.0176 -> 0.0216
DEFAULT_LAM = 0.03
DEFAULT_BANDWIDTH_SCALE = 0.75
# the target-sample half of eq. 2 (gens.divergence.gen_coverage_term): without it the latents inflate on small
# data and long budgets (digits at 6000 steps: per-dimension std 26-46x the predicted; BENCHMARKS.md, "Robustness")
DEFAULT_COVERAGE = 1.0


class GENModule(BaseAutoencoder):
    """Generative Encoding Network (Algorithm 1). See the module docstring for the arguments."""

    method_name = "gen"  # its name in gens.methods.METHODS (gens.config.WEIGHT_AVERAGE)

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999), target_spec=None, bandwidth=None, bandwidth_correction: bool = False,
                 lam: float = DEFAULT_LAM, objective: str = "nonsaturating", bank_mode: str = "refresh",
                 bank_size: int = 2000, refresh_every: int = 10, bank_reshuffle: bool = False,
                 eps: float | None = None, query_noise: bool = False, bandwidth_scale: float = DEFAULT_BANDWIDTH_SCALE,
                 leave_one_out: bool = True, coverage: float = DEFAULT_COVERAGE, coverage_draws: int = 1):
        super().__init__(data_shape, latent_dim, arch, hidden, lr, betas)
        self.query_noise = bool(query_noise)
        self.leave_one_out = bool(leave_one_out)
        self.coverage = check_float("coverage", coverage, minimum=0.0)
        self.coverage_draws = check_int("coverage_draws", coverage_draws, minimum=1)
        self.target = make_target(target_spec, self.latent_dim)
        self.lam = check_float("lam", lam, minimum=0.0)
        self.objective = OBJECTIVES.check(objective)
        self.bank_mode = BANKS.check(bank_mode)
        self.bank_size = check_int("bank_size", bank_size, minimum=2)
        self.refresh_every = check_int("refresh_every", refresh_every, minimum=1)
        self.bank_reshuffle = bool(bank_reshuffle)
        self.bandwidth_correction = bool(bandwidth_correction)
        self.bandwidth_scale = check_float("bandwidth_scale", bandwidth_scale, minimum=0.0, maximum=1.0,
                                           min_inclusive=False)
        self.eps = None if eps is None else check_float("eps", eps, minimum=0.0, min_inclusive=False)
        h = math.nan
        if bandwidth is not None:
            h = check_float("bandwidth", bandwidth, minimum=0.0, min_inclusive=False)
            _check_h(h, self.bank_size, self.latent_dim, "the given bandwidth")
        self.register_buffer("bandwidth_h", torch.tensor(h, dtype=torch.float64))
        self.bank_strategy = BANKS[self.bank_mode](self.bank_size, self.latent_dim)
        self._batches = 0  # training batches seen (the refresh clock)
        self._restored = None  # bank state from a checkpoint, used by on_train_start

    @property
    def bank(self):
        """The ``gens.bank.LatentBank`` of the bank strategy."""
        return self.bank_strategy.bank

    @property
    def _bank_x(self):
        """(m, *data_shape) the training samples the bank encodes (the strategy's; read by gens.fidelity)."""
        return self.bank_strategy.samples

    @_bank_x.setter
    def _bank_x(self, x):
        self.bank_strategy.samples = x

    @property
    def _bank_idx(self):
        """(m,) the indices of those samples."""
        return self.bank_strategy.indices

    # ---- bandwidth and generation -----------------------------------------------------------------
    @property
    def h(self) -> float:
        """The kernel bandwidth; resolves h_opt(p_t, bank_size) on first use if not yet known."""
        if not math.isfinite(float(self.bandwidth_h)):
            self._resolve_bandwidth(self.bank_size)
        return float(self.bandwidth_h)

    def _resolve_bandwidth(self, m: int, check: bool = True) -> None:
        """Set ``bandwidth_h`` to h_opt(p_t, m), corrected if ``bandwidth_correction``, times ``bandwidth_scale``.

        Raises ValueError ("bandwidth: ...", ``_check_h``) when that h is >= 1 and ``check`` (``gens train``
        passes False and refuses it with its own flag names, ``gens.runs._check_bandwidth``); the buffer is
        left unresolved (nan) then."""
        from gens.bandwidth import corrected_bandwidth, optimal_bandwidth

        h_opt = float(optimal_bandwidth(self.target, m, warn=False).h)  # refused below, with the GEN's options
        h = float(corrected_bandwidth(h_opt)) if self.bandwidth_correction else h_opt
        h *= self.bandwidth_scale
        if check:
            how = (f"h_opt = {h_opt:.4g}" + (", corrected" if self.bandwidth_correction else "")
                   + f", times bandwidth_scale {self.bandwidth_scale:g}")
            _check_h(h, m, self.latent_dim, how)
        self.bandwidth_h.fill_(h)

    def latent_distribution(self):
        """p_t shrunk by the kernel (Sec. 4): the distribution q with q * G_h = p_t."""
        return self.target.shrink(self.h)

    # ---- the loss ----------------------------------------------------------------------------------
    def jsd_term(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """lam-free eq. 3 term of minibatch latents z: (n, l) against the bank; 0 while the bank holds < 2 rows.

        x: (n, *data_shape), the samples z encodes: with ``leave_one_out`` (training) the bank rows the
        strategy hides from them (refresh mode: those that encode them) are left out."""
        from gens.divergence import gen_jsd_term

        bank = self.bank.latents()
        hidden = self.bank_strategy.hidden_rows(self, x) if x is not None and self.training and self.leave_one_out \
            else None
        if hidden is not None:
            bank = bank[~hidden]
        if len(bank) < 2 or not math.isfinite(float(self.bandwidth_h)):
            return z.sum() * 0.0
        if not bool(torch.isfinite(z).all()):  # a NaN loss, so that DivergenceGuard reports it
            return z.sum() * math.nan
        h = float(self.bandwidth_h)
        if self.query_noise and self.training:  # evaluate at z + h eps: the term of the KDE-smoothed latents
            z = z + h * torch.randn_like(z)
        return gen_jsd_term(z, bank.to(z), self.target, h, form=self.objective, eps=self.density_floor)

    @property
    def density_floor(self) -> float:
        """eps of the "kl" form: ``eps`` if given, else 1e-3 times the target's largest density at a mode
        (a fixed 1e-3 would exceed N(0, I_8)'s peak density 6.4e-4 and flatten the target term)."""
        if self.eps is None:
            self.eps = 1e-3 * math.exp(float(self.target.log_prob(self.target.means).max()))
        return self.eps

    def coverage_term(self, z: torch.Tensor) -> torch.Tensor:
        """The target-sample half of eq. 2 for minibatch latents z: (n, l) (``gens.divergence.gen_coverage_term``):
        n fresh draws from p_t scored under the KDE of the bank and z; 0 while the bank holds < 2 rows."""
        from gens.divergence import gen_coverage_term

        bank = self.bank.latents()
        if len(bank) < 2 or not math.isfinite(float(self.bandwidth_h)):
            return z.sum() * 0.0
        z_t = self.target.sample(z.shape[0] * self.coverage_draws, dtype=z.dtype, device=z.device)
        return gen_coverage_term(z, bank.to(z), self.target, float(self.bandwidth_h), z_t)

    def losses(self, x, training: bool = True):
        z = self.encode(x)
        recon = self.recon_loss(x, self.decode(z))
        reg = self.jsd_term(z, x)
        out = {}
        if training and self.coverage > 0:  # random target draws: training only (validation stays deterministic)
            cover = self.coverage_term(z)
            reg = reg + self.coverage * cover
            out["cover"] = cover.detach()
        if training:
            self.bank_strategy.on_latents(self, z.detach(), x)
        return {"loss": recon + self.lam * reg, "recon": recon.detach(), "reg": reg.detach(),
                "z_abs": z.detach().abs().mean(), **out}

    # ---- the bank ------------------------------------------------------------------------------------
    def on_train_start(self):
        source = sample_source(self.trainer)
        n, m = source[0], self.bank_size
        if n is not None and n < m:
            warnings.warn(
                f"bank_size: {m} is larger than the {n} training samples; using m = {n} "
                f"(h_opt is computed for m = {n})", stacklevel=2)
            m = n
        if n is None and self.bank_strategy.needs_samples:
            raise ValueError(
                f"bank_mode: {self.bank_mode!r} needs random access to the training samples (a GensDataModule or "
                "a train dataloader whose dataset supports len() and indexing); use bank_mode='queue'")
        if not math.isfinite(float(self.bandwidth_h)):
            self._resolve_bandwidth(m)  # raises for h >= 1: before the first optimiser step
        else:  # given, or restored from a checkpoint: refused too if >= 1
            _check_h(float(self.bandwidth_h), m, self.latent_dim, "the module's bandwidth_h")
        restored, self._restored = self._restored, None
        if not self.bank_strategy.restorable(restored, n, m):
            restored = None
        self._batches = 0 if restored is None else int(restored["batches"])
        self.bank_strategy.setup(self, m, source, restored)  # restored: resuming, the bank as it was saved

    def on_save_checkpoint(self, checkpoint):
        """Keep the bank strategy's state (the bank, its sample indices) and the batch counter, so a resumed
        run continues exactly."""
        checkpoint["gen_bank"] = {**self.bank_strategy.state_dict(), "batches": self._batches}

    def on_load_checkpoint(self, checkpoint):
        self._restored = checkpoint.get("gen_bank")

    def on_train_epoch_start(self):
        self.bank_strategy.on_epoch_start(self)

    def on_train_batch_start(self, batch, batch_idx):
        self.bank_strategy.on_batch_start(self)
        # counted here, not in on_train_batch_end: checkpoint callbacks save before the module's batch-end
        # hook, so a count kept there would be one short in mid-epoch checkpoints (exact resume needs it)
        self._batches += 1

    def refresh_bank(self) -> torch.Tensor:
        """Re-encode the bank's m samples with the current encoder (no gradients; shared across DDP ranks).
        Strategies refresh through this method."""
        return self.bank_strategy.refresh(self)


def _check_h(h: float, m: int, l: int, source: str = "the given bandwidth") -> None:
    """Refuse a kernel bandwidth h >= 1 (inf included) for latent dimension l and bank size m: the shrunk target
    N(0, (1 - h^2) I) of Sec. 4 does not exist and the JSD term cannot resolve the latents. ``source`` says where
    h came from ("the given bandwidth" or how h_opt was turned into h). Raises ValueError ("bandwidth: ...")."""
    if not h < 1.0 and not math.isnan(h):
        if source == "the given bandwidth":
            advice = ("give a bandwidth < 1, or bandwidth=None for h_opt(p_t, m) with a larger bank_size, a smaller "
                      "latent_dim, bandwidth_correction=True (h / sqrt(1 + h^2), always < 1) or a bandwidth_scale < 1")
        else:
            advice = ("use a larger bank_size (at most the number of training samples), a smaller latent_dim, "
                      "bandwidth_correction=True (h / sqrt(1 + h^2), always < 1) or a smaller bandwidth_scale")
        raise ValueError(
            f"bandwidth: h = {h:.4g} (l = {l}, m = {m}; {source}) must be < 1: the kernel is as wide as the target, "
            "so the shrunk target of Sec. 4 does not exist and the JSD term cannot resolve the latent distribution; "
            + advice)

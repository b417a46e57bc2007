"""The estimators' latent models: ex-post samplers, ``sample``, and eq. 10's ``score_samples``.

``LatentModelMixin`` is a base of every estimator in ``gens.estimators``. At the end of ``fit`` it
encodes the training data X once and fits

- ``samplers_``: {name: fitted ``gens.samplers`` sampler} for "analytic", "gaussian" and "gmm"
  (``fit_sampler`` refits one with other options, e.g. ``n_components``);
- ``noise_variance_``: sigma^2 of eq. 10's off-manifold term N(x; x', sigma^2 I), the mean squared
  training residual per pixel (``gens.evaluation.novelty.fit_noise_variance``), in the model's [0, 1]
  scaled units.

Methods:

- ``sample(n_samples, sampler="analytic", random_state=None)``: decode draws from a sampler.
- ``score_samples(X, sampler="analytic")``: log p(x) of eq. 10 (higher = more typical, scikit-learn's
  sign), (n,) float64:

      log p(x) = log p(z') - 1/2 log det(J^T J) + log N(x; x', sigma^2 I) - sum_j log range_j,

  z' = E(x) (VAE: the posterior mean), x' = D(z'), J = dx'/dz' (``gens.evaluation.novelty``'s
  ``novelty_log_prob``: batched forward-mode Jacobian). Everything runs in float64 on a float64 copy of
  the networks, so the log-determinants are float64 throughout and a sample's score does not depend on
  which other samples share its batch (scikit-learn's subset and order invariance checks, to 1e-9).
  p(z') is the chosen sampler's density; the default "analytic" is the method's own latent model: GEN
  the Sec. 4 shrunk target (``module.latent_distribution()``), VAE the prior N(0, I), AAE / WAE their
  target, AE the Gaussian fitted to its last training epoch's latents (``sampler="gaussian"``: the
  ex-post fit to the final latents; ``"gmm"``: the mixture). The last term is the Jacobian of the
  min-max scaling (zero when ``data_min_`` is None), so log p(x) is a density in the data's own units.
- ``score_parts(X, sampler="analytic")``: every term separately (``in_manifold``, ``reconstruction``, ...).
- ``score(X, y=None, sampler="analytic")``: the mean of ``score_samples`` (as GaussianMixture.score);
  ``SemiSupervisedGEN.score`` stays the classification accuracy.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from gens._validation import check_int

__all__ = ["SCORE_PARTS", "LatentModelMixin"]

_MIN_VARIANCE = 1e-6  # fit_noise_variance's default floor
SCORE_PARTS = ("log_px", "in_manifold", "reconstruction", "scaling", "log_pz", "log_det", "log_noise", "recon_error")


class LatentModelMixin:
    """Samplers, ``sample``, ``score_samples``, ``score_parts`` and ``score`` (see the module docstring).
    Needs ``module_``, ``_as_tensor``, ``_output``, ``transform``, ``seed_``, ``data_range_``."""

    def _fit_latent_models(self, Xs: np.ndarray) -> None:
        """After training: fit the samplers and sigma^2 on the scaled training data Xs: (n, d) float32."""
        import torch

        from gens.evaluation.novelty import reconstruction_residuals
        from gens.samplers import fit_samplers
        from gens.training import encode_all

        x = torch.from_numpy(np.ascontiguousarray(Xs.reshape(Xs.shape[0], *self.input_shape_)))
        Z = encode_all(self.module_, x, batch_size=1024).double().numpy()
        m64 = self._float64_module()  # the precision score_samples works in
        # sigma^2 as fit_noise_variance(residuals) gives it (isotropic: the mean r^2, floored at 1e-6),
        # accumulated chunk by chunk in float64 so that no float64 copy of the training set is held
        sq = sum(float(reconstruction_residuals(m64.encode, m64.decode, c.double(), 1024).pow(2).sum())
                 for c in x.split(4096))
        sigma2 = max(sq / x.numel(), _MIN_VARIANCE)
        if not (np.isfinite(Z).all() and math.isfinite(sigma2)):
            import warnings

            warnings.warn("fit: the trained model's training latents or reconstructions are not finite; only the "
                          "'analytic' sampler is available and score_samples is not", RuntimeWarning, stacklevel=3)
            self.samplers_, self.noise_variance_ = fit_samplers(Z, names=("analytic",)), None
            return
        self.samplers_ = fit_samplers(Z, random_state=self.seed_)
        self.noise_variance_ = float(sigma2)

    def fit_sampler(self, X, sampler: str = "gmm", **options):
        """Refit one sampler on the latents of X (e.g. the training data) with ``options`` for its class
        (gmm: ``n_components``, ``reg_covar``, ``max_iter``, ``n_init``). Returns self."""
        from gens.samplers import make_sampler

        check_is_fitted(self)
        s = make_sampler(sampler, **options)
        s.fit(self.transform(X), random_state=self.seed_)
        self.samplers_ = {**self._samplers(), sampler: s}
        return self

    def _samplers(self) -> dict:
        from gens.samplers import AnalyticSampler

        return getattr(self, "samplers_", None) or {"analytic": AnalyticSampler()}

    def _latent_distribution(self, sampler: str):
        from gens.samplers import latent_distribution

        check_is_fitted(self)
        return latent_distribution(self.module_, self._samplers(), sampler)

    # ---------------------------------------------------------------------------------- sampling
    def sample(self, n_samples: int = 1, sampler: str = "analytic", random_state=None) -> np.ndarray:
        """Generate n_samples: z from ``sampler`` ("analytic": the module's latent distribution, for the GEN
        the target shrunk by the kernel, Sec. 4; "gaussian"; "gmm"), decoded. Returns
        (n_samples, *input_shape_) float64; the same ``random_state`` gives the same samples."""
        import torch

        check_is_fitted(self)
        n = check_int("n_samples", n_samples, minimum=1)
        dist = self._latent_distribution(sampler)
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        z = dist.sample(n, generator=torch.Generator().manual_seed(seed))
        p = next(self.module_.parameters())
        with torch.no_grad():
            x = self.module_.decode(z.to(device=p.device, dtype=p.dtype))
        return self._output(x)

    # ----------------------------------------------------------------------------------- scoring
    def score_parts(self, X, sampler: str = "analytic", chunk_size: int = 512) -> dict[str, np.ndarray]:
        """Every term of eq. 10 for X: (n, ...), each a (n,) float64 array:
        ``log_px`` = ``in_manifold`` + ``reconstruction`` + ``scaling`` (what ``score_samples`` returns);
        ``in_manifold`` = ``log_pz`` - ``log_det`` (the latent density pushed through the decoder);
        ``reconstruction`` = ``log_noise`` = log N(x; x', sigma^2 I); ``scaling`` = -sum_j log range_j
        (0 without scaling); ``log_pz`` = log p(z'); ``log_det`` = 1/2 log det(J^T J); ``recon_error``:
        per-pixel MSE in the scaled [0, 1] units."""
        from gens.evaluation.novelty import novelty_log_prob

        check_is_fitted(self)
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        dist = self._latent_distribution(sampler)
        sigma2 = getattr(self, "noise_variance_", None)
        if sigma2 is None:
            raise ValueError("score_samples: this model has no noise_variance_ (saved before score_samples existed, "
                             "or its training reconstructions were not finite); refit it")
        x = self._as_tensor(X).double()
        module = self._float64_module()
        parts = novelty_log_prob(module.encode, module.decode, dist.log_prob, x, sigma2, chunk_size)
        rng = getattr(self, "data_range_", None)
        scaling = 0.0 if rng is None else -float(np.log(rng).sum())
        n = len(parts["log_px"])
        return {"log_px": parts["log_px"] + scaling, "in_manifold": parts["log_pz"] - parts["log_det"],
                "reconstruction": parts["log_noise"], "scaling": np.full(n, scaling),
                **{k: parts[k] for k in ("log_pz", "log_det", "log_noise", "recon_error")}}

    def _float64_module(self):
        """A float64 copy of ``module_``: a shallow copy whose sub-networks and buffers are copied and cast
        (the training data a live module may reference is shared, not copied; ``module_`` is untouched)."""
        import copy

        import torch

        src = self.module_
        m = copy.copy(src)
        m._modules = {k: copy.deepcopy(v) for k, v in src._modules.items()}
        m._parameters = {k: None if v is None else torch.nn.Parameter(v.detach().clone(), v.requires_grad)
                         for k, v in src._parameters.items()}
        m._buffers = {k: None if v is None else v.detach().clone() for k, v in src._buffers.items()}
        return m.double().eval()

    def score_samples(self, X, sampler: str = "analytic") -> np.ndarray:
        """log p(x) of eq. 10 for X: (n, *input_shape_) or (n, n_features_in_) -> (n,) float64, higher =
        more typical (scikit-learn's sign; the paper's novelty score is its negative). ``sampler`` picks
        the latent density p(z') (see the module docstring of ``gens.estimator_scoring``)."""
        return self.score_parts(X, sampler)["log_px"]

    def score(self, X, y=None, sampler: str = "analytic") -> float:
        """Mean log p(x) over X (eq. 10); ``y`` is ignored."""
        return float(np.mean(self.score_samples(X, sampler)))


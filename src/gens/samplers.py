"""Ex-post latent samplers (as in pythae): densities fitted to an autoencoder's training latents.

A trained autoencoder generates by decoding draws z from some latent density; that density also gives
the in-manifold part of eq. 10's log p(x). Three are built in, by name (``SAMPLERS``):

- ``"analytic"``: the method's own latent distribution, ``module.latent_distribution()`` (GEN: the
  Sec. 4 target shrunk by the kernel; VAE: the prior N(0, I); AAE / WAE: the target; AE: a Gaussian
  fitted to the last training epoch's minibatch latents). Nothing is fitted or stored.
- ``"gaussian"``: N(mean, cov), the maximum-likelihood full-covariance Gaussian of the training
  latents (cov with 1/n, plus ``reg_covar`` * I so it stays positive definite).
- ``"gmm"``: a full-covariance Gaussian mixture fitted by ``sklearn.mixture.GaussianMixture``
  (``n_components`` default 10, capped at the number of latents; the RAE paper's ex-post sampler).

Every sampler: ``fit(Z, random_state=None)`` on (n, l) training latents, ``distribution(module)`` -> an
object with ``sample(n, generator=None, dtype=...)`` -> (n, l) and ``log_prob(z)`` -> (n,) (here always a
``gens.targets`` Target), ``state_dict()`` -> tensors and plain types only (checkpoints are loaded with
``weights_only=True``; no sklearn object is pickled) and ``from_state(state)``, which rebuilds a fitted
sampler without refitting. A new sampler is one subclass of ``LatentSampler`` added to ``SAMPLERS``.

Module-level helpers, for estimators and the CLI alike: ``fit_samplers(Z, names, random_state)``,
``samplers_state(samplers)`` / ``samplers_from_state(state)`` (a checkpoint's "samplers" entry),
``latent_distribution(module, samplers, name)`` and ``decode_draws(module, samplers, name, n, generator)``
(draws decoded; "analytic" is exactly ``module.sample``). ``gens train`` stores the fitted samplers in the run's
checkpoints under "samplers" (``gens.runs.store_samplers``); ``gens sample RUN --sampler NAME`` reads them.
Importing this module imports neither torch nor scikit-learn (the CLI's ``--sampler`` choices are ``SAMPLERS``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gens._validation import check_choice, check_float, check_int, check_matrix

__all__ = [
    "DEFAULT_SAMPLERS",
    "SAMPLERS",
    "AnalyticSampler",
    "GMMSampler",
    "GaussianSampler",
    "LatentSampler",
    "decode_draws",
    "fit_samplers",
    "latent_distribution",
    "make_sampler",
    "samplers_from_state",
    "samplers_state",
]


class LatentSampler:
    """Base class: a latent density fitted to training latents. Subclasses set ``name`` and implement
    ``fit``, ``distribution``, ``state_dict`` and ``from_state``."""

    name = ""

    def fit(self, Z, random_state=None) -> LatentSampler:
        """Fit on Z: (n, l) training latents. Returns self."""
        raise NotImplementedError

    def distribution(self, module):
        """The fitted density: ``sample(n, generator=None, dtype=...)`` and ``log_prob(z)``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Tensors and plain types that ``from_state`` turns back into this fitted sampler."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> LatentSampler:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AnalyticSampler(LatentSampler):
    """The method's own latent distribution, ``module.latent_distribution()``: nothing to fit or store."""

    name = "analytic"

    def fit(self, Z, random_state=None) -> AnalyticSampler:
        return self

    def distribution(self, module):
        return module.latent_distribution()

    def state_dict(self) -> dict:
        return {}

    @classmethod
    def from_state(cls, state: dict) -> AnalyticSampler:
        return cls()


class _MixtureSampler(LatentSampler):
    """A sampler whose fitted density is a ``gens.targets.GaussianMixture`` (means, covs, weights)."""

    def __init__(self):
        self.target_ = None

    def distribution(self, module):
        if self.target_ is None:
            raise ValueError(f"sampler: {self.name!r} is not fitted; call fit(Z) first")
        return self.target_

    def _set(self, means, covs, weights) -> None:
        import torch

        from gens.targets import GaussianMixture

        covs = torch.as_tensor(covs, dtype=torch.float64)
        covs = 0.5 * (covs + covs.transpose(1, 2))  # exactly symmetric, as GaussianMixture requires
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.target_ = GaussianMixture(means, covs, weights / weights.sum())

    def state_dict(self) -> dict:
        t = self.distribution(None)
        return {"means": t.means.clone(), "covs": t.covs.clone(), "weights": t.weights.clone()}

    @classmethod
    def from_state(cls, state: dict) -> _MixtureSampler:
        sampler = cls()
        sampler._set(state["means"], state["covs"], state["weights"])
        return sampler


class GaussianSampler(_MixtureSampler):
    """N(mean, cov) fitted to the latents: mean = Z.mean(0), cov = (Z - mean)^T (Z - mean) / n + reg_covar I."""

    name = "gaussian"

    def __init__(self, reg_covar: float = 1e-6):
        super().__init__()
        self.reg_covar = check_float("reg_covar", reg_covar, minimum=0.0)

    def fit(self, Z, random_state=None) -> GaussianSampler:
        Z = _check_latents(Z)
        mean = Z.mean(0)
        d = Z - mean
        cov = d.T @ d / len(Z) + self.reg_covar * np.eye(Z.shape[1])
        self._set(mean[None], cov[None], np.ones(1))
        return self


class GMMSampler(_MixtureSampler):
    """``sklearn.mixture.GaussianMixture(n_components, covariance_type="full", reg_covar, random_state)``
    fitted to the latents (``n_components`` capped at the number of latents); only its means,
    covariances and weights are kept."""

    name = "gmm"

    def __init__(self, n_components: int = 10, reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1):
        super().__init__()
        self.n_components = check_int("n_components", n_components, minimum=1)
        self.reg_covar = check_float("reg_covar", reg_covar, minimum=0.0)
        self.max_iter = check_int("max_iter", max_iter, minimum=1)
        self.n_init = check_int("n_init", n_init, minimum=1)

    def fit(self, Z, random_state=None) -> GMMSampler:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        Z = _check_latents(Z)
        k = min(self.n_components, len(Z))
        gm = GaussianMixture(k, covariance_type="full", reg_covar=self.reg_covar, max_iter=self.max_iter,
                             n_init=self.n_init, random_state=random_state)
        with warnings.catch_warnings():
            # tiny or duplicated latent sets: fewer distinct points than components, or slow EM
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            gm.fit(Z)
        self._set(gm.means_, gm.covariances_, gm.weights_)
        return self


SAMPLERS: dict[str, type[LatentSampler]] = {c.name: c for c in (AnalyticSampler, GaussianSampler, GMMSampler)}
DEFAULT_SAMPLERS = tuple(SAMPLERS)  # fitted at the end of every estimator's fit


def _check_latents(Z) -> np.ndarray:
    Z = np.asarray(Z.detach().cpu() if hasattr(Z, "detach") else Z, dtype=np.float64)  # a torch tensor
    check_matrix("Z", Z, min_rows=1)
    return Z


def make_sampler(name: str, **options) -> LatentSampler:
    """An unfitted sampler by registry name ("analytic", "gaussian", "gmm"); options go to its class."""
    check_choice("sampler", name, SAMPLERS)
    return SAMPLERS[name](**options)


def fit_samplers(Z, names: Iterable[str] = DEFAULT_SAMPLERS, random_state=None) -> dict[str, LatentSampler]:
    """Fit every named sampler on the training latents Z: (n, l). Returns {name: fitted sampler}."""
    return {name: make_sampler(name).fit(Z, random_state=random_state) for name in names}


def samplers_state(samplers: dict[str, LatentSampler]) -> dict:
    """{name: state_dict}: tensors and plain types only, for a weights-only checkpoint."""
    return {name: s.state_dict() for name, s in samplers.items()}


def samplers_from_state(state: dict | None) -> dict[str, LatentSampler]:
    """Rebuild fitted samplers from ``samplers_state`` output (no refit); "analytic" is always present.
    Names no longer in ``SAMPLERS`` are skipped."""
    out = {"analytic": AnalyticSampler()}
    for name, s in (state or {}).items():
        if name in SAMPLERS:
            out[name] = SAMPLERS[name].from_state(s)
    return out


def latent_distribution(module, samplers: dict[str, LatentSampler], name: str = "analytic"):
    """The latent density named ``name`` for ``module``: "analytic" is always available, the others
    only once fitted (a ValueError says which are)."""
    check_choice("sampler", name, SAMPLERS)
    if name == "analytic":
        return module.latent_distribution()
    if name not in samplers:
        raise ValueError(f"sampler: {name!r} was not fitted for this model (fitted: {', '.join(sorted(samplers))}); "
                         f"a model saved before samplers existed has only 'analytic'")
    return samplers[name].distribution(module)


def decode_draws(module, samplers: dict[str, LatentSampler], name: str, n: int, generator=None):
    """n latents drawn from the density ``name`` (``latent_distribution``) and decoded without gradients:
    (n, *data_shape) on the module's device and dtype. "analytic" is ``module.sample(n, generator)`` itself,
    so its draws are those of ``gens sample`` before samplers existed."""
    import torch

    n = check_int("n", n, minimum=0)
    if name == "analytic":
        return module.sample(n, generator=generator)
    dist = latent_distribution(module, samplers, name)
    p = next(module.parameters())
    with torch.no_grad():
        z = dist.sample(n, generator=generator)
        return module.decode(z.to(device=p.device, dtype=p.dtype))

"""Analytic target distributions p_t for the latent space.

Every target is a mixture of Gaussians (a single Gaussian is a mixture with K = 1). Parameters are
held as float64 tensors on the CPU; ``log_prob`` casts them to the dtype and device of its input, so
it is differentiable with respect to ``z`` in float32 or float64 on any device.

    >>> t = StandardNormal(8)
    >>> z = t.sample(100, torch.Generator().manual_seed(0))   # (100, 8) float32
    >>> t.log_prob(z).shape
    torch.Size([100])
"""

from __future__ import annotations

import abc
import hashlib
import json
import math

import torch

from gens._validation import check_finite, check_float, check_int

__all__ = [
    "Target",
    "GaussianMixture",
    "Gaussian",
    "StandardNormal",
    "mixture_on_simplex",
    "parse_target",
    "target_from_spec",
    "target_from_text",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _as_f64(name, x, ndim):
    x = torch.as_tensor(x, dtype=torch.float64).detach().cpu().clone()
    if x.dim() != ndim:
        raise ValueError(f"{name}: must be a {ndim}-D array, got shape {tuple(x.shape)}")
    check_finite(name, x)
    return x


class Target(abc.ABC):
    """Interface of a target p_t: ``dim``, ``n_components``, ``component_log_prob``, ``log_prob``,
    ``sample``, ``shrink``, ``spec``, ``cache_key``."""

    dim: int
    n_components: int

    @abc.abstractmethod
    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log p_k(z). z: (n, l) -> (n, K)."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """n draws: (n, l)."""

    @abc.abstractmethod
    def shrink(self, h: float) -> "Target":
        """The target whose convolution with G_h is this target (Sec. 4)."""

    @abc.abstractmethod
    def spec(self) -> dict:
        """JSON-able description accepted by ``target_from_spec``."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_t(z). z: (n, l) -> (n,), differentiable w.r.t. z."""
        return torch.logsumexp(self.component_log_prob(z), dim=1)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Posterior p(k | z). z: (n, l) -> (n, K), rows sum to 1."""
        return torch.softmax(self.component_log_prob(z), dim=1)

    def cache_key(self) -> str:
        """Short string that identifies the target (used as a cache key)."""
        spec = self.spec()
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        return f"{spec['type']}-l{self.dim}-k{self.n_components}-{digest}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, n_components={self.n_components})"


class GaussianMixture(Target):
    """p_t(z) = sum_k w_k N(z; mu_k, Sigma_k).

    means: (K, l); covs: (K, l, l) symmetric positive definite, or None for identity covariances;
    weights: (K,) positive, summing to 1, or None for uniform weights.
    """

    def __init__(self, means, covs=None, weights=None):
        means = _as_f64("means", means, 2)
        k, dim = means.shape
        if k < 1 or dim < 1:
            raise ValueError(f"means: must have shape (K, l) with K >= 1 and l >= 1, got {tuple(means.shape)}")
        if covs is None:
            covs = torch.eye(dim, dtype=torch.float64).expand(k, dim, dim).clone()
        covs = _as_f64("covs", covs, 3)
        if covs.shape != (k, dim, dim):
            raise ValueError(f"covs: must have shape (K, l, l) = {(k, dim, dim)} to match means, got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(1, 2), rtol=1e-8, atol=1e-10):
            raise ValueError("covs: every covariance must be symmetric")
        chol, info = torch.linalg.cholesky_ex(covs)
        if bool((info != 0).any()):
            bad = int(torch.nonzero(info)[0])
            raise ValueError(f"covs: every covariance must be positive definite; component {bad} is not")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = _as_f64("weights", weights, 1)
        if weights.shape != (k,):
            raise ValueError(f"weights: must have shape (K,) = ({k},) to match means, got {tuple(weights.shape)}")
        if bool((weights <= 0).any()) or abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights: must be positive and sum to 1, got {weights.tolist()}")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self._chol = chol
        self._log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(-1)  # (K,)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _check_z(self, z):
        if not isinstance(z, torch.Tensor):
            z = torch.as_tensor(z, dtype=torch.float64)
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z: must have shape (n, {self.dim}), got {tuple(z.shape)}")
        if not z.is_floating_point():
            z = z.to(torch.get_default_dtype())
        return z

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(z; mu_k, Sigma_k). z: (n, l) -> (n, K), in z's dtype, differentiable."""
        z = self._check_z(z)
        mu = self.means.to(z)
        chol = self._chol.to(z)
        diff = (z.unsqueeze(0) - mu.unsqueeze(1)).transpose(1, 2)  # (K, l, n)
        y = torch.linalg.solve_triangular(chol, diff, upper=False)  # (K, l, n)
        maha = (y * y).sum(1).T  # (n, K)
        const = torch.log(self.weights) - 0.5 * self._log_det - 0.5 * self.dim * _LOG_2PI
        return -0.5 * maha + const.to(z)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
        """n draws from p_t: (n, l) in ``dtype`` on ``device`` (drawn in float64 on the CPU)."""
        n = check_int("n", n, minimum=0)
        if self.n_components > 1 and n > 0:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            k = torch.zeros(n, dtype=torch.long)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        z = self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], eps)
        return z.to(dtype=dtype, device=device)

    def shrink(self, h: float) -> "Target":
        """The Sec. 4 generator: every covariance minus h^2 I (so that q * G_h = p_t)."""
        h = check_float("h", h, minimum=0.0, min_inclusive=False)
        covs = self.covs - h * h * torch.eye(self.dim, dtype=torch.float64)
        if bool((torch.linalg.eigvalsh(covs)[:, 0] <= 0).any()):
            raise ValueError(
                f"h: must satisfy h^2 < the smallest covariance eigenvalue "
                f"({float(torch.linalg.eigvalsh(self.covs)[:, 0].min()):.4g}) so the shrunk covariance is positive "
                f"definite, got h={h:g}"
            )
        if self.n_components == 1:
            return Gaussian(self.means[0], covs[0])
        return GaussianMixture(self.means, covs, self.weights)

    def spec(self) -> dict:
        """JSON-able description; ``target_from_spec(t.spec())`` rebuilds the target."""
        return {"type": "mixture", "means": self.means.tolist(), "covs": self.covs.tolist(),
                "weights": self.weights.tolist()}



class Gaussian(GaussianMixture):
    """N(mean, cov). mean: (l,); cov: (l, l) symmetric positive definite."""

    def __init__(self, mean, cov):
        mean = _as_f64("mean", mean, 1)
        cov = _as_f64("cov", cov, 2)
        if cov.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(f"cov: must have shape (l, l) = {(mean.shape[0],) * 2} to match mean, got {tuple(cov.shape)}")
        try:
            super().__init__(mean[None], cov[None], None)
        except ValueError as err:
            raise ValueError(str(err).replace("covs:", "cov:", 1).replace("means:", "mean:", 1)) from None

    def spec(self) -> dict:
        return {"type": "gaussian", "mean": self.means[0].tolist(), "cov": self.covs[0].tolist()}


class StandardNormal(Gaussian):
    """N(0, I_l)."""

    def __init__(self, dim: int):
        dim = check_int("dim", dim, minimum=1)
        super().__init__(torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z = self._check_z(z)
        return (-0.5 * (z * z).sum(1, keepdim=True)) - 0.5 * self.dim * _LOG_2PI

    def spec(self) -> dict:
        return {"type": "standard_normal", "dim": self.dim}

    def cache_key(self) -> str:
        return f"standard_normal-l{self.dim}"

    def __repr__(self) -> str:
        return f"StandardNormal({self.dim})"


def mixture_on_simplex(n_components: int, dim: int, scale: float = 6.0, weights=None) -> GaussianMixture:
    """K unit-covariance modes, every pair of means at least ``scale`` apart.

    Means: on a circle in 2-D (or if K > 2 l); at the vertices of a regular simplex centred at 0 when
    K <= l + 1; otherwise at the vertices +-e_i of the cross-polytope (K <= 2 l). The means are then
    scaled so that the smallest distance between two of them is ``scale``.
    """
    k = check_int("n_components", n_components, minimum=1)
    dim = check_int("dim", dim, minimum=1)
    scale = check_float("scale", scale, minimum=0.0, min_inclusive=False)
    if k == 1:
        means = torch.zeros(1, dim, dtype=torch.float64)
    elif dim == 1:
        if k > 2:
            raise ValueError(f"n_components: must be <= 2 for dim=1, got {k}")
        means = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    elif dim == 2 or k > 2 * dim:
        angle = 2.0 * math.pi * torch.arange(k, dtype=torch.float64) / k
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = torch.cos(angle), torch.sin(angle)
    elif k <= dim + 1:
        basis = torch.eye(k, dtype=torch.float64) - 1.0 / k  # simplex in the hyperplane sum = 0 of R^k
        q, _ = torch.linalg.qr(basis.T)  # orthonormal basis of its span (rank k - 1)
        coords = basis @ q[:, : k - 1]  # (k, k-1)
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, : k - 1] = coords
    else:
        eye = torch.eye(dim, dtype=torch.float64)
        means = torch.cat([eye, -eye])[:k]
    gaps = torch.cdist(means, means) + torch.diag(torch.full((k,), math.inf, dtype=torch.float64))
    if k > 1:
        means = means * (scale / gaps.min())
    return GaussianMixture(means, None, weights)


def target_from_spec(spec: dict) -> GaussianMixture:
    """Rebuild a target from ``Target.spec()``; also accepts the short forms used on the command line."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"spec: must be a dict with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind == "standard_normal":
        return StandardNormal(spec["dim"])
    if kind == "gaussian":
        return Gaussian(spec["mean"], spec["cov"])
    if kind == "mixture":
        return GaussianMixture(spec["means"], spec.get("covs"), spec.get("weights"))
    if kind == "mixture_on_simplex":
        return mixture_on_simplex(spec["n_components"], spec["dim"], spec.get("scale", 6.0))
    raise ValueError(
        f"spec: 'type' must be one of 'standard_normal', 'gaussian', 'mixture', 'mixture_on_simplex'; got {kind!r}"
    )


# ---------------------------------------------------------------------------- the command-line grammar

NORMAL_NAMES = ("normal", "standard_normal", "n", "n01")  # spellings of N(0, I_l)
GRAMMAR = "'normal', 'mog:K' or 'mog:K:SCALE' (K >= 1 modes, SCALE > 0)"


def parse_target(text: str | None, dim: int) -> dict | None:
    """The target grammar of ``gens train --target``, ``gens bandwidth --target`` and the estimators'
    ``target=``: ``"normal"`` -> N(0, I_dim); ``"mog:K"`` or ``"mog:K:SCALE"`` -> K unit-covariance modes whose
    means are at least SCALE (default 6) apart (``mixture_on_simplex``). Returns the spec dict
    (``target_from_spec``); None -> None. Torch is not needed to parse (only this module's import needs it)."""
    if text is None:
        return None
    word = str(text).strip().lower()
    if word in NORMAL_NAMES:
        return {"type": "standard_normal", "dim": int(dim)}
    parts = word.split(":")
    if parts[0] == "mog" and len(parts) in (2, 3):
        try:
            k = int(parts[1])
            scale = float(parts[2]) if len(parts) == 3 else 6.0
        except ValueError:
            k, scale = 0, 0.0
        if k >= 1 and scale > 0 and math.isfinite(scale):
            return {"type": "mixture_on_simplex", "n_components": k, "dim": int(dim), "scale": scale}
    raise ValueError(f"target: must be {GRAMMAR}, got {text!r}")


def target_from_text(text: str, dim: int) -> GaussianMixture:
    """``parse_target``'s grammar, or the path of a JSON file holding a target spec, -> a target of dimension
    ``dim``."""
    from pathlib import Path

    try:
        return target_from_spec(parse_target(text, dim))
    except ValueError:
        if not Path(text).is_file():
            raise ValueError(f"target: must be {GRAMMAR} or a JSON spec file, got {text!r}") from None
    target = target_from_spec(json.loads(Path(text).read_text()))
    if target.dim != dim:
        raise ValueError(f"target: the spec in {text} has dim {target.dim}, but the latent dimension is {dim}")
    return target

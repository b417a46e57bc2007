"""Novelty detection by the density an autoencoder assigns in data space (paper Sec. 5.5, eqs. 10-11).

An encoder E: R^d -> R^l and a decoder D: R^l -> R^d span an l-dimensional manifold {D(z)} in data
space. For a point x with code z' = E(x) and reconstruction x' = D(z') the paper writes

    p(x) = p(z') |det dx'/dz'|^-1 N(x; x', sigma^2 I)                                   (eq. 10)

p(z') |det dx'/dz'|^-1 is the in-manifold density (the latent density pushed through the decoder),
N(x; x', sigma^2 I) the off-manifold density, with sigma^2 fitted to training reconstruction residuals.
dx'/dz' is the d x l decoder Jacobian A, which has no determinant; eq. 11 uses the first fundamental
form B = A^T A (l x l) and |det A| := sqrt(|det B|), so

    log p(x) = log p(z') - 1/2 log det(A^T A) + log N(x; x', sigma^2 I).

The novelty score is -log p(x) (higher = more novel). A has only l columns, so it is computed in forward
mode: l Jacobian-vector products (torch.func.jvp, vmapped over the l basis tangents), against d
vector-Jacobian products in reverse mode.

Note on the constant: N(x; x', sigma^2 I) is a d-dimensional density, although the residual of an
exact projection lies in the d - l normal directions only. For a linear-Gaussian model (x = A z + noise)
eq. 10 therefore equals the exact log-density minus (l/2) log(2 pi sigma^2), up to O(sigma^2) terms
(tests/test_novelty.py checks this). The offset is the same for every x, so rankings and AUROC are
unaffected.

Networks must be in eval mode (no dropout, BatchNorm on running statistics): every sample's Jacobian
must not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from gens._validation import check_float, check_int

__all__ = [
    "DataSpaceDensity",
    "decoder_jacobian",
    "decoder_log_det",
    "fit_noise_variance",
    "novelty_log_prob",
    "reconstruction_residuals",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _flat(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a decoder (n, l) -> (n, *data_shape) as (n, l) -> (n, d)."""
    return lambda z: fn(z).reshape(z.shape[0], -1)


def _jvp_chunk(flat_decoder, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output and Jacobian for one chunk, by l forward-mode JVPs.

    z: (c, l) -> (x': (c, d), J: (c, d, l)) with J[i, :, j] = d x'_i / d z_ij.
    """
    c, l = z.shape
    # tangent j moves every sample's j-th coordinate: (l, c, l)
    tangents = torch.eye(l, dtype=z.dtype, device=z.device).unsqueeze(1).expand(l, c, l)
    out, jac = torch.func.vmap(lambda t: torch.func.jvp(flat_decoder, (z,), (t,)))(tangents)
    return out[0], jac.permute(1, 2, 0)


def _chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _check_z(z) -> torch.Tensor:
    z = torch.as_tensor(z)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"z: must be a 2-D tensor of shape (n, l) with n, l >= 1, got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"z: must be a floating-point tensor, got dtype {z.dtype}")
    return z


def decoder_jacobian(decoder: Callable, z, chunk_size: int = 512) -> torch.Tensor:
    """Decoder Jacobian dx'/dz' at each code, in forward mode (the A of eq. 11).

    decoder: callable (n, l) -> (n, *data_shape), e.g. ``method.decode``; each output row must depend
    only on its own input row (eval mode). z: (n, l), in the decoder's dtype.
    Returns J: (n, d, l) in z's dtype, d = prod(data_shape). Memory is bounded by ``chunk_size``
    samples at a time (about l * chunk_size * (d + hidden widths) numbers).
    """
    z = _check_z(z)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    flat = _flat(decoder)
    with torch.no_grad():
        return torch.cat([_jvp_chunk(flat, z[s])[1] for s in _chunks(len(z), chunk_size)])


def _half_log_det_gram(jac: torch.Tensor) -> torch.Tensor:
    """1/2 log det(J^T J) per sample (eq. 11), in float64. jac: (n, d, l) -> (n,).

    Cholesky of the l x l Gram matrix; samples where it fails (numerically singular) fall back to
    slogdet, which gives -inf for an exactly singular Jacobian.
    """
    jac = jac.to(torch.float64)
    gram = jac.mT @ jac  # (n, l, l), the first fundamental form B
    chol, info = torch.linalg.cholesky_ex(gram)
    half = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    bad = info != 0
    if bool(bad.any()):
        half[bad] = 0.5 * torch.linalg.slogdet(gram[bad]).logabsdet
    return half


def decoder_log_det(decoder: Callable, z, chunk_size: int = 512) -> torch.Tensor:
    """Log volume factor of the decoder, 1/2 log det(J^T J) with J = dx'/dz' (eqs. 10-11).

    log |det dx'/dz'| := 1/2 log |det B|, B = J^T J the first fundamental form (eq. 11).
    decoder: callable (n, l) -> (n, *data_shape); z: (n, l). Returns (n,) float64.
    J is formed chunk by chunk in the decoder's dtype; the l x l Gram matrix is in float64.
    """
    z = _check_z(z)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    flat = _flat(decoder)
    with torch.no_grad():
        return torch.cat([_half_log_det_gram(_jvp_chunk(flat, z[s])[1]) for s in _chunks(len(z), chunk_size)])


def reconstruction_residuals(encoder: Callable, decoder: Callable, x, chunk_size: int = 512) -> torch.Tensor:
    """x - D(E(x)), flattened. x: (n, *data_shape) -> (n, d)."""
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    x = _as_data(x)
    with torch.no_grad():
        return torch.cat([(x[s].reshape(len(x[s]), -1) - decoder(encoder(x[s])).reshape(len(x[s]), -1))
                          for s in _chunks(len(x), chunk_size)])


def fit_noise_variance(residuals, per_pixel: bool = False, min_variance: float = 1e-6):
    """Maximum-likelihood variance of the off-manifold noise N(x; x', sigma^2 I) of eq. 10.

    residuals: (n, d) (or (n, *data_shape)) training residuals x - D(E(x)).
    per_pixel=False (eq. 10's isotropic sigma^2 I): returns the float sigma^2 = mean of r^2 over all
    samples and pixels. per_pixel=True (a diagonal covariance, beyond the paper): returns a (d,) float64
    tensor, the mean of r^2 over samples for each pixel. Both are floored at ``min_variance`` (pixels that
    are constant in training, like MNIST's border, would otherwise get zero variance).
    """
    min_variance = check_float("min_variance", min_variance, 0.0, min_inclusive=False)
    r = torch.as_tensor(residuals).to(torch.float64)
    if r.ndim < 2 or r.shape[0] < 1:
        raise ValueError(f"residuals: must have shape (n, d) with n >= 1, got shape {tuple(r.shape)}")
    r = r.reshape(r.shape[0], -1)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("residuals: must hold only finite values")
    if per_pixel:
        return r.pow(2).mean(0).clamp_min(min_variance)
    return max(float(r.pow(2).mean()), min_variance)


def _as_data(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x: must have shape (n, *data_shape) with n >= 1, got shape {tuple(x.shape)}")
    return x


def novelty_log_prob(encoder: Callable, decoder: Callable, latent_log_prob: Callable, x, sigma2,
                     chunk_size: int = 512) -> dict[str, np.ndarray]:
    """Data-space log-density of eq. 10 and its parts, for each row of x.

    log p(x) = log p(z') - 1/2 log det(J^T J) + log N(x; x', sigma^2 I), z' = E(x), x' = D(z'),
    J = dx'/dz' (d x l, eq. 11).

    encoder: (n, *data_shape) -> (n, l); decoder: (n, l) -> (n, *data_shape); latent_log_prob:
    (n, l) -> (n,), the latent density p(z') (e.g. ``method.latent_distribution().log_prob``).
    x: (n, *data_shape) in the networks' dtype and device. sigma2: float, or a (d,) per-pixel variance
    (see fit_noise_variance).
    Returns float64 numpy arrays of shape (n,): ``log_px`` (eq. 10), ``log_pz``, ``log_det``
    (1/2 log det J^T J), ``log_noise`` (log N(x; x', sigma^2 I)), ``recon_error`` (per-pixel MSE),
    and ``score`` = -log_px (the novelty score, higher = more novel).
    """
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    x = _as_data(x)
    d = x[0].numel()
    sigma2 = _check_sigma2(sigma2, d).to(x.device)
    flat = _flat(decoder)
    parts = {k: [] for k in ("log_pz", "log_det", "log_noise", "recon_error")}
    with torch.no_grad():
        for s in _chunks(len(x), chunk_size):
            xc = x[s].reshape(len(x[s]), -1)
            z = encoder(x[s])
            recon, jac = _jvp_chunk(flat, z)
            if recon.shape != xc.shape:
                raise ValueError(f"decoder: output of {tuple(recon.shape[1:])} values per sample does not "
                                 f"match x's {tuple(xc.shape[1:])}")
            r2 = (xc - recon).to(torch.float64).pow(2)
            log_noise = -0.5 * (r2 / sigma2).sum(1) - 0.5 * (torch.log(sigma2) + _LOG_2PI).sum()
            parts["log_pz"].append(torch.as_tensor(latent_log_prob(z)).to(torch.float64).reshape(-1))
            parts["log_det"].append(_half_log_det_gram(jac))
            parts["log_noise"].append(log_noise)
            parts["recon_error"].append(r2.mean(1))
    out = {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}
    out["log_px"] = out["log_pz"] - out["log_det"] + out["log_noise"]
    out["score"] = -out["log_px"]
    return out


def _check_sigma2(sigma2, d: int) -> torch.Tensor:
    """sigma2 as a float64 (d,) tensor: a float is broadcast, a (d,) array is checked."""
    if isinstance(sigma2, (torch.Tensor, np.ndarray)) and np.ndim(sigma2) > 0:
        s2 = torch.as_tensor(sigma2, dtype=torch.float64).reshape(-1)
        if s2.numel() != d:
            raise ValueError(f"sigma2: a per-pixel variance must have {d} entries, got {s2.numel()}")
        if not bool(torch.isfinite(s2).all()) or bool((s2 <= 0).any()):
            raise ValueError("sigma2: a per-pixel variance must be finite and > 0 everywhere")
        return s2
    return torch.full((d,), check_float("sigma2", sigma2, 0.0, min_inclusive=False), dtype=torch.float64)


class DataSpaceDensity:
    """scikit-learn style novelty scorer over a trained encoder/decoder (eq. 10).

    ``fit(X_train)`` fits sigma^2 to the training residuals; ``score_samples(X)`` returns log p(x)
    (higher = more typical, as in sklearn's KernelDensity); ``score_parts(X)`` returns every term.

    encoder, decoder, latent_log_prob: callables as in novelty_log_prob. Modules (or bound methods of
    modules) are switched to eval mode.
    """

    def __init__(self, encoder: Callable, decoder: Callable, latent_log_prob: Callable, *,
                 per_pixel: bool = False, chunk_size: int = 512):
        self.encoder, self.decoder, self.latent_log_prob = encoder, decoder, latent_log_prob
        self.per_pixel = bool(per_pixel)
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)

    def _eval(self):
        for fn in (self.encoder, self.decoder):
            module = getattr(fn, "__self__", fn)
            if isinstance(module, torch.nn.Module):
                module.eval()

    def fit(self, X) -> DataSpaceDensity:
        """X: (n, *data_shape) training data. Sets ``sigma2_``."""
        self._eval()
        residuals = reconstruction_residuals(self.encoder, self.decoder, X, self.chunk_size)
        self.sigma2_ = fit_noise_variance(residuals, per_pixel=self.per_pixel)
        return self

    def score_parts(self, X) -> dict[str, np.ndarray]:
        """Every term of eq. 10 for X: (n, *data_shape); see novelty_log_prob."""
        if not hasattr(self, "sigma2_"):
            raise ValueError("DataSpaceDensity: call fit(X_train) before scoring")
        self._eval()
        return novelty_log_prob(self.encoder, self.decoder, self.latent_log_prob, X, self.sigma2_,
                                self.chunk_size)

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of eq. 10, (n,) float64."""
        return self.score_parts(X)["log_px"]


_ONE_CLASS = ("ONE_CLASS_PARTS", "one_class_estimator", "one_class_protocol", "one_class_scores")


def __getattr__(name: str):
    """The one-class protocols live in ``gens.evaluation.one_class`` (imported here on first use)."""
    if name in _ONE_CLASS:
        from gens.evaluation import one_class

        return getattr(one_class, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "ONE_CLASS_PARTS",
    "DataSpaceDensity",
    "decoder_jacobian",
    "decoder_log_det",
    "fit_noise_variance",
    "novelty_log_prob",
    "one_class_estimator",
    "one_class_protocol",
    "one_class_scores",
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


def one_class_protocol(data_source, digit: int, method: str = "gen", epochs: int = 12, *, latent_dim: int = 8,
                       train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
                       chunk_size: int = 512, device: str | None = None, trainer_kwargs: dict | None = None,
                       **module_kwargs) -> dict:
    """One-class novelty detection (the protocol of Deep SVDD and OCGAN, applied to eq. 10).

    Train ``method`` on the training images of class ``digit`` only, fit the noise variance on their
    residuals, score the whole test split and compute the AUROC (novel = any other class, positive) of
    five scores from the same model: ``eq10`` (-log p(x), eq. 10 with sigma^2 I), ``eq10_pixel`` (eq. 10
    with per-pixel variances, beyond the paper), ``recon`` (reconstruction MSE), ``latent`` (-log p(z'),
    the latent density alone) and ``manifold`` (-[log p(z') - 1/2 log det J^T J], the in-manifold
    density of eq. 10 without the off-manifold term).

    data_source: a labelled source for ``gens.data.load_dataset`` ("mnist:DIR", "digits", ...).
    train_limit / test_limit: use only the first N images of each split (before selecting the class).
    device: where to score ("cuda", "cpu"; default: cuda when available). module_kwargs go to the
    method's module (lam, bank_size, hidden, ...); trainer_kwargs to ``lightning.Trainer``.
    Returns a dict: ``digit``, ``method``, ``n_train``, ``n_test``, ``sigma2``, ``auroc`` (score name ->
    float), ``parts`` (novelty_log_prob's arrays), ``labels`` (test labels), ``train_seconds``,
    ``score_seconds``.
    """
    import time

    from sklearn.metrics import roc_auc_score

    from gens.data import load_dataset
    from gens.training import train

    digit = check_int("digit", digit, minimum=0)
    x_train, y_train = load_dataset(data_source, "train", limit=train_limit)
    x_test, y_test = load_dataset(data_source, "test", limit=test_limit)
    if y_train is None or y_test is None:
        raise ValueError(f"data_source: {data_source!r} has no labels; the one-class protocol needs them")
    inliers = x_train[y_train == digit]
    if len(inliers) < 2 or not (y_test == digit).any() or (y_test == digit).all():
        raise ValueError(f"digit: class {digit} must have >= 2 training images and the test split must hold it "
                         f"and other classes; classes present: {sorted(set(y_train.tolist()))}")
    kw = {"enable_progress_bar": False, **(trainer_kwargs or {})}
    start = time.perf_counter()
    module, _ = train(method, inliers, latent_dim=latent_dim, max_epochs=epochs, seed=seed, trainer_kwargs=kw,
                      **module_kwargs)
    train_seconds = time.perf_counter() - start
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = module.to(device).eval()
    start = time.perf_counter()
    x_fit, x_test_t = torch.as_tensor(inliers, device=device), torch.as_tensor(x_test, device=device)
    residuals = reconstruction_residuals(module.encode, module.decode, x_fit, chunk_size)
    sigma2 = fit_noise_variance(residuals)
    parts = novelty_log_prob(module.encode, module.decode, module.latent_distribution().log_prob, x_test_t,
                             sigma2, chunk_size)
    # the same model with a diagonal noise covariance: only the off-manifold term changes
    var = fit_noise_variance(residuals, per_pixel=True)
    r2 = reconstruction_residuals(module.encode, module.decode, x_test_t, chunk_size).double().pow(2)
    log_noise_pixel = (-0.5 * (r2 / var.to(r2)).sum(1) - 0.5 * torch.log(2 * math.pi * var).sum()).cpu().numpy()
    score_seconds = time.perf_counter() - start
    novel = (y_test != digit).astype(int)
    scores = {"eq10": parts["score"], "eq10_pixel": -(parts["log_pz"] - parts["log_det"] + log_noise_pixel),
              "recon": parts["recon_error"], "latent": -parts["log_pz"],
              "manifold": parts["log_det"] - parts["log_pz"]}
    return {"digit": digit, "method": method, "n_train": len(inliers), "n_test": len(x_test),
            "sigma2": sigma2, "auroc": {k: float(roc_auc_score(novel, v)) for k, v in scores.items()},
            "parts": parts, "labels": y_test, "train_seconds": train_seconds, "score_seconds": score_seconds}


# ------------------------------------------------------------------------ one-class through the estimator API

ONE_CLASS_PARTS = ("log_px", "in_manifold", "reconstruction")  # score_parts keys the estimator protocol ranks by


def one_class_scores(estimator, x_inliers, x_test, is_inlier, sampler: str = "analytic",
                     chunk_size: int = 512) -> dict:
    """Fit ``estimator`` (``gens.GEN(...)`` or any object with ``fit(X)`` and ``score_parts(X, sampler,
    chunk_size)``) on the inlier class ``x_inliers`` alone and rank ``x_test`` by eq. 10 through
    ``score_parts``: ``log_px`` (log p(x)), ``in_manifold`` (log p(z') - 1/2 log det J^T J) and
    ``reconstruction`` (log N(x; x', sigma^2 I)), each higher = more typical (scikit-learn's sign).

    ``is_inlier``: (n_test,) booleans, True for the inlier class. AUROC per part with the inliers as the
    positives and the part as the score (``sklearn.metrics.roc_auc_score(is_inlier, part)``); the same number
    as the AUROC of novel = positive against the novelty score -part. Returns a dict: ``auroc`` (part ->
    float), ``scores`` (part -> (n_test,) float64), ``parts`` (every ``score_parts`` array), ``estimator``
    (fitted), ``train_seconds``, ``score_seconds``."""
    import time

    from sklearn.metrics import roc_auc_score

    is_inlier = np.asarray(is_inlier).astype(bool).reshape(-1)
    if len(is_inlier) != len(x_test):
        raise ValueError(f"is_inlier: must have one entry per test sample ({len(x_test)}), got {len(is_inlier)}")
    if is_inlier.all() or not is_inlier.any():
        raise ValueError("is_inlier: the test samples must hold both inliers and novel samples")
    start = time.perf_counter()
    estimator.fit(x_inliers)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    parts = estimator.score_parts(x_test, sampler=sampler, chunk_size=chunk_size)
    score_seconds = time.perf_counter() - start
    scores = {k: np.asarray(parts[k], dtype=np.float64) for k in ONE_CLASS_PARTS}
    bad = [k for k, v in scores.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"estimator: score_parts gave non-finite {', '.join(bad)} scores; the model did not train "
                         "to a usable density (train longer or lower lr)")
    return {"auroc": {k: float(roc_auc_score(is_inlier.astype(int), v)) for k, v in scores.items()},
            "scores": scores, "parts": parts, "estimator": estimator, "train_seconds": train_seconds,
            "score_seconds": score_seconds}


def one_class_estimator(data_source, digit: int, method: str = "gen", epochs: int = 12, *, latent_dim: int = 8,
                        train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
                        sampler: str = "analytic", chunk_size: int = 512, accelerator: str = "auto",
                        val_fraction: float = 0.1, **params) -> dict:
    """The one-class protocol of :func:`one_class_protocol` through the scikit-learn API (issue 15 item 5):
    ``gens.<METHOD>(latent_dim, max_epochs=epochs, random_state=seed, **params).fit(X[y == digit])``, then
    ``score_parts`` on the whole test split (:func:`one_class_scores`): AUROC of ``log_px`` (eq. 10), of its
    in-manifold part alone and of its reconstruction part alone, inliers (class ``digit``) as positives.

    Same data selection as :func:`one_class_protocol` (``train_limit`` / ``test_limit``: the first N images of
    each split, before selecting the class) and the same held-out share of the class's images
    (``val_fraction`` 0.1, as ``gens.training.train``); sigma^2 is fitted to all of them (the estimator's
    ``noise_variance_``). ``sampler``: the latent density of log p(z') ("analytic": the method's own; "gaussian",
    "gmm": the ex-post fits). ``params``: other estimator parameters (``hidden``, ``lam``, ``bandwidth``,
    ``bank_size``, ``batch_size``, ``lr``, ...); one the method lacks is a ValueError.
    Returns :func:`one_class_scores`' dict plus ``digit``, ``method``, ``sampler``, ``n_train``, ``n_test``,
    ``noise_variance``, ``labels`` (test labels) and ``is_inlier``."""
    from gens import estimators
    from gens.data import load_dataset

    classes = {"gen": estimators.GEN, "ae": estimators.AE, "vae": estimators.VAE, "aae": estimators.AAE,
               "wae": estimators.WAE}
    if method not in classes:
        raise ValueError(f"method: must be one of {', '.join(classes)}, got {method!r}")
    cls = classes[method]
    allowed = set(cls().get_params()) - {"latent_dim", "max_epochs", "random_state", "accelerator", "val_fraction"}
    for name in params:
        if name not in allowed:
            raise ValueError(f"{name}: not a parameter of {cls.__name__} (it takes {', '.join(sorted(allowed))})")
    digit = check_int("digit", digit, minimum=0)
    x_train, y_train = load_dataset(data_source, "train", limit=train_limit)
    x_test, y_test = load_dataset(data_source, "test", limit=test_limit)
    if y_train is None or y_test is None:
        raise ValueError(f"data_source: {data_source!r} has no labels; the one-class protocol needs them")
    inliers = x_train[y_train == digit]
    is_inlier = y_test == digit
    if len(inliers) < 2 or not is_inlier.any() or is_inlier.all():
        raise ValueError(f"digit: class {digit} must have >= 2 training images and the test split must hold it "
                         f"and other classes; classes present: {sorted(set(y_train.tolist()))}")
    est = cls(latent_dim=latent_dim, max_epochs=epochs, random_state=seed, accelerator=accelerator,
              val_fraction=val_fraction, **params)
    r = one_class_scores(est, inliers, x_test, is_inlier, sampler=sampler, chunk_size=chunk_size)
    return {**r, "digit": digit, "method": method, "sampler": sampler, "n_train": len(inliers),
            "n_test": len(x_test), "noise_variance": float(est.noise_variance_), "labels": y_test,
            "is_inlier": is_inlier}

"""One-class novelty detection with eq. 10 (the protocol of Deep SVDD and OCGAN): train on one class, score
the whole test split, AUROC of novel (any other class) against the class.

- :func:`one_class_protocol`: ``gens.training.train`` on the class, then ``gens.evaluation.novelty``'s eq. 10
  and its parts (the paper's Sec. 5.5 experiment);
- :func:`one_class_estimator` / :func:`one_class_scores`: the same through the scikit-learn API
  (``gens.GEN(...).fit(X[y == k])`` and ``score_parts``).

The budget is the training budget rule (``gens.training.budget``): ``steps`` optimiser steps, ``epochs``
epochs, both whichever ends first, neither ``gens.training.DEFAULT_STEPS``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gens._validation import check_int
from gens.evaluation.novelty import fit_noise_variance, novelty_log_prob, reconstruction_residuals

__all__ = ["ONE_CLASS_PARTS", "one_class_data", "one_class_estimator", "one_class_protocol", "one_class_scores"]


def one_class_data(data_source, digit: int, train_limit: int | None = None, test_limit: int | None = None):
    """(training images of class ``digit``, test images, test labels) of a labelled source; ``train_limit`` /
    ``test_limit``: the first N images of each split, before selecting the class."""
    from gens.data import load_dataset

    x_train, y_train = load_dataset(data_source, "train", limit=train_limit)
    x_test, y_test = load_dataset(data_source, "test", limit=test_limit)
    if y_train is None or y_test is None:
        raise ValueError(f"data_source: {data_source!r} has no labels; the one-class protocol needs them")
    inliers = x_train[y_train == digit]
    if len(inliers) < 2 or not (y_test == digit).any() or (y_test == digit).all():
        raise ValueError(f"digit: class {digit} must have >= 2 training images and the test split must hold it "
                         f"and other classes; classes present: {sorted(set(y_train.tolist()))}")
    return inliers, x_test, y_test


def one_class_protocol(data_source, digit: int, method: str = "gen", epochs: int | None = None, *,
                       steps: int | None = None, latent_dim: int = 8, train_limit: int | None = None,
                       test_limit: int | None = None, seed: int = 0, chunk_size: int = 512, device: str | None = None,
                       pixel_noise: bool = False, trainer_kwargs: dict | None = None, **module_kwargs) -> dict:
    """One-class novelty detection (the protocol of Deep SVDD and OCGAN, applied to eq. 10).

    Train ``method`` on the training images of class ``digit`` only, fit the noise variance on their
    residuals, score the whole test split and compute the AUROC (novel = any other class, positive) of
    four scores from the same model: ``eq10`` (-log p(x), eq. 10 with sigma^2 I), ``recon`` (reconstruction
    MSE), ``latent`` (-log p(z'), the latent density alone) and ``manifold`` (-[log p(z') - 1/2 log det J^T J],
    the in-manifold density of eq. 10 without the off-manifold term). Experimental, ``pixel_noise=True``: also
    ``eq10_pixel`` (eq. 10 with per-pixel variances, beyond the paper; measured worse than eq. 10 on MNIST,
    BENCHMARKS.md "Novelty").

    Budget: ``epochs`` / ``steps`` as ``gens.training.train`` takes them (neither: ``DEFAULT_STEPS`` steps).

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

    from gens.training import train

    digit = check_int("digit", digit, minimum=0)
    inliers, x_test, y_test = one_class_data(data_source, digit, train_limit, test_limit)
    kw = {"enable_progress_bar": False, **(trainer_kwargs or {})}
    start = time.perf_counter()
    module, _ = train(method, inliers, latent_dim=latent_dim, max_epochs=epochs, max_steps=steps, seed=seed,
                      trainer_kwargs=kw, **module_kwargs)
    train_seconds = time.perf_counter() - start
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = module.to(device).eval()
    start = time.perf_counter()
    x_fit, x_test_t = torch.as_tensor(inliers, device=device), torch.as_tensor(x_test, device=device)
    residuals = reconstruction_residuals(module.encode, module.decode, x_fit, chunk_size)
    sigma2 = fit_noise_variance(residuals)
    parts = novelty_log_prob(module.encode, module.decode, module.latent_distribution().log_prob, x_test_t,
                             sigma2, chunk_size)
    scores = {"eq10": parts["score"], "recon": parts["recon_error"], "latent": -parts["log_pz"],
              "manifold": parts["log_det"] - parts["log_pz"]}
    if pixel_noise:  # the same model with a diagonal noise covariance: only the off-manifold term changes
        var = fit_noise_variance(residuals, per_pixel=True)
        r2 = reconstruction_residuals(module.encode, module.decode, x_test_t, chunk_size).double().pow(2)
        log_noise = (-0.5 * (r2 / var.to(r2)).sum(1) - 0.5 * torch.log(2 * math.pi * var).sum()).cpu().numpy()
        scores = {"eq10": scores["eq10"], "eq10_pixel": -(parts["log_pz"] - parts["log_det"] + log_noise),
                  **{k: v for k, v in scores.items() if k != "eq10"}}
    score_seconds = time.perf_counter() - start
    novel = (y_test != digit).astype(int)
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


def one_class_estimator(data_source, digit: int, method: str = "gen", epochs: int | None = None, *,
                        steps: int | None = None, latent_dim: int = 8,
                        train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
                        sampler: str = "analytic", chunk_size: int = 512, accelerator: str = "auto",
                        val_fraction: float = 0.1, **params) -> dict:
    """The one-class protocol of :func:`one_class_protocol` through the scikit-learn API (issue 15 item 5):
    ``gens.<METHOD>(latent_dim, max_epochs=epochs, max_steps=steps, random_state=seed, **params).fit(X[y == digit])``,
    then
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

    classes = {"gen": estimators.GEN, "ae": estimators.AE, "vae": estimators.VAE, "aae": estimators.AAE,
               "wae": estimators.WAE}
    if method not in classes:
        raise ValueError(f"method: must be one of {', '.join(classes)}, got {method!r}")
    cls = classes[method]
    allowed = set(cls().get_params()) - {"latent_dim", "max_epochs", "max_steps", "random_state", "accelerator",
                                         "val_fraction"}
    for name in params:
        if name not in allowed:
            raise ValueError(f"{name}: not a parameter of {cls.__name__} (it takes {', '.join(sorted(allowed))})")
    digit = check_int("digit", digit, minimum=0)
    inliers, x_test, y_test = one_class_data(data_source, digit, train_limit, test_limit)
    is_inlier = y_test == digit
    est = cls(latent_dim=latent_dim, max_epochs=epochs, max_steps=steps, random_state=seed, accelerator=accelerator,
              val_fraction=val_fraction, **params)
    r = one_class_scores(est, inliers, x_test, is_inlier, sampler=sampler, chunk_size=chunk_size)
    return {**r, "digit": digit, "method": method, "sampler": sampler, "n_train": len(inliers),
            "n_test": len(x_test), "noise_variance": float(est.noise_variance_), "labels": y_test,
            "is_inlier": is_inlier}

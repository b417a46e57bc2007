"""scikit-learn style estimators: ``GEN``, ``AE``, ``VAE``, ``AAE``, ``WAE``.

    >>> from gens import GEN
    >>> gen = GEN(latent_dim=8, max_epochs=20, random_state=0).fit(X)   # X: (n, d) or (n, C, H, W)
    >>> Z = gen.transform(X)                 # (n, 8) latents, float64
    >>> X_hat = gen.inverse_transform(Z)     # decoded, shaped like X
    >>> X_new = gen.sample(16, random_state=0)        # sampler="analytic" | "gaussian" | "gmm"
    >>> log_px = gen.score_samples(X)         # (n,) eq. 10 log p(x), higher = more typical
    >>> gen.save("gen.ckpt"); gen = GEN.load("gen.ckpt")   # weights-only, nothing in the file runs

Each estimator trains the matching ``gens.methods`` LightningModule with a Lightning Trainer on the
array (no validation split unless ``val_fraction > 0``). ``__init__`` only stores parameters; they are
validated in ``fit`` (scikit-learn's rule).

Data: images (n, C, H, W) or (n, H, W) or flat (n, d). The networks' decoders end in a sigmoid, so they
model values in [0, 1]. ``scaling="auto"`` (default) leaves data already in [0, 1] untouched and maps
anything else feature-wise onto [0, 1] with the training minimum and range (undone by
``inverse_transform`` and ``sample``); ``"minmax"`` always scales; ``"none"`` requires [0, 1].

Attributes after ``fit``: ``module_`` (the trained LightningModule, CPU, eval mode), ``n_features_in_``
(pixels per sample), ``input_shape_`` (shape of one sample), ``history_`` (per-epoch means of the logged
train/* and the val/* metrics), ``fidelity_`` (``gens.fidelity.FidelityMonitor``'s records: the latents'
covariance eigenvalues and std against the predicted distribution and the whitened-entropy gap, measured on
the validation split, or on training samples without one; a ``FidelityWarning`` at the end of ``fit`` when
the latents inflated or a direction collapsed), ``seed_``; ``bandwidth_`` (GEN: the kernel bandwidth h used);
``data_min_`` / ``data_range_`` (None when not scaled).

Determinism: with an integer ``random_state`` a fit on the CPU is reproducible bit for bit (every
training step reseeds from (seed, step): ``gens.checkpoint.ResumeCallback``).

Latent models (``gens.estimator_scoring.LatentModelMixin``): ``fit`` ends by fitting the ex-post
samplers ``samplers_`` ("analytic", "gaussian", "gmm"; ``gens.samplers``) and eq. 10's noise variance
``noise_variance_`` on the training latents / residuals; ``sample(n, sampler=...)``, ``score_samples(X)``
(log p(x), eq. 10), ``score_parts(X)`` and ``score(X)`` use them. ``save`` stores both (tensors only).

scikit-learn conformance: ``sklearn.utils.estimator_checks.check_estimator`` passes for all five
estimators (tests/test_estimators.py; 46 of 47 checks run with scikit-learn 1.9.1, the 47th,
``check_array_api_input``, is skipped by scikit-learn itself unless SCIPY_ARRAY_API=1).
``EXPECTED_FAILED_CHECKS`` (passed to check_estimator by the tests) is therefore empty. Two of the
checks lean on choices made here: ``check_fit2d_1sample`` (fit needs at least 2 samples: the error says
"1 sample") and ``check_fit2d_1feature`` (latent_dim must be smaller than the number of features: the
error says "1 feature(s)"); ``check_fit_idempotent`` and ``check_transformer_general`` need the
bit-for-bit determinism described above.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager

import numpy as np
from lightning.pytorch import Callback
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from gens._validation import check_choice, check_float, check_int
from gens.estimator_scoring import LatentModelMixin

__all__ = ["GEN", "AE", "VAE", "AAE", "WAE", "SemiSupervisedGEN", "EXPECTED_FAILED_CHECKS", "load"]

FORMAT = "gens-estimator/1"

# sklearn check name -> why it does not apply; empty: every check passes (see the module docstring)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _set_params(estimator, params: dict) -> None:
    """Store every ``__init__`` argument unchanged under its own name (scikit-learn's rule: validation
    happens in ``fit``). params: the ``locals()`` of ``__init__``."""
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _GensEstimator(LatentModelMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Shared fit / transform / inverse_transform / save / load (sample, score_samples: LatentModelMixin).
    Subclasses set ``_method`` and list their parameters in ``__init__`` (scikit-learn needs explicit signatures)."""

    _method = ""
    _module_params: tuple[str, ...] = ()  # estimator parameters passed to the module under the same name

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Train on X: (n, d), (n, H, W) or (n, C, H, W). ``y`` is ignored (``SemiSupervisedGEN``: labels,
        -1 = unlabelled). Returns self."""
        import lightning as L

        from gens.checkpoint import ResumeCallback
        from gens.data import GensDataModule
        from gens.methods import build_module
        from gens.training import fidelity_monitor, standard_callbacks

        params = self._checked_params()
        X = self._validate(X, reset=True)
        n = X.shape[0]
        if self.latent_dim >= self.n_features_in_:
            raise ValueError(
                f"latent_dim: must be smaller than the number of features, got latent_dim={self.latent_dim} "
                f"for X with {self.n_features_in_} feature(s)")
        self.seed_ = int(check_random_state(self.random_state).randint(0, 2**31 - 1)) \
            if not isinstance(self.random_state, (int, np.integer)) else int(self.random_state)
        labels = self._fit_labels(y, n)
        Xs = self._scale(X, fit=True)
        kwargs = self._module_kwargs(params, n)
        L.seed_everything(self.seed_, workers=True, verbose=False)
        dm = GensDataModule(Xs.reshape(n, *self.input_shape_), batch_size=min(params["batch_size"], n),
                            val_fraction=params["val_fraction"], seed=self.seed_, y=labels)
        module = build_module(self._method, list(self.input_shape_), self.latent_dim, **kwargs)
        history = _History()
        with _quiet(not self.verbose):
            trainer = L.Trainer(
                max_epochs=params["max_epochs"], accelerator=self.accelerator, devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=bool(self.verbose),
                enable_model_summary=bool(self.verbose), num_sanity_val_steps=0,
                callbacks=[ResumeCallback(self.seed_), *standard_callbacks(), history],
            )
            trainer.fit(module, datamodule=dm)
        module._trainer = None  # the fitted estimator keeps weights, not the training machinery
        self.module_ = module.cpu().eval()
        self.history_ = history.rows
        self.fidelity_ = fidelity_monitor(trainer).history
        self._fit_latent_models(Xs)
        h = getattr(module, "bandwidth_h", None)
        if h is not None:
            self.bandwidth_ = float(h)
        self._n_features_out = self.latent_dim
        return self

    def _fit_labels(self, y, n: int):
        """Labels passed to the training data: None (``y`` is ignored) except in ``SemiSupervisedGEN``."""
        return None

    def _checked_params(self) -> dict:
        check_int("latent_dim", self.latent_dim, minimum=1)
        check_choice("scaling", self.scaling, ("auto", "minmax", "none"))
        check_choice("accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        return {
            "max_epochs": check_int("max_epochs", self.max_epochs, minimum=1),
            "batch_size": check_int("batch_size", self.batch_size, minimum=1),
            "val_fraction": check_float("val_fraction", self.val_fraction, 0.0, 1.0, max_inclusive=False),
            "lr": check_float("lr", self.lr, minimum=0.0, min_inclusive=False),
        }

    def _module_kwargs(self, params: dict, n: int) -> dict:
        kw = {"lr": params["lr"], "hidden": [int(h) for h in np.atleast_1d(self.hidden)], "arch": self.arch}
        for name in self._module_params:
            value = getattr(self, name)
            if value is not None:
                kw[name] = [int(h) for h in np.atleast_1d(value)] if name == "disc_hidden" else value
        if getattr(self, "target", None) is not None:
            kw["target_spec"] = _target_spec(self.target, self.latent_dim)
        if "bank_size" in kw:  # m is capped at the training samples (h_opt is computed for that m)
            n_train = n - int(round(params["val_fraction"] * n))
            kw["bank_size"] = max(2, min(check_int("bank_size", kw["bank_size"], minimum=2), n_train))
        return kw

    # ---------------------------------------------------------------------------- data handling
    def _validate(self, X, reset: bool) -> np.ndarray:
        """Check X and return it as float64 (n, n_features_in_); records the sample shape on reset.
        Every error is a ValueError whose message starts with "X"."""
        try:
            arr = check_array(X, allow_nd=True, dtype=[np.float64, np.float32],
                              ensure_min_samples=2 if reset else 1, input_name="X")
        except ValueError as err:
            if str(err).startswith("X"):
                raise
            raise ValueError(f"X: {err}") from None
        if arr.ndim > 4:
            raise ValueError(f"X: must have shape (n, d), (n, H, W) or (n, C, H, W), got {arr.shape}")
        shape = arr.shape[1:]
        if not reset and arr.ndim > 2 and tuple(shape) != tuple(self.input_shape_):
            raise ValueError(f"X: samples of shape {tuple(shape)} do not match the fitted {tuple(self.input_shape_)}")
        # 2-D input goes to validate_data as given, so DataFrame column names are recorded and checked
        source = X if arr.ndim == 2 else arr.reshape(arr.shape[0], -1)
        flat = validate_data(self, source, reset=reset, dtype=[np.float64, np.float32])
        if reset:
            self.input_shape_ = tuple(int(s) for s in shape)
        return np.asarray(flat, dtype=np.float64)

    def _scale(self, X: np.ndarray, fit: bool = False) -> np.ndarray:
        """(n, d) float64 -> float32 in the model's [0, 1] space."""
        if fit:
            lo, hi = X.min(axis=0), X.max(axis=0)
            scale = self.scaling == "minmax" or (self.scaling == "auto" and (lo.min() < 0 or hi.max() > 1))
            if scale:
                rng = hi - lo
                self.data_min_, self.data_range_ = lo, np.where(rng > 0, rng, 1.0)
            else:
                self.data_min_ = self.data_range_ = None
        if self.data_min_ is not None:
            X = (X - self.data_min_) / self.data_range_
        return X.astype(np.float32)

    def _unscale(self, X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float64)
        if self.data_min_ is not None:
            X = X * self.data_range_ + self.data_min_
        return X

    def _as_tensor(self, X):
        """Validated, scaled X as a float32 tensor (n, *input_shape_) for the module."""
        import torch

        check_is_fitted(self)
        X = self._scale(self._validate(X, reset=False))
        return torch.from_numpy(np.ascontiguousarray(X.reshape(X.shape[0], *self.input_shape_)))

    def _output(self, x) -> np.ndarray:
        """Decoder output tensor (n, *input_shape_) -> numpy float64 in the data's units and shape."""
        x = x.detach().cpu().double().numpy().reshape(x.shape[0], -1)
        return self._unscale(x).reshape(x.shape[0], *self.input_shape_)

    # ------------------------------------------------------------------------------- transforms
    def transform(self, X) -> np.ndarray:
        """Encode X: (n, *input_shape_) or (n, n_features_in_) -> Z: (n, latent_dim) float64 (VAE: posterior mean)."""
        from gens.training import encode_all

        x = self._as_tensor(X)
        return encode_all(self.module_, x, batch_size=1024).double().numpy()

    def inverse_transform(self, Z) -> np.ndarray:
        """Decode Z: (n, latent_dim) -> X: (n, *input_shape_) float64 in the data's units."""
        import torch

        check_is_fitted(self)
        Z = check_array(Z, dtype=[np.float64, np.float32], input_name="Z")
        if Z.shape[1] != self.latent_dim:
            raise ValueError(f"Z: must have {self.latent_dim} columns (latent_dim), got shape {Z.shape}")
        z = torch.from_numpy(np.ascontiguousarray(Z, dtype=np.float32))
        with torch.no_grad():
            x = torch.cat([self.module_.decode(c) for c in z.split(1024)])
        return self._output(x)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "module_")

    # ----------------------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Write the fitted estimator to ``path`` atomically (tensors and plain types only)."""
        from gens.checkpoint import atomic_save
        from gens.samplers import samplers_state

        check_is_fitted(self)
        attrs = {k: getattr(self, k) for k in ("n_features_in_", "input_shape_", "seed_", "bandwidth_", "history_", "fidelity_",
                                                "_n_features_out", "noise_variance_") if hasattr(self, k)}
        for k in ("data_min_", "data_range_"):
            v = getattr(self, k)
            attrs[k] = None if v is None else v.tolist()
        if hasattr(self, "feature_names_in_"):
            attrs["feature_names_in_"] = [str(s) for s in self.feature_names_in_]
        atomic_save({
            "format": FORMAT, "estimator": type(self).__name__,
            "params": _plain(self.get_params(deep=False)), "attributes": _plain(attrs),
            "gens": {"method": self._method}, "hyper_parameters": dict(self.module_.hparams),
            "state_dict": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
            "samplers": samplers_state(self._samplers()),
        }, path)

    @classmethod
    def load(cls, path):
        """Read an estimator written by ``save`` (``torch.load(weights_only=True)``: no code from the file runs)."""
        from gens.checkpoint import load_checkpoint, module_from_checkpoint
        from gens.samplers import samplers_from_state

        ckpt = load_checkpoint(path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"path: {path} was not written by a gens estimator's save()")
        name = ckpt["estimator"]
        target_cls = _ESTIMATORS.get(name)
        if target_cls is None or (cls is not _GensEstimator and cls is not target_cls):
            raise ValueError(f"path: {path} holds a {name}, not a {cls.__name__}; use gens.{name}.load")
        est = target_cls(**ckpt["params"])
        for k, v in ckpt["attributes"].items():
            setattr(est, k, v)
        est.input_shape_ = tuple(est.input_shape_)
        for k in ("data_min_", "data_range_"):
            v = ckpt["attributes"].get(k)
            setattr(est, k, None if v is None else np.asarray(v, dtype=np.float64))
        if "feature_names_in_" in ckpt["attributes"]:
            est.feature_names_in_ = np.asarray(ckpt["attributes"]["feature_names_in_"], dtype=object)
        est.module_ = module_from_checkpoint(ckpt, method=ckpt["gens"]["method"])
        est.samplers_ = samplers_from_state(ckpt.get("samplers"))  # files from before samplers: analytic only
        return est

    def __getstate__(self):
        """Pickle the module as (hyperparameters, state dict): the live module holds the training data."""
        state = self.__dict__.copy()
        module = state.pop("module_", None)
        if module is not None:
            state["_module_state"] = (self._method, dict(module.hparams),
                                      {k: v.detach().cpu() for k, v in module.state_dict().items()})
        return state

    def __setstate__(self, state):
        packed = state.pop("_module_state", None)
        self.__dict__.update(state)
        if packed is not None:
            from gens.checkpoint import module_from_checkpoint

            method, hp, sd = packed
            self.module_ = module_from_checkpoint({"hyper_parameters": hp, "state_dict": sd}, method=method)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.random_state is None
        return tags


def load(path):
    """Load whichever gens estimator ``path`` holds (weights-only)."""
    return _GensEstimator.load(path)


# -------------------------------------------------------------------------------------- estimators


class GEN(_GensEstimator):
    """Generative Encoding Network (Algorithm 1): autoencoder + lam * the eq. 3 KDE-JSD term.

    Parameters: ``latent_dim``; ``lam`` (None: the module's default), ``objective``
    ("nonsaturating" | "literal" | "kl" | a name given to ``gens.divergence.register_objective``), ``bank_mode``
    ("refresh" | "queue" | a name given to ``gens.bank.register_bank``), ``bank_size`` (m, capped
    at the training samples), ``refresh_every`` (kb), ``bandwidth`` (None: h_opt), ``bandwidth_correction``,
    ``bandwidth_scale`` (factor on h_opt; None: the module's default), ``leave_one_out`` (refresh mode: leave
    each minibatch's own samples out of the bank),
    ``target`` (None or "normal": N(0, I); "mog:K[:SCALE]"; a spec dict; a ``gens.targets.Target``);
    shared: ``max_epochs``, ``batch_size``, ``lr``, ``hidden``, ``arch``, ``scaling``, ``val_fraction``,
    ``accelerator``, ``random_state``, ``verbose``. See the module docstring for the attributes.
    """

    _method = "gen"
    _module_params = ("lam", "objective", "bank_mode", "bank_size", "refresh_every", "bandwidth",
                      "bandwidth_correction", "bandwidth_scale", "leave_one_out")

    def __init__(self, latent_dim=8, *, lam=None, objective="nonsaturating", bank_mode="refresh", bank_size=10000,
                 refresh_every=10, bandwidth=None, bandwidth_correction=False, bandwidth_scale=None,
                 leave_one_out=True, target=None, max_epochs=12, batch_size=100, lr=2e-4, hidden=(1000, 1000), arch="auto", scaling="auto",
                 val_fraction=0.0, accelerator="cpu", random_state=None, verbose=False):
        _set_params(self, locals())


class AE(_GensEstimator):
    """Plain autoencoder (no regulariser); ``sample`` decodes draws from a Gaussian fitted to the last
    epoch's training latents. Parameters as ``GEN``'s shared ones."""

    _method = "ae"

    def __init__(self, latent_dim=8, *, max_epochs=12, batch_size=100, lr=2e-4, hidden=(1000, 1000), arch="auto",
                 scaling="auto", val_fraction=0.0, accelerator="cpu", random_state=None, verbose=False):
        _set_params(self, locals())


class VAE(_GensEstimator):
    """Variational autoencoder (Gaussian posterior, KL to N(0, I) weighted by ``lam``); ``transform`` gives
    the posterior mean."""

    _method = "vae"
    _module_params = ("lam",)

    def __init__(self, latent_dim=8, *, lam=None, max_epochs=12, batch_size=100, lr=2e-4, hidden=(1000, 1000),
                 arch="auto", scaling="auto", val_fraction=0.0, accelerator="cpu", random_state=None, verbose=False):
        _set_params(self, locals())


class AAE(_GensEstimator):
    """Adversarial autoencoder: a latent discriminator (hidden widths ``disc_hidden``) against samples of
    ``target``, weighted by ``lam``."""

    _method = "aae"
    _module_params = ("lam", "disc_hidden")

    def __init__(self, latent_dim=8, *, lam=None, target=None, disc_hidden=(1000, 1000), max_epochs=12,
                 batch_size=100, lr=2e-4, hidden=(1000, 1000), arch="auto", scaling="auto", val_fraction=0.0,
                 accelerator="cpu", random_state=None, verbose=False):
        _set_params(self, locals())


class WAE(_GensEstimator):
    """Wasserstein autoencoder with the MMD penalty (inverse multiquadric kernel) to ``target``, weight ``lam``."""

    _method = "wae"
    _module_params = ("lam",)

    def __init__(self, latent_dim=8, *, lam=None, target=None, max_epochs=12, batch_size=100, lr=2e-4,
                 hidden=(1000, 1000), arch="auto", scaling="auto", val_fraction=0.0, accelerator="cpu",
                 random_state=None, verbose=False):
        _set_params(self, locals())


class SemiSupervisedGEN(ClassifierMixin, GEN):
    """Semi-supervised GEN (Sec. 5.4; ``gens.methods.semisupervised``): a mixture target with ``n_modes``
    components, component k for class k. ``fit(X, y)`` takes labels 0..n_modes-1 with y = -1 for unlabelled
    samples (scikit-learn's semi-supervised convention): every sample's latent is matched to the whole
    mixture by the KDE-JSD (h = h_opt of the mixture), labelled ones are also pulled toward their class's
    component (``supervision`` "ce": cross-entropy of p(k | z); "nll": -log N(z; mu_y, Sigma_y)), weight
    ``sup_weight``, ``labelled_batch`` labelled samples per step. ``predict`` gives the most probable
    component argmax_k p(k | E(x)), ``predict_proba`` p(k | E(x)), ``score`` the accuracy. ``target``:
    None places ``n_modes`` (default 10) modes with ``mixture_on_simplex(n_modes, latent_dim, mode_scale)``;
    a given target ("mog:K", spec, Target) fixes the modes (``n_modes``, if given, must match). Other
    parameters as ``GEN``'s.
    """

    _method = "semisupervised"
    _module_params = GEN._module_params + ("n_modes", "mode_scale", "sup_weight", "supervision", "labelled_batch")

    def __init__(self, latent_dim=8, *, n_modes=None, mode_scale=6.0, sup_weight=1.0, supervision="ce",
                 labelled_batch=100, lam=None, objective="nonsaturating", bank_mode="refresh", bank_size=10000,
                 refresh_every=10, bandwidth=None, bandwidth_correction=False, bandwidth_scale=None,
                 leave_one_out=True, target=None,
                 max_epochs=12, batch_size=100, lr=2e-4, hidden=(1000, 1000), arch="auto", scaling="auto",
                 val_fraction=0.0, accelerator="cpu", random_state=None, verbose=False):
        _set_params(self, locals())

    def fit(self, X, y):
        """Train on X with labels y: (n,) in 0..n_modes-1, -1 for unlabelled samples. Returns self."""
        if y is None:
            raise ValueError("y: SemiSupervisedGEN.fit needs labels (-1 for unlabelled samples); use GEN for none")
        return super().fit(X, y)

    def _fit_labels(self, y, n: int):
        from gens.methods.semisupervised import DEFAULT_MODES, check_labels_for
        from gens.targets import target_from_spec

        if self.n_modes is not None:
            k = check_int("n_modes", self.n_modes, minimum=2)
        elif self.target is not None:
            k = target_from_spec(_target_spec(self.target, self.latent_dim)).n_components
        else:
            k = DEFAULT_MODES
        return check_labels_for(y, k, n)

    @property
    def classes_(self) -> np.ndarray:
        """The components' labels 0..n_modes-1."""
        check_is_fitted(self)
        return np.arange(self.module_.n_modes)

    def predict_proba(self, X) -> np.ndarray:
        """p(k | E(x)) for X: (n, ...) -> (n, n_modes) float64, rows sum to 1."""
        return self.module_.predict_proba(self._as_tensor(X), batch_size=1024).numpy()

    def predict(self, X) -> np.ndarray:
        """The most probable component argmax_k p(k | E(x)) for X: (n, ...) -> (n,) int64."""
        return self.predict_proba(X).argmax(1)


_ESTIMATORS = {c.__name__: c for c in (GEN, AE, VAE, AAE, WAE, SemiSupervisedGEN)}


# ----------------------------------------------------------------------------------------- helpers


def _target_spec(target, latent_dim: int) -> dict:
    """A target given as a string ("normal", "mog:K[:SCALE]"), spec dict or Target -> spec dict."""
    if isinstance(target, str):
        from gens.runs import target_spec

        return target_spec(target, latent_dim)
    if isinstance(target, dict):
        return target
    if hasattr(target, "spec"):
        return target.spec()
    raise ValueError(f"target: must be None, 'normal', 'mog:K', a spec dict or a gens.targets.Target; got {target!r}")


def _plain(obj):
    """Parameters / attributes as plain types for weights-only files (Targets become spec dicts)."""
    if hasattr(obj, "spec") and callable(obj.spec):
        return obj.spec()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


class _History(Callback):
    """Collects per-epoch means of the train/* step metrics and the val/* metrics (``history_``)."""

    def __init__(self):
        self.rows, self._sums, self._count = [], {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/"):
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module):
        row = {"epoch": int(trainer.current_epoch)}
        row.update({k: s / max(1, self._count) for k, s in self._sums.items()})
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.rows.append(row)
        self._sums, self._count = {}, 0


@contextmanager
def _quiet(enabled: bool):
    """Silence Lightning's info messages and the warnings that do not apply to in-memory arrays."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*log_every_n_steps.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

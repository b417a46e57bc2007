"""scikit-learn style estimators: ``GEN``, ``AE``, ``VAE``, ``AAE``, ``WAE``.

    >>> from gens import GEN
    >>> gen = GEN(latent_dim=8, max_steps=3000, random_state=0).fit(X)   # X: (n, d) or (n, C, H, W)
    >>> Z = gen.transform(X)                 # (n, 8) latents, float64
    >>> X_hat = gen.inverse_transform(Z)     # decoded, shaped like X
    >>> X_new = gen.sample(16, random_state=0)        # sampler="analytic" | "gaussian" | "gmm"
    >>> log_px = gen.score_samples(X)         # (n,) eq. 10 log p(x), higher = more typical
    >>> gen.save("gen.ckpt"); gen = GEN.load("gen.ckpt")   # weights-only, nothing in the file runs

Each estimator trains the matching ``gens.methods`` LightningModule on the array through the one training
path, ``gens.training.fit`` (as ``gens train`` and ``gens reproduce`` do: same seed, data and options, same
weights), with no validation split unless ``val_fraction > 0`` (``gens train`` holds out 0.1; pass
``val_fraction=0.1`` to train exactly its model). The budget: ``max_steps`` optimiser steps, ``max_epochs``
epochs, whichever ends first when both are given; neither: ``gens.training.DEFAULT_STEPS`` steps. The trained
model (``module_``) is the exponential moving average of the weights with decay ``weight_average`` (default
None: the method's, ``gens.config.WEIGHT_AVERAGE``: 0.999 for the GEN, warmed up; 0 for the others: the last
step's weights; ``gens.averaging``). Every
parameter's default is declared in ``gens.config`` (``tests/test_defaults.py``). ``__init__`` only stores
parameters; they are validated in ``fit`` (scikit-learn's rule).

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

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

from gens import config as C
from gens._validation import check_choice, check_float, check_int
from gens.estimator_data import DataMixin
from gens.estimator_io import FORMAT, PersistenceMixin
from gens.estimator_scoring import LatentModelMixin

__all__ = ["AAE", "AE", "EXPECTED_FAILED_CHECKS", "FORMAT", "GEN", "VAE", "WAE", "SemiSupervisedGEN", "load"]

# sklearn check name -> why it does not apply; empty: every check passes (see the module docstring)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _set_params(estimator, params: dict) -> None:
    """Store every ``__init__`` argument unchanged under its own name (scikit-learn's rule: validation
    happens in ``fit``). params: the ``locals()`` of ``__init__``."""
    for name, value in params.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _GensEstimator(PersistenceMixin, DataMixin, LatentModelMixin, ClassNamePrefixFeaturesOutMixin,
                     TransformerMixin, BaseEstimator):
    """Shared fit / transform / inverse_transform (sample, score_samples: LatentModelMixin; save, load:
    ``gens.estimator_io``). Subclasses set ``_method`` and list their parameters in ``__init__`` (scikit-learn
    needs explicit signatures), every default read from ``gens.config`` (``C.estimator_options(_method)``)."""

    _method = ""

    @classmethod
    def _module_params(cls) -> tuple[str, ...]:
        """The estimator parameters passed to the module under the same name (``gens.config``)."""
        return tuple(k for k, m in C.estimator_options(cls._method).items() if m["module"])

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X, y=None):
        """Train on X: (n, d), (n, H, W) or (n, C, H, W). ``y`` is ignored (``SemiSupervisedGEN``: labels,
        -1 = unlabelled). Returns self."""
        from gens import training

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
        dm = training.make_datamodule(Xs.reshape(n, *self.input_shape_), batch_size=min(params["batch_size"], n),
                                      val_fraction=params["val_fraction"], seed=self.seed_, y=labels)
        kwargs = self._module_kwargs(params, dm.n_train)
        module = training.build(self._method, dm, self.latent_dim, seed=self.seed_, **kwargs)
        history = training.EpochHistory()
        trainer = training.fit(module, dm, seed=self.seed_, max_epochs=self.max_epochs, max_steps=self.max_steps,
                               weight_average=params["weight_average"], callbacks=[history],
                               accelerator=self.accelerator, devices=1, quiet_logs=not self.verbose,
                               enable_progress_bar=bool(self.verbose), enable_model_summary=bool(self.verbose))
        module._trainer = None  # the fitted estimator keeps weights, not the training machinery
        self.module_ = module.cpu().eval()
        self.history_ = history.rows
        self.fidelity_ = training.fidelity_monitor(trainer).history
        self._fit_latent_models(Xs)
        h = getattr(module, "bandwidth_h", None)
        if h is not None:
            self.bandwidth_ = float(h)
        self._n_features_out = self.latent_dim
        return self

    def _fit_labels(self, y, n: int):
        """Labels passed to the training data: None (``y`` is ignored) except in ``SemiSupervisedGEN``."""

    def _checked_params(self) -> dict:
        check_int("latent_dim", self.latent_dim, minimum=1)
        check_choice("scaling", self.scaling, ("auto", "minmax", "none"))
        check_choice("accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        from gens.training import budget

        budget(self.max_epochs, self.max_steps)  # max_epochs / max_steps: ints >= 1 or None

        return {
            "batch_size": check_int("batch_size", self.batch_size, minimum=1),
            # None: the method's default (gens.config.WEIGHT_AVERAGE), resolved by gens.training.fit
            "weight_average": None if self.weight_average is None else C.check_weight_average(self.weight_average),
            "val_fraction": check_float("val_fraction", self.val_fraction, 0.0, 1.0, max_inclusive=False),
            "lr": check_float("lr", self.lr, minimum=0.0, min_inclusive=False),
        }

    def _module_kwargs(self, params: dict, n_train: int) -> dict:
        kw = {}
        for name in self._module_params():
            value = params["lr"] if name == "lr" else getattr(self, name)
            if value is not None:  # None: the module's default (as older estimators passed lam=None)
                kw[name] = [int(h) for h in np.atleast_1d(value)] if name in ("hidden", "disc_hidden") else value
        if getattr(self, "target", None) is not None:
            kw["target_spec"] = _target_spec(self.target, self.latent_dim)
        if "bank_size" in kw:  # m is capped at the training samples (h_opt is computed for that m)
            kw["bank_size"] = max(2, min(check_int("bank_size", kw["bank_size"], minimum=2), n_train))
        return kw

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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = self.random_state is None
        return tags


def load(path):
    """Load whichever gens estimator ``path`` holds (weights-only)."""
    return _GensEstimator.load(path)


# -------------------------------------------------------------------------------------- estimators


# every default from gens.config (tests/test_defaults.py checks the signatures against it)
_T, _E, _G, _S = C.TrainConfig, C.EstimatorConfig, C.GENConfig, C.SemiSupervisedConfig
_AE, _VAE, _AAE, _WAE = C.AEConfig, C.VAEConfig, C.AAEConfig, C.WAEConfig


class GEN(_GensEstimator):
    """Generative Encoding Network (Algorithm 1): autoencoder + lam * the eq. 3 KDE-JSD term.

    Parameters (defaults and help: ``gens.config.GENConfig``): ``latent_dim``; ``lam``, ``objective``
    ("nonsaturating" | "literal" | "kl" | a name given to ``gens.divergence.register_objective``), ``bank_mode``
    ("refresh" | "queue" | "ema-queue" | a name given to ``gens.bank.register_bank``), ``bank_size`` (m, capped
    at the training samples), ``refresh_every`` (kb), ``bandwidth`` (None: h_opt), ``bandwidth_correction``,
    ``bandwidth_scale`` (factor on h_opt), ``leave_one_out`` (leave each minibatch's own samples out of the bank), ``coverage`` (weight of the target-sample half of eq. 2),
    ``target`` (None or "normal": N(0, I); "mog:K[:SCALE]"; a spec dict; a ``gens.targets.Target``);
    shared: ``max_epochs``, ``max_steps``, ``batch_size``, ``weight_average`` (the decay of the weights'
    moving average that becomes the trained model, ``gens.averaging``; 0: the last step's weights; None: the
    method's, ``gens.config.WEIGHT_AVERAGE``: 0.999 here, 0 for the other estimators), ``lr``,
    ``hidden``, ``arch``, ``scaling``, ``val_fraction``, ``accelerator``, ``random_state``, ``verbose``. None for
    a module option: the module's default. See the module docstring for the attributes.
    """

    _method = "gen"

    def __init__(self, latent_dim=_T.latent_dim, *, lam=_G.lam, objective=_G.objective, bank_mode=_G.bank_mode,
                 bank_size=_G.bank_size, refresh_every=_G.refresh_every, bandwidth=_G.bandwidth,
                 bandwidth_correction=_G.bandwidth_correction, bandwidth_scale=_G.bandwidth_scale,
                 leave_one_out=_G.leave_one_out, coverage=_G.coverage, target=_E.target, max_epochs=_T.max_epochs,
                 max_steps=_T.max_steps, batch_size=_T.batch_size, weight_average=_T.weight_average, lr=_G.lr,
                 hidden=_G.hidden, arch=_G.arch, scaling=_E.scaling, val_fraction=_E.val_fraction,
                 accelerator=_E.accelerator, random_state=_E.random_state, verbose=_E.verbose):
        _set_params(self, locals())


class AE(_GensEstimator):
    """Plain autoencoder (no regulariser); ``sample`` decodes draws from a Gaussian fitted to the last
    epoch's training latents. Parameters as ``GEN``'s shared ones."""

    _method = "ae"

    def __init__(self, latent_dim=_T.latent_dim, *, max_epochs=_T.max_epochs, max_steps=_T.max_steps,
                 batch_size=_T.batch_size, weight_average=_T.weight_average, lr=_AE.lr, hidden=_AE.hidden,
                 arch=_AE.arch, scaling=_E.scaling, val_fraction=_E.val_fraction, accelerator=_E.accelerator,
                 random_state=_E.random_state, verbose=_E.verbose):
        _set_params(self, locals())


class VAE(_GensEstimator):
    """Variational autoencoder (Gaussian posterior, KL to N(0, I) weighted by ``lam``); ``transform`` gives
    the posterior mean."""

    _method = "vae"

    def __init__(self, latent_dim=_T.latent_dim, *, lam=_VAE.lam, max_epochs=_T.max_epochs, max_steps=_T.max_steps,
                 batch_size=_T.batch_size, weight_average=_T.weight_average, lr=_VAE.lr, hidden=_VAE.hidden,
                 arch=_VAE.arch, scaling=_E.scaling, val_fraction=_E.val_fraction, accelerator=_E.accelerator,
                 random_state=_E.random_state, verbose=_E.verbose):
        _set_params(self, locals())


class AAE(_GensEstimator):
    """Adversarial autoencoder: a latent discriminator (hidden widths ``disc_hidden``) against samples of
    ``target``, weighted by ``lam``."""

    _method = "aae"

    def __init__(self, latent_dim=_T.latent_dim, *, lam=_AAE.lam, target=_E.target, disc_hidden=_AAE.disc_hidden,
                 max_epochs=_T.max_epochs, max_steps=_T.max_steps, batch_size=_T.batch_size,
                 weight_average=_T.weight_average, lr=_AAE.lr, hidden=_AAE.hidden, arch=_AAE.arch, scaling=_E.scaling,
                 val_fraction=_E.val_fraction, accelerator=_E.accelerator, random_state=_E.random_state,
                 verbose=_E.verbose):
        _set_params(self, locals())


class WAE(_GensEstimator):
    """Wasserstein autoencoder with the MMD penalty (inverse multiquadric kernel) to ``target``, weight ``lam``."""

    _method = "wae"

    def __init__(self, latent_dim=_T.latent_dim, *, lam=_WAE.lam, target=_E.target, max_epochs=_T.max_epochs,
                 max_steps=_T.max_steps, batch_size=_T.batch_size, weight_average=_T.weight_average, lr=_WAE.lr,
                 hidden=_WAE.hidden, arch=_WAE.arch, scaling=_E.scaling, val_fraction=_E.val_fraction,
                 accelerator=_E.accelerator, random_state=_E.random_state, verbose=_E.verbose):
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
    parameters as ``GEN``'s (defaults: ``gens.config.SemiSupervisedConfig``).
    """

    _method = "semisupervised"

    def __init__(self, latent_dim=_T.latent_dim, *, n_modes=_S.n_modes, mode_scale=_S.mode_scale,
                 sup_weight=_S.sup_weight, supervision=_S.supervision, labelled_batch=_S.labelled_batch, lam=_S.lam,
                 objective=_S.objective, bank_mode=_S.bank_mode, bank_size=_S.bank_size,
                 refresh_every=_S.refresh_every, bandwidth=_S.bandwidth, bandwidth_correction=_S.bandwidth_correction,
                 bandwidth_scale=_S.bandwidth_scale, leave_one_out=_S.leave_one_out, coverage=_S.coverage,
                 target=_E.target, max_epochs=_T.max_epochs, max_steps=_T.max_steps, batch_size=_T.batch_size,
                 weight_average=_T.weight_average, lr=_S.lr, hidden=_S.hidden, arch=_S.arch, scaling=_E.scaling,
                 val_fraction=_E.val_fraction, accelerator=_E.accelerator, random_state=_E.random_state,
                 verbose=_E.verbose):
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

"""Saving, loading and pickling the scikit-learn estimators of ``gens.estimators`` (tensors and plain types only).

``save(path)`` writes ``{"format": FORMAT, "estimator", "params", "attributes", "gens": {"method"},
"hyper_parameters", "state_dict", "samplers"}`` atomically; ``load(path)`` reads it with
``torch.load(weights_only=True)`` (no code from the file runs). A file saved by an older gens loads too:
parameters it lacks take their current default (``gens.config``), e.g. ``max_steps``; one saved with
``max_epochs=12`` keeps training 12 epochs when refitted.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["FORMAT", "PersistenceMixin", "plain"]

FORMAT = "gens-estimator/1"

_ATTRIBUTES = ("n_features_in_", "input_shape_", "seed_", "bandwidth_", "history_", "fidelity_", "_n_features_out",
               "noise_variance_")


def plain(obj):
    """Parameters / attributes as plain types for weights-only files (Targets become spec dicts)."""
    if hasattr(obj, "spec") and callable(obj.spec):
        return obj.spec()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


class PersistenceMixin:
    """``save`` / ``load`` / pickling for a fitted gens estimator (``module_`` kept as hyperparameters + weights)."""

    def save(self, path) -> None:
        """Write the fitted estimator to ``path`` atomically (tensors and plain types only)."""
        from gens.checkpoint import atomic_save
        from gens.samplers import samplers_state

        check_is_fitted(self)
        attrs = {k: getattr(self, k) for k in _ATTRIBUTES if hasattr(self, k)}
        for k in ("data_min_", "data_range_"):
            v = getattr(self, k)
            attrs[k] = None if v is None else v.tolist()
        if hasattr(self, "feature_names_in_"):
            attrs["feature_names_in_"] = [str(s) for s in self.feature_names_in_]
        atomic_save({
            "format": FORMAT, "estimator": type(self).__name__,
            "params": plain(self.get_params(deep=False)), "attributes": plain(attrs),
            "gens": {"method": self._method}, "hyper_parameters": dict(self.module_.hparams),
            "state_dict": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
            "samplers": samplers_state(self._samplers()),
        }, path)

    @classmethod
    def load(cls, path):
        """Read an estimator written by ``save`` (``torch.load(weights_only=True)``: no code from the file runs)."""
        from gens.checkpoint import load_checkpoint, module_from_checkpoint
        from gens.estimators import _ESTIMATORS, _GensEstimator
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
        state = {**type(self)().get_params(deep=False), **state}  # parameters added since: their defaults, as load
        packed = state.pop("_module_state", None)
        self.__dict__.update(state)
        if packed is not None:
            from gens.checkpoint import module_from_checkpoint

            method, hp, sd = packed
            self.module_ = module_from_checkpoint({"hyper_parameters": hp, "state_dict": sd}, method=method)

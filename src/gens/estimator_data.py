"""The data handling of the scikit-learn estimators (``gens.estimators``): validate X, scale it into [0, 1].

``scaling="auto"`` leaves data already in [0, 1] untouched and maps anything else feature-wise onto [0, 1] with
the training minimum and range (undone by ``inverse_transform`` and ``sample``); ``"minmax"`` always
scales; ``"none"`` requires [0, 1]. Every error is a ValueError whose message starts with "X".
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

__all__ = ["DataMixin"]


class DataMixin:
    """``_validate`` (X -> float64 (n, n_features_in_)), ``_scale`` / ``_unscale``, ``_as_tensor``, ``_output``."""

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

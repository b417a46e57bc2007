"""Parameter checks shared by every public entry point.

Every check raises ``ValueError`` whose message starts with the parameter's name and says what is
allowed, e.g. ``"latent_dim: must be an integer >= 1, got 0"``. Nothing here imports torch at module
level so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterable

__all__ = [
    "check_int",
    "check_float",
    "check_choice",
    "check_finite",
    "check_matrix",
]


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` and the allowed range."""
    allowed = _range_text("an integer", minimum, maximum, inclusive=True)
    if isinstance(value, bool) or not isinstance(value, Integral):
        # accept floats that are whole numbers (e.g. 1e4 from a config) but nothing else
        if isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name}: must be {allowed}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: must be {allowed}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float in the given range, or raise ValueError naming ``name``."""
    lo = ">=" if min_inclusive else ">"
    hi = "<=" if max_inclusive else "<"
    parts = []
    if minimum is not None:
        parts.append(f"{lo} {minimum:g}")
    if maximum is not None:
        parts.append(f"{hi} {maximum:g}")
    allowed = "a finite number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, Real):
        try:  # 0-d tensors and numpy scalars
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: must be {allowed}, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be {allowed}, got {value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise ValueError(f"{name}: must be {allowed}, got {value:g}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise ValueError(f"{name}: must be {allowed}, got {value:g}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_finite(name: str, x: Any) -> None:
    """Raise ValueError if the tensor/array ``x`` holds NaN or infinity (says how many)."""
    import sys

    import numpy as np

    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            # a finite sum proves every entry finite without isfinite's full-size temporaries
            # (a 1 GB bank would need ~1.4 GB more); count exactly only when it is not
            bad = 0 if bool(torch.isfinite(x.detach().sum())) else int((~torch.isfinite(x)).sum())
        else:
            bad = 0
    else:
        arr = np.asarray(x)
        bad = int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.number) else 0
    if bad:
        raise ValueError(f"{name}: must hold only finite values, found {bad} NaN or infinite entries")


def check_matrix(name: str, x: Any, *, columns: int | None = None, min_rows: int = 1) -> None:
    """Raise ValueError unless ``x`` is a 2-D (rows, columns) array with finite entries."""
    shape = tuple(x.shape)
    if len(shape) != 2:
        want = f"(n, {columns})" if columns is not None else "(n, l)"
        raise ValueError(f"{name}: must be a 2-D array of shape {want}, got shape {shape}")
    if columns is not None and shape[1] != columns:
        raise ValueError(f"{name}: must have {columns} columns (the latent dimension), got shape {shape}")
    if shape[0] < min_rows:
        raise ValueError(f"{name}: must have at least {min_rows} rows, got shape {shape}")
    check_finite(name, x)


def _range_text(kind: str, minimum, maximum, inclusive: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind

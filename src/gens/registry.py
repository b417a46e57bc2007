"""Named extension points of the GEN: objectives and bank strategies.

    OBJECTIVES: name -> fn(log_pe, log_pt, eps) -> per-query loss (n,)     (``gens.divergence``)
    BANKS:      name -> a ``gens.bank.BankStrategy`` subclass              (``gens.bank``)

A ``Registry`` maps names to objects. The built-ins are listed here as ``"module:attribute"`` and imported
on first lookup, so listing the names (the CLI's choices, config validation) imports neither torch nor
the science modules. Add your own with ``gens.divergence.register_objective`` or
``gens.bank.register_bank`` (equivalently ``OBJECTIVES.register`` / ``BANKS.register``); the name is
then accepted by ``GENModule``, ``gens.GEN`` and ``gens train`` (whose choices are these registries).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from gens._validation import check_choice

__all__ = ["BANKS", "OBJECTIVES", "Registry"]


class Registry(Mapping):
    """name -> object, in registration order; built-ins given as ``"module:attribute"`` resolve lazily.

    ``param`` is the parameter the names are values of (used in error messages, e.g. ``"objective"``)."""

    def __init__(self, param: str, builtins: dict[str, str]):
        self.param = param
        self._entries: dict[str, object] = dict(builtins)
        self.builtins = tuple(builtins)

    def register(self, name: str, obj, *, replace: bool = False):
        """Add ``obj`` under ``name`` (a non-empty str); an existing name needs ``replace=True``. Returns obj."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"name: must be a non-empty string without surrounding spaces, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"name: {self.param} {name!r} is already registered (pass replace=True to replace it)")
        if name in self.builtins and replace:
            raise ValueError(f"name: {name!r} is a built-in {self.param} and cannot be replaced")
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove a name added with ``register`` (built-ins stay)."""
        if name in self.builtins:
            raise ValueError(f"name: {name!r} is a built-in {self.param} and cannot be removed")
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, value, param: str | None = None) -> str:
        """``value`` if it is a registered name, else ValueError "<param>: must be one of ..."."""
        return check_choice(param or self.param, value, self._entries)

    def __getitem__(self, name: str):
        obj = self._entries[name]
        if isinstance(obj, str) and name in self.builtins:  # "module:attribute", imported on first use
            module, attr = obj.split(":")
            obj = self._entries[name] = getattr(importlib.import_module(module), attr)
        return obj

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.param!r}: {', '.join(self._entries)})"


# the GEN's default objective comes first: the order of error messages and --help
OBJECTIVES = Registry("objective", {"nonsaturating": "gens.divergence:nonsaturating_objective",
                                    "literal": "gens.divergence:literal_objective",
                                    "kl": "gens.divergence:kl_objective"})
BANKS = Registry("bank_mode", {"refresh": "gens.bank:RefreshBank", "queue": "gens.bank:QueueBank",
                                 "ema-queue": "gens.bank:EMAQueueBank"})

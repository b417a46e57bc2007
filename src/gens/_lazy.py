"""Lazily imported package attributes (PEP 562): ``import gens`` and the CLI's ``--help`` stay torch-free."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, table: dict):
    """``(__getattr__, __dir__)`` for ``package`` whose public names ``table`` maps to the modules defining them;
    a name is imported on first use and then kept in the package's namespace."""
    names = sorted(table)

    def __getattr__(name: str):
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted({*names, *vars(sys.modules[package])})

    return __getattr__, __dir__

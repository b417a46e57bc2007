"""Resumable units: each finished piece of a reproduction (a trained model's measured row, a Table 1
cell, a Fig. 1 cell) is saved as JSON the moment it is done, and reused when the command is run again.

    units = Units("report/units")
    row = units.get_or_compute("table2", "gen-seed0", settings, lambda: train_and_measure(job))

A unit's file name holds a hash of its settings, so changing ``--epochs`` (or anything else the unit
depends on) computes a new unit instead of reusing a stale one. Files are written atomically (temp
file + ``os.replace``): an interrupted run leaves either the whole unit or nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

__all__ = ["Units", "settings_key"]


def settings_key(settings: dict) -> str:
    """A short, stable hash of a JSON-able settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "unit"


class Units:
    """JSON units below ``root``: ``root/<part>/<name>-<settings hash>.json``.

    Counts what it served: ``reused`` and ``computed`` units and ``seconds`` (their compute time, a reused
    unit counting the time it originally took).
    """

    def __init__(self, root):
        self.root = Path(root)
        self.reused = self.computed = 0
        self.seconds = 0.0

    def path(self, part: str, name: str, settings: dict) -> Path:
        return self.root / _slug(part) / f"{_slug(name)}-{settings_key({'name': name, **settings})}.json"

    def load(self, part: str, name: str, settings: dict):
        """The saved value, or None when this unit was never finished (or its file is unreadable)."""
        try:
            record = json.loads(self.path(part, name, settings).read_text())
            value = record["value"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.reused += 1
        self.seconds += float(record.get("seconds") or 0.0)
        return value

    def save(self, part: str, name: str, settings: dict, value, seconds: float = 0.0) -> Path:
        """Write the unit atomically (value must be JSON-able)."""
        from gens.runs import write_json

        self.computed += 1
        self.seconds += float(seconds or 0.0)
        return write_json(self.path(part, name, settings),
                          {"name": name, "settings": settings, "seconds": seconds, "value": value})

    def get_or_compute(self, part: str, name: str, settings: dict, compute, log=None):
        """The saved unit, else ``compute()`` (saved at once, with its compute time)."""
        value = self.load(part, name, settings)
        if value is not None:
            if log:
                log(f"[{part}] {name}: reused {self.path(part, name, settings)}")
            return value
        start = time.perf_counter()
        value = compute()
        self.save(part, name, settings, value, time.perf_counter() - start)
        return value

    def counts(self) -> tuple[int, int, float]:
        return self.reused, self.computed, self.seconds

"""What `gens sample|reconstruct|interpolate` write: a PNG and, on request, the array as .npy.

The PNG goes to ``--out`` (default in the run folder); the array goes beside it with the suffix ``.npy`` when
``--npy`` is given or ``--out`` itself ends in ``.npy`` (then the PNG goes beside it with ``.png``), so the two
never overwrite each other. Data that are not images (flat (n, d) arrays) get the array only.
"""

from __future__ import annotations

import math
from pathlib import Path


def output_paths(out, default_png, npy: bool) -> tuple[Path, Path | None]:
    """``(png path, npy path or None)`` for ``--out`` (or ``default_png``) and ``--npy``."""
    out = Path(out) if out else Path(default_png)
    if out.suffix.lower() == ".npy":
        return out.with_suffix(".png"), out
    return out, (out.with_suffix(".npy") if npy else None)


def write_outputs(args, default_png, array, draw, what: str, shape) -> None:
    """Write ``draw(png_path)`` (None: the data are not images) and/or ``array`` as chosen by ``args``."""
    import numpy as np

    png, npy = output_paths(getattr(args, "out", None), default_png, getattr(args, "npy", False))
    if draw is None and npy is None:
        raise ValueError(f"run: data of shape {tuple(shape)} are not images; add --npy (or --out FILE.npy) to save "
                         f"the {what} as an array")
    if draw is not None:
        draw(png)
        print(f"wrote {png}")
    if npy is not None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, np.asarray(array))
        print(f"wrote {npy}")


def check_memory(name: str, n: int, bytes_each: int, what: str) -> None:
    """Refuse (ValueError naming ``name``) n items of ``bytes_each`` when they need more memory than is free."""
    free = _available_memory()
    need = int(n) * int(bytes_each)
    if free is not None and need > free:
        raise ValueError(f"{name}: {n} {what} need about {need / 1e9:.3g} GB of memory, more than the {free / 1e9:.3g} "
                         f"GB free; ask for at most {max(1, free // max(1, bytes_each))}")


def sample_bytes(cfg: dict) -> int:
    """Rough memory per decoded sample: the sample, its PNG copies and the decoder's activations."""
    d = math.prod(cfg.get("data_shape") or [1])
    widths = [int(w) for w in (cfg.get("hidden") or [])] + [int(cfg.get("latent_dim") or 1)]
    return 4 * (4 * d + 2 * sum(widths))


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

"""PNG figures for run folders: image grids, interpolations, latents over the target's contours, losses.

Pure functions: numpy arrays (or a metrics.csv path) in, one PNG file out, drawn with matplotlib's Agg
backend so no display is needed. Image grids are written pixel-exact (``matplotlib.image.imsave``): a
grid of ``n`` images of ``H x W`` pixels in ``nrow`` columns with ``pad`` pixels of padding is
``rows * (H + pad) + pad`` by ``nrow * (W + pad) + pad`` pixels, times ``scale``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from gens._validation import check_int

__all__ = [
    "as_images",
    "image_scale",
    "make_grid",
    "fidelity_curves",
    "image_grid",
    "interpolation_grid",
    "project_2d",
    "latent_scatter",
    "read_metrics_csv",
    "loss_curves",
]


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def as_images(x, data_shape):
    """x: (n, *data_shape) tensor/array -> numpy (n, C, H, W) for plotting, or None when the data are not
    images (flat data whose size is not a square)."""
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    if len(data_shape) == 3:
        return x.reshape(len(x), *data_shape)
    if len(data_shape) == 2:
        return x.reshape(len(x), 1, *data_shape)
    d = int(np.prod(data_shape))
    s = int(round(math.sqrt(d)))
    return x.reshape(len(x), 1, s, s) if s * s == d else None


def image_scale(data_shape) -> int:
    """Pixel magnification for figures: 8x8 digits x4, MNIST x2, 64x64 x1."""
    side = data_shape[-1] if len(data_shape) >= 2 else int(round(math.sqrt(data_shape[0])))
    return int(min(4, max(1, 64 // max(1, side))))


def _grid_images(images) -> np.ndarray:
    """images: (n, C, H, W) with C in {1, 3}, or (n, H, W) -> float array (n, H, W, C) clipped to [0, 1]."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: must have shape (n, C, H, W) with C 1 or 3, or (n, H, W); got {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("images: must hold at least one image")
    return np.clip(np.nan_to_num(x), 0.0, 1.0).transpose(0, 2, 3, 1)


def make_grid(images, nrow: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one array.

    images: (n, C, H, W) or (n, H, W), values in [0, 1]; nrow: images per row (default ceil(sqrt(n))).
    Returns (rows * (H + pad) + pad, nrow * (W + pad) + pad, C) with C 1 or 3.
    """
    x = _grid_images(images)
    n, h, w, c = x.shape
    nrow = check_int("nrow", nrow if nrow is not None else math.ceil(math.sqrt(n)), minimum=1)
    pad = check_int("pad", pad, minimum=0)
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), float(pad_value))
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def image_grid(images, path, nrow: int | None = None, pad: int = 1, scale: int = 1) -> Path:
    """Write images (n, C, H, W) or (n, H, W) in [0, 1] as one PNG grid; returns the path.

    Each pixel becomes a ``scale x scale`` block (nearest neighbour), so small images stay legible.
    """
    scale = check_int("scale", scale, minimum=1)
    grid = make_grid(images, nrow=nrow, pad=pad)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return _imsave(path, grid)


def interpolation_grid(images, path, pad: int = 1, scale: int = 1) -> Path:
    """Write interpolations (pairs, steps, C, H, W) or (pairs, steps, H, W): one row per pair."""
    x = np.asarray(images)
    if x.ndim not in (4, 5):
        raise ValueError(f"images: must have shape (pairs, steps, C, H, W) or (pairs, steps, H, W); got {x.shape}")
    pairs, steps = x.shape[:2]
    return image_grid(x.reshape(pairs * steps, *x.shape[2:]), path, nrow=steps, pad=pad, scale=scale)


def _imsave(path, grid: np.ndarray) -> Path:
    import matplotlib.image as mpimg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if grid.shape[2] == 1:  # grey as RGB: no colormap lookup, rounded to the nearest 8-bit level
        grid = np.repeat(grid, 3, axis=2)
    mpimg.imsave(path, np.round(grid * 255).astype(np.uint8), format="png")
    return path


def project_2d(z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear 2-D view of latents z: (n, l), l >= 2.

    The first two coordinates when l == 2, else PCA (principal axes of z). Returns (z2 (n, 2),
    center (l,), components (2, l)) with z2 = (z - center) @ components.T and orthonormal components,
    so a Gaussian N(mu, S) in latent space projects to N((mu - center) @ C.T, C @ S @ C.T).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"z: must have shape (n, l) with l >= 2, got {z.shape}")
    l = z.shape[1]
    if l == 2:
        center, comps = np.zeros(2), np.eye(2)
    else:
        center = z.mean(axis=0)
        _, _, vt = np.linalg.svd(z - center, full_matrices=False)
        comps = vt[:2]
        if comps.shape[0] < 2:  # fewer than 2 samples: fall back to the first two axes
            comps = np.eye(l)[:2]
    return (z - center) @ comps.T, center, comps


def _mixture_density_2d(points, weights, means, covs) -> np.ndarray:
    """Density of a 2-D Gaussian mixture at points (p, 2); means (K, 2), covs (K, 2, 2)."""
    out = np.zeros(len(points))
    for w, mu, cov in zip(weights, means, covs):
        d = points - mu
        inv = np.linalg.inv(cov)
        quad = np.einsum("pi,ij,pj->p", d, inv, d)
        out += w * np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    return out


def latent_scatter(
    z,
    path,
    labels=None,
    weights=None,
    means=None,
    covs=None,
    title: str | None = None,
    max_points: int = 5000,
) -> Path:
    """Scatter a 2-D projection of latents z (n, l) coloured by labels (n,) over the target's contours.

    The target is a Gaussian mixture given as weights (K,), means (K, l), covs (K, l, l) (leave all
    three None to draw no contours); it is projected with the same linear map as the latents
    (:func:`project_2d`), so the contours are the exact marginal density of the target in the plotted
    plane, drawn over the points at 1, 2 and 3 standard deviations (solid, dashed, dotted); for a mixture
    each component's 1 and 2 sd ellipses. For l == 1 the latents are drawn as a histogram under the
    target's 1-D density.
    """
    plt = pyplot()
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"z: must have shape (n, l) with n >= 1, got {z.shape}")
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    if labels is not None and len(labels) != len(z):
        raise ValueError(f"labels: must have one entry per latent ({len(z)}), got {len(labels)}")
    have_target = means is not None
    if have_target:
        means = np.asarray(means, dtype=np.float64).reshape(-1, z.shape[1])
        covs = np.asarray(covs, dtype=np.float64).reshape(-1, z.shape[1], z.shape[1])
        weights = np.full(len(means), 1.0 / len(means)) if weights is None else np.asarray(weights, float)
    if len(z) > max_points:  # a fixed subset keeps the figure readable and the call fast
        keep = np.random.default_rng(0).choice(len(z), max_points, replace=False)
        z = z[keep]
        labels = None if labels is None else labels[keep]

    fig, ax = plt.subplots(figsize=(5.5, 5))
    if z.shape[1] == 1:
        _latent_hist(ax, z[:, 0], labels, weights, means, covs)
    else:
        z2, center, comps = project_2d(z)
        if have_target:
            m2 = (means - center) @ comps.T
            c2 = np.einsum("ij,kjl,ml->kim", comps, covs, comps)
            sd = np.sqrt(np.max(np.diagonal(c2, axis1=1, axis2=2), axis=1))
            lo = np.minimum(np.percentile(z2, 0.5, axis=0), (m2 - 3 * sd[:, None]).min(axis=0))
            hi = np.maximum(np.percentile(z2, 99.5, axis=0), (m2 + 3 * sd[:, None]).max(axis=0))
            gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
            dens = _mixture_density_2d(np.stack([gx.ravel(), gy.ravel()], 1), weights, m2, c2)
        _scatter(ax, z2, labels)
        if have_target and len(m2) > 1:  # a mixture: each component's 1 and 2 sd ellipses
            _component_ellipses(ax, m2, c2)
        elif have_target:  # drawn over the points, at the 1, 2 and 3 sd levels
            peak = _mixture_density_2d(m2, weights, m2, c2).max()
            levels = sorted(peak * np.exp(-0.5 * np.array([1.0, 2.0, 3.0]) ** 2))
            ax.contour(gx, gy, dens.reshape(gx.shape), levels=levels, colors="k", linewidths=1.2,
                       linestyles=["dotted", "dashed", "solid"], zorder=3)
        axis = "z" if z.shape[1] == 2 else "PC"
        ax.set_xlabel(f"{axis}1")
        ax.set_ylabel(f"{axis}2")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or f"latents (l={z.shape[1]}) over the target's density")
    return save_figure(fig, path)


def _component_ellipses(ax, means, covs) -> None:
    """The 1 sd (solid) and 2 sd (dashed) ellipses of every 2-D Gaussian component: means (K, 2), covs (K, 2, 2)."""
    t = np.linspace(0.0, 2.0 * np.pi, 100)
    circle = np.stack([np.cos(t), np.sin(t)])  # (2, 100)
    for mu, cov in zip(means, covs):
        vals, vecs = np.linalg.eigh(cov)
        ring = vecs @ (np.sqrt(np.clip(vals, 0.0, None))[:, None] * circle)
        for r, style in ((1.0, "-"), (2.0, "--")):
            ax.plot(mu[0] + r * ring[0], mu[1] + r * ring[1], "k", ls=style, lw=1.0, zorder=3)


def _scatter(ax, z2, labels) -> None:
    if labels is None:
        ax.scatter(z2[:, 0], z2[:, 1], s=4, alpha=0.6)
        return
    classes = np.unique(labels)
    cmap = pyplot().get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        sel = labels == c
        ax.scatter(z2[sel, 0], z2[sel, 1], s=4, alpha=0.7, color=cmap(i % cmap.N), label=str(c))
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="upper right", ncol=2)


def _latent_hist(ax, z1, labels, weights, means, covs) -> None:
    groups = [z1] if labels is None else [z1[labels == c] for c in np.unique(labels)]
    names = None if labels is None else [str(c) for c in np.unique(labels)]
    ax.hist(groups, bins=40, density=True, stacked=True, label=names)
    if means is not None:
        x = np.linspace(min(z1.min(), (means - 3).min()), max(z1.max(), (means + 3).max()), 400)
        sd = np.sqrt(covs[:, 0, 0])
        dens = sum(w * np.exp(-0.5 * ((x - m[0]) / s) ** 2) / (s * np.sqrt(2 * np.pi)) for w, m, s in zip(weights, means, sd))
        ax.plot(x, dens, "k-", lw=1.5, label="target")
    ax.set_xlabel("z")
    if names is not None or means is not None:
        ax.legend(fontsize=7)


def read_metrics_csv(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a Lightning CSVLogger metrics.csv: {column: (steps, values)} over the rows where it is set.

    The ``step`` column gives the x values (row index if absent); ``epoch`` and ``step`` are not returned.
    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its last value;
    steps come out sorted.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, dict[float, float]] = {}
    for i, row in enumerate(rows):
        step = _to_float(row.get("step"))
        step = float(i) if step is None else step
        for key, value in row.items():
            if key in ("epoch", "step") or key is None:
                continue
            v = _to_float(value)
            if v is not None:
                out.setdefault(key, {})[step] = v
    return {k: (np.asarray(sorted(d)), np.asarray([d[s] for s in sorted(d)])) for k, d in out.items()}


def _to_float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def loss_curves(metrics_csv, path, title: str | None = None) -> Path:
    """Plot every logged metric of a Lightning metrics.csv against the training step.

    Columns are grouped by name without the ``train``/``val``/``test`` prefix and ``_step``/``_epoch``
    suffix (``train/recon`` and ``val/recon`` share a panel), one panel per group.
    """
    plt = pyplot()
    series = read_metrics_csv(metrics_csv)
    if not series:
        raise ValueError(f"metrics_csv: {metrics_csv} holds no logged values")
    groups: dict[str, list[str]] = {}
    for key in series:
        if key.startswith("fidelity/"):  # fidelity_curves draws these
            continue
        base = re.sub(r"^(train|val|test)[/_]", "", key)
        base = re.sub(r"_(step|epoch)$", "", base)
        groups.setdefault(base, []).append(key)
    ncol = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(4.2 * ncol, 3.2 * nrows), squeeze=False)
    for ax, (base, keys) in zip(axes.ravel(), sorted(groups.items())):
        for key in sorted(keys):
            x, y = series[key]
            style = "o-" if len(x) < 30 else "-"
            ax.plot(x, y, style, ms=3, lw=1.2, label=key)
        ax.set_title(base)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(groups) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def fidelity_curves(metrics_csv, path, title: str | None = None) -> Path:
    """Plot the ``fidelity/*`` columns of a metrics.csv (``gens.fidelity.FidelityMonitor``) against the step.

    Left: the extreme per-dimension std ratios and covariance eigenvalues relative to the predicted
    distribution, with the accepted band (``gens.fidelity.STD_RANGE``, ``EIG_MIN``); middle: the
    whitened-entropy gap; right: eq. 2's JSD against a fresh bank (GEN only)."""
    from gens.fidelity import EIG_MIN, STD_RANGE

    plt = pyplot()
    series = {k[len("fidelity/"):]: v for k, v in read_metrics_csv(metrics_csv).items() if k.startswith("fidelity/")}
    if not series:
        raise ValueError(f"metrics_csv: {metrics_csv} holds no fidelity/* values")
    panels = [("spread vs predicted (1 = on target)", ["std_min", "std_max", "eig_min", "eig_max"]),
              ("whitened entropy gap (nats)", ["gap"]), ("JSD vs fresh bank (nats)", ["jsd"])]
    panels = [(t, [k for k in keys if k in series]) for t, keys in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for key in keys:
            x, y = series[key]
            ax.plot(x, y, "o-" if len(x) < 30 else "-", ms=3, lw=1.2, label=key)
        if "std_min" in keys or "eig_min" in keys:
            ax.axhspan(*STD_RANGE, color="tab:green", alpha=0.12, label="std band")
            ax.axhline(EIG_MIN, color="tab:red", lw=0.8, ls="--", label="eig floor")
            ax.axhline(1.0, color="k", lw=0.6)
            ax.set_yscale("log")
        else:
            ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG (parent folders created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


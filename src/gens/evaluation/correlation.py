"""Sec. 5.1 / Fig. 1: how well do a KDE and a neural discriminator track a controlled divergence?

p_s is a mixture of two standard normals whose means are s apart along the first axis, whitened
(zero mean, identity covariance), so it differs from the target N(0, I_l) only in shape; s runs over
[0, 6]. Both estimators report the Jensen-Shannon divergence in nats, in [0, log 2]:

- KDE (paper eq. 2): JSD = log 2 + J / 2 with J = mean_{z'} log[p_e / (p_e + p_t)] +
  mean_{z''} log[p_t / (p_e + p_t)], p_e the KDE of a bank of m samples of p_s with h = h_opt(l, m)
  (Sec. 3), z' fresh samples of p_s, z'' samples of N(0, I) and p_t its analytic density.
- NN: a discriminator D (three hidden layers of 10 l, 5 l and 2 l units, LeakyReLU) trained by
  binary cross-entropy on m samples of each distribution, a fifth of them held out for early
  stopping (the weights of the best held-out loss are kept). JSD = log 2 + (1/2)[mean_{p_s} log D +
  mean_{N} log(1 - D)] on fresh evaluation samples (the variational lower bound that a GAN
  discriminator maximises; it can be negative when D is worse than chance).

Both methods see the same budget: m "training" samples of p_s (the bank / the discriminator's data;
the NN also gets m samples of N(0, I) where the KDE uses the analytic density) and ``n_eval`` fresh
samples of each distribution to evaluate on. Every sample set is whitened by its own mean and
covariance ("we whiten all datasets"). The Pearson correlation of the estimates with s (over all
separations and trials of a cell) measures how well each method tracks the divergence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gens._validation import check_float, check_int
from gens.plots import pyplot, save_figure

__all__ = ["mixture_samples", "normal_samples", "kde_jsd", "nn_jsd", "Discriminator", "correlation_study",
           "CorrelationResults", "plot_line", "plot_grid", "plot_examples", "QUICK", "DEFAULTS"]

# the paper's sweep is not stated beyond l = 5, m = 1000, 20 trials, s in [0, 6]; these are feasible on CPU
DEFAULTS = dict(dims=(2, 5, 10, 20), sizes=(250, 500, 1000, 2000), separations=tuple(np.linspace(0, 6, 7)),
                trials=5)
QUICK = dict(dims=(2,), sizes=(200,), separations=(0.0, 3.0, 6.0), trials=2)


def _whiten(z: torch.Tensor) -> torch.Tensor:
    from gens.evaluation.entropy import whiten

    return whiten(z)


def mixture_samples(s: float, n: int, l: int, generator: torch.Generator | None = None,
                    whiten: bool = True) -> torch.Tensor:
    """n samples of 0.5 N(-(s/2) e_1, I_l) + 0.5 N((s/2) e_1, I_l), whitened: (n, l) float64.

    ``whiten=False`` returns the raw mixture (covariance I + (s^2 / 4) e_1 e_1^T).
    """
    s = check_float("s", s, minimum=0.0)
    n = check_int("n", n, minimum=2)
    l = check_int("l", l, minimum=1)
    z = torch.randn(n, l, generator=generator, dtype=torch.float64)
    sign = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    z[:, 0] += sign * (s / 2)
    return _whiten(z) if whiten else z


def normal_samples(n: int, l: int, generator: torch.Generator | None = None, whiten: bool = True) -> torch.Tensor:
    """n samples of N(0, I_l), whitened like the mixture samples: (n, l) float64."""
    z = torch.randn(check_int("n", n, minimum=2), check_int("l", l, minimum=1), generator=generator,
                    dtype=torch.float64)
    return _whiten(z) if whiten else z


def kde_jsd(bank: torch.Tensor, z_e: torch.Tensor, z_t: torch.Tensor, h: float) -> float:
    """JSD(p_e || N(0, I)) in nats from the KDE of ``bank`` (paper eq. 2): log 2 + J / 2.

    bank: (m, l) samples defining p_e; z_e: (n1, l) independent samples of the same distribution;
    z_t: (n2, l) samples of N(0, I_l); h: the kernel bandwidth (h_opt(l, m) in the paper).
    """
    from gens.divergence import jsd_estimate
    from gens.targets import StandardNormal

    with torch.no_grad():
        j = jsd_estimate(bank, z_e, z_t, StandardNormal(bank.shape[1]), h)
    return math.log(2.0) + 0.5 * float(j)


class Discriminator(torch.nn.Module):
    """MLP l -> 10 l -> 5 l -> 2 l -> 1 logit (LeakyReLU 0.2): the Sec. 5.1 NN adversary."""

    def __init__(self, l: int, widths=(10, 5, 2)):
        super().__init__()
        layers, d = [], l
        for w in widths:
            layers += [torch.nn.Linear(d, w * l), torch.nn.LeakyReLU(0.2)]
            d = w * l
        layers.append(torch.nn.Linear(d, 1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _bce(model, x, y):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)


def nn_jsd(p_train: torch.Tensor, q_train: torch.Tensor, p_eval: torch.Tensor, q_eval: torch.Tensor, *,
           val_fraction: float = 0.2, max_epochs: int = 200, patience: int = 10, batch_size: int = 128,
           lr: float = 3e-3, seed: int = 0, num_threads: int | None = 1, return_info: bool = False):
    """JSD(p || q) in nats from a trained discriminator: log 2 + (1/2)[E_p log D + E_q log(1 - D)].

    p_train: (m, l), q_train: (m', l) samples used for training (``val_fraction`` of each held out for
    early stopping: training stops after ``patience`` epochs without a lower held-out cross-entropy,
    and the best weights are restored); p_eval, q_eval: fresh samples the JSD is evaluated on.
    Adam(lr), minibatches of ``batch_size``, float32; ``seed`` fixes initialisation and shuffling
    without touching the global RNG. ``num_threads``: torch threads while training (1 by default: the
    network is tiny, and a thread pool on a busy machine made it many times slower; None: unchanged).
    Returns the JSD (float), or (JSD, info dict) with ``return_info``.
    """
    val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=1.0,
                               min_inclusive=False, max_inclusive=False)
    max_epochs = check_int("max_epochs", max_epochs, minimum=1)
    patience = check_int("patience", patience, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
    l = p_train.shape[1]
    for name, x in (("q_train", q_train), ("p_eval", p_eval), ("q_eval", q_eval)):
        if x.ndim != 2 or x.shape[1] != l:
            raise ValueError(f"{name}: must have shape (n, {l}) like p_train, got {tuple(x.shape)}")
    g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))

    def split(x):
        x = x.float()[torch.randperm(len(x), generator=g)]
        k = max(1, int(round(val_fraction * len(x))))
        if k >= len(x):
            raise ValueError(f"val_fraction: leaves no training samples out of {len(x)}")
        return x[k:], x[:k]

    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(check_int("num_threads", num_threads, minimum=1))
    try:
        return _train_and_score(split(p_train), split(q_train), p_eval, q_eval, l, max_epochs, patience,
                                batch_size, lr, g, return_info)
    finally:
        torch.set_num_threads(threads)


def _train_and_score(p_split, q_split, p_eval, q_eval, l, max_epochs, patience, batch_size, lr, g, return_info):
    (pt, pv), (qt, qv) = p_split, q_split
    xt, yt = torch.cat([pt, qt]), torch.cat([torch.ones(len(pt)), torch.zeros(len(qt))])
    xv, yv = torch.cat([pv, qv]), torch.cat([torch.ones(len(pv)), torch.zeros(len(qv))])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        model = Discriminator(l)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, best_epoch, epoch = math.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(batch_size):
            opt.zero_grad(set_to_none=True)
            _bce(model, xt[idx], yt[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(_bce(model, xv, yv))
        if val < best:
            best, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    with torch.no_grad():
        lp = torch.nn.functional.logsigmoid(model(p_eval.float())).mean()
        lq = torch.nn.functional.logsigmoid(-model(q_eval.float())).mean()
    jsd = math.log(2.0) + 0.5 * float(lp + lq)
    info = {"epochs": epoch, "best_epoch": best_epoch, "val_bce": best}
    return (jsd, info) if return_info else jsd


@dataclass
class CorrelationResults:
    """Per (l, m) cell: JSD estimates (separations x trials) for "kde" and "nn", h_opt, Pearson r, p."""

    separations: list[float]
    trials: int
    cells: list[dict] = field(default_factory=list)  # {l, m, h, kde, nn, r: {kde, nn}, p: {kde, nn}}
    settings: dict = field(default_factory=dict)

    def cell(self, l: int, m: int) -> dict:
        for c in self.cells:
            if c["l"] == l and c["m"] == m:
                return c
        raise ValueError(f"cell: no results for l={l}, m={m}")

    @property
    def dims(self) -> list[int]:
        return sorted({c["l"] for c in self.cells})

    @property
    def sizes(self) -> list[int]:
        return sorted({c["m"] for c in self.cells})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CorrelationResults":
        return cls(**d)

    def table(self, alpha: float = 0.05) -> str:
        """Markdown grid: rows l, columns m, cells "r_NN | r_KDE" with the significant higher one in bold."""
        head = "| l \\ m | " + " | ".join(str(m) for m in self.sizes) + " |"
        lines = [head, "|---" * (len(self.sizes) + 1) + "|"]
        for l in self.dims:
            row = [self.cell_text(l, m, alpha, sep=" \\| ") for m in self.sizes]
            lines.append(f"| {l} | " + " | ".join(row) + " |")
        return "\n".join(lines)

    def cell_text(self, l: int, m: int, alpha: float = 0.05, sep: str = " | ") -> str:
        """"r_NN SEP r_KDE" of cell (l, m), the significantly higher one (``winner``) in bold."""
        c = self.cell(l, m)
        txt = {k: f"{c['r'][k]:.2f}" for k in ("nn", "kde")}
        win = winner(c, alpha)
        if win:
            txt[win] = f"**{txt[win]}**"
        return f"{txt['nn']}{sep}{txt['kde']}"


def winner(cell: dict, alpha: float = 0.05) -> str | None:
    """"kde" or "nn": the method with the higher correlation, if that correlation is significant (p < alpha)."""
    r, p = cell["r"], cell["p"]
    rr = {k: -math.inf if math.isnan(v) else v for k, v in r.items()}
    best = max(("kde", "nn"), key=rr.get)
    return best if (p[best] < alpha and rr[best] > rr["kde" if best == "nn" else "nn"]) else None


def _pearson(s: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    from scipy.stats import pearsonr

    x, y = np.repeat(s, values.shape[1]), values.ravel()
    if np.ptp(y) == 0 or np.ptp(x) == 0:
        return math.nan, math.nan
    res = pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


def correlation_study(dims=DEFAULTS["dims"], sizes=DEFAULTS["sizes"], separations=DEFAULTS["separations"],
                      trials: int = DEFAULTS["trials"], seed: int = 0, n_eval: int | None = None,
                      bandwidth_trials: int = 10, bandwidth: dict | None = None, nn: dict | None = None,
                      methods=("kde", "nn"), progress=None) -> CorrelationResults:
    """Run the Fig. 1 study over every (l, m) cell; returns ``CorrelationResults``.

    For each cell h_opt(l, m) comes from ``gens.bandwidth.optimal_bandwidth(StandardNormal(l), m,
    bandwidth_trials)`` (cached on disk) unless ``bandwidth`` maps (l, m) (or "l,m") to an h. Every
    (s, trial) draws fresh sets: m mixture samples (bank / NN training), m N(0, I) samples (NN training),
    and ``n_eval`` (default m) evaluation samples of each. ``nn``: keyword arguments of ``nn_jsd``.
    ``progress``: callable(str) for a line per cell. Pearson r and its two-sided p-value between s and
    the estimates over all separations x trials (scipy.stats.pearsonr).
    """
    dims = [check_int("dims", l, minimum=1) for l in dims]
    sizes = [check_int("sizes", m, minimum=10) for m in sizes]
    separations = [check_float("separations", s, minimum=0.0) for s in separations]
    if len(set(separations)) < 2:
        raise ValueError("separations: need at least two distinct values to correlate with")
    trials = check_int("trials", trials, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    bad = set(methods) - {"kde", "nn"}
    if bad or not methods:
        raise ValueError(f"methods: must be a non-empty subset of ('kde', 'nn'), got {tuple(methods)}")
    nn = dict(nn or {})
    bandwidth = {(tuple(int(v) for v in k.split(",")) if isinstance(k, str) else tuple(k)): float(h)
                 for k, h in (bandwidth or {}).items()}
    out = CorrelationResults(separations=separations, trials=trials,
                             settings={"seed": seed, "n_eval": n_eval, "bandwidth_trials": bandwidth_trials,
                                       "nn": nn, "methods": list(methods)})
    s_arr = np.asarray(separations)
    for l in dims:
        for m in sizes:
            h = bandwidth.get((l, m))
            if h is None and "kde" in methods:
                from gens.bandwidth import optimal_bandwidth
                from gens.targets import StandardNormal

                h = optimal_bandwidth(StandardNormal(l), m, trials=bandwidth_trials, seed=seed, warn=False).h
            ne = m if n_eval is None else check_int("n_eval", n_eval, minimum=2)
            vals = {k: np.full((len(separations), trials), np.nan) for k in ("kde", "nn")}
            for si, s in enumerate(separations):
                for t in range(trials):
                    g = torch.Generator().manual_seed(_cell_seed(seed, l, m, si, t))
                    bank, z_e = mixture_samples(s, m, l, g), mixture_samples(s, ne, l, g)
                    q_train, z_t = normal_samples(m, l, g), normal_samples(ne, l, g)
                    if "kde" in methods:
                        vals["kde"][si, t] = kde_jsd(bank, z_e, z_t, h)
                    if "nn" in methods:
                        vals["nn"][si, t] = nn_jsd(bank, q_train, z_e, z_t, seed=_cell_seed(seed, l, m, si, t),
                                                   **nn)
            cell = {"l": l, "m": m, "h": h, "kde": vals["kde"].tolist(), "nn": vals["nn"].tolist(), "r": {}, "p": {}}
            for k in ("kde", "nn"):
                cell["r"][k], cell["p"][k] = _pearson(s_arr, vals[k]) if k in methods else (math.nan, math.nan)
            out.cells.append(cell)
            if progress:
                progress(f"l={l} m={m} h={h if h is None else round(h, 3)}: r_nn={cell['r']['nn']:.3f} "
                         f"(p={cell['p']['nn']:.2g}) r_kde={cell['r']['kde']:.3f} (p={cell['p']['kde']:.2g})")
    return out


def _cell_seed(seed, l, m, si, t) -> int:
    return (((seed * 1_000_003 + l) * 100_003 + m) * 1009 + si) * 1013 + t


# --------------------------------------------------------------------------------------------- plots

def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=110)


def plot_line(results: CorrelationResults, path, l: int = 5, m: int = 1000) -> Path:
    """Fig. 1 middle: mean +- sd over trials of each method's JSD estimate against s, for cell (l, m).

    KDE on the left axis, NN on the right (their scales differ), both in nats."""
    plt = pyplot()
    c = results.cell(l, m)
    s = np.asarray(results.separations)
    fig, ax = plt.subplots(figsize=(6, 4))
    axes = {"kde": ax, "nn": ax.twinx()}
    colors = {"kde": "tab:blue", "nn": "tab:red"}
    for k, a in axes.items():
        v = np.asarray(c[k], dtype=float)
        sd = v.std(1, ddof=1) if v.shape[1] > 1 else np.zeros(len(s))
        a.errorbar(s, v.mean(1), yerr=sd, color=colors[k], marker="o", capsize=3,
                   label=f"{k.upper()} (r = {c['r'][k]:.2f})")
        a.set_ylabel(f"{k.upper()} JSD estimate (nats)", color=colors[k])
        a.tick_params(axis="y", colors=colors[k])
    ax.set_xlabel("separation s")
    ax.set_title(f"JSD vs separation, l={l}, m={m}, {results.trials} trials")
    handles = [h for a in axes.values() for h in a.get_legend_handles_labels()[0]]
    labels = [t for a in axes.values() for t in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, loc="upper left")
    return _save(fig, path)


def plot_grid(results: CorrelationResults, path, alpha: float = 0.05) -> Path:
    """Fig. 1 bottom: Pearson r per (l, m) as "NN | KDE"; the higher one bold when significant (p < alpha).

    Cell colour: r_KDE - r_NN (blue: KDE higher)."""
    plt = pyplot()
    dims, sizes = results.dims, results.sizes
    diff = np.array([[results.cell(l, m)["r"]["kde"] - results.cell(l, m)["r"]["nn"] for m in sizes] for l in dims])
    fig, ax = plt.subplots(figsize=(1.7 * len(sizes) + 3.0, 0.8 * len(dims) + 1.5))
    im = ax.imshow(np.nan_to_num(diff), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, label="r_KDE - r_NN")
    for i, l in enumerate(dims):
        for j, m in enumerate(sizes):
            c = results.cell(l, m)
            win = winner(c, alpha)
            for k, dx, ha in (("nn", -0.04, "right"), ("kde", 0.04, "left")):
                ax.text(j + dx, i, f"{c['r'][k]:.2f}", ha=ha, va="center",
                        fontweight="bold" if win == k else "normal", fontsize=10)
            ax.text(j, i, "|", ha="center", va="center", fontsize=10)
    ax.set_xticks(range(len(sizes)), [str(m) for m in sizes])
    ax.set_yticks(range(len(dims)), [str(l) for l in dims])
    ax.set_xlabel("samples m")
    ax.set_ylabel("dimension l")
    ax.set_title(f"Pearson r (JSD vs s): NN | KDE; bold = higher and p < {alpha:g}")
    return _save(fig, path)


def plot_examples(path, separations=(0.0, 3.0, 6.0), n: int = 1000, seed: int = 0) -> Path:
    """Fig. 1 top: 2-D samples of the whitened mixtures for a few separations."""
    plt = pyplot()
    g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    fig, axes = plt.subplots(1, len(separations), figsize=(3 * len(separations), 3), sharex=True, sharey=True)
    for ax, s in zip(np.atleast_1d(axes), separations):
        z = mixture_samples(s, n, 2, g).numpy()
        ax.scatter(z[:, 0], z[:, 1], s=2, alpha=0.5)
        ax.set_title(f"s = {s:g}")
        ax.set_aspect("equal")
    return _save(fig, path)

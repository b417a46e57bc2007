"""The optimal KDE bandwidth h_opt(target, l, m) of Section 3 and supplement eqs. 1-3.

h_opt maximises the eq. 2 JSD estimate J(h) between the KDE of a bank of m samples and the target
when the "encoded" samples are themselves drawn from the target (the pessimistic case: the hardest
one to tell apart). A trial draws the bank z (m) and, independently of it, query samples from the
target (``queries`` of them, m by default) that serve as both z' ~ p_e and z'' ~ p_t: the paper's
"two sample sets from the target distribution". J's expectation is the same as with separate z'
and z'' sets (``independent=True``: three sets, twice the work). z' must not be the bank itself,
or J grows without bound as h -> 0.

With r(z) = p_e / (p_e + p_t), A(z) = sum_i G_h(z - z_i) ||z - z_i||^2 / sum_i G_h(z - z_i) and
g(z) = d log p_e(z) / dh = A / h^3 - l / h:

    J(h)   = mean_{z'} log r(z') + mean_{z''} log(1 - r(z''))                       (supp. eq. 1)
    dJ/dh  = mean_{z'} (1 - r) g - mean_{z''} r g                                    (supp. eq. 2)
    h^2   <- [mean_{z'} (1 - r) A - mean_{z''} r A] / (l [1 - mean_{z'} r - mean_{z''} r])  (supp. eq. 3)

The last line is dJ/dh = 0 multiplied by h^3. Per trial the squared distances are computed once
(float64), so every evaluation of J, dJ/dh or the eq. 3 map is one pass of exponentials.

The root of dJ/dh is found by safeguarded Newton steps on the analytic second derivative (one more
weighted sum in the same pass; see ``_Trial.slope``): from the previous trial's root that is 2-3
passes a trial, where the bracket walk plus brentq used before (issue 17) took 5-6. Exponents are
floored at ``_EXP_FLOOR``: terms below e^-80 of a row's largest cannot change a float32 sum, and
torch's float32 exp takes a slow path for arguments below about -87 (over 10x slower per element);
a mixture target's far modes put many pairs there (13% at h_opt for mog:10, l = 8; 37% at h = 0.55),
the standard normal almost none. Together: h_opt(mog:10, l = 8, m = 10000) in 8.5 s CPU, was 51 s.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gens._bandwidth_trial import _Trial
from gens._validation import check_choice, check_float, check_int

__all__ = [
    "BandwidthResult",
    "BandwidthWarning",
    "corrected_bandwidth",
    "optimal_bandwidth",
    "optimal_bandwidth_normal",
    "jsd_curve",
    "METHODS",
    "PAPER_TABLE1",
]

METHODS = ("root", "fixed_point")
PROTOCOL = 2  # bump when the estimate changes, so stale cache entries are not reused
H_MIN, H_MAX = 0.01, 4.0


# The paper's Table 1 (10 trials): PAPER_TABLE1[l][m] = (mean, sd); None where it reports ">1.0".
PAPER_TABLE1 = {
    2: {250: (0.46, 0.08), 500: (0.41, 0.04), 1000: (0.38, 0.03), 2000: (0.34, 0.02), 4000: (0.31, 0.03), 8000: (0.28, 0.01)},
    5: {250: (0.65, 0.03), 500: (0.59, 0.02), 1000: (0.55, 0.02), 2000: (0.51, 0.01), 4000: (0.47, 0.01), 8000: (0.44, 0.01)},
    10: {250: (0.77, 0.02), 500: (0.73, 0.01), 1000: (0.69, 0.01), 2000: (0.66, 0.01), 4000: (0.63, 0.01), 8000: (0.60, 0.01)},
    20: {250: (0.92, 0.01), 500: (0.89, 0.01), 1000: (0.86, 0.00), 2000: (0.82, 0.01), 4000: (0.80, 0.00), 8000: (0.77, 0.00)},
    40: {250: None, 500: None, 1000: None, 2000: (0.98, 0.00), 4000: (0.95, 0.00), 8000: (0.94, 0.00)},
}


class BandwidthWarning(UserWarning):
    """h_opt >= 1: the KDE kernel is as wide as the target itself."""


def corrected_bandwidth(h: float) -> float:
    """Bias-corrected bandwidth h_corr = alpha h with alpha^2 = 1 / (1 + h^2) (always < 1)."""
    if h == math.inf:  # no finite maximiser: the limit of h / sqrt(1 + h^2)
        return 1.0
    h = check_float("h", h, minimum=0.0, min_inclusive=False)
    return h / math.sqrt(1.0 + h * h)


@dataclass
class BandwidthResult:
    """h_opt over trials: mean ``h``, sample sd ``std`` and the per-trial ``values``.

    A trial whose J(h) still increases at h = 4 has value inf (no finite maximiser); then ``h`` is
    inf and ``std`` nan. ``exceeds_one`` marks the paper's ">1.0" cells.
    """

    h: float
    std: float
    values: list[float]
    dim: int
    m: int
    method: str
    target: dict
    exceeds_one: bool
    queries: int = 0
    independent: bool = False
    seed: int = 0
    seconds: float = 0.0

    @property
    def corrected(self) -> float:
        """The bias-corrected bandwidth h / sqrt(1 + h^2) of the mean."""
        return corrected_bandwidth(self.h)

    @property
    def trials(self) -> int:
        return len(self.values)

    def __str__(self) -> str:
        text = f"h_opt = {self.h:.3f} +- {self.std:.3f} (l={self.dim}, m={self.m}, {self.trials} trials, {self.method})"
        return text + (" >= 1: the method breaks down" if self.exceeds_one else "")


def _root(trial: _Trial, h0: float, rtol: float = 1e-4, max_iter: int = 100) -> float:
    """The root of dJ/dh (the maximiser of J) by Newton steps, safeguarded by a bracket.

    dJ/dh > 0 below h_opt and < 0 above it. Each pass gives dJ/dh and d^2J/dh^2 at h; the Newton
    step is taken when J is concave there and the step stays inside the bracket found so far (and
    within a factor 2 of h while only one side is known); otherwise the bracket is bisected, or h is
    doubled or halved towards the sign change. Stops after a Newton step below ``rtol`` h, applying
    it (Newton's error is then of order (rtol h)^2 / h: about 1e-8 h, where brentq's tolerance was
    1e-5), or when the bracket is narrower than that. inf when dJ/dh > 0 still at H_MAX (no finite
    maximiser), H_MIN when dJ/dh < 0 already there.
    """
    lo, hi = None, None  # dJ/dh(lo) > 0 > dJ/dh(hi)
    h = min(max(h0, H_MIN), H_MAX)
    for _ in range(max_iter):
        f, df = trial.slope(h)
        if f == 0.0:
            return h
        if f > 0:
            if h >= H_MAX:
                return math.inf
            lo = h
        else:
            if h <= H_MIN:
                return H_MIN
            hi = h
        new = h - f / df if df < 0 else math.nan
        newton = (lo is None or lo < new) and (hi is None or new < hi) and 0.5 * h <= new <= 2.0 * h
        if not newton:
            if lo is not None and hi is not None:
                new = 0.5 * (lo + hi)
            else:
                new = 2.0 * h if f > 0 else 0.5 * h
        new = min(max(new, H_MIN), H_MAX)
        tol = rtol * h
        if (newton and abs(new - h) < tol) or (lo is not None and hi is not None and hi - lo < tol):
            return new
        h = new
    raise RuntimeError(f"the root search on dJ/dh did not converge in {max_iter} steps (last h={h:.5f})")


def _fixed_point(trial: _Trial, h0: float, tol: float = 1e-5, max_iter: int = 100) -> float:
    """Solve h = T(h), T the supplement eq. 3 map, by safeguarded Wegstein iteration from h0.

    Plain iteration h <- T(h) diverges in low dimensions (T'(h_opt) is about -2.7 for l=2, m=250),
    so each step mixes h and T(h) with the weight that a secant estimate of T' makes exact:
    h <- q h + (1 - q) T(h), q = s / (s - 1), s = slope of T over the last two steps. T is only
    defined where the right-hand side of eq. 3 is positive (near h_opt; for l=2 not much above it),
    so a step into the undefined region is halved until T is defined again.
    """
    h, t = h0, trial.fixed_point_map(h0)
    while not t < H_MAX:  # start where eq. 3 is defined (it is for small h)
        h /= 1.25
        if h < H_MIN:
            return math.inf
        t = trial.fixed_point_map(h)
    q = 0.5  # damped first step
    for _ in range(max_iter):
        new = min(max(q * h + (1 - q) * t, H_MIN), H_MAX)
        if abs(new - h) < tol:
            return new
        t_new = trial.fixed_point_map(new)
        for _ in range(40):
            if t_new < H_MAX:
                break
            new = 0.5 * (h + new)
            t_new = trial.fixed_point_map(new)
        else:
            return math.inf
        s = (t_new - t) / (new - h)
        q = min(max(s / (s - 1.0), -10.0), 0.9) if s != 1.0 else 0.5
        h, t = new, t_new
    raise RuntimeError(f"fixed-point iteration did not converge in {max_iter} steps (last h={h:.5f})")


def _initial_guess(dim: int, m: int) -> float:
    # a Scott's-rule-like start, about 10% off h_opt for the standard normal of Table 1
    return min(0.9, 1.15 * m ** (-1.0 / (dim + 4)))


def _cache_path(target, m, trials, method, seed, queries, independent, cache_dir) -> Path:
    base = Path(cache_dir or os.environ.get("GENS_CACHE_DIR") or Path.home() / ".cache" / "gens")
    sets = "i" if independent else "s"
    return base / f"bandwidth-v{PROTOCOL}-{target.cache_key()}-m{m}-q{queries}{sets}-t{trials}-{method}-s{seed}.json"


def _read_cache(path: Path) -> BandwidthResult | None:
    try:
        return BandwidthResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # missing or corrupt: recompute
        return None


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _warn(result: BandwidthResult) -> None:
    h = f"{result.h:.3f}" if math.isfinite(result.h) else f"> {H_MAX:g} (J(h) still increases there)"
    warnings.warn(BandwidthWarning(
        f"h_opt = {h} >= 1 for l={result.dim}, m={result.m}: the kernel is as wide as the "
        f"target, so the KDE cannot resolve it and the Sec. 4 generator N(0, (1 - h^2) I) does not exist; "
        f"the method breaks down. Use a larger bank m, a smaller latent dimension l, or the corrected "
        f"bandwidth h_corr = h / sqrt(1 + h^2) = {result.corrected:.3f} (result.corrected)."), stacklevel=3)


@contextmanager
def _torch_threads(n: int | None):
    """Run with n intra-op threads (restored afterwards); None leaves torch's setting alone."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def optimal_bandwidth(target, m: int, trials: int = 10, method: str = "root", seed: int = 0, cache: bool = True,
                      cache_dir: str | os.PathLike | None = None, progress: bool = False, warn: bool = True,
                      queries: int | None = None, independent: bool = False,
                      num_threads: int | None = 1) -> BandwidthResult:
    """h_opt(target, l, m): the maximiser of J(h) (eq. 2) between sample sets drawn from ``target``.

    method: "root" (the root of the analytic dJ/dh of supplement eq. 2, the paper's choice, by
    Newton steps on the analytic second derivative inside a bracket; ``_root``) or
    "fixed_point" (supplement eq. 3). Each of ``trials`` trials draws a bank of m target samples and
    ``queries`` (default m) query samples used as both z' and z''; ``independent=True`` draws
    separate z' and z'' sets instead. Trials after the first start from the previous root.
    Results are cached as JSON under ``cache_dir``, ``$GENS_CACHE_DIR`` or ``~/.cache/gens``.
    ``num_threads``: torch threads while computing (1 by default: the passes are small blocks, and
    on a busy 2-core machine torch's thread pool made them 10-30x slower; None keeps torch's setting).
    Warns (``BandwidthWarning``) when the mean is >= 1.
    """
    from gens.targets import Target

    if not isinstance(target, Target):
        raise ValueError(f"target: must be a gens.targets.Target, got {type(target).__name__}")
    m = check_int("m", m, minimum=2)
    trials = check_int("trials", trials, minimum=1)
    method = check_choice("method", str(method).replace("-", "_"), METHODS)
    seed = check_int("seed", seed, minimum=0)
    queries = m if queries is None else check_int("queries", queries, minimum=1)
    independent = bool(independent)
    if num_threads is not None:
        num_threads = check_int("num_threads", num_threads, minimum=1)
    path = _cache_path(target, m, trials, method, seed, queries, independent, cache_dir)
    result = _read_cache(path) if cache else None
    if result is None:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        h0, values, trial = _initial_guess(target.dim, m), [], None
        iterator = range(trials)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"h_opt l={target.dim} m={m}", leave=False)
        with torch.no_grad(), _torch_threads(num_threads):
            for _ in iterator:
                trial = _Trial(target, m, queries, generator, independent, reuse=trial)
                h = _root(trial, h0) if method == "root" else _fixed_point(trial, h0)
                values.append(h)
                if math.isfinite(h):
                    h0 = h  # later trials start at the last root
            del trial
        mean = sum(values) / trials
        if not math.isfinite(mean):
            std = math.nan
        else:
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (trials - 1)) if trials > 1 else 0.0
        result = BandwidthResult(h=mean, std=std, values=values, dim=target.dim, m=m, method=method,
                                 target=target.spec(), exceeds_one=mean >= 1.0, queries=queries,
                                 independent=independent, seed=seed, seconds=time.perf_counter() - start)
        if cache:
            _write_atomic(path, asdict(result))
    if warn and result.exceeds_one:
        _warn(result)
    return result


def optimal_bandwidth_normal(dim: int, m: int, **kwargs) -> BandwidthResult:
    """``optimal_bandwidth`` for the standard normal target N(0, I_dim) (Table 1)."""
    from gens.targets import StandardNormal

    return optimal_bandwidth(StandardNormal(dim), m, **kwargs)


def jsd_curve(target, m: int, hs, seed: int = 0, queries: int | None = None,
              independent: bool = False) -> list[tuple[float, float, float]]:
    """(h, J(h), dJ/dh) at each h in ``hs`` for one trial (for plots and checks)."""
    m = check_int("m", m, minimum=2)
    queries = m if queries is None else check_int("queries", queries, minimum=1)
    hs = [check_float("hs", h, minimum=0.0, min_inclusive=False) for h in hs]
    with torch.no_grad():
        generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        trial = _Trial(target, m, queries, generator, independent)
        return [(h, *trial.jsd(h)) for h in hs]

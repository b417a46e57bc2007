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
_STORE_BUDGET = 2**27  # float32 distances kept per query set (512 MiB: m = 10K fits); beyond it, recomputed
_BLOCK = 2**18  # elements per block of a pass (1 MiB of float32)


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


class _QuerySet:
    """Query points z (n, l) with log p_t(z) and their squared distances to the bank (m, l).

    Distances D are computed once per trial (float64 matmul), shifted by each row's minimum and kept
    as delta = D - min D in float32 when they fit the memory budget (else recomputed per pass).
    ``stats(h)`` is then one pass of float32 exponentials exp(-delta / (2 h^2)) in [0, 1] with
    BLAS row sums; every other quantity is float64.
    """

    def __init__(self, z, bank, log_pt):
        self.log_pt, self.m, self.dim = log_pt, bank.shape[0], bank.shape[1]
        self._qa = torch.cat([z, (z * z).sum(1, keepdim=True), torch.ones_like(z[:, :1])], 1)
        self._ba = torch.cat([-2.0 * bank, torch.ones_like(bank[:, :1]), (bank * bank).sum(1, keepdim=True)], 1)
        self.rows = max(1, _BLOCK // self.m)
        store = z.shape[0] * self.m <= _STORE_BUDGET
        self.dmin = torch.empty(z.shape[0], dtype=torch.float64)
        self.delta = torch.empty(z.shape[0], self.m, dtype=torch.float32) if store else None
        for a, d in self._distances():
            self.dmin[a:a + d.shape[0]] = d.amin(1)
            if store:
                self.delta[a:a + d.shape[0]] = d - self.dmin[a:a + d.shape[0], None]

    def _distances(self):
        for a in range(0, self._qa.shape[0], self.rows):
            yield a, (self._qa[a:a + self.rows] @ self._ba.T).clamp_min_(0.0)  # ||z_a - z_i||^2

    def _blocks(self):
        if self.delta is not None:
            for a in range(0, self.delta.shape[0], self.rows):
                yield a, self.delta[a:a + self.rows]
        else:
            for a, d in self._distances():
                yield a, (d - self.dmin[a:a + d.shape[0], None]).float()

    def stats(self, h: float):
        """(log p_e - log p_t, A) at bandwidth h, each (n,); A = sum_i G_i D_i / sum_i G_i."""
        c = -0.5 / (h * h)
        log_norm = math.log(self.m) + self.dim * math.log(h) + 0.5 * self.dim * math.log(2.0 * math.pi)
        s0, s1 = torch.empty_like(self.dmin), torch.empty_like(self.dmin)
        ones = torch.ones(self.m, dtype=torch.float32)
        buf = torch.empty(min(self.rows, self.dmin.shape[0]), self.m, dtype=torch.float32)
        for a, delta in self._blocks():
            n = delta.shape[0]
            w = torch.exp(torch.mul(delta, c, out=buf[:n]), out=buf[:n])  # each row's largest term is 1
            s0[a:a + n] = w @ ones
            s1[a:a + n] = w.mul_(delta) @ ones
        log_pe = c * self.dmin + torch.log(s0) - log_norm
        return log_pe - self.log_pt, s1 / s0 + self.dmin


class _Trial:
    """One trial: a bank of m target samples and query sets for z' ~ p_e and z'' ~ p_t."""

    def __init__(self, target, m: int, queries: int, generator: torch.Generator, independent: bool = False):
        self.dim = target.dim
        bank = target.sample(m, generator, dtype=torch.float64)

        def query_set():
            z = target.sample(queries, generator, dtype=torch.float64)
            return _QuerySet(z, bank, target.log_prob(z))

        self.e = query_set()
        self.t = query_set() if independent else self.e

    def stats(self, h: float):
        """(x, r, g, A) for z' and for z'': x = log p_e - log p_t, r = sigmoid(x), g = d log p_e / dh."""
        out = {}
        for s in (self.e, self.t):
            if id(s) not in out:
                x, a = s.stats(h)
                out[id(s)] = (x, torch.sigmoid(x), a / h**3 - self.dim / h, a)
        return out[id(self.e)], out[id(self.t)]

    def jsd(self, h: float) -> tuple[float, float]:
        """(J(h), dJ/dh) of supplement eqs. 1-2."""
        (x_e, r_e, g_e, _), (x_t, r_t, g_t, _) = self.stats(h)
        j = torch.nn.functional.logsigmoid(x_e).mean() + torch.nn.functional.logsigmoid(-x_t).mean()
        return float(j), float(((1 - r_e) * g_e).mean() - (r_t * g_t).mean())

    def fixed_point_map(self, h: float) -> float:
        """The supplement eq. 3 update: returns the new h (sqrt of the right-hand side), inf if undefined."""
        (_, r_e, _, a_e), (_, r_t, _, a_t) = self.stats(h)
        num = ((1 - r_e) * a_e).mean() - (r_t * a_t).mean()
        den = self.dim * (1 - r_e.mean() - r_t.mean())
        return math.sqrt(float(num / den)) if num > 0 and den > 0 else math.inf


def _root(trial: _Trial, h0: float, step: float) -> float:
    """Root trapping on dJ/dh: walk from h0 by growing factors until the sign changes, then brentq."""
    from scipy.optimize import brentq

    values = {}

    def f(h):  # memoised: brentq re-evaluates the bracket's ends
        if h not in values:
            values[h] = trial.jsd(h)[1]
        return values[h]

    a, fa = h0, f(h0)
    while True:
        b = min(a * step, H_MAX) if fa > 0 else max(a / step, H_MIN)
        if b == a:  # dJ/dh keeps its sign up to H_MAX (no finite maximiser) or down to H_MIN
            return math.inf if fa > 0 else H_MIN
        fb = f(b)
        if (fa > 0) != (fb > 0):
            break
        a, fa, step = b, fb, 1.0 + 2.0 * (step - 1.0)  # widen the step while the sign holds
    lo, hi = sorted((a, b))
    return float(brentq(f, lo, hi, xtol=1e-5, rtol=1e-6))


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

    method: "root" (brentq on the analytic dJ/dh of supplement eq. 2: the paper's choice) or
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
        h0, step, values = _initial_guess(target.dim, m), 1.1, []
        iterator = range(trials)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"h_opt l={target.dim} m={m}", leave=False)
        with torch.no_grad(), _torch_threads(num_threads):
            for _ in iterator:
                trial = _Trial(target, m, queries, generator, independent)
                h = _root(trial, h0, step) if method == "root" else _fixed_point(trial, h0)
                values.append(h)
                if math.isfinite(h):
                    h0, step = h, 1.02  # later trials start at the last root
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

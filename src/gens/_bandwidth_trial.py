"""One trial of the h_opt estimate (``gens.bandwidth``): a bank of m target samples, the query sets, and one
pass of exponentials per evaluation of J(h), dJ/dh, d^2J/dh^2 or the supplement eq. 3 map.

Per query set the squared distances to the bank are computed once (float64), shifted by each row's minimum
and kept in float32 within ``_STORE_BUDGET`` (else recomputed per pass); exponents are floored at
``_EXP_FLOOR`` (see ``gens.bandwidth``'s docstring for why).
"""

from __future__ import annotations

import math

import torch

_STORE_BUDGET = 2**27  # float32 distances kept per query set (512 MiB: m = 10K fits); beyond it, recomputed
_BLOCK = 2**18  # elements per block of a pass (1 MiB of float32)
_EXP_FLOOR = -80.0  # exponents below this are raised to it (exp(-80) = 2e-35 of a row's largest term)


class _QuerySet:
    """Query points z (n, l) with log p_t(z) and their squared distances to the bank (m, l).

    Distances D are computed once per trial (float64 matmul), shifted by each row's minimum and kept
    as delta = D - min D in float32 when they fit the memory budget (else recomputed per pass).
    ``stats(h)`` is then one pass of float32 exponentials exp(-delta / (2 h^2)) in [0, 1] with
    BLAS row sums; every other quantity is float64. ``buffer``: a float32 (n, m) tensor to hold
    delta (the previous trial's, so that a run of trials allocates it once).
    """

    def __init__(self, z, bank, log_pt, buffer=None):
        self.log_pt, self.m, self.dim = log_pt, bank.shape[0], bank.shape[1]
        self._qa = torch.cat([z, (z * z).sum(1, keepdim=True), torch.ones_like(z[:, :1])], 1)
        self._ba = torch.cat([-2.0 * bank, torch.ones_like(bank[:, :1]), (bank * bank).sum(1, keepdim=True)], 1)
        self.rows = max(1, _BLOCK // self.m)
        store = z.shape[0] * self.m <= _STORE_BUDGET
        self.dmin = torch.empty(z.shape[0], dtype=torch.float64)
        if not store:
            self.delta = None
        elif buffer is not None and buffer.shape == (z.shape[0], self.m) and buffer.dtype == torch.float32:
            self.delta = buffer
        else:
            self.delta = torch.empty(z.shape[0], self.m, dtype=torch.float32)
        for a, d in self._distances():
            self.dmin[a:a + d.shape[0]] = d.amin(1)
            if store:
                torch.sub(d, self.dmin[a:a + d.shape[0], None], out=d)
                self.delta[a:a + d.shape[0]] = d

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

    def stats(self, h: float, spread: bool = False):
        """(log p_e - log p_t, A) at bandwidth h, each (n,); A = sum_i G_i D_i / sum_i G_i.

        spread=True also returns V = sum_i G_i D_i^2 / sum_i G_i - A^2 (the kernel-weighted variance
        of the distances; dA/dh = V / h^3), for the second derivative of J.
        """
        c = -0.5 / (h * h)
        log_norm = math.log(self.m) + self.dim * math.log(h) + 0.5 * self.dim * math.log(2.0 * math.pi)
        s0, s1 = torch.empty_like(self.dmin), torch.empty_like(self.dmin)
        s2 = torch.empty_like(self.dmin) if spread else None
        ones = torch.ones(self.m, dtype=torch.float32)
        rows = min(self.rows, self.dmin.shape[0])
        buf = torch.empty(rows, self.m, dtype=torch.float32)
        buf2 = torch.empty(rows, self.m, dtype=torch.float32) if spread else None
        for a, delta in self._blocks():
            n = delta.shape[0]
            w = torch.mul(delta, c, out=buf[:n]).clamp_min_(_EXP_FLOOR).exp_()  # each row's largest term is 1
            s0[a:a + n] = w @ ones
            wd = torch.mul(w, delta, out=buf2[:n]) if spread else w.mul_(delta)
            s1[a:a + n] = wd @ ones
            if spread:
                s2[a:a + n] = wd.mul_(delta) @ ones
        log_pe = c * self.dmin + torch.log(s0) - log_norm
        mean = s1 / s0
        if not spread:
            return log_pe - self.log_pt, mean + self.dmin
        return log_pe - self.log_pt, mean + self.dmin, (s2 / s0 - mean * mean).clamp_min_(0.0)


class _Trial:
    """One trial: a bank of m target samples and query sets for z' ~ p_e and z'' ~ p_t.

    ``reuse``: a finished trial of the same shape whose distance buffers this one takes over.
    """

    def __init__(self, target, m: int, queries: int, generator: torch.Generator, independent: bool = False,
                 reuse: _Trial | None = None):
        self.dim = target.dim
        bank = target.sample(m, generator, dtype=torch.float64)
        buffers = [] if reuse is None else [s.delta for s in ((reuse.e, reuse.t) if reuse.t is not reuse.e
                                                               else (reuse.e,))]

        def query_set():
            z = target.sample(queries, generator, dtype=torch.float64)
            return _QuerySet(z, bank, target.log_prob(z), buffers.pop(0) if buffers else None)

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

    def slope(self, h: float) -> tuple[float, float]:
        """(dJ/dh, d^2J/dh^2) in one pass per query set.

        With dr/dh = r (1 - r) g and dg/dh = V / h^6 - 3 A / h^4 + l / h^2:
        d^2J/dh^2 = mean_{z'} (1 - r)(g' - r g^2) - mean_{z''} r (g' + (1 - r) g^2).
        """
        out = {}
        for s in (self.e, self.t):
            if id(s) not in out:
                x, a, v = s.stats(h, spread=True)
                g = a / h**3 - self.dim / h
                out[id(s)] = (torch.sigmoid(x), g, v / h**6 - 3.0 * a / h**4 + self.dim / h**2)
        (r_e, g_e, dg_e), (r_t, g_t, dg_t) = out[id(self.e)], out[id(self.t)]
        d1 = ((1 - r_e) * g_e).mean() - (r_t * g_t).mean()
        d2 = ((1 - r_e) * (dg_e - r_e * g_e * g_e)).mean() - (r_t * (dg_t + (1 - r_t) * g_t * g_t)).mean()
        return float(d1), float(d2)

    def fixed_point_map(self, h: float) -> float:
        """The supplement eq. 3 update: returns the new h (sqrt of the right-hand side), inf if undefined."""
        (_, r_e, _, a_e), (_, r_t, _, a_t) = self.stats(h)
        num = ((1 - r_e) * a_e).mean() - (r_t * a_t).mean()
        den = self.dim * (1 - r_e.mean() - r_t.mean())
        return math.sqrt(float(num / den)) if num > 0 and den > 0 else math.inf

"""Gaussian kernel density estimates in the log domain, chunked so memory stays bounded.

p_e(z) = (1/m) sum_i G_h(z - z_i), with the normalised kernel
log G_h(u) = -||u||^2 / (2 h^2) - l log h - (l / 2) log(2 pi).

Kernel sums stream over blocks of queries and of the bank with a running logsumexp, so no block of
the (n, m) kernel matrix holds more than ``chunk_size`` elements, in the forward pass and in the
backward pass (which recomputes the blocks instead of storing them).
"""

from __future__ import annotations

import math

import torch

from gens._validation import check_float, check_int, check_matrix

__all__ = ["DEFAULT_CHUNK_SIZE", "log_gaussian_kernel", "kde_log_density", "kde_log_density_loo"]

DEFAULT_CHUNK_SIZE = 2**22  # elements of one kernel block (32 MiB in float64)


def log_gaussian_kernel(sq_dist: torch.Tensor, h: float, dim: int) -> torch.Tensor:
    """log G_h(u) from ||u||^2 (any shape): -||u||^2 / (2 h^2) - l log h - (l/2) log(2 pi)."""
    return -sq_dist / (2.0 * h * h) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)


def _block_sizes(n: int, m: int, chunk: int) -> tuple[int, int]:
    """Query and bank block sizes (qb, mb) with qb * mb <= chunk."""
    if n * m <= chunk:
        return n, m
    qb = min(n, max(math.isqrt(chunk), chunk // m), chunk)
    return qb, max(1, min(m, chunk // qb))


def _sq_dist(q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||q_a - b_i||^2 for q: (n, l), b: (m, l) -> (n, m), via one matmul, clamped at 0."""
    d = (q @ b.T).mul_(-2.0)  # in place: one (n, m) buffer
    return d.add_((q * q).sum(1, keepdim=True)).add_((b * b).sum(1)).clamp_min_(0.0)


def _blocks(q, b, h, chunk, loo):
    """Yield (a0, a1, i0, i1, scaled log-kernel block -||q_a - b_i||^2 / (2 h^2)) over all blocks."""
    n, m = q.shape[0], b.shape[0]
    qb, mb = _block_sizes(n, m, chunk)
    for a0 in range(0, n, qb):
        a1 = min(n, a0 + qb)
        for i0 in range(0, m, mb):
            i1 = min(m, i0 + mb)
            s = _sq_dist(q[a0:a1], b[i0:i1]).mul_(-0.5 / (h * h))
            if loo and a0 < i1 and i0 < a1:  # mask the diagonal (a == i): leave one out
                a = torch.arange(max(a0, i0), min(a1, i1), device=s.device)
                s[a - a0, a - i0] = -math.inf
            yield a0, a1, i0, i1, s


class _LogKernelSum(torch.autograd.Function):
    """logsumexp_i -||q_a - b_i||^2 / (2 h^2) for every query a; backward recomputes the blocks."""

    @staticmethod
    def forward(ctx, q, b, h, chunk, loo):
        out = torch.full((q.shape[0],), -math.inf, dtype=q.dtype, device=q.device)
        for a0, a1, _, _, s in _blocks(q, b, h, chunk, loo):
            out[a0:a1] = torch.logaddexp(out[a0:a1], torch.logsumexp(s, dim=1))
        ctx.save_for_backward(q, b, out)
        ctx.h, ctx.chunk, ctx.loo = h, chunk, loo
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        # d lse_a / d q_a = sum_i w_ai (b_i - q_a) / h^2,  d lse_a / d b_i = w_ai (q_a - b_i) / h^2,
        # with w_ai = exp(s_ai - lse_a) (the softmax weights of query a over the bank).
        q, b, out = ctx.saved_tensors
        h2 = ctx.h * ctx.h
        gq = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        gb = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        for a0, a1, i0, i1, s in _blocks(q, b, ctx.h, ctx.chunk, ctx.loo):
            w = torch.exp(s - out[a0:a1, None]).mul_(g[a0:a1, None])  # (qb, mb), rows weighted by g
            if gq is not None:
                gq[a0:a1] += (w @ b[i0:i1] - w.sum(1, keepdim=True) * q[a0:a1]) / h2
            if gb is not None:
                gb[i0:i1] += (w.T @ q[a0:a1] - w.sum(0)[:, None] * b[i0:i1]) / h2
        return gq, gb, None, None, None


def _prepare(query, bank, h, chunk_size, loo):
    h = check_float("h", h, minimum=0.0, min_inclusive=False)
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else check_int("chunk_size", chunk_size, minimum=1)
    check_matrix("bank", bank, min_rows=2 if loo else 1)
    if query is not None:
        check_matrix("query", query, columns=bank.shape[1])
        dtype = torch.promote_types(query.dtype, bank.dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        return query.to(dtype), bank.to(dtype), h, chunk
    if not bank.is_floating_point():
        bank = bank.to(torch.get_default_dtype())
    return None, bank, h, chunk


def kde_log_density(query: torch.Tensor, bank: torch.Tensor, h: float, chunk_size: int | None = None) -> torch.Tensor:
    """log p_e(query) for the KDE of ``bank`` with bandwidth h (paper eq. 1).

    query: (n, l), bank: (m, l) -> (n,). Differentiable w.r.t. query and bank (detach the bank to
    stop its gradient). No kernel block larger than ``chunk_size`` elements is built.
    """
    query, bank, h, chunk = _prepare(query, bank, h, chunk_size, loo=False)
    lse = _LogKernelSum.apply(query, bank, h, chunk, False)
    m, dim = bank.shape
    return lse - math.log(m) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)


def kde_log_density_loo(bank: torch.Tensor, h: float, chunk_size: int | None = None) -> torch.Tensor:
    """Leave-one-out log density of each bank point (supplement eq. 4).

    log[(1 / (m - 1)) sum_{j != i} G_h(z_j - z_i)] for bank: (m, l) -> (m,); differentiable.
    """
    _, bank, h, chunk = _prepare(None, bank, h, chunk_size, loo=True)
    lse = _LogKernelSum.apply(bank, bank, h, chunk, True)
    m, dim = bank.shape
    return lse - math.log(m - 1) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)

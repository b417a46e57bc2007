"""Gaussian kernel density estimates in the log domain, chunked so memory stays bounded.

p_e(z) = (1/m) sum_i G_h(z - z_i), with the normalised kernel
log G_h(u) = -||u||^2 / (2 h^2) - l log h - (l / 2) log(2 pi).

Kernel sums stream over blocks of queries and of the bank with a running logsumexp, so no block of
the (n, m) kernel matrix holds more than ``chunk_size`` elements. Blocks are small enough by default
(2^18 elements on the CPU) that the passes over one block run in cache. When the whole (n, m) matrix
is small (a GEN minibatch against its bank: n * m <= ``KEEP_ELEMENTS`` = 2^24, or ``chunk_size`` when
given) and a gradient is wanted, the forward pass keeps the blocks' exponentials for the backward pass;
otherwise the backward pass recomputes the blocks instead of storing them. A block is one ``addmm``: the squared distance's query
term -||q||^2 / (2 h^2) is constant along the bank and is added after the logsumexp, which is taken
in base 2 (``exp2`` is faster than ``exp`` on CPU).
"""

from __future__ import annotations

import math

import torch

from gens._validation import check_float, check_int, check_matrix

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_CHUNK_SIZE_GPU", "KEEP_ELEMENTS", "log_gaussian_kernel", "kde_log_density",
           "kde_log_density_loo"]

DEFAULT_CHUNK_SIZE = 2**18  # elements of one kernel block on the CPU (2 MiB in float64: stays in cache)
DEFAULT_CHUNK_SIZE_GPU = 2**22  # on other devices, where fewer, larger kernels are faster
KEEP_ELEMENTS = 2**24  # with the default chunk size: most block elements kept for backward (64 MiB float32)


def _defaults(device, chunk_size, grad: bool):
    """(block size, most block elements kept for backward): the defaults, or chunk_size for both; nothing
    is kept without a backward pass to come (``grad`` False)."""
    chunk = chunk_size or (DEFAULT_CHUNK_SIZE if device.type == "cpu" else DEFAULT_CHUNK_SIZE_GPU)
    return chunk, (0 if not grad else chunk_size or KEEP_ELEMENTS)


def log_gaussian_kernel(sq_dist: torch.Tensor, h: float, dim: int) -> torch.Tensor:
    """log G_h(u) from ||u||^2 (any shape): -||u||^2 / (2 h^2) - l log h - (l/2) log(2 pi)."""
    return -sq_dist / (2.0 * h * h) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)


def _block_sizes(n: int, m: int, chunk: int) -> tuple[int, int]:
    """Query and bank block sizes (qb, mb) with qb * mb <= chunk."""
    if n * m <= chunk:
        return n, m
    qb = min(n, max(math.isqrt(chunk), chunk // m), chunk)
    return qb, max(1, min(m, chunk // qb))


_LOG2E = 1.0 / math.log(2.0)


def _log_kernel_block(q: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """(q_a . b_i - ||b_i||^2 / 2) * scale for q: (n, l), b: (m, l) -> (n, m), one fused ``addmm``.

    With scale = log2(e) / h^2 this is -||q_a - b_i||^2 / (2 h^2) in base-2 units (``exp2`` is faster
    than ``exp`` on CPU) without its row constant -||q_a||^2 / (2 h^2), which does not depend on i and
    so moves out of every logsumexp over the bank (``_row_term``); the softmax weights over i are the
    same with or without it.
    """
    bias = (b * b).sum(1).mul_(-0.5 * scale)
    return torch.addmm(bias, q, b.T, alpha=scale)


def _row_term(q: torch.Tensor, h: float) -> torch.Tensor:
    """-||q_a||^2 / (2 h^2): (n,)."""
    return (q * q).sum(1).mul_(-0.5 / (h * h))


def _blocks(q, b, scale, chunk, loo):
    """Yield (a0, a1, i0, i1, block ``_log_kernel_block(q[a0:a1], b[i0:i1])``) over all blocks (LOO: diagonal -inf)."""
    n, m = q.shape[0], b.shape[0]
    qb, mb = _block_sizes(n, m, chunk)
    for a0 in range(0, n, qb):
        a1 = min(n, a0 + qb)
        for i0 in range(0, m, mb):
            i1 = min(m, i0 + mb)
            s = _log_kernel_block(q[a0:a1], b[i0:i1], scale)
            if loo and a0 < i1 and i0 < a1:  # mask the diagonal (a == i): leave one out
                a = torch.arange(max(a0, i0), min(a1, i1), device=s.device)
                s[a - a0, a - i0] = -math.inf
            yield a0, a1, i0, i1, s


def _exp2_rows(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the block s: (n, m) in place into 2^(s - rowmax); return (rowmax (n,), row sums (n,)).

    log2 sum_i 2^s_ai = rowmax_a + log2(sums_a). Rows that are all -inf get rowmax 0 (and sum 0)."""
    top = s.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    tot = s.sub_(top).exp2_().sum(1)
    return top.squeeze(1), tot


def _weighted_sums(w, q, b, want_q, want_b):
    """(w @ b, w^T @ q) for w: (n, m), as the faster transposed products (None where not wanted)."""
    wb = (b.T @ w.T).T if want_q else None  # (n, l); w @ b with l << m is several times slower on CPU
    wq = (q.T @ w).T if want_b else None  # (m, l)
    return wb, wq


class _LogKernelSum(torch.autograd.Function):
    """logsumexp_i -||q_a - b_i||^2 / (2 h^2) for every query a (computed in base 2, returned in nats).

    The forward pass streams over blocks of at most ``chunk`` elements with a running logsumexp. When
    n * m <= ``keep`` (e.g. a GEN minibatch against its bank) it keeps every block's exponentials
    2^(s_ai - max_i s_ai) and the backward pass is two matrix products per block; otherwise the backward
    pass recomputes the blocks, so memory stays at one block.
    """

    @staticmethod
    def forward(ctx, q, b, h, chunk, keep, loo):
        scale = _LOG2E / (h * h)
        n, m = q.shape[0], b.shape[0]
        keeping = n * m <= keep
        ctx.h, ctx.chunk, ctx.loo, ctx.spans = h, chunk, loo, []
        lse2 = torch.full((n,), -math.inf, dtype=q.dtype, device=q.device)
        kept = []
        for a0, a1, i0, i1, s in _blocks(q, b, scale, chunk, loo):
            top, tot = _exp2_rows(s)  # s: the block's exponentials 2^(s - top) from here on
            lse2[a0:a1] = torch.logaddexp2(lse2[a0:a1], top + tot.log2())
            if keeping:
                ctx.spans.append((a0, a1, i0, i1))
                kept += [s, top]
        ctx.save_for_backward(q, b, lse2, *kept)
        return lse2 * math.log(2.0) + _row_term(q, h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        # d out_a / d q_a = sum_i w_ai (b_i - q_a) / h^2,  d out_a / d b_i = w_ai (q_a - b_i) / h^2,
        # with w_ai = 2^(s_ai - lse2_a) the softmax weights of query a over the bank (sum_i w_ai = 1).
        q, b, lse2, *kept = ctx.saved_tensors
        inv_h2 = 1.0 / (ctx.h * ctx.h)
        want_q, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gq = torch.zeros_like(q) if want_q else None
        gb = torch.zeros_like(b) if want_b else None
        if kept:  # w g = e c with c_a = g_a 2^(top_a - lse2_a), per kept block e
            for (a0, a1, i0, i1), e, top in zip(ctx.spans, kept[::2], kept[1::2]):
                c = g[a0:a1] * torch.exp2(top - lse2[a0:a1])
                wb, wq = _weighted_sums(e, c[:, None] * q[a0:a1], b[i0:i1], want_q, want_b)
                if want_q:
                    gq[a0:a1] += wb * c[:, None]
                if want_b:
                    gb[i0:i1] += wq - (c @ e)[:, None] * b[i0:i1]
            if want_q:
                gq -= g[:, None] * q  # sum_i w_ai = 1
        else:
            for a0, a1, i0, i1, s in _blocks(q, b, _LOG2E * inv_h2, ctx.chunk, ctx.loo):
                w = s.sub_(lse2[a0:a1, None]).exp2_().mul_(g[a0:a1, None])  # (qb, mb), rows weighted by g
                wb, wq = _weighted_sums(w, q[a0:a1], b[i0:i1], want_q, want_b)
                if want_q:
                    gq[a0:a1] += wb - w.sum(1, keepdim=True) * q[a0:a1]
                if want_b:
                    gb[i0:i1] += wq - w.sum(0)[:, None] * b[i0:i1]
        return (None if gq is None else gq * inv_h2), (None if gb is None else gb * inv_h2), None, None, None, None


def _prepare(query, bank, h, chunk_size, loo):
    h = check_float("h", h, minimum=0.0, min_inclusive=False)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    check_matrix("bank", bank, min_rows=2 if loo else 1)
    grad = torch.is_grad_enabled() and (bank.requires_grad or (query is not None and query.requires_grad))
    chunk = _defaults(bank.device, chunk_size, grad)
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
    stop its gradient). No kernel block larger than ``chunk_size`` elements is built, and at most
    ``chunk_size`` elements of blocks are kept from the forward to the backward pass. None: blocks
    of ``DEFAULT_CHUNK_SIZE`` (CPU) or ``DEFAULT_CHUNK_SIZE_GPU`` elements, up to ``KEEP_ELEMENTS`` kept.
    """
    query, bank, h, (chunk, keep) = _prepare(query, bank, h, chunk_size, loo=False)
    lse = _LogKernelSum.apply(query, bank, h, chunk, keep, False)
    m, dim = bank.shape
    return lse - math.log(m) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)


def kde_log_density_loo(bank: torch.Tensor, h: float, chunk_size: int | None = None) -> torch.Tensor:
    """Leave-one-out log density of each bank point (supplement eq. 4).

    log[(1 / (m - 1)) sum_{j != i} G_h(z_j - z_i)] for bank: (m, l) -> (m,); differentiable.
    """
    _, bank, h, (chunk, keep) = _prepare(None, bank, h, chunk_size, loo=True)
    lse = _LogKernelSum.apply(bank, bank, h, chunk, keep, True)
    m, dim = bank.shape
    return lse - math.log(m - 1) - dim * math.log(h) - 0.5 * dim * math.log(2.0 * math.pi)

"""The KDE's two code paths (one kept block vs streamed blocks recomputed in backward) against an
independent naive autograd reference, and the float32 accuracy a GEN step relies on."""

import math

import pytest
import torch

import gens.kde as kde
from gens.kde import kde_log_density, kde_log_density_loo

pytestmark = pytest.mark.usefixtures("one_thread")


def _naive(q, b, h, loo=False):
    """log KDE from the full pairwise difference tensor, differentiated by plain autograd (the reference)."""
    d2 = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    s = -d2 / (2 * h * h)
    if loo:
        s = s.masked_fill(torch.eye(q.shape[0], dtype=torch.bool), -math.inf)
    m, l = b.shape[0] - int(loo), b.shape[1]
    return torch.logsumexp(s, 1) - math.log(m) - l * math.log(h) - 0.5 * l * math.log(2 * math.pi)


def _data(n, m, l, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, l, generator=g, dtype=dtype) * scale, torch.randn(m, l, generator=g, dtype=dtype)


@pytest.mark.parametrize("n,m,chunk_size", [
    (37, 150, None),  # one block, kept for backward
    (60, 5000, None),  # two default-size blocks (> 2^18 pairs), both kept
    (37, 150, 97), (37, 150, 4000),  # many small blocks / blocks of whole rows, recomputed in backward
])
def test_values_and_both_gradients_match_naive_autograd(n, m, chunk_size):
    q0, b0 = _data(n, m, 5, scale=1.5)
    w = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(9))  # uneven upstream grads
    q, b = q0.clone().requires_grad_(), b0.clone().requires_grad_()
    got = kde_log_density(q, b, 0.6, chunk_size=chunk_size)
    (got * w).sum().backward()
    qr, br = q0.clone().requires_grad_(), b0.clone().requires_grad_()
    want = _naive(qr, br, 0.6)
    (want * w).sum().backward()
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.grad, qr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.grad, br.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m,chunk_size", [(60, None), (600, None), (60, 50)])  # one block; 2 kept; recomputed
def test_loo_values_and_gradient_match_naive_autograd(m, chunk_size):
    _, b0 = _data(1, m, 3, seed=3)
    b = b0.clone().requires_grad_()
    got = kde_log_density_loo(b, 0.5, chunk_size=chunk_size)
    got.square().sum().backward()
    br = b0.clone().requires_grad_()
    want = _naive(br, br, 0.5, loo=True)
    want.square().sum().backward()
    torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.grad, br.grad, rtol=1e-10, atol=1e-11)


def test_blocks_are_kept_for_backward_when_small_and_recomputed_otherwise(kernel_block_sizes, monkeypatch):
    built = kernel_block_sizes
    q0, b = _data(20, 300, 4)
    for chunk, n_blocks in ((None, 1), (6000, 1), (1000, 6)):  # 6000 pairs: one block; six
        q = q0.clone().requires_grad_()
        out = kde_log_density(q, b, 0.5, chunk_size=chunk)
        assert len(built) == n_blocks and max(built) <= (chunk or 6000) and sum(built) == 6000
        out.sum().backward()
        # an explicit chunk_size also bounds the kept elements: more than one block -> recomputed
        assert len(built) == (n_blocks if n_blocks == 1 else 2 * n_blocks), chunk
        built.clear()
    # the defaults: cache-sized blocks (2^18 elements on the CPU), all kept up to KEEP_ELEMENTS
    q0, b = _data(100, 10000, 8, dtype=torch.float32)
    q = q0.clone().requires_grad_()
    out = kde_log_density(q, b, 0.5)
    assert len(built) > 1 and max(built) <= kde.DEFAULT_CHUNK_SIZE and sum(built) == 10**6
    n_fwd = len(built)
    out.sum().backward()
    assert len(built) == n_fwd
    built.clear()
    monkeypatch.setattr(kde, "KEEP_ELEMENTS", 10**6 - 1)  # one pair too many to keep: recomputed
    q = q0.clone().requires_grad_()
    kde_log_density(q, b, 0.5).sum().backward()
    assert len(built) == 2 * n_fwd


def test_nothing_is_kept_without_a_gradient_to_come(monkeypatch):
    keeps = []
    orig = kde._LogKernelSum.apply

    def spy(q, b, h, chunk, keep, loo):
        keeps.append(keep)
        return orig(q, b, h, chunk, keep, loo)

    monkeypatch.setattr(kde._LogKernelSum, "apply", spy)
    q, b = _data(10, 50, 3)
    kde_log_density(q, b, 0.5)  # no input requires grad
    kde_log_density(q.requires_grad_(), b, 0.5)
    with torch.no_grad():
        kde_log_density(q, b, 0.5)
        kde_log_density_loo(b.requires_grad_(), 0.5)
    kde_log_density_loo(b, 0.5)
    kde_log_density(q, b, 0.5, chunk_size=100)
    assert keeps == [0, kde.KEEP_ELEMENTS, 0, 0, kde.KEEP_ELEMENTS, 100]


@pytest.mark.parametrize("l,h", [(8, 0.534), (32, 0.85), (128, 1.1)])
def test_float32_gen_step_accuracy(l, h):
    """A GEN minibatch (100 latents) against a 10K bank in float32, against float64: the log-density to
    1e-4 nats and the minibatch gradient to 1e-4 of its largest entry (measured: 2e-5 and 3e-6)."""
    q0, b = _data(100, 10000, l, seed=l, dtype=torch.float32)
    q = q0.clone().requires_grad_()
    got = kde_log_density(q, b, h)
    got.sum().backward()
    qd = q0.double().requires_grad_()
    want = kde_log_density(qd, b.double(), h)
    want.sum().backward()
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() < 1e-4
    assert (q.grad.double() - qd.grad).abs().max() < 1e-4 * qd.grad.abs().max()


def test_far_query_rows_stay_finite_in_both_paths():
    # every kernel value of these rows is far below float32's smallest number: the row max is shifted out
    q0, b = _data(6, 40, 3, dtype=torch.float32)
    q0 = q0 + 50.0
    for chunk in (None, 16):
        q = q0.clone().requires_grad_()
        out = kde_log_density(q, b, 0.2, chunk_size=chunk)
        out.sum().backward()
        want = _naive(q0.double(), b.double(), 0.2)
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=0)

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KernelDensity

from gens.kde import kde_log_density, kde_log_density_loo

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, m, dim, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randn(m, dim, generator=g, dtype=dtype)


@pytest.mark.parametrize("dim,h", [(1, 0.3), (2, 0.45), (8, 0.7), (20, 0.9)])
@pytest.mark.parametrize("chunk_size", [None, 500])
def test_matches_sklearn(dim, h, chunk_size):
    q, b = _data(53, 211, dim)
    want = KernelDensity(kernel="gaussian", bandwidth=h).fit(b.numpy()).score_samples(q.numpy())
    got = kde_log_density(q, b, h, chunk_size=chunk_size)
    assert got.dtype == torch.float64 and got.shape == (53,)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_far_queries_are_finite_in_log_domain():
    # every kernel value underflows to 0 in the linear domain; the log domain keeps it exact
    q, b = _data(5, 50, 3)
    q = q + 40.0
    got = kde_log_density(q, b, 0.1)
    want = KernelDensity(bandwidth=0.1).fit(b.numpy()).score_samples(q.numpy())
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_float32_input_stays_float32():
    q, b = _data(20, 30, 4, dtype=torch.float32)
    got = kde_log_density(q, b, 0.5)
    assert got.dtype == torch.float32
    want = kde_log_density(q.double(), b.double(), 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_loo_matches_brute_force_loop():
    _, b = _data(1, 40, 3, seed=2)
    h = 0.6
    want = []
    for i in range(40):
        others = torch.cat([b[:i], b[i + 1:]])
        want.append(kde_log_density(b[i:i + 1], others, h)[0])
    want = torch.stack(want)
    for chunk in (None, 7, 100):
        torch.testing.assert_close(kde_log_density_loo(b, h, chunk_size=chunk), want, rtol=1e-12, atol=1e-12)


def test_chunks_never_exceed_budget(kernel_block_sizes):
    sizes = kernel_block_sizes
    q, b = _data(100, 1000, 8)
    budget = 1024
    got = kde_log_density(q, b, 0.5, chunk_size=budget)
    assert max(sizes) <= budget and sum(sizes) == 100 * 1000
    # the same numbers as one unchunked block
    sizes.clear()
    torch.testing.assert_close(got, kde_log_density(q, b, 0.5), rtol=1e-12, atol=1e-12)
    # the backward pass also stays in budget
    sizes.clear()
    qg = q[:20].clone().requires_grad_()
    kde_log_density(qg, b, 0.5, chunk_size=budget).sum().backward()
    assert max(sizes) <= budget


@pytest.mark.parametrize("chunk_size", [None, 10])
def test_gradients_match_finite_differences(chunk_size):
    q, b = _data(6, 9, 3, seed=5)
    q.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, b: kde_log_density(q, b, 0.7, chunk_size=chunk_size), (q, b))
    b2 = b.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda b: kde_log_density_loo(b, 0.7, chunk_size=chunk_size), (b2,))


def test_gradient_matches_closed_form_single_point():
    # one bank point: log p(q) = log G_h(q - b), d/dq = -(q - b) / h^2
    q = torch.tensor([[0.3, -1.2]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    out = kde_log_density(q, b, 0.8)
    want = -((0.7**2 + 1.7**2) / (2 * 0.64)) - 2 * math.log(0.8) - math.log(2 * math.pi)
    assert out.item() == pytest.approx(want, abs=1e-12)
    out.backward()
    torch.testing.assert_close(q.grad, -(q.detach() - b) / 0.64)


def test_detached_bank_gets_no_gradient():
    q, b = _data(4, 10, 2)
    q.requires_grad_()
    kde_log_density(q, b, 0.5).sum().backward()
    assert q.grad is not None and b.grad is None


def test_validation_errors():
    q, b = _data(4, 10, 2)
    for h in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="^h:"):
            kde_log_density(q, b, h)
    with pytest.raises(ValueError, match="^query:"):
        kde_log_density(torch.zeros(4, 3, dtype=torch.float64), b, 0.5)
    with pytest.raises(ValueError, match="^query:"):
        kde_log_density(torch.zeros(4), b, 0.5)
    bad = b.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="^bank:"):
        kde_log_density(q, bad, 0.5)
    with pytest.raises(ValueError, match="^bank:"):
        kde_log_density_loo(b[:1], 0.5)
    with pytest.raises(ValueError, match="^chunk_size:"):
        kde_log_density(q, b, 0.5, chunk_size=0)

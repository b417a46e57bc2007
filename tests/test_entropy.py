"""Whitened-latent entropy (supplement eqs. 4-5) against brute force, finite differences and the paper."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import logsumexp

from gens.evaluation.entropy import entropy_bandwidth, gaussian_entropy, latent_entropy, loo_log_likelihood, whiten
from gens.kde import kde_log_density_loo


def _normal(n, l, seed):
    return torch.randn(n, l, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _correlated(n, l, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(l, l)) + 2 * np.eye(l)
    return torch.as_tensor(rng.normal(size=(n, l)) @ a + rng.normal(size=l) * 5)


# ---------------------------------------------------------------------------------------- brute force

def _brute_d2(z):
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return d2


def _brute_fixed_point(z, h=1.0, iters=2000, tol=1e-13):
    """Plain eq. 5 iteration on the full distance matrix, numpy float64, weights normalised per row."""
    m, l = z.shape
    d2 = _brute_d2(z)
    for _ in range(iters):
        w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * h * h))
        h_new = math.sqrt(((w * np.where(np.isinf(d2), 0, d2)).sum(1) / w.sum(1)).sum() / (l * m))
        if abs(h_new - h) < tol:
            return h_new
        h = h_new
    raise AssertionError("brute-force fixed point did not converge")


def _brute_loo_entropy(z, h):
    m, l = z.shape
    logk = -_brute_d2(z) / (2 * h * h) - l * math.log(h) - 0.5 * l * math.log(2 * math.pi)
    return -(logsumexp(logk, axis=1) - math.log(m - 1)).mean()


# ------------------------------------------------------------------------------------------- whiten

def test_whiten_is_zca_against_scipy():
    z = _correlated(300, 4, 0)
    w = whiten(z).numpy()
    assert w.dtype == np.float64 and w.shape == (300, 4)
    np.testing.assert_allclose(w.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(4), atol=1e-10)
    zn = z.numpy()
    ref = (zn - zn.mean(0)) @ scipy.linalg.fractional_matrix_power(np.cov(zn, rowvar=False), -0.5)
    np.testing.assert_allclose(w, ref.real, atol=1e-9)


def test_whiten_rejects_bad_input():
    with pytest.raises(ValueError, match="^z: .*2-D"):
        whiten(torch.zeros(10))
    with pytest.raises(ValueError, match="^z: whitening needs more rows"):
        whiten(torch.randn(3, 3))
    with pytest.raises(ValueError, match="^z: covariance is singular"):
        whiten(torch.cat([torch.randn(50, 2), torch.ones(50, 1)], 1))
    bad = torch.randn(20, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="^z: must hold only finite"):
        whiten(bad)


# ------------------------------------------------------------------------------------------ eq. 5

@pytest.mark.parametrize("l,method", [(1, "brent"), (3, "brent"), (3, "iterate"), (6, "brent")])
def test_bandwidth_matches_brute_force_fixed_point(l, method):
    z = _correlated(150, l, l)
    h_ref = _brute_fixed_point(z.numpy())
    h = entropy_bandwidth(z, tol=1e-10, method=method, max_iter=2000)
    assert h == pytest.approx(h_ref, rel=1e-7)


@pytest.mark.parametrize("chunk", [7, 40, 41 * 40])
def test_chunking_does_not_change_results(chunk):
    z = whiten(_correlated(40, 3, 9))
    h_full, h_chunk = entropy_bandwidth(z, tol=1e-10), entropy_bandwidth(z, tol=1e-10, chunk_size=chunk)
    assert h_chunk == pytest.approx(h_full, rel=1e-9)
    H = latent_entropy(z, whiten=False, bandwidth=0.4, chunk_size=chunk)
    assert H == pytest.approx(_brute_loo_entropy(z.numpy(), 0.4), rel=1e-11)


def test_bandwidth_is_stationary_point_of_loo_likelihood():
    z = whiten(_normal(400, 5, 1))
    h = entropy_bandwidth(z, tol=1e-11)
    eps = 1e-4
    deriv = (loo_log_likelihood(z, h + eps) - loo_log_likelihood(z, h - eps)) / (2 * eps)
    slope_scale = 5 / h  # |d/dh of the log-kernel normaliser l log h|: the size of a non-zero slope
    assert abs(deriv) < 1e-5 * slope_scale
    # a maximum, not just a stationary point
    assert loo_log_likelihood(z, h) > loo_log_likelihood(z, 0.9 * h)
    assert loo_log_likelihood(z, h) > loo_log_likelihood(z, 1.1 * h)
    # and the finite-difference slope away from it is clearly non-zero with the right signs
    assert (loo_log_likelihood(z, 0.8 * h + eps) - loo_log_likelihood(z, 0.8 * h - eps)) / (2 * eps) > 0.1
    assert (loo_log_likelihood(z, 1.2 * h + eps) - loo_log_likelihood(z, 1.2 * h - eps)) / (2 * eps) < -0.1


def test_bandwidth_input_checks():
    z = _normal(50, 2, 0)
    with pytest.raises(ValueError, match="^h0: "):
        entropy_bandwidth(z, h0=-1.0)
    with pytest.raises(ValueError, match="^tol: "):
        entropy_bandwidth(z, tol=0)
    with pytest.raises(ValueError, match="^max_iter: "):
        entropy_bandwidth(z, max_iter=0)
    with pytest.raises(ValueError, match="^max_iter: the eq. 5 fixed point did not converge"):
        entropy_bandwidth(z, max_iter=2, method="iterate", tol=1e-12)
    with pytest.raises(ValueError, match="^max_iter: the eq. 5 fixed point did not converge"):
        entropy_bandwidth(z, max_iter=3, tol=1e-12)
    with pytest.raises(ValueError, match="^method: must be one of"):
        entropy_bandwidth(z, method="newton")
    with pytest.raises(ValueError, match="^z: holds duplicate rows"):
        entropy_bandwidth(torch.cat([z, z[:1]]))


# ------------------------------------------------------------------------------------------ eq. 4

def test_entropy_matches_brute_force_and_core_kde():
    z = _correlated(200, 3, 4)
    H, h = latent_entropy(z, return_bandwidth=True)
    zw = whiten(z)
    assert H == pytest.approx(_brute_loo_entropy(zw.numpy(), h), rel=1e-11)
    assert H == pytest.approx(-float(kde_log_density_loo(zw, h).mean()), rel=1e-11)
    assert h == pytest.approx(_brute_fixed_point(zw.numpy()), rel=1e-5)


def test_whitened_entropy_is_affine_invariant():
    z = _normal(300, 4, 5)
    a = torch.as_tensor(np.random.default_rng(0).normal(size=(4, 4)) + 3 * np.eye(4))
    assert latent_entropy(z @ a + 7.0) == pytest.approx(latent_entropy(z), abs=1e-8)
    # without whitening, scaling by c scales the eq. 5 bandwidth by c and adds l log c to the entropy
    c = 3.0
    H1, h1 = latent_entropy(z, whiten=False, return_bandwidth=True, tol=1e-10)
    H3, h3 = latent_entropy(c * z, whiten=False, return_bandwidth=True, tol=1e-10)
    assert h3 == pytest.approx(c * h1, rel=1e-7)
    assert H3 == pytest.approx(H1 + 4 * math.log(c), rel=1e-9)


def test_entropy_of_uniform_is_below_gaussian():
    """Whitening fixes the covariance, so a non-Gaussian sample must score lower (Sec. 5.2's argument)."""
    g = torch.Generator().manual_seed(3)
    uniform = torch.rand(1000, 2, generator=g, dtype=torch.float64)
    normal = _normal(1000, 2, 3)
    H_u, H_n = latent_entropy(uniform), latent_entropy(normal)
    # closed forms for unit variance: uniform 2 * log(sqrt(12)) = 2.485, Gaussian log(2 pi e) = 2.838
    assert H_u < H_n
    # the KDE smooths the uniform's edges, so its estimate sits above the truth (2.595 at this seed)
    assert 2 * math.log(math.sqrt(12)) < H_u < 2 * math.log(math.sqrt(12)) + 0.15
    assert H_n == pytest.approx(gaussian_entropy(np.eye(2)), abs=0.05)


def test_gaussian_entropy_closed_form():
    assert gaussian_entropy(np.eye(8)) == pytest.approx(11.35, abs=0.005)  # the paper's "true entropy"
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    from scipy.stats import multivariate_normal
    assert gaussian_entropy(cov) == pytest.approx(multivariate_normal(cov=cov).entropy(), rel=1e-12)


@pytest.mark.parametrize("n,paper,sd", [(1000, 11.668, 0.055), (2000, 11.621, 0.060)])
def test_standard_normal_rows_of_table_2(n, paper, sd):
    H = latent_entropy(_normal(n, 8, n))
    assert abs(H - paper) < 2 * sd
    assert H > 11.35  # the KDE estimate is biased upwards from the true entropy


def test_standard_normal_5000_matches_paper():
    """Done-when: 11.575 +- 0.04 on 5000 N(0, I_8) samples (paper: 11.575 +- 0.020)."""
    H, h = latent_entropy(_normal(5000, 8, 5000), return_bandwidth=True, tol=1e-4)  # H error O(tol^2)
    assert abs(H - 11.575) < 0.04
    assert 0.5 < h < 0.65


# ------------------------------------------------------------------------------------------ CLI

def test_cli_entropy_on_saved_latents(tmp_path, capsys):
    import json

    from gens.cli import main

    z = _correlated(400, 3, 11)
    np.save(tmp_path / "z.npy", z.numpy())
    out = tmp_path / "h.json"
    assert main(["evaluate", "entropy", "--latents", str(tmp_path / "z.npy"), "--samples", "400", "--json",
                 str(out)]) == 0
    assert "| 400 |" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["rows"][0]["encoded"] == [pytest.approx(latent_entropy(z), rel=1e-9)]
    # a correlated Gaussian whitens to N(0, I): the two columns agree to sampling noise
    assert res["rows"][0]["normal"][0] == pytest.approx(res["rows"][0]["encoded"][0], abs=0.1)
    assert main(["evaluate", "entropy", "--latents", str(tmp_path / "z.npy"), "--samples", "401"]) == 2
    assert "samples: at most 400" in capsys.readouterr().err
    assert main(["evaluate", "entropy"]) == 2
    assert "run: give a run folder" in capsys.readouterr().err

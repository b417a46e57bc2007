import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from gens.targets import Gaussian, GaussianMixture, StandardNormal, Target, mixture_on_simplex, target_from_spec


def _random_spd(rng, k, dim):
    a = rng.normal(size=(k, dim, dim))
    return a @ a.transpose(0, 2, 1) + 0.5 * np.eye(dim)


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_standard_normal_log_prob_matches_scipy(dim):
    z = torch.randn(50, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = stats.multivariate_normal(np.zeros(dim), np.eye(dim)).logpdf(z.numpy())
    got = StandardNormal(dim).log_prob(z)
    np.testing.assert_allclose(got.numpy(), np.atleast_1d(want), rtol=1e-12, atol=1e-12)


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    mean, cov = rng.normal(size=4), _random_spd(rng, 1, 4)[0]
    z = rng.normal(size=(40, 4)) * 2
    got = Gaussian(mean, cov).log_prob(torch.tensor(z))
    np.testing.assert_allclose(got.numpy(), stats.multivariate_normal(mean, cov).logpdf(z), rtol=1e-10)


def test_mixture_log_prob_and_components_match_scipy():
    rng = np.random.default_rng(1)
    k, dim = 3, 5
    means, covs = rng.normal(size=(k, dim)) * 3, _random_spd(rng, k, dim)
    w = np.array([0.2, 0.5, 0.3])
    z = rng.normal(size=(60, dim)) * 3
    comps = np.stack([np.log(w[j]) + stats.multivariate_normal(means[j], covs[j]).logpdf(z) for j in range(k)], 1)
    t = GaussianMixture(means, covs, w)
    np.testing.assert_allclose(t.component_log_prob(torch.tensor(z)).numpy(), comps, rtol=1e-10)
    np.testing.assert_allclose(t.log_prob(torch.tensor(z)).numpy(), logsumexp(comps, 1), rtol=1e-10)
    r = t.responsibilities(torch.tensor(z))
    np.testing.assert_allclose(r.sum(1).numpy(), 1.0, rtol=1e-12)


def test_log_prob_casts_to_float32_and_is_differentiable():
    t = mixture_on_simplex(3, 4)
    z = torch.randn(7, 4, requires_grad=True)
    lp = t.log_prob(z)
    assert lp.dtype == torch.float32 and lp.shape == (7,)
    lp.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # gradient of log N(0, I) is -z
    z64 = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    StandardNormal(3).log_prob(z64).sum().backward()
    torch.testing.assert_close(z64.grad, -z64.detach())


def test_sample_moments():
    rng = np.random.default_rng(2)
    mean, cov = rng.normal(size=3), _random_spd(rng, 1, 3)[0]
    z = Gaussian(mean, cov).sample(40000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert z.shape == (40000, 3)
    np.testing.assert_allclose(z.mean(0), mean, atol=4 * np.sqrt(np.diag(cov).max() / 40000))
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.06 * np.abs(cov).max())


def test_mixture_sample_weights_and_reproducibility():
    t = GaussianMixture([[-10.0, 0.0], [10.0, 0.0]], weights=[0.25, 0.75])
    z = t.sample(20000, torch.Generator().manual_seed(3))
    assert z.dtype == torch.float32
    frac = (z[:, 0] > 0).float().mean().item()
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20000)
    z2 = t.sample(20000, torch.Generator().manual_seed(3))
    assert torch.equal(z, z2)
    assert t.sample(0).shape == (0, 2) and StandardNormal(3).sample(0).shape == (0, 3)


def test_shrink():
    t = StandardNormal(3).shrink(0.6)
    torch.testing.assert_close(t.covs[0], 0.64 * torch.eye(3, dtype=torch.float64))
    m = mixture_on_simplex(4, 3).shrink(0.5)
    assert isinstance(m, GaussianMixture) and m.n_components == 4
    torch.testing.assert_close(m.covs, 0.75 * torch.eye(3, dtype=torch.float64).expand(4, 3, 3))
    with pytest.raises(ValueError, match="^h:"):
        StandardNormal(3).shrink(1.0)
    with pytest.raises(ValueError, match="^h:"):
        StandardNormal(3).shrink(0.0)


@pytest.mark.parametrize("k,dim", [(10, 2), (3, 5), (10, 8), (10, 10), (20, 3)])
def test_mixture_on_simplex_is_separated(k, dim):
    t = mixture_on_simplex(k, dim, scale=5.0)
    assert t.means.shape == (k, dim)
    d = torch.cdist(t.means, t.means) + torch.diag(torch.full((k,), math.inf, dtype=torch.float64))
    assert d.min().item() == pytest.approx(5.0)
    torch.testing.assert_close(t.covs, torch.eye(dim, dtype=torch.float64).expand(k, dim, dim))


def test_spec_roundtrip_and_cache_key():
    import json
    rng = np.random.default_rng(4)
    for t in [StandardNormal(4), Gaussian(rng.normal(size=2), _random_spd(rng, 1, 2)[0]), mixture_on_simplex(3, 2)]:
        spec = json.loads(json.dumps(t.spec()))
        t2 = target_from_spec(spec)
        assert type(t2) is type(t) and isinstance(t2, Target)
        z = torch.randn(5, t.dim, dtype=torch.float64)
        torch.testing.assert_close(t.log_prob(z), t2.log_prob(z))
        assert t.cache_key() == t2.cache_key()
    assert StandardNormal(4).cache_key() != StandardNormal(5).cache_key()
    assert mixture_on_simplex(3, 2).cache_key() != mixture_on_simplex(3, 2, scale=4).cache_key()


def test_validation_errors():
    with pytest.raises(ValueError, match="^dim:"):
        StandardNormal(0)
    with pytest.raises(ValueError, match="^cov:.*positive definite"):
        Gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="^cov:"):
        Gaussian([0.0, 0.0], np.eye(3))
    with pytest.raises(ValueError, match="^covs:.*symmetric"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="^weights:"):
        GaussianMixture([[0.0], [1.0]], weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="^weights:"):
        GaussianMixture([[0.0], [1.0]], weights=[1.5, -0.5])
    with pytest.raises(ValueError, match="^weights:"):
        GaussianMixture([[0.0], [1.0]], weights=[1.0])
    with pytest.raises(ValueError, match="^means:"):
        GaussianMixture([[0.0, math.nan]])
    with pytest.raises(ValueError, match="^z:"):
        StandardNormal(3).log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="^spec:"):
        target_from_spec({"type": "uniform"})


def test_one_target_grammar_for_runs_estimators_and_gens_bandwidth(tmp_path):
    import json

    from gens.runconfig import target_spec
    from gens.targets import parse_target, target_from_text

    for word in ("normal", "standard_normal", "n", "n01", " Normal "):
        assert parse_target(word, 3) == {"type": "standard_normal", "dim": 3} == target_spec(word, 3)
    assert parse_target("mog:4", 2) == {"type": "mixture_on_simplex", "n_components": 4, "dim": 2, "scale": 6.0}
    assert target_from_text("mog:4:3", 2).spec() == mixture_on_simplex(4, 2, scale=3.0).spec()
    assert parse_target(None, 2) is None
    for bad in ("mog", "mog:", "mog:x", "mog:0", "mog:3:-1", "mog:3:inf", "mog:1:2:3", "gauss"):
        with pytest.raises(ValueError, match="^target: must be 'normal', 'mog:K' or 'mog:K:SCALE'"):
            parse_target(bad, 2)
        with pytest.raises(ValueError, match="^target: .* or a JSON spec file"):
            target_from_text(bad, 2)
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps(mixture_on_simplex(3, 2).spec()))
    assert target_from_text(str(spec), 2).n_components == 3
    with pytest.raises(ValueError, match="^target: the spec in .* has dim 2"):
        target_from_text(str(spec), 4)

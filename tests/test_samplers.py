"""gens.samplers (ex-post latent samplers) and the estimators' sample(n, sampler=...): closed forms,
scikit-learn's GaussianMixture, persistence."""

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGMM

from gens import samplers as S
from gens.estimators import AAE, AE, GEN, VAE, WAE
from gens.targets import Gaussian

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(cls, **kw):
    extra = {"bandwidth": 0.5, "bank_size": 50} if cls is GEN else {"disc_hidden": (8,)} if cls is AAE else {}
    return cls(latent_dim=2, max_epochs=1, hidden=(16,), batch_size=50, random_state=0, **{**extra, **kw})


@pytest.fixture(scope="module")
def gen(digits):
    return _tiny(GEN).fit(digits)


def _latents(n=2000, seed=0):
    rng = np.random.RandomState(seed)
    a = np.array([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.4]])
    return rng.randn(n, 3) @ a.T + np.array([1.0, -2.0, 0.5])


def _clusters(n=3000, seed=0):
    rng = np.random.RandomState(seed)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    k = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return centres[k] + rng.randn(n, 2) * np.array([[0.5, 1.0], [1.0, 0.3], [0.7, 0.7]])[k]


def test_gaussian_sampler_is_the_closed_form_fit():
    Z = _latents()
    t = S.GaussianSampler().fit(Z).distribution(None)
    mean = Z.mean(0)
    cov = (Z - mean).T @ (Z - mean) / len(Z) + 1e-6 * np.eye(3)
    np.testing.assert_allclose(t.means[0].numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.covs[0].numpy(), cov, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.covs[0].numpy(), np.cov(Z.T, bias=True) + 1e-6 * np.eye(3), rtol=1e-10)
    # its draws have that mean and covariance (200k draws: standard errors ~ 2e-3)
    z = t.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    np.testing.assert_allclose(z.mean(0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.01)
    # and its log-density is N(mean, cov)'s
    ref = Gaussian(mean, cov).log_prob(torch.tensor(Z[:10])).numpy()
    np.testing.assert_allclose(t.log_prob(torch.tensor(Z[:10])).numpy(), ref, rtol=1e-12)


def test_gmm_sampler_is_sklearns_gaussian_mixture():
    Z = _clusters()
    t = S.GMMSampler(n_components=3).fit(Z, random_state=0).distribution(None)
    gm = SkGMM(3, covariance_type="full", random_state=0).fit(Z)
    np.testing.assert_allclose(t.means.numpy(), gm.means_, rtol=1e-12)
    np.testing.assert_allclose(t.covs.numpy(), gm.covariances_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.weights.numpy(), gm.weights_, rtol=1e-12)
    np.testing.assert_allclose(t.log_prob(torch.tensor(Z[:50])).numpy(), gm.score_samples(Z[:50]), rtol=1e-10)
    # draw statistics against sklearn's own sampler (50k draws each)
    ours = t.sample(50_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    theirs, _ = gm.sample(50_000)
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.08)
    np.testing.assert_allclose(np.cov(ours.T), np.cov(theirs.T), atol=0.25, rtol=0.03)
    np.testing.assert_allclose(gm.score(ours), gm.score(theirs), atol=0.03)
    # the fraction of draws nearest each centre follows the weights
    near = np.argmin(((ours[:, None] - gm.means_[None]) ** 2).sum(-1), 1)
    np.testing.assert_allclose(np.bincount(near, minlength=3) / len(ours), gm.weights_, atol=0.02)


def test_gmm_defaults_and_tiny_latent_sets():
    s = S.make_sampler("gmm")
    assert s.n_components == 10
    t = s.fit(_latents(5), random_state=0).distribution(None)  # fewer latents than components: capped
    assert t.n_components == 5
    t = S.GMMSampler().fit(np.zeros((3, 2)), random_state=0).distribution(None)  # identical latents
    assert np.isfinite(t.log_prob(torch.zeros(1, 2)).numpy()).all()
    g = S.GaussianSampler().fit(np.ones((1, 2))).distribution(None)  # one latent: a tiny ball around it
    np.testing.assert_allclose(g.covs[0].numpy(), 1e-6 * np.eye(2))


def test_state_round_trip_is_weights_only_and_refit_free(tmp_path):
    Z = _clusters(600)
    fitted = S.fit_samplers(Z, random_state=0)
    assert set(fitted) == {"analytic", "gaussian", "gmm"}
    path = tmp_path / "s.pt"
    torch.save(S.samplers_state(fitted), path)
    back = S.samplers_from_state(torch.load(path, weights_only=True))
    assert set(back) == set(fitted)
    for name in ("gaussian", "gmm"):
        a, b = fitted[name].distribution(None), back[name].distribution(None)
        for attr in ("means", "covs", "weights"):
            torch.testing.assert_close(getattr(a, attr), getattr(b, attr), rtol=0, atol=0)
        za = a.sample(20, generator=torch.Generator().manual_seed(4))
        zb = b.sample(20, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(za, zb, rtol=0, atol=0)
    assert S.samplers_from_state(None).keys() == {"analytic"}
    assert S.samplers_from_state({"gone": {}}).keys() == {"analytic"}  # a sampler no longer registered


def test_registry_errors_and_a_new_sampler_is_one_class(monkeypatch):
    with pytest.raises(ValueError, match="^sampler: must be one of"):
        S.make_sampler("flow")
    with pytest.raises(ValueError, match="^n_components:"):
        S.make_sampler("gmm", n_components=0)
    with pytest.raises(ValueError, match="^Z: must be a 2-D array"):
        S.GaussianSampler().fit(np.zeros(4))
    with pytest.raises(ValueError, match="^Z: must hold only finite"):
        S.GaussianSampler().fit(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="^sampler: 'gaussian' is not fitted"):
        S.GaussianSampler().distribution(None)

    class Shifted(S.GaussianSampler):  # N(mean + 1, cov): a new sampler needs only a class and a name
        name = "shifted"

        def fit(self, Z, random_state=None):
            return super().fit(np.asarray(Z) + 1.0)

    monkeypatch.setitem(S.SAMPLERS, "shifted", Shifted)
    got = S.fit_samplers(_latents(100), names=("analytic", "shifted"))
    back = S.samplers_from_state(S.samplers_state(got))
    np.testing.assert_allclose(back["shifted"].distribution(None).means[0].numpy(), _latents(100).mean(0) + 1)


# ------------------------------------------------------------------------------------- estimators


def test_fit_fits_every_sampler_on_the_training_latents(gen, digits):
    assert set(gen.samplers_) == {"analytic", "gaussian", "gmm"}
    Z = gen.transform(digits)
    g = gen.samplers_["gaussian"].distribution(gen.module_)
    np.testing.assert_allclose(g.means[0].numpy(), Z.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.covs[0].numpy(), np.cov(Z.T, bias=True) + 1e-6 * np.eye(2), rtol=1e-8)
    m = gen.samplers_["gmm"].distribution(gen.module_)
    assert m.n_components == 10
    gm = SkGMM(10, covariance_type="full", random_state=gen.seed_).fit(Z)
    np.testing.assert_allclose(m.means.numpy(), gm.means_, rtol=1e-8, atol=1e-10)
    # "analytic" is the module's own distribution (GEN: the shrunk target)
    a = gen.samplers_["analytic"].distribution(gen.module_)
    np.testing.assert_allclose(a.covs[0].numpy(), (1 - 0.5**2) * np.eye(2), rtol=1e-12)


@pytest.mark.parametrize("cls", [GEN, AE, VAE, AAE, WAE], ids=lambda c: c.__name__)
def test_sample_with_each_sampler(cls, digits):
    est = _tiny(cls).fit(digits)
    for sampler in ("analytic", "gaussian", "gmm"):
        x = est.sample(6, sampler=sampler, random_state=3)
        assert x.shape == (6, 64) and x.dtype == np.float64 and np.isfinite(x).all()
        np.testing.assert_array_equal(est.sample(6, sampler=sampler, random_state=3), x)
    assert not np.array_equal(est.sample(6, sampler="gmm", random_state=3), est.sample(6, random_state=3))


def test_sample_decodes_the_samplers_draws(gen):
    # analytic: what module.sample draws (the estimators' sample before samplers existed)
    seed = int(np.random.RandomState(7).randint(0, 2**31 - 1))
    ref = gen.module_.sample(5, generator=torch.Generator().manual_seed(seed)).detach().double().numpy()
    np.testing.assert_allclose(gen.sample(5, random_state=7), ref, rtol=0, atol=0)
    z = gen.samplers_["gmm"].distribution(None).sample(5, generator=torch.Generator().manual_seed(seed))
    np.testing.assert_allclose(gen.sample(5, sampler="gmm", random_state=7),
                               gen.inverse_transform(z.double().numpy()), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="^sampler: must be one of"):
        gen.sample(2, sampler="normal")


def test_save_load_gives_the_same_samples(gen, digits, tmp_path):
    path = tmp_path / "gen.ckpt"
    gen.save(path)
    ckpt = torch.load(path, weights_only=True)  # tensors and plain types only: no sklearn object inside
    assert set(ckpt["samplers"]) == {"analytic", "gaussian", "gmm"}
    for state in ckpt["samplers"].values():
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    back = GEN.load(path)
    for sampler in ("analytic", "gaussian", "gmm"):
        np.testing.assert_array_equal(back.sample(8, sampler=sampler, random_state=11),
                                      gen.sample(8, sampler=sampler, random_state=11))


def test_fit_sampler_refits_one_with_options(digits):
    est = _tiny(AE).fit(digits)
    before = est.samplers_["gaussian"]
    est.fit_sampler(digits[:100], "gmm", n_components=3)
    assert est.samplers_["gmm"].distribution(None).n_components == 3
    assert est.samplers_["gaussian"] is before
    assert est.sample(4, sampler="gmm", random_state=0).shape == (4, 64)

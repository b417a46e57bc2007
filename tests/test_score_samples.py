"""score_samples / score_parts / score on the estimators: eq. 10 as gens.evaluation.novelty computes it,
scikit-learn's conventions, bad input, persistence."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from gens.estimators import AAE, AE, GEN, VAE, WAE
from gens.evaluation.novelty import (
    DataSpaceDensity,
    decoder_log_det,
    fit_noise_variance,
    novelty_log_prob,
    reconstruction_residuals,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [GEN, AE, VAE, AAE, WAE]


def _tiny(cls, **kw):
    """A few dozen steps at a high learning rate: enough for the digits to reconstruct better than noise."""
    extra = {"bandwidth": 0.5, "bank_size": 50} if cls is GEN else {"disc_hidden": (8,)} if cls is AAE else {}
    return cls(latent_dim=2, max_epochs=2, hidden=(32,), lr=1e-2, batch_size=25, random_state=0, **{**extra, **kw})


@pytest.fixture(scope="module")
def fitted(digits):
    return {cls.__name__: _tiny(cls).fit(digits) for cls in CLASSES}


def _module_level(est, X_train, X, log_prob=None):
    """eq. 10 by gens.evaluation.novelty on the estimator's own (float32) module."""
    m = est.module_
    x_train, x = (torch.tensor(a, dtype=torch.float32) for a in (X_train, X))
    sigma2 = fit_noise_variance(reconstruction_residuals(m.encode, m.decode, x_train))
    return sigma2, novelty_log_prob(m.encode, m.decode, log_prob or m.latent_distribution().log_prob, x, sigma2)


@pytest.mark.parametrize("name", ["GEN", "AE", "VAE", "AAE", "WAE"])
def test_score_samples_is_eq10_of_the_novelty_module(fitted, digits, name):
    est = fitted[name]
    X = digits[:120]
    sigma2, ref = _module_level(est, digits, X)
    assert est.noise_variance_ == pytest.approx(sigma2, rel=1e-5)
    parts = est.score_parts(X)
    # the estimator runs in float64, the module-level reference here in float32
    np.testing.assert_allclose(est.score_samples(X), ref["log_px"], rtol=1e-5, atol=1e-4)
    for k in ("log_pz", "log_det", "log_noise", "recon_error"):
        np.testing.assert_allclose(parts[k], ref[k], rtol=1e-4, atol=1e-4, err_msg=k)
    # the same code on a float64 copy of the networks agrees to rounding
    m64 = est._float64_module()
    x64 = torch.tensor(X, dtype=torch.float64)
    exact = novelty_log_prob(m64.encode, m64.decode, est.module_.latent_distribution().log_prob, x64,
                             est.noise_variance_)
    np.testing.assert_allclose(parts["log_px"], exact["log_px"], rtol=1e-12, atol=1e-10)
    with torch.no_grad():
        z = m64.encode(x64)
    np.testing.assert_allclose(parts["log_det"], decoder_log_det(m64.decode, z).numpy(), rtol=1e-12, atol=1e-10)
    # the scikit-learn style scorer of the novelty module, fitted on the same training data
    dsd = DataSpaceDensity(m64.encode, m64.decode, est.module_.latent_distribution().log_prob).fit(
        torch.tensor(digits, dtype=torch.float64))
    np.testing.assert_allclose(est.score_samples(X), dsd.score_samples(x64), rtol=1e-10, atol=1e-8)


def test_parts_add_up_and_sign(fitted, digits):
    p = fitted["GEN"].score_parts(digits[:50])
    assert set(p) == {"log_px", "in_manifold", "reconstruction", "scaling", "log_pz", "log_det", "log_noise",
                      "recon_error"}
    np.testing.assert_allclose(p["log_px"], p["in_manifold"] + p["reconstruction"] + p["scaling"], rtol=1e-12)
    np.testing.assert_allclose(p["in_manifold"], p["log_pz"] - p["log_det"], rtol=1e-12)
    np.testing.assert_array_equal(p["reconstruction"], p["log_noise"])
    np.testing.assert_array_equal(p["scaling"], 0.0)  # digits / 16 is already in [0, 1]


@pytest.mark.parametrize("name", ["GEN", "AE", "VAE", "AAE", "WAE"])
def test_sklearn_conventions(fitted, digits, name):
    est = fitted[name]
    s = est.score_samples(digits)
    assert isinstance(s, np.ndarray) and s.shape == (300,) and s.dtype == np.float64 and np.isfinite(s).all()
    assert est.score(digits) == pytest.approx(s.mean(), rel=1e-12)
    assert est.score(digits, np.zeros(300)) == est.score(digits)  # y is ignored
    rng = np.random.RandomState(0)
    noise = rng.uniform(size=(100, 64))
    s_noise = est.score_samples(noise)
    assert np.isfinite(s_noise).all()
    # training-like data is more typical than noise images: higher log p(x), sample by sample
    assert s.mean() > s_noise.mean() + 10
    assert np.median(s) > np.max(s_noise)
    # held-out digits look like the training ones
    X_other, _ = load_digits(return_X_y=True)
    assert est.score(X_other[1000:1200] / 16.0) > s_noise.mean() + 10


@pytest.mark.parametrize("sampler", ["gaussian", "gmm"])
def test_score_with_another_latent_density(fitted, digits, sampler):
    est = fitted["AE"]
    p = est.score_parts(digits[:40], sampler=sampler)
    dist = est.samplers_[sampler].distribution(est.module_)
    z = torch.from_numpy(est._float64_module().encode(torch.tensor(digits[:40])).detach().numpy())
    np.testing.assert_allclose(p["log_pz"], dist.log_prob(z).numpy(), rtol=1e-12, atol=1e-12)
    base = est.score_parts(digits[:40])
    np.testing.assert_array_equal(p["log_det"], base["log_det"])  # only the latent density changes
    np.testing.assert_array_equal(p["log_noise"], base["log_noise"])
    assert np.isfinite(est.score_samples(digits, sampler=sampler)).all()


def test_scaled_data_adds_the_scaling_jacobian(digits):
    Xs = digits * 20.0 - 5.0
    est = _tiny(AE).fit(Xs)
    assert est.data_min_ is not None
    p = est.score_parts(Xs[:30])
    np.testing.assert_allclose(p["scaling"], -np.log(est.data_range_).sum(), rtol=1e-12)
    m = est.module_
    x = torch.tensor((Xs - est.data_min_) / est.data_range_, dtype=torch.float32)
    sigma2 = fit_noise_variance(reconstruction_residuals(m.encode, m.decode, x))
    ref = novelty_log_prob(m.encode, m.decode, m.latent_distribution().log_prob, x[:30], sigma2)
    np.testing.assert_allclose(p["log_px"] - p["scaling"], ref["log_px"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (lambda X: X[:, :10], "^X has 10 features"),
    (lambda X: np.where(np.arange(64) == 3, np.nan, X), "^X: .*NaN"),
    (lambda X: np.where(np.arange(64) == 3, np.inf, X), "^X: .*infinity"),
    (lambda X: X[0], "^X: .*2D array"),
    (lambda X: X.reshape(-1, 1, 4, 16), "^X: samples of shape"),
    (lambda X: X.reshape(-1, 1, 1, 1, 64), "^X: must have shape"),
    (lambda X: X[:0], "^X: .*0 sample"),
])
def test_bad_input_is_one_value_error_naming_X(fitted, digits, bad, match):
    est = fitted["GEN"]
    for method in (est.score_samples, est.score, est.score_parts):
        with pytest.raises(ValueError, match=match):
            method(bad(digits[:20]))


def test_bad_sampler_and_unfitted(fitted, digits):
    with pytest.raises(ValueError, match="^sampler: must be one of"):
        fitted["GEN"].score_samples(digits[:5], sampler="flow")
    with pytest.raises(NotFittedError):
        GEN().score_samples(digits[:5])


def test_scores_survive_save_load_and_pickle(fitted, digits, tmp_path):
    for name in ("GEN", "AE"):
        est = fitted[name]
        est.save(tmp_path / f"{name}.ckpt")
        for back in (type(est).load(tmp_path / f"{name}.ckpt"), pickle.loads(pickle.dumps(est))):
            assert back.noise_variance_ == est.noise_variance_
            for sampler in ("analytic", "gaussian", "gmm"):
                np.testing.assert_array_equal(back.score_samples(digits[:30], sampler=sampler),
                                              est.score_samples(digits[:30], sampler=sampler))


def test_file_from_before_scoring_loads_without_it(fitted, digits, tmp_path):
    est = fitted["GEN"]
    path = tmp_path / "old.ckpt"
    est.save(path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["samplers"], ckpt["attributes"]["noise_variance_"]
    torch.save(ckpt, path)
    old = GEN.load(path)
    np.testing.assert_array_equal(old.sample(4, random_state=0), est.sample(4, random_state=0))
    with pytest.raises(ValueError, match="^sampler: 'gmm' was not fitted"):
        old.sample(4, sampler="gmm")
    with pytest.raises(ValueError, match="^score_samples: .*refit"):
        old.score_samples(digits[:5])
    old.fit_sampler(digits, "gmm", n_components=2)  # a sampler can be fitted afterwards
    assert old.samplers_["gmm"].distribution(None).n_components == 2


def test_image_shaped_models_score_images(digits):
    X4 = digits.reshape(-1, 1, 8, 8)
    est = _tiny(AE).fit(X4)
    s = est.score_samples(X4[:20])
    assert s.shape == (20,) and np.isfinite(s).all()
    np.testing.assert_array_equal(est.score_samples(digits[:20]), s)  # flat rows are accepted too


def test_scoring_leaves_the_module_in_float32(fitted, digits):
    est = fitted["VAE"]
    before = {k: v.clone() for k, v in est.module_.state_dict().items()}
    est.score_samples(digits[:10])
    after = est.module_.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert next(est.module_.parameters()).dtype == torch.float32


def test_semisupervised_gen_scores_too(digits):
    from gens.estimators import SemiSupervisedGEN

    _, y = load_digits(return_X_y=True)
    y_semi = np.where(np.arange(300) % 3 == 0, y[:300] % 3, -1)
    est = SemiSupervisedGEN(2, n_modes=3, hidden=(16,), lr=1e-2, bank_size=50, bandwidth=0.5, labelled_batch=10,
                            max_epochs=1, batch_size=50, random_state=0).fit(digits, y_semi)
    s = est.score_samples(digits[:20])
    assert s.shape == (20,) and np.isfinite(s).all()
    assert 0.0 <= est.score(digits[:20], y[:20] % 3) <= 1.0  # score stays the accuracy (ClassifierMixin)
    assert est.sample(3, sampler="gmm", random_state=0).shape == (3, 64)


def test_non_finite_training_latents_leave_only_the_analytic_sampler(digits, monkeypatch):
    import gens.training

    real = gens.training.encode_all
    monkeypatch.setattr(gens.training, "encode_all", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.warns(RuntimeWarning, match="^fit: the trained model's training latents"):
        est = _tiny(AE).fit(digits)
    monkeypatch.setattr(gens.training, "encode_all", real)
    assert set(est.samplers_) == {"analytic"} and est.noise_variance_ is None
    assert est.sample(2, random_state=0).shape == (2, 64)
    with pytest.raises(ValueError, match="^score_samples: .*not finite"):
        est.score_samples(digits[:3])

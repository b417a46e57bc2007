"""gens.GEN / AE / VAE / AAE / WAE: scikit-learn conformance, numbers against the module, persistence."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from gens.checkpoint import UnsafeCheckpointError
from gens.estimators import AAE, AE, EXPECTED_FAILED_CHECKS, GEN, VAE, WAE, load

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(cls, **kw):
    extra = {"bandwidth": 0.5, "bank_size": 50} if cls is GEN else {"disc_hidden": (8,)} if cls is AAE else {}
    return cls(latent_dim=kw.pop("latent_dim", 2), max_epochs=kw.pop("max_epochs", 1), hidden=kw.pop("hidden", (16,)),
               batch_size=50, random_state=kw.pop("random_state", 0), **{**extra, **kw})


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300] / 16.0, y[:300]


@pytest.mark.parametrize("cls", [GEN, AE, VAE, AAE, WAE], ids=lambda c: c.__name__)
def test_sklearn_check_estimator(cls):
    est = _tiny(cls, latent_dim=1)
    check_estimator(est, expected_failed_checks=EXPECTED_FAILED_CHECKS, on_skip=None)


def test_transform_and_inverse_transform_equal_the_module(digits):
    X, _ = digits
    gen = _tiny(GEN, max_epochs=2).fit(X)
    x = torch.tensor(X, dtype=torch.float32)
    with torch.no_grad():
        z = gen.module_.encode(x)
        xr = gen.module_.decode(z)
    Z = gen.transform(X)
    assert Z.dtype == np.float64 and Z.shape == (300, 2)
    np.testing.assert_allclose(Z, z.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gen.inverse_transform(Z), xr.numpy(), rtol=1e-5, atol=1e-6)
    assert gen.n_features_in_ == 64 and gen.input_shape_ == (64,) and gen.bandwidth_ == 0.5
    assert gen.data_min_ is None  # data already in [0, 1]: no scaling
    assert list(gen.get_feature_names_out()) == ["gen0", "gen1"]
    assert len(gen.history_) == 2 and {"train/loss", "train/recon"} <= set(gen.history_[0])


def test_images_in_images_out(digits):
    X, _ = digits
    X4 = X.reshape(-1, 1, 8, 8)
    est = _tiny(AE).fit(X4)
    assert est.input_shape_ == (1, 8, 8) and est.n_features_in_ == 64
    np.testing.assert_allclose(est.transform(X4), est.transform(X), rtol=0, atol=0)  # flat input accepted too
    assert est.inverse_transform(est.transform(X4[:5])).shape == (5, 1, 8, 8)
    assert est.sample(3, random_state=0).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="^X: samples of shape"):
        est.transform(X4[:, :, :4])


def test_minmax_scaling_round_trip(digits):
    X, _ = digits
    Xs = X * 20.0 - 5.0  # values in [-5, 15]
    est = _tiny(AE).fit(Xs)
    np.testing.assert_array_equal(est.data_min_, Xs.min(0))
    rng = Xs.max(0) - Xs.min(0)
    np.testing.assert_array_equal(est.data_range_, np.where(rng > 0, rng, 1.0))
    # the decoder ends in a sigmoid, so outputs map back inside the training range of every feature
    out = est.inverse_transform(est.transform(Xs))
    assert np.all(out >= est.data_min_ - 1e-9) and np.all(out <= est.data_min_ + est.data_range_ + 1e-9)
    # scaling is what the module sees: transform(X) == encode((X - min) / range)
    x = torch.tensor((Xs - est.data_min_) / est.data_range_, dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(est.transform(Xs), est.module_.encode(x).numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="^X:"):
        _tiny(AE, scaling="none").fit(Xs)


def test_gen_samples_come_from_the_shrunk_target(digits):
    X, _ = digits
    gen = _tiny(GEN).fit(X)
    s = gen.sample(7, random_state=5)
    seed = np.random.RandomState(5).randint(0, 2**31 - 1)  # how sample() turns random_state into a seed
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (z * np.sqrt(1 - 0.5**2)).float()  # N(0, (1 - h^2) I), h = 0.5 (Sec. 4)
    with torch.no_grad():
        np.testing.assert_allclose(s, gen.module_.decode(z).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gen.sample(7, random_state=5), s)


def test_same_seed_same_fit_other_seed_differs(digits):
    X, _ = digits
    a, b = _tiny(VAE, random_state=3).fit(X), _tiny(VAE, random_state=3).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    c = _tiny(VAE, random_state=4).fit(X)
    assert not np.array_equal(a.transform(X), c.transform(X))


def test_training_lowers_the_loss(digits):
    X, _ = digits
    est = _tiny(GEN, max_epochs=10, lam=0.01, lr=2e-3, hidden=(64,)).fit(X)
    first, last = est.history_[0]["train/recon"], est.history_[-1]["train/recon"]
    assert last < 0.7 * first
    assert np.all(np.isfinite(est.transform(X)))


@pytest.mark.parametrize("cls", [GEN, AAE], ids=lambda c: c.__name__)
def test_save_load_round_trip(cls, digits, tmp_path):
    X, _ = digits
    est = _tiny(cls, target="mog:3").fit(X)
    est.save(tmp_path / "est.ckpt")
    back = cls.load(tmp_path / "est.ckpt")
    assert back.get_params() == est.get_params()
    np.testing.assert_array_equal(back.transform(X), est.transform(X))
    np.testing.assert_array_equal(back.sample(4, random_state=1), est.sample(4, random_state=1))
    assert back.history_ == est.history_
    assert type(load(tmp_path / "est.ckpt")) is cls
    other = GEN if cls is AAE else AAE
    with pytest.raises(ValueError, match="^path: .* holds a"):
        other.load(tmp_path / "est.ckpt")


def test_pickle_round_trip_and_scaled_save(digits, tmp_path):
    X, _ = digits
    est = _tiny(WAE).fit(X * 3 - 1)
    back = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(back.transform(X * 3 - 1), est.transform(X * 3 - 1))
    est.save(tmp_path / "w.ckpt")
    back = WAE.load(tmp_path / "w.ckpt")
    np.testing.assert_array_equal(back.data_range_, est.data_range_)
    np.testing.assert_array_equal(back.inverse_transform(est.transform(X)), est.inverse_transform(est.transform(X)))


def test_load_refuses_a_crafted_pickle(tmp_path):
    import builtins

    class Evil:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "pwned"), "w"))

    torch.save({"format": "gens-estimator/1", "estimator": "GEN", "params": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        GEN.load(tmp_path / "evil.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_in_a_pipeline(digits):
    X, y = digits
    ae = _tiny(AE, latent_dim=8, max_epochs=5, lr=2e-3, hidden=(64,))
    pipe = make_pipeline(ae, LogisticRegression(max_iter=1000)).fit(X, y)
    assert pipe.score(X, y) > 0.5  # well above chance (0.1) from 8 latents after 5 short epochs (0.65 here)


@pytest.mark.parametrize("kwargs,start", [
    ({"latent_dim": 64}, "latent_dim: must be smaller"),
    ({"scaling": "zscore"}, "scaling:"),
    ({"max_epochs": 0}, "max_epochs:"),
    ({"lr": -1.0}, "lr:"),
    ({"objective": "bogus"}, "objective:"),
    ({"target": "mog:"}, "target:"),
])
def test_bad_parameters_raise_in_fit(kwargs, start, digits):
    X, _ = digits
    est = _tiny(GEN, **kwargs)  # __init__ only stores
    with pytest.raises(ValueError, match=f"^{start}"):
        est.fit(X)


def test_bandwidth_of_one_or_more_is_refused_before_training(monkeypatch, tmp_path):
    from gens import training
    from gens.data import load_dataset

    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    X, _ = load_dataset("digits")
    X = X[:200]
    with monkeypatch.context() as patch:
        fits = []
        patch.setattr(training, "fit", lambda *a, **k: fits.append(1))  # never reached
        with pytest.raises(ValueError, match=r"^bandwidth: h = 1.2 .*must be < 1.*larger bank_size.*smaller latent_dim"
                                             r".*bandwidth_correction=True.*bandwidth_scale"):
            GEN(latent_dim=4, bandwidth=1.2, max_epochs=1, hidden=(16,), batch_size=50).fit(X)
        assert fits == []
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    with pytest.raises(ValueError, match=r"^bandwidth: h = \S+ \(l = 40, m = 50; h_opt = .*must be < 1"):
        GEN(latent_dim=40, bank_size=50, bandwidth_scale=1.0, max_epochs=1, hidden=(16,), batch_size=50).fit(X)
    assert steps == []  # refused at train start, before the first optimiser step

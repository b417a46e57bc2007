"""FID: the Fréchet distance against closed forms, the Inception-v3 loading path, in-domain features."""

import math

import numpy as np
import pytest
import torch

from gens.evaluation import fid as fid_mod
from gens.evaluation.fid import (
    domain_classifier,
    domain_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
)


def _spd(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (0 if rank else 0.1 * np.eye(d))


def _sym_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ------------------------------------------------------------------------------------ the distance

def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    ref = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(ref, rel=1e-10)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, v1) and N(m2, v2): (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5**2 + 1.5**2, rel=1e-12)


def test_general_covariances_against_symmetric_form():
    """tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}, computed here with eigh only."""
    d = 5
    s1, s2 = _spd(d, 1), _spd(d, 2)
    mu1, mu2 = np.arange(d, dtype=float), np.zeros(d)
    r1 = _sym_sqrt(s1)
    ref = mu1 @ mu1 + np.trace(s1) + np.trace(s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_singular_covariances_stay_finite_and_close():
    d = 6
    s1, s2 = _spd(d, 3, rank=2), _spd(d, 4, rank=3)  # rank-deficient: sqrtm of a singular product
    mu = np.zeros(d)
    r1 = _sym_sqrt(s1)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
    value = frechet_distance(mu, s1, mu, s2)
    assert math.isfinite(value)
    assert value == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_feature_statistics_and_fid_from_features():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(200, 4)) * [1, 2, 3, 4] + 1
    mu, sigma = feature_statistics(torch.as_tensor(f))
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-12)
    # large samples of two Gaussians: the plug-in FID approaches the population value
    g = rng.normal(size=(20000, 3)) * [1, 1, 2]
    h = rng.normal(size=(20000, 3)) + [0.5, 0, 0]
    pop = 0.25 + (2 - 1) ** 2
    assert fid_from_features(g, h) == pytest.approx(pop, abs=0.05)


def test_distance_input_checks():
    with pytest.raises(ValueError, match="^mu1: "):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="^sigma2: must be a \\(2, 2\\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="^features: "):
        feature_statistics(np.zeros((1, 3)))


# ----------------------------------------------------------------------------------- domain features

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, info = domain_classifier("digits", cache_dir=cache, epochs=20)
    return cache, model, info


def test_domain_classifier_trains_and_caches(digits_cache, monkeypatch):
    cache, model, info = digits_cache
    assert not info["cached"] and info["test_accuracy"] > 0.85
    files = list(cache.glob("domain-fid-v1-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(fid_mod, "_train_classifier", lambda *a: pytest.fail("retrained despite the cache"))
    again, info2 = domain_classifier("digits", cache_dir=cache, epochs=20)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_domain_fid_separates_real_from_altered(digits_cache):
    from gens.data import load_dataset

    cache, _, _ = digits_cache
    kw = {"cache_dir": cache, "epochs": 20}
    x = torch.as_tensor(load_dataset("digits", "train")[0])
    f = domain_features(x, "digits", **kw)
    assert f.shape == (len(x), 128) and f.dtype == torch.float64
    h = 700  # n well above the 128 feature dimensions, so the plug-in covariances are usable
    same = fid_from_features(f[:h], f[h:2 * h])  # two halves of one distribution (10.3 at this seed)
    altered = {
        "blurred": 0.5 * x[h:2 * h] + 0.5 * x[h:2 * h].mean(),
        "shifted": torch.roll(x[h:2 * h], 2, -1),
        "noise": torch.rand(h, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
    }
    for name, xa in altered.items():  # each about 250-360 at this seed
        assert fid_from_features(f[:h], domain_features(xa, "digits", **kw)) > 10 * same, name
    assert fid_from_features(f[:h], f[:h]) == pytest.approx(0.0, abs=1e-6)
    # flat input of square images is accepted
    flat = domain_features(x[:5].reshape(5, 64), "digits", **kw)
    assert torch.allclose(flat, f[:5])


def test_domain_features_need_labels(tmp_path):
    path = tmp_path / "imgs.npy"
    np.save(path, np.zeros((20, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="^source: .* no labels"):
        domain_classifier(str(path), cache_dir=tmp_path)


# --------------------------------------------------------------------------- CLI on a run folder

def test_cli_fid_on_a_run(tiny_run, digits_cache, tmp_path, capsys):
    import json

    from gens.cli import main
    from gens.data import load_dataset
    from gens.runs import load_run

    cache, _, _ = digits_cache
    out = tmp_path / "fid.json"
    assert main(["evaluate", "fid", str(tiny_run), "--n", "150", "--cache-dir", str(cache),
                 "--classifier-epochs", "20", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cached" in text and "generated vs test" in text
    res = json.loads(out.read_text())
    # recompute: the same 150 generated samples (seed 0) and the first 150 test images
    module, _ = load_run(tiny_run)
    with torch.no_grad():
        fake = module.sample(150, generator=torch.Generator().manual_seed(0)).float().clamp(0, 1)
    real = torch.as_tensor(load_dataset("digits", "test")[0][:150])
    kw = {"cache_dir": cache, "epochs": 20}
    expected = fid_from_features(domain_features(real, "digits", **kw), domain_features(fake, "digits", **kw))
    assert res["fid"] == pytest.approx(expected, rel=1e-6)
    assert 0 < res["fid_train_vs_test"] < res["fid"]  # a 1-epoch AE's samples are far from real digits


def test_cli_entropy_on_a_run(tiny_run, capsys):
    import json

    from gens.cli import main
    from gens.evaluation.entropy import latent_entropy
    from gens.runs import load_run, run_split
    from gens.training import encode_all

    out = tiny_run / "entropy.json"
    assert main(["evaluate", "entropy", str(tiny_run), "--samples", "360", "--json", str(out)]) == 0
    assert "| 360 |" in capsys.readouterr().out
    res = json.loads(out.read_text())
    module, cfg = load_run(tiny_run)
    z = encode_all(module.eval(), run_split(cfg, "test")[0]).double()
    assert res["rows"][0]["encoded"][0] == pytest.approx(latent_entropy(z), rel=1e-9)
    assert res["latent_dim"] == 3 and res["rows"][0]["normal"][0] > res["rows"][0]["encoded"][0]

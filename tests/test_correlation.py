"""Sec. 5.1 / Fig. 1 correlation study: samplers, the two JSD estimators, the study and its plots."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logsumexp

from gens.evaluation.correlation import (
    QUICK,
    CorrelationResults,
    correlation_study,
    kde_jsd,
    mixture_samples,
    nn_jsd,
    normal_samples,
    plot_examples,
    plot_grid,
    plot_line,
    winner,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mixture_cdf(x, s):
    return 0.5 * stats.norm.cdf(x + s / 2) + 0.5 * stats.norm.cdf(x - s / 2)


# ------------------------------------------------------------------------------------------ samplers

@pytest.mark.parametrize("s", [0.0, 2.0, 6.0])
def test_raw_mixture_matches_its_distribution(s):
    z = mixture_samples(s, 4000, 3, _gen(1), whiten=False).numpy()
    assert z.shape == (4000, 3) and z.dtype == np.float64
    assert stats.kstest(z[:, 0], lambda x: _mixture_cdf(x, s)).pvalue > 0.01
    for k in (1, 2):  # the other axes are standard normal
        assert stats.kstest(z[:, k], "norm").pvalue > 0.01
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.diag([1 + s * s / 4, 1, 1]), atol=0.15 * (1 + s * s / 4))


def test_whitened_samples_have_identity_covariance():
    for z in (mixture_samples(4.0, 500, 4, _gen(2)), normal_samples(500, 4, _gen(3))):
        np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-12)
        np.testing.assert_allclose(np.cov(z.numpy(), rowvar=False), np.eye(4), atol=1e-10)
    # whitened s = 6 is bimodal along e_1: few points near 0 compared with a normal
    z = mixture_samples(6.0, 4000, 2, _gen(4)).numpy()
    assert np.mean(np.abs(z[:, 0]) < 0.25) < 0.5 * (stats.norm.cdf(0.25) - stats.norm.cdf(-0.25))


def test_sampler_input_checks():
    with pytest.raises(ValueError, match="^s: "):
        mixture_samples(-1.0, 10, 2)
    with pytest.raises(ValueError, match="^n: "):
        mixture_samples(1.0, 1, 2)
    with pytest.raises(ValueError, match="^l: "):
        normal_samples(10, 0)


# ------------------------------------------------------------------------------------------ KDE JSD

def test_kde_jsd_matches_brute_force():
    g = _gen(5)
    bank, z_e = mixture_samples(3.0, 300, 3, g), mixture_samples(3.0, 200, 3, g)
    z_t = normal_samples(250, 3, g)
    h = 0.6

    def log_pe(x):
        d2 = ((x.numpy()[:, None] - bank.numpy()[None]) ** 2).sum(-1)
        return logsumexp(-d2 / (2 * h * h), axis=1) - math.log(300) - 3 * math.log(h) - 1.5 * math.log(2 * math.pi)

    mvn = stats.multivariate_normal(np.zeros(3), np.eye(3))
    le, lt = log_pe(z_e), mvn.logpdf(z_e.numpy())
    j = np.mean(le - np.logaddexp(le, lt))
    le, lt = log_pe(z_t), mvn.logpdf(z_t.numpy())
    j += np.mean(lt - np.logaddexp(le, lt))
    assert kde_jsd(bank, z_e, z_t, h) == pytest.approx(math.log(2) + j / 2, rel=1e-10)


def test_kde_jsd_grows_with_separation():
    g = _gen(6)
    vals = []
    for s in (0.0, 6.0):
        vals.append(kde_jsd(mixture_samples(s, 1000, 2, g), mixture_samples(s, 1000, 2, g), normal_samples(1000, 2, g),
                            0.38))
    assert vals[1] > vals[0] + 0.05


# ------------------------------------------------------------------------------------------ NN JSD

def _true_jsd_shift(shift):
    """JSD(N(shift e_1, I) || N(0, I)) in nats: a 1-D integral along e_1."""
    p, q = stats.norm(shift, 1), stats.norm(0, 1)

    def f(x):
        a, b = p.pdf(x), q.pdf(x)
        m = 0.5 * (a + b)
        return 0.5 * (a * math.log(a / m) if a > 0 else 0) + 0.5 * (b * math.log(b / m) if b > 0 else 0)

    return integrate.quad(f, -12, 12 + shift, limit=200)[0]


def test_nn_jsd_against_closed_form_and_identity():
    g = _gen(7)
    shift = torch.tensor([3.0, 0.0])
    p = torch.randn(1500, 2, generator=g, dtype=torch.float64) + shift
    q = torch.randn(1500, 2, generator=g, dtype=torch.float64)
    p_eval = torch.randn(2000, 2, generator=g, dtype=torch.float64) + shift
    q_eval = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    true = _true_jsd_shift(3.0)  # 0.4218 nats
    est, info = nn_jsd(p, q, p_eval, q_eval, seed=0, return_info=True)
    assert 0.85 * true < est < true + 0.03  # a variational lower bound, up to sampling noise
    assert 1 <= info["best_epoch"] <= info["epochs"]
    same = nn_jsd(q, q_eval, normal_samples(1000, 2, g, whiten=False), normal_samples(1000, 2, g, whiten=False))
    assert abs(same) < 0.02
    assert same < est


def test_nn_jsd_is_seeded_and_leaves_global_rng_alone():
    g = _gen(8)
    p, q = mixture_samples(5.0, 300, 2, g), normal_samples(300, 2, g)
    state = torch.get_rng_state()
    a = nn_jsd(p, q, p, q, seed=3, max_epochs=5)
    assert torch.equal(state, torch.get_rng_state())
    assert nn_jsd(p, q, p, q, seed=3, max_epochs=5) == a


def test_nn_jsd_early_stopping_stops_on_identical_data():
    g = _gen(9)
    p, q = normal_samples(400, 2, g), normal_samples(400, 2, g)
    _, info = nn_jsd(p, q, p, q, patience=3, max_epochs=200, return_info=True)
    assert info["epochs"] == info["best_epoch"] + 3 < 200


def test_nn_jsd_input_checks():
    x = torch.randn(50, 2)
    with pytest.raises(ValueError, match="^q_train: must have shape"):
        nn_jsd(x, torch.randn(50, 3), x, x)
    with pytest.raises(ValueError, match="^val_fraction: "):
        nn_jsd(x, x, x, x, val_fraction=1.0)
    with pytest.raises(ValueError, match="^patience: "):
        nn_jsd(x, x, x, x, patience=0)


# ------------------------------------------------------------------------------------------ study

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return correlation_study(**{**QUICK, "sizes": (400,), "separations": (0.0, 3.0, 6.0)}, seed=0,
                             bandwidth={(2, 400): 0.42}, nn={"max_epochs": 60})


def test_study_quick_cells_and_pearson(quick):
    assert isinstance(quick, CorrelationResults)
    assert quick.dims == [2] and quick.sizes == [400]
    c = quick.cell(2, 400)
    kde, nn = np.asarray(c["kde"]), np.asarray(c["nn"])
    assert kde.shape == nn.shape == (3, QUICK["trials"]) and np.isfinite(kde).all() and np.isfinite(nn).all()
    s = np.repeat(quick.separations, QUICK["trials"])
    for k, v in (("kde", kde), ("nn", nn)):
        assert c["r"][k] == pytest.approx(np.corrcoef(s, v.ravel())[0, 1], rel=1e-9)
        # p-value of a Pearson r under H0 from the t distribution with n - 2 degrees of freedom
        n, r = len(s), c["r"][k]
        t = r * math.sqrt((n - 2) / (1 - r * r))
        assert c["p"][k] == pytest.approx(2 * stats.t.sf(abs(t), n - 2), rel=1e-6)
    assert c["r"]["kde"] > 0.9 and c["p"]["kde"] < 0.05  # KDE tracks the separation in 2-D
    # the JSON round trip keeps everything
    assert CorrelationResults.from_dict(quick.to_dict()) == quick


def test_winner_and_table():
    cell = {"r": {"kde": 0.8, "nn": 0.3}, "p": {"kde": 0.001, "nn": 0.2}}
    assert winner(cell) == "kde"
    assert winner({"r": {"kde": 0.8, "nn": 0.3}, "p": {"kde": 0.2, "nn": 0.2}}) is None
    assert winner({"r": {"kde": math.nan, "nn": 0.5}, "p": {"kde": math.nan, "nn": 0.01}}) == "nn"
    res = CorrelationResults([0.0, 1.0], 2, [{"l": 2, "m": 10, "h": 0.5, "kde": [], "nn": [], **cell}])
    assert "0.30 \\| **0.80**" in res.table()


def test_study_input_checks():
    with pytest.raises(ValueError, match="^separations: need at least two"):
        correlation_study(dims=(2,), sizes=(50,), separations=(1.0, 1.0), trials=1)
    with pytest.raises(ValueError, match="^methods: "):
        correlation_study(dims=(2,), sizes=(50,), separations=(0.0, 1.0), trials=1, methods=("svm",))
    with pytest.raises(ValueError, match="^cell: no results"):
        CorrelationResults([0.0, 1.0], 1).cell(2, 10)


def test_plots_write_pngs(quick, tmp_path):
    import matplotlib.image as mpimg

    for path in (plot_line(quick, tmp_path / "line.png", l=2, m=400), plot_grid(quick, tmp_path / "grid.png"),
                 plot_examples(tmp_path / "ex.png", n=200)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(path)
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_cli_quick_writes_json_and_pngs(tmp_path, monkeypatch, capsys):
    import json

    from gens.cli import main

    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path / "cache"))  # h_opt(2, 200) computed and cached here
    out = tmp_path / "fig1"
    assert main(["evaluate", "correlation", "--quick", "--no-line", "--max-epochs", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| l \\ m | 200 |" in text
    payload = json.loads((out / "correlation.json").read_text())
    grid = CorrelationResults.from_dict(payload["grid"])
    assert grid.dims == [2] and grid.sizes == [200] and len(grid.separations) == 3
    assert 0.3 < grid.cell(2, 200)["h"] < 0.6  # Table 1: h_opt(2, 250) = 0.46 +- 0.08
    assert np.asarray(grid.cell(2, 200)["kde"]).shape == (3, 2) and "line" not in payload
    assert not (out / "fig1_line.png").exists()
    for name in ("fig1_grid.png", "fig1_examples.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

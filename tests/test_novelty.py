"""Eq. 10 novelty scores: Jacobian, log-determinant, noise fit, closed forms and ranking."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from gens.evaluation.novelty import (
    DataSpaceDensity,
    decoder_jacobian,
    decoder_log_det,
    fit_noise_variance,
    novelty_log_prob,
    reconstruction_residuals,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_decoder(l=3, shape=(1, 3, 4), dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    d = int(np.prod(shape))
    net = torch.nn.Sequential(
        torch.nn.Linear(l, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Softplus(),
        torch.nn.Linear(16, d), torch.nn.Sigmoid(), torch.nn.Unflatten(1, shape),
    ).to(dtype)
    return net.eval()


def _reverse_mode_jacobians(decoder, z):
    """Reference: one torch.autograd.functional.jacobian per sample, (n, d, l)."""
    return torch.stack([
        torch.autograd.functional.jacobian(lambda v: decoder(v[None]).reshape(-1), zi) for zi in z
    ])


def test_jacobian_and_log_det_match_reverse_mode_autograd():
    decoder = _mlp_decoder()
    z = torch.randn(7, 3, dtype=torch.float64)
    ref = _reverse_mode_jacobians(decoder, z)
    jac = decoder_jacobian(decoder, z, chunk_size=3)  # chunks of 3, 3, 1
    assert jac.shape == (7, 12, 3)
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)
    ref_half = 0.5 * torch.linalg.slogdet(ref.mT @ ref).logabsdet
    torch.testing.assert_close(decoder_log_det(decoder, z, chunk_size=3), ref_half, rtol=0, atol=1e-8)
    # chunking does not change the answer
    torch.testing.assert_close(decoder_log_det(decoder, z, chunk_size=100), ref_half, rtol=0, atol=1e-8)


def test_jacobian_matches_finite_differences():
    decoder = _mlp_decoder(l=2, shape=(5,))
    z = torch.randn(4, 2, dtype=torch.float64)
    eps = 1e-6
    fd = torch.stack([(decoder(z + eps * e) - decoder(z - eps * e)) / (2 * eps)
                      for e in torch.eye(2, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(decoder_jacobian(decoder, z), fd, rtol=1e-6, atol=1e-8)


def test_linear_decoder_log_det_is_constant_closed_form():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(10, 4))
    decoder = lambda z: z @ torch.as_tensor(A).T  # noqa: E731  x = A z
    z = torch.as_tensor(rng.normal(size=(6, 4)))
    expected = 0.5 * np.linalg.slogdet(A.T @ A)[1]
    # independent route: |det A| = product of singular values
    assert expected == pytest.approx(np.log(np.linalg.svd(A, compute_uv=False)).sum(), abs=1e-12)
    np.testing.assert_allclose(decoder_log_det(decoder, z).numpy(), expected, rtol=0, atol=1e-10)


def test_float32_decoder_gram_in_float64():
    decoder64 = _mlp_decoder(l=4, shape=(30,), seed=3)
    decoder32 = _mlp_decoder(l=4, shape=(30,), dtype=torch.float32, seed=3)
    z = torch.randn(20, 4, dtype=torch.float64)
    got = decoder_log_det(decoder32, z.float())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, decoder_log_det(decoder64, z), rtol=0, atol=1e-4)


def test_singular_jacobian_gives_minus_inf_log_det():
    decoder = lambda z: torch.stack([z[:, 0], 2 * z[:, 0], z[:, 0] ** 2], dim=1)  # noqa: E731  ignores z[:, 1]
    out = decoder_log_det(decoder, torch.randn(3, 2, dtype=torch.float64))
    assert torch.all(torch.isneginf(out) | (out < -15))


def _linear_gaussian(d=6, l=2, n=40, sigma=0.05, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, l))
    x = rng.normal(size=(n, l)) @ A.T + sigma * rng.normal(size=(n, d))
    return A, x


def test_eq10_on_linear_gaussian_model_matches_closed_form():
    A, x = _linear_gaussian()
    d, l = A.shape
    sigma2 = 0.05 ** 2
    P = np.linalg.pinv(A)  # encoder: least-squares code, x' = A A^+ x is the orthogonal projection
    At, Pt = torch.as_tensor(A), torch.as_tensor(P)
    parts = novelty_log_prob(lambda v: v @ Pt.T, lambda z: z @ At.T,
                             lambda z: torch.as_tensor(stats.multivariate_normal(np.zeros(l)).logpdf(z.numpy())),
                             torch.as_tensor(x), sigma2, chunk_size=16)
    z = x @ P.T
    recon = z @ A.T
    log_pz = stats.multivariate_normal(np.zeros(l)).logpdf(z)
    half_log_det = np.log(np.linalg.svd(A, compute_uv=False)).sum()
    log_noise = stats.norm(recon, math.sqrt(sigma2)).logpdf(x).sum(1)
    np.testing.assert_allclose(parts["log_pz"], log_pz, rtol=1e-12)
    np.testing.assert_allclose(parts["log_det"], half_log_det, rtol=1e-10)
    np.testing.assert_allclose(parts["log_noise"], log_noise, rtol=1e-10)
    np.testing.assert_allclose(parts["log_px"], log_pz - half_log_det + log_noise, rtol=1e-10)
    np.testing.assert_allclose(parts["score"], -parts["log_px"])
    np.testing.assert_allclose(parts["recon_error"], ((x - recon) ** 2).mean(1), rtol=1e-10)


@pytest.mark.parametrize("sigma", [1e-3, 1e-2])
def test_eq10_is_exact_density_minus_constant_as_noise_vanishes(sigma):
    """x ~ N(0, A A^T + s^2 I): eq. 10 = exact log p(x) - (l/2) log(2 pi s^2) + O(s^2)."""
    A, x = _linear_gaussian(sigma=sigma, seed=2)
    d, l = A.shape
    P = torch.as_tensor(np.linalg.pinv(A))
    At = torch.as_tensor(A)
    parts = novelty_log_prob(lambda v: v @ P.T, lambda z: z @ At.T,
                             lambda z: -0.5 * (z ** 2).sum(1) - 0.5 * l * math.log(2 * math.pi),
                             torch.as_tensor(x), sigma ** 2)
    exact = stats.multivariate_normal(np.zeros(d), A @ A.T + sigma ** 2 * np.eye(d)).logpdf(x)
    offset = 0.5 * l * math.log(2 * math.pi * sigma ** 2)
    np.testing.assert_allclose(parts["log_px"] + offset, exact, rtol=0, atol=50 * sigma ** 2)


def test_fit_noise_variance_is_mle():
    rng = np.random.default_rng(0)
    r = rng.normal(scale=[0.1, 0.2, 0.3, 0.0], size=(500, 4))
    assert fit_noise_variance(r) == pytest.approx(np.mean(r ** 2), rel=1e-12)
    # the MLE of N(0, s^2) over all entries maximises the summed log-likelihood
    s2 = fit_noise_variance(r)
    ll = lambda v: stats.norm(0, math.sqrt(v)).logpdf(r).sum()  # noqa: E731
    assert ll(s2) > ll(s2 * 1.01) and ll(s2) > ll(s2 * 0.99)
    per = fit_noise_variance(r.reshape(500, 1, 2, 2), per_pixel=True, min_variance=1e-5)
    np.testing.assert_allclose(per[:3].numpy(), (r[:, :3] ** 2).mean(0), rtol=1e-12)
    assert float(per[3]) == 1e-5  # constant pixel floored
    with pytest.raises(ValueError, match="^residuals:"):
        fit_noise_variance(np.ones(3))
    with pytest.raises(ValueError, match="^min_variance:"):
        fit_noise_variance(r, min_variance=0)


def test_per_pixel_noise_matches_scipy():
    A, x = _linear_gaussian(d=5, l=1)
    At = torch.as_tensor(A)
    P = torch.as_tensor(np.linalg.pinv(A))
    var = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    parts = novelty_log_prob(lambda v: v @ P.T, lambda z: z @ At.T, lambda z: torch.zeros(len(z)),
                             torch.as_tensor(x), torch.as_tensor(var))
    recon = x @ np.linalg.pinv(A).T @ A.T
    np.testing.assert_allclose(parts["log_noise"], stats.norm(recon, np.sqrt(var)).logpdf(x).sum(1), rtol=1e-10)


def test_bad_inputs_name_the_parameter():
    decoder = _mlp_decoder()
    with pytest.raises(ValueError, match="^z:"):
        decoder_log_det(decoder, torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="^chunk_size:"):
        decoder_jacobian(decoder, torch.randn(3, 3, dtype=torch.float64), chunk_size=0)
    enc = lambda v: v.reshape(len(v), -1)[:, :3]  # noqa: E731
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="^sigma2:"):
        novelty_log_prob(enc, decoder, lambda z: torch.zeros(len(z)), x, -1.0)
    with pytest.raises(ValueError, match="^sigma2:"):
        novelty_log_prob(enc, decoder, lambda z: torch.zeros(len(z)), x, torch.ones(5))
    with pytest.raises(ValueError, match="^DataSpaceDensity:"):
        DataSpaceDensity(enc, decoder, lambda z: torch.zeros(len(z))).score_samples(x)


def test_score_samples_ranks_noise_images_as_novel():
    """A small autoencoder trained briefly on sklearn's 8x8 digits: uniform noise is far less likely."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    train, test = images[:1400], images[1400:1600]
    torch.manual_seed(0)
    l = 4
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ELU(), torch.nn.Linear(64, l))
    dec = torch.nn.Sequential(torch.nn.Linear(l, 64), torch.nn.ELU(), torch.nn.Linear(64, 64), torch.nn.Sigmoid(),
                              torch.nn.Unflatten(1, (1, 8, 8)))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(train), (128,))
        loss = (dec(enc(train[idx])) - train[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = enc(train)
    latent = torch.distributions.MultivariateNormal(z.mean(0), torch.cov(z.T) + 1e-4 * torch.eye(l))
    scorer = DataSpaceDensity(enc, dec, latent.log_prob, chunk_size=64).fit(train)
    assert scorer.sigma2_ == pytest.approx(
        float(reconstruction_residuals(enc, dec, train).double().pow(2).mean()), rel=1e-9)
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    log_px = scorer.score_samples(torch.cat([test, noise]))
    assert np.all(np.isfinite(log_px))
    is_novel = np.r_[np.zeros(len(test)), np.ones(len(noise))]
    assert roc_auc_score(is_novel, -log_px) > 0.9


def _cli(argv):
    import argparse

    from gens.cli import novelty as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_parse_classes():
    from gens.cli.novelty import parse_classes

    assert parse_classes("0-9") == list(range(10))
    assert parse_classes("7,1, 3") == [1, 3, 7]
    assert parse_classes("0-2,7") == [0, 1, 2, 7]
    for bad in ("a", "3-x", "-1"):
        with pytest.raises(ValueError, match="^digits:"):
            parse_classes(bad)


def test_cli_scores_a_run_folder(tmp_path, capsys):
    """`gens novelty RUN` writes scores.csv matching DataSpaceDensity on the same data, and the PNG."""
    import csv

    from gens.runs import load_run, resolve_config, run_split, train_run

    run = tmp_path / "run"
    train_run(resolve_config({"method": "ae", "data": "digits", "epochs": 2, "hidden": [32], "latent_dim": 3}),
              run, progress=False)
    assert _cli([str(run), "--inlier", "0", "--device", "cpu", "--chunk-size", "100"]) == 0
    assert "AUROC (inlier class 0)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "novelty" / "scores.csv")))
    module, cfg = load_run(run)
    x, y = run_split(cfg, "test")
    assert len(rows) == len(x) == 360
    assert [int(r["label"]) for r in rows] == y.tolist()
    scorer = DataSpaceDensity(module.encode, module.decode, module.latent_distribution().log_prob)
    expected = scorer.fit(run_split(cfg, "train")[0]).score_parts(x)
    for key in ("score", "log_pz", "log_det", "log_noise", "recon_error"):
        np.testing.assert_allclose([float(r[key]) for r in rows], expected[key], rtol=1e-5, atol=1e-5)
    from matplotlib.image import imread

    img = imread(run / "novelty" / "novelty.png")
    assert img.shape[0] > 100 and img.shape[1] > 2 * img.shape[0]  # two 10 x 10 grids side by side
    with pytest.raises(ValueError, match="^run:"):
        _cli([])


def test_cli_one_class_table_matches_saved_scores(tmp_path, capsys):
    import json

    out = tmp_path / "oc"
    assert _cli(["--one-class", "--data", "digits", "--digits", "1", "--method", "ae", "--epochs", "3",
                 "--hidden", "32", "--latent-dim", "3", "--device", "cpu", "--out", str(out), "--per-pixel"]) == 0
    text = capsys.readouterr().out
    assert ("| class | train images | eq. 10 | eq. 10, per-pixel sigma | reconstruction | latent only | "
            "in-manifold only |") in text
    assert "| mean |" in text
    saved = json.loads((out / "one_class.json").read_text())
    row = saved["rows"][0]
    assert row["digit"] == 1 and row["n_train"] == int((load_labels() == 1).sum())
    scores = np.genfromtxt(out / "scores_1.csv", delimiter=",", names=True)
    novel = (scores["label"] != 1).astype(int)
    assert row["eq10"] == pytest.approx(roc_auc_score(novel, scores["score"]), abs=1e-4)
    assert row["recon"] == pytest.approx(roc_auc_score(novel, scores["recon_error"]), abs=1e-4)
    assert row["latent"] == pytest.approx(roc_auc_score(novel, -scores["log_pz"]), abs=1e-4)
    assert row["manifold"] == pytest.approx(roc_auc_score(novel, scores["log_det"] - scores["log_pz"]), abs=1e-4)
    assert f"| 1 | {row['n_train']} | {row['eq10']:.4f} | {row['eq10_pixel']:.4f} | {row['recon']:.4f} |" in text
    assert (out / "novelty_1.png").is_file()


def load_labels():
    from gens.data import load_dataset

    return load_dataset("digits", "train")[1]


def test_one_class_budget_rule_and_experimental_pixel_noise(capsys):
    """`gens novelty --one-class` trains with the budget rule (no epochs default: DEFAULT_STEPS steps) and reports
    eq10_pixel only when asked (--per-pixel, experimental); the old import path still works."""
    import argparse

    from gens.cli.novelty import _budget_text, add_arguments
    from gens.config import DEFAULT_STEPS
    from gens.evaluation.novelty import one_class_protocol as old_path
    from gens.evaluation.one_class import one_class_protocol

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--one-class"])
    assert args.epochs is None and args.steps is None and _budget_text(args) == f"{DEFAULT_STEPS} steps"
    assert _budget_text(p.parse_args(["--one-class", "--epochs", "3"])) == "3 epochs"
    assert _budget_text(p.parse_args(["--one-class", "--epochs", "3", "--steps", "9"])) == "9 steps or 3 epochs"
    assert old_path is one_class_protocol
    r = one_class_protocol("digits", 1, "ae", steps=4, latent_dim=2, hidden=[8], train_limit=300, test_limit=100,
                           device="cpu")
    assert set(r["auroc"]) == {"eq10", "recon", "latent", "manifold"}
    r = one_class_protocol("digits", 1, "ae", steps=4, latent_dim=2, hidden=[8], train_limit=300, test_limit=100,
                           device="cpu", pixel_noise=True)
    assert list(r["auroc"]) == ["eq10", "eq10_pixel", "recon", "latent", "manifold"]

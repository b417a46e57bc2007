"""Semi-supervised GEN (Sec. 5.4): mixture target, labelled pull, predict, protocol, Fig. 3, errors."""

import json

import numpy as np
import pytest
import torch
from scipy.special import log_softmax
from scipy.stats import multivariate_normal

from gens.evaluation.semisupervised import fig3, main, mode_projection, split_semisupervised
from gens.methods.semisupervised import SemiSupervisedGENModule, check_labels_for, select_labelled
from gens.targets import GaussianMixture, mixture_on_simplex
from gens.training import train

K, D = 4, 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch's thread pool is 10x slower than one thread on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def clusters(n_per_class, seed):
    """K well-separated classes in [0, 1]^D: class c lights features 6c..6c+5. -> X (n, D) float32, y (n,)."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(K), n_per_class)
    x = np.full((len(y), D), 0.1) + 0.8 * (np.arange(D)[None] // 6 == y[:, None])
    x = np.clip(x + 0.08 * rng.randn(*x.shape), 0, 1).astype(np.float32)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


@pytest.fixture(scope="module")
def fitted():
    """SemiSupervisedGEN (l = 2, K = 4) fitted briefly with 5 labels per class and 95 unlabelled per class."""
    from gens import SemiSupervisedGEN

    x, y = clusters(100, seed=0)
    y_semi = np.full_like(y, -1)
    keep = select_labelled(y, 20, seed=0)
    y_semi[keep] = y[keep]
    est = SemiSupervisedGEN(2, n_modes=K, hidden=(32, 32), lr=2e-3, bank_size=300, bandwidth=0.5,
                            labelled_batch=20, max_epochs=15, batch_size=50, random_state=0).fit(x, y_semi)
    return est, x, y, y_semi


@pytest.fixture(scope="module")
def trained(fitted):
    est, x, y, y_semi = fitted
    return est.module_, x, y, y_semi


def test_estimator_fit_predict_score_save_load(fitted, tmp_path):
    from gens import SemiSupervisedGEN

    est, x, _, y_semi = fitted
    x_test, y_test = clusters(50, seed=1)
    pred = est.predict(x_test)
    assert pred.dtype == np.int64 and pred.shape == (200,)
    assert est.score(x_test, y_test) == pytest.approx((pred == y_test).mean()) and (pred == y_test).mean() > 0.9
    proba = est.predict_proba(x_test)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(proba.argmax(1), pred)
    np.testing.assert_array_equal(est.classes_, np.arange(K))
    assert est.transform(x_test).shape == (200, 2)
    est.save(tmp_path / "ss.ckpt")
    back = SemiSupervisedGEN.load(tmp_path / "ss.ckpt")
    np.testing.assert_array_equal(back.predict(x_test), pred)


def test_estimator_label_errors():
    from gens import SemiSupervisedGEN

    x, y = clusters(5, seed=0)
    est = SemiSupervisedGEN(2, n_modes=3, hidden=(8,), max_epochs=1, bandwidth=0.5)
    with pytest.raises(ValueError, match="^y: SemiSupervisedGEN.fit needs labels"):
        est.fit(x, None)
    with pytest.raises(ValueError, match=r"^y: labels must be -1 \(unlabelled\) or a component 0..2"):
        est.fit(x, y)  # label 3 with 3 modes
    with pytest.raises(ValueError, match=r"^y: must have one label per sample \(20\)"):
        est.fit(x, y[:-1])
    with pytest.raises(ValueError, match="^n_modes: is 4 but the target has 3 components"):
        SemiSupervisedGEN(2, n_modes=4, target="mog:3", hidden=(8,), max_epochs=1, bandwidth=0.5).fit(x, y)


def test_predict_recovers_the_components_of_separated_clusters(trained):
    module, *_ = trained
    x_test, y_test = clusters(50, seed=1)
    acc = float((module.predict(torch.from_numpy(x_test)).numpy() == y_test).mean())
    assert acc > 0.9, acc  # chance is 0.25


def test_labelled_posterior_goes_to_their_component(trained):
    module, x, _, y_semi = trained
    lab = y_semi >= 0
    proba = module.predict_proba(torch.from_numpy(x[lab])).numpy()
    assert proba[np.arange(lab.sum()), y_semi[lab]].mean() > 0.9
    assert module.n_labelled == 20  # the pool holds exactly the samples with y >= 0


def test_predict_is_argmax_of_the_mixture_posterior_scipy(trained):
    module, x, *_ = trained
    xt = torch.from_numpy(x[:50])
    with torch.no_grad():
        z = module.encode(xt).double().numpy()
    t = module.target
    logp = np.stack([np.log(w) + multivariate_normal(mu, cov).logpdf(z)
                     for w, mu, cov in zip(t.weights.numpy(), t.means.numpy(), t.covs.numpy())], 1)
    np.testing.assert_allclose(module.predict_proba(xt).numpy(), np.exp(log_softmax(logp, axis=1)), atol=1e-6)
    np.testing.assert_array_equal(module.predict(xt).numpy(), logp.argmax(1))


def test_mixture_is_the_target_and_h_opt_is_the_mixtures(tmp_path, monkeypatch):
    from gens.bandwidth import optimal_bandwidth

    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    m = SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=K, bank_size=200)
    ref = mixture_on_simplex(K, 2)
    torch.testing.assert_close(m.target.means, ref.means)
    h = optimal_bandwidth(ref, 200, cache_dir=tmp_path / "ref").h
    assert m.h == pytest.approx(h, rel=1e-9)
    assert m.h != pytest.approx(optimal_bandwidth(SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=2,
                                                                          mode_scale=0.01).target, 200).h, rel=0.05)


@pytest.mark.parametrize("supervision", ["ce", "nll"])
def test_supervised_term_matches_scipy_and_finite_differences(supervision):
    rng = np.random.RandomState(0)
    a = rng.randn(3, 2, 2)
    covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(2)
    target = GaussianMixture(rng.randn(3, 2) * 3, covs, [0.2, 0.3, 0.5])
    m = SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=3, target_spec=target.spec(), supervision=supervision,
                                bandwidth=0.5)
    z = torch.tensor(rng.randn(7, 2) * 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    logp = np.stack([np.log(w) + multivariate_normal(mu, c).logpdf(z.detach().numpy())
                     for w, mu, c in zip([0.2, 0.3, 0.5], target.means.numpy(), covs)], 1)
    if supervision == "ce":
        ref = -log_softmax(logp, axis=1)[np.arange(7), y.numpy()].mean()
    else:
        ref = -np.mean([multivariate_normal(target.means.numpy()[k], covs[k]).logpdf(zi)
                        for zi, k in zip(z.detach().numpy(), y.numpy())])
    assert float(m.supervised_term(z, y).detach()) == pytest.approx(ref, rel=1e-10)
    assert torch.autograd.gradcheck(lambda u: m.supervised_term(u, y), (z,))


def test_supervision_pulls_a_labelled_latent_toward_its_component():
    m = SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=K, bandwidth=0.5)
    mu = m.target.means.float()
    z = (mu[0] * 0.5 + mu[1] * 0.5 + 0.1).clone().requires_grad_(True)  # between components 0 and 1
    for label in (0, 1):
        g, = torch.autograd.grad(m.supervised_term(z[None], torch.tensor([label])), z)
        step = z - 0.1 * g  # a gradient step lowers the distance to the label's mean
        assert float((step - mu[label]).norm()) < float((z - mu[label]).norm())


def test_select_labelled_is_balanced_seeded_and_skips_unlabelled():
    y = np.repeat(np.arange(5), 30)
    y[::7] = -1
    idx = select_labelled(y, 23, seed=3)
    assert len(idx) == 23 and len(np.unique(idx)) == 23 and (y[idx] >= 0).all()
    counts = np.bincount(y[idx], minlength=5)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(idx, select_labelled(y, 23, seed=3))
    assert not np.array_equal(idx, select_labelled(y, 23, seed=4))
    with pytest.raises(ValueError, match=r"^n_labels: .*class"):
        select_labelled(y, 200, seed=0)


def test_split_semisupervised_disjoint_and_balanced():
    y = np.repeat(np.arange(10), 50)
    train_idx, y_semi, val_idx = split_semisupervised(y, 40, 300, n_val=100, seed=1, n_classes=10)
    assert len(train_idx) == 340 and len(val_idx) == 100 and not set(train_idx) & set(val_idx)
    assert (y_semi >= 0).sum() == 40
    np.testing.assert_array_equal(np.bincount(y_semi[y_semi >= 0], minlength=10), np.full(10, 4))
    np.testing.assert_array_equal(y_semi[y_semi >= 0], y[train_idx][y_semi >= 0])
    with pytest.raises(ValueError, match="^n_unlabelled:"):
        split_semisupervised(y, 40, 500)


def test_label_validation_errors():
    with pytest.raises(ValueError, match=r"^y: labels must be -1 \(unlabelled\) or a component 0..3"):
        check_labels_for([0, 1, 4], K)
    with pytest.raises(ValueError, match="^y: labels must be -1"):
        check_labels_for([0, -2], K)
    with pytest.raises(ValueError, match=r"^y: must have one label per sample \(3\)"):
        check_labels_for([0, 1], K, n=3)
    with pytest.raises(ValueError, match="^y: labels must be integers"):
        check_labels_for([0.5, 1.0], K)
    np.testing.assert_array_equal(check_labels_for([-1, 3, 0.0], K), [-1, 3, 0])
    with pytest.raises(ValueError, match="^n_modes: is 4 but the target has 3 components"):
        SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=4, target_spec=mixture_on_simplex(3, 2).spec())
    with pytest.raises(ValueError, match="^supervision:"):
        SemiSupervisedGENModule([D], 2, hidden=[8], supervision="hinge")
    with pytest.raises(ValueError, match="^n_modes:"):
        SemiSupervisedGENModule([D], 2, hidden=[8], n_modes=1)


def test_training_rejects_labels_beyond_the_modes_and_warns_without_labels():
    x, y = clusters(10, seed=0)
    kw = dict(latent_dim=2, max_epochs=1, batch_size=20, trainer_kwargs={"accelerator": "cpu",
              "enable_progress_bar": False}, hidden=[8], bandwidth=0.5, bank_size=20)
    with pytest.raises(ValueError, match="^y: labels must be -1 .* 0..2 of the 3-mode target, got 3"):
        train("semisupervised", (x, y), n_modes=3, **kw)
    with pytest.warns(UserWarning, match="^y: no labelled training samples"):
        module, _ = train("semisupervised", x, n_modes=K, **kw)  # no labels at all: an unsupervised GEN
    assert module.n_labelled == 0


def test_fig3_projection_and_png(tmp_path):
    for k, l in [(10, 8), (10, 2), (5, 6)]:  # cross-polytope, circle, simplex means
        t = mixture_on_simplex(k, l)
        p = t.means.numpy() @ mode_projection(t.means.numpy()).T
        r = np.linalg.norm(p, axis=1)
        np.testing.assert_allclose(r, r[0], rtol=1e-9)  # every mean on one circle ...
        ang = np.sort(np.arctan2(p[:, 1], p[:, 0]))
        np.testing.assert_allclose(np.diff(ang), 2 * np.pi / k, rtol=1e-9)  # ... at the corners of a k-gon
    rng = np.random.RandomState(0)
    for l in (2, 8):
        t = mixture_on_simplex(10, l)
        y = rng.randint(0, 10, 300)
        z = t.means.numpy()[y] + rng.randn(300, l) * 0.5
        out = fig3(z, y, t, tmp_path / f"fig3_l{l}.png")
        assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_cli_prints_a_markdown_row(tmp_path, capsys):
    """`gens semisupervised`: the protocol end to end on digits (1 epoch, tiny nets): the row's numbers are the
    JSON's."""
    from gens.cli import main as gens_main

    log = tmp_path / "res.jsonl"
    assert gens_main(["semisupervised", "--data", "digits", "--labels", "50", "--unlabelled", "450", "--epochs", "1", "--hidden", "16",
                 "--bandwidth", "0.6", "--bank-size", "200", "--limit-test", "200", "--accelerator", "cpu",
                 "--figure", str(tmp_path / "f.png"), "--json", str(log)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(log.read_text())
    assert lines[0].startswith("| data | labels |") and lines[-1].startswith("| digits | 50 | 450 | 8 | 1 | 0 |")
    assert f"{res['test_accuracy']:.4f}" in lines[-1]
    assert res["n_labels"] == 50 and res["n_unlabelled"] == 450 and 0.0 <= res["test_accuracy"] <= 1.0
    assert res["test_error"] == pytest.approx(1 - res["test_accuracy"])
    assert (tmp_path / "f.png").is_file()


def test_semisupervised_command_defaults_come_from_gens_config(capsys):
    """`gens semisupervised`'s options left out are the module's (gens.config), its budget is the budget rule,
    its --help is torch-free; the old `python -m gens.evaluation.semisupervised` forwards to it."""
    import subprocess
    import sys

    from gens import config as C
    from gens.cli import build_parser
    from gens.cli.semisupervised import _MODULE_OPTIONS

    args = build_parser().parse_args(["semisupervised"])
    assert not any(hasattr(args, k) for k in _MODULE_OPTIONS)  # left to SemiSupervisedGENModule's defaults
    assert args.epochs is None and args.steps is None and args.latent_dim == [C.TrainConfig.latent_dim]
    assert build_parser().parse_args(["semisupervised", "--bank-size", "500"]).bank_size == 500
    out = subprocess.run([sys.executable, "-c", "import sys; from gens.cli import build_parser; "
                          "build_parser().parse_args(['semisupervised', '--labels', '10']); print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert main(["--data", "digits", "--labels", "50", "--epochs", "0"]) == 2
    assert "gens semisupervised: error: max_epochs:" in capsys.readouterr().err


def test_gens_train_cli_target_mog_modes_labels(tmp_path, capsys):
    """`gens train --target mog --modes K --labels N`: a semisupervised run whose metrics.json accuracy is
    the share of test samples whose most probable component is their label (recomputed from the checkpoint)."""
    from gens.cli import main as gens_main
    from gens.runs import load_run, run_split

    out = tmp_path / "run"
    assert gens_main(["train", "--data", "digits", "--target", "mog", "--modes", "10", "--labels", "50",
                      "--latent-dim", "2", "--epochs", "1", "--hidden", "16", "--bandwidth", "0.6", "--bank-size",
                      "200", "--limit", "300", "--accelerator", "cpu", "--no-progress", "--out", str(out)]) == 0
    assert "accuracy (most probable component vs label)" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "semisupervised" and cfg["target"] == "mog:10" and cfg["labels"] == 50
    module, _ = load_run(out)
    assert module.n_modes == 10 and module.n_labels == 50
    x, y = run_split(cfg, "test")
    acc = float((module.predict(x) == y).double().mean())
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == pytest.approx(acc, abs=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["--target", "mog"], "^target: 'mog' needs --modes K"),
    (["--target", "normal", "--modes", "3"], "^modes: goes with --target mog"),
    (["--method", "gen", "--labels", "10"], "^labels: only --method semisupervised"),
])
def test_gens_train_cli_mixture_option_errors(argv, message):
    import argparse

    from gens.cli import train as cli_train

    p = argparse.ArgumentParser()
    cli_train.add_arguments(p)
    with pytest.raises(ValueError, match=message):
        cli_train._options(p.parse_args(argv))


def test_modes_follow_a_given_target_and_a_single_gaussian_is_refused():
    m = SemiSupervisedGENModule([D], 2, hidden=[8], target_spec=mixture_on_simplex(3, 2).spec(), bandwidth=0.5)
    assert m.n_modes == 3
    with pytest.raises(ValueError, match="^target_spec: the semi-supervised GEN needs a mixture of >= 2"):
        SemiSupervisedGENModule([D], 2, hidden=[8], target_spec={"type": "standard_normal", "dim": 2})

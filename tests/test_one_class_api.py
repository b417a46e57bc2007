"""One-class novelty through the estimator API (issue 15 item 5): fit an estimator on one class, rank the test
split by ``score_parts`` and report the AUROC of log p(x) (eq. 10), of its in-manifold part and of its
reconstruction part (``gens.evaluation.novelty.one_class_scores`` / ``one_class_estimator``, and
``gens novelty --one-class --through-api``).

Tiny data only: scikit-learn's digits, 2-3 classes, 16 hidden units, l = 2, a few dozen steps.
"""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import gens
from gens.cli import main
from gens.data import load_dataset
from gens.evaluation.one_class import (
    ONE_CLASS_PARTS,
    one_class_estimator,
    one_class_scores,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"latent_dim": 2, "hidden": (16,), "batch_size": 10, "bank_size": 30}


def test_one_class_scores_are_score_parts_and_sklearn_aurocs():
    x_train, y_train = load_dataset("digits", "train", limit=300)
    x_test, y_test = load_dataset("digits", "test", limit=120)
    keep = y_test < 3  # three classes in the test split
    x_test, y_test = x_test[keep], y_test[keep]
    est = gens.GEN(max_epochs=5, random_state=0, **TINY)
    r = one_class_scores(est, x_train[y_train == 2], x_test, y_test == 2)
    assert set(r["auroc"]) == set(ONE_CLASS_PARTS) == set(r["scores"])
    parts = est.score_parts(x_test)
    for k in ONE_CLASS_PARTS:
        s = r["scores"][k]
        assert s.shape == (len(x_test),) and s.dtype == np.float64 and np.isfinite(s).all()
        np.testing.assert_array_equal(s, parts[k])
        assert r["auroc"][k] == roc_auc_score(y_test == 2, s)
        assert abs(r["auroc"][k] - roc_auc_score(y_test != 2, -s)) < 1e-12  # = novel-positive, novelty score -s
    np.testing.assert_allclose(r["scores"]["log_px"], parts["in_manifold"] + parts["reconstruction"]
                               + parts["scaling"], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method, sampler", [("gen", "analytic"), ("ae", "gmm")])
def test_one_class_estimator_on_digits(method, sampler):
    extra = {"bank_size": 30} if method == "gen" else {}
    r = one_class_estimator("digits", 1, method, 5, latent_dim=2, train_limit=300, test_limit=100, sampler=sampler,
                            hidden=(16,), batch_size=10, **extra)
    _, y_train = load_dataset("digits", "train", limit=300)
    _, y_test = load_dataset("digits", "test", limit=100)
    assert r["n_train"] == int((y_train == 1).sum()) and r["n_test"] == 100
    np.testing.assert_array_equal(r["is_inlier"], y_test == 1)
    assert r["sampler"] == sampler and r["noise_variance"] > 0
    for k in ONE_CLASS_PARTS:
        assert 0.0 <= r["auroc"][k] <= 1.0
        assert r["auroc"][k] == roc_auc_score(y_test == 1, r["scores"][k])


def test_one_class_estimator_refuses_a_parameter_the_method_lacks():
    with pytest.raises(ValueError, match="^lam: not a parameter of AE"):
        one_class_estimator("digits", 1, "ae", 1, lam=1.0)
    with pytest.raises(ValueError, match="^method:"):
        one_class_estimator("digits", 1, "flow", 1)


def test_cli_through_api_prints_three_aurocs_per_digit_and_the_mean(tmp_path, capsys):
    out = tmp_path / "oc"
    assert main(["novelty", "--one-class", "--through-api", "--data", "digits", "--digits", "0-1", "--epochs", "10",
                 "--latent-dim", "2", "--hidden", "16", "--bank-size", "30", "--limit", "400",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header[2:5]] == ["log p(x), eq. 10", "in-manifold only", "reconstruction only"]
    assert [c.strip() for c in body[0][:1] + body[1][:1] + body[2][:1]] == ["0", "1", "mean"]
    table = np.array([[float(c) for c in row[2:5]] for row in body[:2]])
    np.testing.assert_allclose([float(c) for c in body[2][2:5]], table.mean(0), atol=1e-4)
    saved = json.loads((out / "one_class_api.json").read_text())
    for digit, row in zip((0, 1), saved["rows"]):
        assert row["digit"] == digit
        with open(out / f"api_scores_{digit}.csv", newline="") as f:
            lines = list(csv.DictReader(f))
        labels = np.array([int(r["label"]) for r in lines])
        for k in ONE_CLASS_PARTS:  # the AUROCs are those of the saved scores
            assert abs(row[k] - roc_auc_score(labels == digit, [float(r[k]) for r in lines])) < 1e-12
        assert (out / f"api_novelty_{digit}.png").is_file()
    np.testing.assert_allclose([saved["mean"][k] for k in ONE_CLASS_PARTS], table.mean(0), atol=1e-4)


@pytest.mark.parametrize("argv, fragment", [
    (["novelty", "--one-class", "--data", "digits", "--sampler", "gmm"], "sampler: only with --one-class --through-api"),
    (["novelty", "--one-class", "--through-api", "--data", "digits", "--per-pixel"], "per_pixel: not with"),
    (["novelty", "RUN", "--through-api"], "through_api: only with --one-class"),
])
def test_cli_option_errors_are_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err

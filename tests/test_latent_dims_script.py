"""benchmarks/latent_dims.py (issue 18): its grid and its plot, without training anything."""

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def latent_dims():
    spec = importlib.util.spec_from_file_location("latent_dims", BENCH / "latent_dims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its robustness import
    yield module
    sys.modules.pop("robustness", None)
    sys.modules.pop("train_sweep", None)


def _args(**kw):
    base = dict(dims=[16, 64], rows=["mnist10k", "mnist"], methods=["gen", "aae"], seeds=None,
                bandwidth_rules=["h_opt", "corrected"], arch=["fc"], options=["gen:lam=0.05"], steps=None,
                budget_scale=1.0, mnist="/data/mnist", accelerator="cpu", threads=1, history=None)
    return argparse.Namespace(**{**base, **kw})


def test_grid_rules_only_for_the_gen_and_seeds_per_row(latent_dims):
    from gens.training import DEFAULT_STEPS

    jobs = latent_dims.jobs_for(_args())
    # per l: mnist10k 1 seed x (2 GEN rules + 1 AAE), mnist 3 seeds x 3
    assert len(jobs) == 2 * (3 + 9)
    gen_corr = [j for j in jobs if j["method"] == "gen" and j["rule"] == "corrected"]
    assert all(j["kwargs"] == {"lam": 0.05, "bandwidth_correction": True, "arch": "fc"} for j in gen_corr)
    assert {j["rule"] for j in jobs if j["method"] == "aae"} == {"-"}
    assert {j["latent_dim"] for j in jobs} == {16, 64} and {j["steps"] for j in jobs} == {DEFAULT_STEPS}
    assert sorted(j["seed"] for j in jobs if j["row"] == "mnist" and j["method"] == "aae") == [0, 0, 1, 1, 2, 2]
    assert jobs[0]["data"] == "mnist:/data/mnist" and jobs[0]["limit"] == 10000
    assert {j["steps"] for j in latent_dims.jobs_for(_args(steps=7, seeds=[3]))} == {7}
    # the conv pair pads 28x28 to 32x32 now (it was refused before): one job per arch
    both = latent_dims.jobs_for(_args(arch=["fc", "conv"]))
    assert len(both) == 2 * len(jobs) and {j["arch"] for j in both} == {"fc", "conv"}
    assert all(j["kwargs"]["arch"] == j["arch"] for j in both)
    assert latent_dims.arch_problem("digits", "conv") is None


def test_unbuildable_arch_refused_before_training(latent_dims, monkeypatch):
    monkeypatch.setitem(latent_dims.SHAPES, "mnist10k", (784,))  # flat data: no conv pair
    with pytest.raises(ValueError, match=r"^arch: 'conv' cannot train row 'mnist10k'.*needs images of shape"):
        latent_dims.jobs_for(_args(arch=["fc", "conv"]))


def test_plot_from_the_csv(latent_dims, tmp_path):
    path = tmp_path / "grid.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, latent_dims.FIELDS, extrasaction="ignore")
        w.writeheader()
        for dim, gap in ((16, 0.5), (32, 1.5), (64, 4.0)):
            for method, rule in (("gen", "h_opt"), ("gen", "corrected"), ("wae", "-")):
                w.writerow(dict(row="mnist10k", method=method, latent_dim=dim, rule=rule, arch="fc", seed=0,
                                status="ok", gap=gap, recon=0.02, ok=dim < 64))
        w.writerow(dict(row="mnist10k", method="gen", latent_dim=128, rule="h_opt", arch="fc", seed=0,
                        status="error", message="bandwidth: h = 1.1 ..."))  # no numbers: not drawn
    rows = latent_dims.read_rows(path)
    assert rows[0]["latent_dim"] == 16.0 and rows[0]["gap"] == 0.5 and rows[-1]["gap"] is None
    out = latent_dims.plot(rows, tmp_path / "grid.png")
    assert Path(out).stat().st_size > 1000

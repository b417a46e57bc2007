"""The latent-fidelity monitor (gens.fidelity) and the GEN's coverage term (gens.divergence.gen_coverage_term)."""

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch

from gens.divergence import gen_coverage_term
from gens.fidelity import FidelityWarning, fidelity_problems, latent_fidelity, predicted_covariance
from gens.targets import Gaussian, GaussianMixture, StandardNormal


def _draws(cov, n, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(np.zeros(len(cov)), cov, size=n))


def test_relative_eigenvalues_are_the_generalised_eigenvalues():
    """eig_min / eig_max: the extreme solutions of S v = lambda P v (scipy), std ratios sqrt(S_jj / P_jj)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    p_cov = a @ a.T + 0.5 * np.eye(4)
    z = _draws(np.diag([0.3, 1.0, 2.0, 4.0]), 3000, 1)
    rec = latent_fidelity(z, Gaussian(torch.zeros(4), torch.from_numpy(p_cov)))
    s = np.cov(z.numpy().T)
    ref = scipy.linalg.eigh(s, p_cov, eigvals_only=True)
    assert rec["eig_min"] == pytest.approx(ref[0], rel=1e-8)
    assert rec["eig_max"] == pytest.approx(ref[-1], rel=1e-8)
    ratio = np.sqrt(np.diag(s) / np.diag(p_cov))
    assert rec["std_min"] == pytest.approx(ratio.min(), rel=1e-8)
    assert rec["std_max"] == pytest.approx(ratio.max(), rel=1e-8)


def test_on_target_latents_read_as_on_target():
    q = StandardNormal(8).shrink(0.4)  # a GEN's prediction: N(0, 0.84 I)
    z = q.sample(2000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rec = latent_fidelity(z, q)
    assert 0.8 < rec["eig_min"] < 1.0 < rec["eig_max"] < 1.2  # sampling spread of 2000 draws in 8-d
    assert 0.95 < rec["std_min"] <= rec["std_max"] < 1.05
    assert abs(rec["gap"]) < 0.1  # two samples of one distribution
    assert fidelity_problems(rec) == []
    wide = latent_fidelity(2.0 * z, q)  # 2x the spread: eigenvalues 4x, the whitened gap unchanged
    assert wide["eig_min"] == pytest.approx(4 * rec["eig_min"]) and wide["gap"] == pytest.approx(rec["gap"])
    assert any("inflate" in p for p in fidelity_problems(wide))
    flat = z.clone()
    flat[:, 0] *= 0.1
    assert any("collapses" in p for p in fidelity_problems(latent_fidelity(flat, q)))
    assert any("narrow" in p for p in fidelity_problems(latent_fidelity(0.3 * z, q)))


def test_gap_sees_clusters_that_the_covariance_hides():
    """Two separated blobs whitened to unit covariance: a positive gap (less entropy than a Gaussian)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 2, generator=g, dtype=torch.float64) * 0.3
    z[:1000, 0] += 2.0
    z[1000:, 0] -= 2.0
    rec = latent_fidelity(z, StandardNormal(2))
    assert rec["gap"] > 0.5


def test_predicted_covariance_of_a_mixture():
    means = torch.tensor([[0.0, 0.0], [4.0, 2.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2, dtype=torch.float64), torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))])
    t = GaussianMixture(means, covs, torch.tensor([0.25, 0.75], dtype=torch.float64))
    draws = t.sample(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    np.testing.assert_allclose(predicted_covariance(t).numpy(), np.cov(draws.T), atol=0.03)
    # closed form: within-component 0.25 I + 0.75 diag(2, 0.5), between-component 0.25 * 0.75 * d d^T
    d = np.array([4.0, 2.0])
    np.testing.assert_allclose(predicted_covariance(t).numpy(),
                               0.25 * np.eye(2) + 0.75 * np.diag([2.0, 0.5]) + 0.1875 * np.outer(d, d), atol=1e-12)


def test_jsd_reads_small_on_target_and_large_off_it():
    t = StandardNormal(2)
    g = torch.Generator().manual_seed(0)
    bank = t.sample(2000, generator=g, dtype=torch.float64)
    z = t.sample(1000, generator=g, dtype=torch.float64)
    on = latent_fidelity(z, t, bank=bank, target=t, h=0.3)["jsd"]
    off = latent_fidelity(z + 3.0, t, bank=bank + 3.0, target=t, h=0.3)["jsd"]
    assert abs(on) < 0.05 and 0.5 < off <= 2 * math.log(2) + 1e-9  # an estimate: noisy around 0 on target


def test_latent_fidelity_rejects_too_few_rows():
    with pytest.raises(ValueError, match="^z: "):
        latent_fidelity(torch.zeros(5, 4), StandardNormal(4))


# ---- the coverage term ---------------------------------------------------------------------------------

def test_coverage_term_matches_scipy():
    """softplus(log p_t(z_t) - log p_e(z_t)) * (m + n) / n with p_e the KDE of bank and minibatch together."""
    rng = np.random.default_rng(0)
    bank, z, zt = rng.normal(size=(30, 3)), rng.normal(size=(5, 3)) * 2, rng.normal(size=(7, 3))
    h = 0.6
    t = StandardNormal(3)
    got = float(gen_coverage_term(torch.from_numpy(z), torch.from_numpy(bank), t, h, torch.from_numpy(zt)))
    pts = np.concatenate([bank, z])
    sq = ((zt[:, None, :] - pts[None]) ** 2).sum(-1)
    le = scipy.special.logsumexp(-sq / (2 * h * h), axis=1) - np.log(len(pts)) - 3 * np.log(h) - 1.5 * np.log(2 * np.pi)
    lt = -0.5 * (zt ** 2).sum(1) - 1.5 * np.log(2 * np.pi)
    ref = np.mean(np.logaddexp(0.0, lt - le)) * (35 / 5)
    assert got == pytest.approx(ref, rel=1e-10)


def test_coverage_term_pulls_a_stray_latent_back_and_leaves_the_bank_alone():
    t = StandardNormal(2)
    g = torch.Generator().manual_seed(0)
    bank = t.sample(200, generator=g).requires_grad_()
    z = torch.tensor([[6.0, 0.0]], requires_grad=True)
    zt = torch.tensor([[4.5, 0.0]])  # a target draw nearer to the stray latent than to any bank row
    gen_coverage_term(z, bank, t, 0.5, zt).backward()
    assert z.grad[0, 0] > 0  # descent moves z toward the target draw (to smaller x)
    assert bank.grad is None


def test_gen_coverage_zero_is_eq3_alone_and_positive_adds_the_term():
    from gens.methods import build_module

    torch.manual_seed(0)
    x = torch.rand(20, 1, 4, 4)
    mods = [build_module("gen", [1, 4, 4], 2, hidden=[8], bandwidth=0.5, coverage=c) for c in (0.0, 2.0)]
    mods[1].load_state_dict(mods[0].state_dict())
    for m in mods:
        m.bank.fill(torch.randn(50, 2, generator=torch.Generator().manual_seed(1)))
    base = mods[0].losses(x)
    torch.manual_seed(5)
    with_cov = mods[1].losses(x)
    assert "cover" not in base and float(with_cov["cover"]) > 0
    assert float(with_cov["reg"]) == pytest.approx(float(base["reg"]) + 2.0 * float(with_cov["cover"]), rel=1e-5)
    assert float(mods[1].losses(x, training=False)["reg"]) == pytest.approx(float(base["reg"]), rel=1e-6)
    with pytest.raises(ValueError, match="^coverage: "):
        build_module("gen", [1, 4, 4], 2, hidden=[8], coverage=-1.0)


# ---- the monitor in training -------------------------------------------------------------------------

@pytest.mark.slow
def test_monitor_logs_every_epoch_and_warns_on_a_too_narrow_start(one_thread):
    from gens.training import fidelity_monitor, train

    X = torch.rand(300, 1, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, trainer = train("gen", X, latent_dim=2, max_epochs=3, hidden=[16], bandwidth=0.5,
                                trainer_kwargs=dict(enable_progress_bar=False, accelerator="cpu"))
    mon = fidelity_monitor(trainer)
    # 3 steps an epoch: the first epoch and the last are measured, others at most every min_interval steps
    assert [r["epoch"] for r in mon.history] == [0, 2] and mon.min_interval > 3
    assert set(mon.history[-1]) >= {"eig_min", "eig_max", "std_min", "std_max", "gap", "jsd", "step"}
    assert float(trainer.callback_metrics["fidelity/eig_max"]) == pytest.approx(mon.history[-1]["eig_max"], rel=1e-5)
    problems = fidelity_problems(mon.history[-1])
    fid = [w for w in caught if issubclass(w.category, FidelityWarning)]
    assert bool(problems) == bool(fid)  # a warning exactly when the last record is out of range

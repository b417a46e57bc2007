import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.neighbors import KernelDensity

from gens.divergence import JSD_FORMS, gen_jsd_term, jsd_estimate
from gens.targets import StandardNormal, mixture_on_simplex


def _sets(dim=3, m=80, n=30, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda k: torch.randn(k, dim, generator=g, dtype=torch.float64) + shift
    return r(m), r(n), torch.randn(n + 7, dim, generator=g, dtype=torch.float64)


def _reference_logs(z, bank, h):
    le = KernelDensity(bandwidth=h).fit(bank.numpy()).score_samples(z.numpy())
    lt = stats.multivariate_normal(np.zeros(z.shape[1]), np.eye(z.shape[1])).logpdf(z.numpy())
    return le, lt


def test_jsd_estimate_matches_independent_reference():
    bank, z_e, z_t = _sets()
    h = 0.6
    le, lt = _reference_logs(z_e, bank, h)
    want = np.mean(np.log(np.exp(le) / (np.exp(le) + np.exp(lt))))
    le, lt = _reference_logs(z_t, bank, h)
    want += np.mean(np.log(np.exp(lt) / (np.exp(le) + np.exp(lt))))
    got = jsd_estimate(bank, z_e, z_t, StandardNormal(3), h)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, abs=1e-9)


def test_jsd_is_larger_when_distributions_differ():
    t = StandardNormal(3)
    # finite-sample estimates of JSD = 0 scatter around 0 (either sign)
    same = jsd_estimate(*_sets(), t, 0.6).item() + 2 * math.log(2)
    apart = jsd_estimate(*_sets(shift=8.0), t, 0.6).item() + 2 * math.log(2)
    assert abs(same) < 0.2 and apart == pytest.approx(2 * math.log(2), abs=1e-3)


@pytest.mark.parametrize("form", JSD_FORMS)
def test_gen_jsd_term_values(form):
    bank, z, _ = _sets(seed=3)
    h, eps = 0.5, 1e-3
    le, lt = _reference_logs(z, bank, h)
    pe, pt = np.exp(le), np.exp(lt)
    want = {"literal": np.mean(np.log(pe / (pe + pt))),
            "nonsaturating": np.mean(-np.log(pt / (pe + pt))),
            "kl": np.mean(np.log(pe + eps) - np.log(pt + eps))}[form]
    got = gen_jsd_term(z, bank, StandardNormal(3), h, form=form, eps=eps)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("form", JSD_FORMS)
def test_gen_jsd_term_gradient_matches_finite_differences_and_bank_gets_none(form):
    bank, z, _ = _sets(dim=2, m=25, n=6, seed=4)
    bank.requires_grad_()
    z.requires_grad_()
    target = mixture_on_simplex(3, 2, scale=2.0)
    fn = lambda z: gen_jsd_term(z, bank, target, 0.7, form=form, eps=1e-2)
    assert torch.autograd.gradcheck(fn, (z,))
    fn(z).backward()
    assert bank.grad is None and z.grad is not None and z.grad.abs().sum() > 0


def test_nonsaturating_is_bounded_below_literal_is_not():
    # latents far out in the tails: p_e falls faster than p_t, literal -> -inf, nonsaturating -> 0
    bank, _, _ = _sets(dim=2, m=100)
    far = torch.full((5, 2), 12.0, dtype=torch.float64)
    t = StandardNormal(2)
    assert gen_jsd_term(far, bank, t, 0.4, form="literal").item() < -50
    ns = gen_jsd_term(far, bank, t, 0.4, form="nonsaturating").item()
    assert 0 <= ns < 1e-10


def test_validation_errors():
    bank, z, _ = _sets()
    t = StandardNormal(3)
    with pytest.raises(ValueError, match="^form:"):
        gen_jsd_term(z, bank, t, 0.5, form="js")
    with pytest.raises(ValueError, match="^h:"):
        gen_jsd_term(z, bank, t, 0.0)
    with pytest.raises(ValueError, match="^eps:"):
        gen_jsd_term(z, bank, t, 0.5, form="kl", eps=0.0)
    with pytest.raises(ValueError, match="^target:"):
        gen_jsd_term(z, bank, StandardNormal(4), 0.5)
    with pytest.raises(ValueError, match="^z:"):
        gen_jsd_term(z[:, :2], bank, t, 0.5)
    with pytest.raises(ValueError, match="^z_t:"):
        jsd_estimate(bank, z, z[:, :2], t, 0.5)
    bad = z.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="^z:"):
        gen_jsd_term(bad, bank, t, 0.5)

"""Numerics at the edges (reliability issue, item 2): no NaN or inf in the GEN loss or its gradients for
latent dimensions up to 128, latents far from the target (an untrained encoder can output huge values),
bandwidths tiny or close to 1, in float32 and float64."""

import itertools
import math

import pytest
import torch

from gens.divergence import JSD_FORMS, gen_jsd_term
from gens.kde import kde_log_density
from gens.targets import StandardNormal, mixture_on_simplex

DIMS = (2, 8, 32, 128)
SCALES = (1.0, 1e3, 1e6)
BANDWIDTHS = (1e-3, 0.5, 0.999)
DTYPES = (torch.float32, torch.float64)


@pytest.mark.parametrize("l", DIMS)
def test_gen_term_and_gradients_finite_everywhere(l):
    target = StandardNormal(l)
    g = torch.Generator().manual_seed(l)
    for scale, h, dtype, form in itertools.product(SCALES, BANDWIDTHS, DTYPES, JSD_FORMS):
        bank = target.sample(300, generator=g).to(dtype)
        z = (torch.randn(40, l, generator=g, dtype=dtype) * scale).requires_grad_()
        value = gen_jsd_term(z, bank, target, h, form=form)
        value.backward()
        where = f"l={l} scale={scale:g} h={h} {dtype} form={form}"
        assert torch.isfinite(value), where
        assert torch.isfinite(z.grad).all(), where


@pytest.mark.parametrize("dtype", DTYPES)
def test_literal_term_pushes_far_latents_out_and_the_default_does_not(dtype):
    """The reason for the default objective. Far beyond the bank (|z| = 8 for N(0, I_8), whose bank has
    radius about 2.8), a gradient step on the literal eq. 3 term moves z further out, with a force that
    grows with distance (the runaway measured on MNIST). The non-saturating form's force there vanishes
    (it saturates: softplus of a very negative log-ratio), so it cannot drive a runaway."""
    l = 8
    target = StandardNormal(l)
    bank = target.sample(1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    push = {}
    for r in (8.0, 10.0):
        z0 = torch.full((1, l), r / math.sqrt(l), dtype=dtype)
        for form in ("literal", "nonsaturating"):
            z = z0.clone().requires_grad_()
            gen_jsd_term(z, bank, target, 0.54, form=form).backward()
            push[form, r] = -(z.grad * z0).sum().item() / r  # radial descent step; > 0 is outward
    assert push["literal", 8.0] > 1.0
    assert push["literal", 10.0] > push["literal", 8.0]  # grows with distance
    assert abs(push["nonsaturating", 8.0]) < 1e-6
    assert abs(push["nonsaturating", 10.0]) < 1e-6


def test_kde_log_density_far_queries_are_finite_and_match_closed_form():
    """A query 1e4 away from a one-point bank: the log-density is the Gaussian log kernel, exactly."""
    for dtype in DTYPES:
        bank = torch.zeros(1, 16, dtype=dtype)
        q = torch.full((1, 16), 1e4 / 4, dtype=dtype)  # |q| = 1e4
        h = 0.3
        got = kde_log_density(q, bank, h).double().item()
        r2 = float((q.double() ** 2).sum())
        want = -r2 / (2 * h * h) - 16 * math.log(h) - 8 * math.log(2 * math.pi)
        assert math.isfinite(got)
        assert got == pytest.approx(want, rel=1e-5)


def test_mixture_target_far_latents_finite():
    target = mixture_on_simplex(10, 32)
    bank = target.sample(500, generator=torch.Generator().manual_seed(1))
    for scale in SCALES:
        z = (torch.randn(20, 32, generator=torch.Generator().manual_seed(2)) * scale).requires_grad_()
        value = gen_jsd_term(z, bank, target, 0.8)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z.grad).all()

"""KDE estimates of the Jensen-Shannon divergence between the encoded distribution and the target.

p_e is the KDE of a bank of latents (``gens.kde``), p_t an analytic target (``gens.targets``).
Everything is in the log domain: log(p_e + p_t) = logaddexp(log p_e, log p_t).

The training term's form is an *objective*: a function ``fn(log_pe, log_pt, eps)`` of the (n,) log
densities of the queries under the bank's KDE and the target (and a density floor eps, which objectives
that need none ignore) returning the (n,) per-query loss; ``gen_jsd_term`` averages it. They are looked
up by name in ``OBJECTIVES`` (``gens.registry``); ``register_objective(name, fn)`` adds one, which
``GENModule(objective=name)``, ``gens.GEN(objective=name)`` and ``gens train --objective name`` accept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gens._validation import check_float, check_matrix
from gens.kde import kde_log_density
from gens.registry import OBJECTIVES

__all__ = ["JSD_FORMS", "OBJECTIVES", "gen_coverage_term", "gen_jsd_term", "jsd_estimate", "kl_objective",
           "literal_objective", "nonsaturating_objective", "register_objective"]


def literal_objective(le: torch.Tensor, lt: torch.Tensor, eps: float) -> torch.Tensor:
    """log[p_e / (p_e + p_t)] per query (eq. 3 as written; unbounded below, unstable)."""
    return le - torch.logaddexp(le, lt)


def nonsaturating_objective(le: torch.Tensor, lt: torch.Tensor, eps: float) -> torch.Tensor:
    """-log[p_t / (p_e + p_t)] = softplus(log p_e - log p_t) per query (same stationary point; >= 0)."""
    return F.softplus(le - lt)


def kl_objective(le: torch.Tensor, lt: torch.Tensor, eps: float) -> torch.Tensor:
    """log(p_e + eps) - log(p_t + eps) per query (KL(p_e || p_t) with a density floor eps)."""
    log_eps = math.log(eps)
    return torch.logaddexp(le, torch.full_like(le, log_eps)) - torch.logaddexp(lt, torch.full_like(lt, log_eps))


def register_objective(name: str, fn, *, replace: bool = False):
    """Make ``fn(log_pe, log_pt, eps) -> (n,) per-query loss`` (or a 0-d mean) the objective ``name``.

    log_pe, log_pt: (n,) log densities of the minibatch latents under the bank's KDE and the target; eps:
    the GEN's density floor (``GENModule.density_floor``). Gradients flow through log_pe to the encoder.
    A registered name cannot be registered again unless ``replace=True`` (built-ins never). Returns fn."""
    if not callable(fn):
        raise TypeError(f"fn: must be callable (log_pe, log_pt, eps) -> loss, got {fn!r}")
    return OBJECTIVES.register(name, fn, replace=replace)


JSD_FORMS = OBJECTIVES.builtins  # the built-in objectives ("nonsaturating", "literal", "kl")


def _log_densities(z, bank, target, h):
    """(log p_e(z), log p_t(z)), both (n,)."""
    if target.dim != bank.shape[1]:
        raise ValueError(f"target: must have dim {bank.shape[1]} (the bank's columns), got dim {target.dim}")
    return kde_log_density(z, bank, h), target.log_prob(z)


def jsd_estimate(bank: torch.Tensor, z_e: torch.Tensor, z_t: torch.Tensor, target, h: float) -> torch.Tensor:
    """Paper eq. 2 (up to constants): the JSD between the KDE of ``bank`` and ``target``.

    J = mean_{z_e} log[p_e / (p_e + p_t)] + mean_{z_t} log[p_t / (p_e + p_t)],
    bank: (m, l) defines p_e; z_e: (n1, l) drawn from p_e (independent of the bank); z_t: (n2, l)
    drawn from p_t. Returns a 0-d tensor. J + 2 log 2 is the JSD (in nats, in [0, 2 log 2]).
    """
    check_matrix("bank", bank)
    check_matrix("z_e", z_e, columns=bank.shape[1])
    check_matrix("z_t", z_t, columns=bank.shape[1])
    le, lt = _log_densities(z_e, bank, target, h)
    first = (le - torch.logaddexp(le, lt)).mean()
    le, lt = _log_densities(z_t, bank, target, h)
    second = (lt - torch.logaddexp(le, lt)).mean()
    return first + second


def gen_jsd_term(z: torch.Tensor, bank: torch.Tensor, target, h: float, form: str = "nonsaturating",
                 eps: float = 1e-3) -> torch.Tensor:
    """The JSD regulariser of the GEN loss (paper eq. 3) for a minibatch of latents.

    z: (n, l) minibatch latents (gradients flow to them); bank: (m, l), detached here so it never
    gets a gradient. Returns a 0-d tensor to minimise: the mean over the queries of the objective
    ``OBJECTIVES[form]`` (any registered name; the built-ins):
      "literal":       mean log[p_e / (p_e + p_t)]   (the paper; unbounded below, unstable)
      "nonsaturating": mean -log[p_t / (p_e + p_t)] = mean softplus(log p_e - log p_t)
                       (same stationary point p_e = p_t; bounded below by 0)
      "kl":            mean [log(p_e + eps) - log(p_t + eps)]   (KL(p_e || p_t) with a density floor eps)
    """
    form = OBJECTIVES.check(form, "form")
    eps = check_float("eps", eps, minimum=0.0, min_inclusive=False)
    check_matrix("bank", bank)
    check_matrix("z", z, columns=bank.shape[1])
    le, lt = _log_densities(z, bank.detach(), target, h)
    return OBJECTIVES[form](le, lt, eps).mean()


def gen_coverage_term(z: torch.Tensor, bank: torch.Tensor, target, h: float, z_t: torch.Tensor) -> torch.Tensor:
    """The target-sample half of eq. 2, non-saturating: the restoring force that eq. 3 lacks.

    mean over z_t ~ p_t of -log[p_e(z_t) / (p_e(z_t) + p_t(z_t))] = softplus(log p_t - log p_e), where
    p_e is the KDE of bank (m, l) and the minibatch z (n, l) together (the bank detached: gradients reach
    only z), times (m + n) / n so that a minibatch latent's pull does not shrink as the bank grows.
    z_t: (k, l) draws from p_t. Returns a 0-d tensor to minimise.

    Eq. 3's term (``gen_jsd_term``) pushes latents out of over-dense regions; its push vanishes where
    p_e << p_t, so nothing draws latents into regions the target fills and they miss: once latents are
    sparser than the kernel, spreading lowers p_e / p_t and the term rewards inflation. Here every target
    draw pulls the latents whose kernels reach it, hardest where p_e << p_t (the gradient of
    softplus(log p_t - log p_e) with respect to log p_e is -p_t / (p_e + p_t)). Both halves of eq. 2 have
    the same stationary point p_e = p_t (q * G_h = p_t, Sec. 4).
    """
    check_matrix("bank", bank)
    check_matrix("z", z, columns=bank.shape[1])
    check_matrix("z_t", z_t, columns=bank.shape[1])
    if target.dim != bank.shape[1]:
        raise ValueError(f"target: must have dim {bank.shape[1]} (the bank's columns), got dim {target.dim}")
    m, n = bank.shape[0], z.shape[0]
    z_t = z_t.to(z)
    le = kde_log_density(z_t, torch.cat([bank.detach().to(z), z]), h)
    return F.softplus(target.log_prob(z_t) - le).mean() * ((m + n) / n)

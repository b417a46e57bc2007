"""gens: Generative Encoding Networks.

Autoencoders whose latent distribution is pushed toward an analytic target (standard normal, any
Gaussian, a mixture of Gaussians) by a Jensen-Shannon divergence estimated with a Gaussian kernel
density estimate of the encoded samples.

Public names are imported lazily so ``import gens`` (and the CLI's ``--help``) stay fast.
"""

from __future__ import annotations

from gens._lazy import lazy_attributes

__version__ = "0.1.0"

# name -> module that defines it
_LAZY = {
    # targets (paper: p_t)
    "Target": "gens.targets",
    "StandardNormal": "gens.targets",
    "Gaussian": "gens.targets",
    "GaussianMixture": "gens.targets",
    "mixture_on_simplex": "gens.targets",
    "target_from_spec": "gens.targets",
    # estimators of the paper's equations
    "kde_log_density": "gens.kde",
    "kde_log_density_loo": "gens.kde",
    "jsd_estimate": "gens.divergence",
    "gen_jsd_term": "gens.divergence",
    "optimal_bandwidth": "gens.bandwidth",
    "corrected_bandwidth": "gens.bandwidth",
    "BandwidthResult": "gens.bandwidth",
    # data
    "load_dataset": "gens.data",
    "GensDataModule": "gens.data",
    # scikit-learn style estimators
    "GEN": "gens.estimators",
    "AE": "gens.estimators",
    "VAE": "gens.estimators",
    "AAE": "gens.estimators",
    "WAE": "gens.estimators",
    "SemiSupervisedGEN": "gens.estimators",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, _dir = lazy_attributes(__name__, _LAZY)


def __dir__():
    return __all__

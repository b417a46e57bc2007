"""Evaluation of trained models: the paper's Section 5 experiments, one module each.

- ``entropy``: whitened-latent entropy (Sec. 5.2, supplement eqs. 4-5; Table 2)
- ``correlation``: KDE vs neural-discriminator JSD against a controlled divergence (Sec. 5.1, Fig. 1)
- ``fid``: Fréchet distance with Inception-v3 or in-domain features (Table 3)
- ``semisupervised`` (Sec. 5.4), ``novelty`` (Sec. 5.5, eq. 10)

The names below are imported lazily (``from gens.evaluation import latent_entropy``) so importing the
package stays cheap.
"""

from __future__ import annotations

from gens._lazy import lazy_attributes

_LAZY = {
    "whiten": "gens.evaluation.entropy",
    "entropy_bandwidth": "gens.evaluation.entropy",
    "latent_entropy": "gens.evaluation.entropy",
    "correlation_study": "gens.evaluation.correlation",
    "frechet_distance": "gens.evaluation.fid",
    "feature_statistics": "gens.evaluation.fid",
    "fid_from_features": "gens.evaluation.fid",
    "domain_features": "gens.evaluation.fid",
    "load_inception": "gens.evaluation.fid",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

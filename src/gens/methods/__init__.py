"""Training methods as LightningModules sharing networks and optimiser (``BaseAutoencoder``).

    METHODS = {"gen": GENModule, "ae": AEModule, "vae": VAEModule, "aae": AAEModule, "wae": WAEModule,
               "semisupervised": SemiSupervisedGENModule}
    build_module("gen", data_shape=(1, 28, 28), latent_dim=8, lam=0.01)

Every module: ``encode``, ``decode``, ``reconstruct``, ``sample(n, generator=None)``,
``latent_distribution()``, ``recon_loss``; logs ``train/{loss,recon,reg}`` and ``val/{loss,recon,reg}``.
"""

from __future__ import annotations

from gens._validation import check_choice
from gens.methods.aae import AAEModule
from gens.methods.ae import AEModule
from gens.methods.base import BaseAutoencoder
from gens.methods.gen import GENModule
from gens.methods.semisupervised import SemiSupervisedGENModule
from gens.methods.vae import VAEModule
from gens.methods.wae import WAEModule

__all__ = ["METHODS", "build_module", "BaseAutoencoder", "GENModule", "AEModule", "VAEModule", "AAEModule",
           "WAEModule", "SemiSupervisedGENModule"]

METHODS = {"gen": GENModule, "ae": AEModule, "vae": VAEModule, "aae": AAEModule, "wae": WAEModule,
           "semisupervised": SemiSupervisedGENModule}


def build_module(method: str, data_shape, latent_dim: int, **kwargs) -> BaseAutoencoder:
    """Instantiate ``METHODS[method](data_shape, latent_dim, **kwargs)``; unknown keyword -> ValueError naming it."""
    check_choice("method", method, METHODS)
    cls = METHODS[method]
    import inspect

    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "data_shape", "latent_dim")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown[0]}: is not an option of method {method!r}; options: {', '.join(allowed)}")
    return cls(data_shape, latent_dim, **kwargs)

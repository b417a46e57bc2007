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

__all__ = ["METHODS", "build_module", "method_parameters", "BaseAutoencoder", "GENModule", "AEModule", "VAEModule", "AAEModule",
           "WAEModule", "SemiSupervisedGENModule"]

METHODS = {"gen": GENModule, "ae": AEModule, "vae": VAEModule, "aae": AAEModule, "wae": WAEModule,
           "semisupervised": SemiSupervisedGENModule}


def method_parameters(method) -> dict:
    """name -> ``inspect.Parameter`` of a method's constructor options (a name in METHODS or a class), without
    self, data_shape and latent_dim. A constructor that forwards ``**kwargs`` to its base class takes the base's
    options too (the subclass's own default wins)."""
    import inspect

    cls = METHODS[check_choice("method", method, METHODS)] if isinstance(method, str) else method
    out = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        for name, p in params.items():
            if name not in ("self", "data_shape", "latent_dim") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def build_module(method: str, data_shape, latent_dim: int, **kwargs) -> BaseAutoencoder:
    """Instantiate ``METHODS[method](data_shape, latent_dim, **kwargs)``; unknown keyword -> ValueError naming it."""
    check_choice("method", method, METHODS)
    cls = METHODS[method]
    allowed = list(method_parameters(cls))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{unknown[0]}: is not an option of method {method!r}; options: {', '.join(allowed)}")
    return cls(data_shape, latent_dim, **kwargs)

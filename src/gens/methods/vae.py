"""VAE (Kingma and Welling, 2014): Gaussian posterior N(mu(x), diag exp(logvar(x))), KL to N(0, I_l).

The encoder outputs 2 l numbers (mean, log-variance). Loss per batch:

    recon + lam * KL,   recon = per-pixel mean squared error of D(z), z = mu + exp(logvar / 2) * eps,
    KL = mean over the batch of 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)   (nats per sample).

With a Gaussian decoder N(x; D(z), s^2 I_d) the negative ELBO divided by d / (2 s^2) is exactly this
loss with lam = 2 s^2 / d; the default lam = 1e-3 corresponds to s = 0.63 for MNIST (d = 784).
``encode`` returns the posterior mean; ``sample`` decodes z ~ N(0, I_l).
"""

from __future__ import annotations

import torch

from gens._validation import check_float
from gens.methods.base import BaseAutoencoder

__all__ = ["VAEModule"]


class VAEModule(BaseAutoencoder):
    """Variational autoencoder. ``lam``: weight of the KL term (nats per sample) against the per-pixel MSE."""

    method_name = "vae"  # its name in gens.methods.METHODS (gens.config.WEIGHT_AVERAGE)

    out_mult = 2

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999), lam: float = 1e-3):
        super().__init__(data_shape, latent_dim, arch, hidden, lr, betas)
        self.lam = check_float("lam", lam, minimum=0.0)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (n, *data_shape) -> (mu, logvar), each (n, l)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: (n, l)."""
        return self.posterior(x)[0]

    def losses(self, x, training: bool = True):
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.recon_loss(x, self.decode(z))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
        return {"loss": recon + self.lam * kl, "recon": recon.detach(), "reg": kl.detach()}

    def latent_distribution(self):
        """The prior N(0, I_l)."""
        from gens.targets import StandardNormal

        return StandardNormal(self.latent_dim)

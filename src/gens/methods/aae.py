"""AAE (Makhzani et al., 2016): a latent discriminator against samples of the same target, alternating updates.

Each training step (manual optimisation, two Adam optimisers with the shared lr and betas):

1. discriminator: minimise BCE(D(z_t), 1) + BCE(D(E(x).detach()), 0), z_t ~ p_t (as many as the batch);
2. encoder and decoder: minimise recon + lam * BCE(D(E(x)), 1)  (the non-saturating generator loss,
   reaching only the encoder; the decoder sees only the reconstruction).

The discriminator is an MLP l -> 1000 -> 1000 -> 1 (ReLU), as in the AAE paper. Logged ``reg`` is the
generator loss, ``disc`` the discriminator loss. Note: with two optimisers Lightning's ``global_step``
advances by 2 per batch. ``sample`` decodes z ~ p_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gens._validation import check_float
from gens.methods.base import BaseAutoencoder, batch_x, make_target
from gens.networks import mlp

__all__ = ["AAEModule"]


class AAEModule(BaseAutoencoder):
    """Adversarial autoencoder. ``target_spec``: see ``gens.targets.target_from_spec`` (None: N(0, I_l));
    ``lam``: weight of the generator loss against the per-pixel MSE; ``disc_hidden``: discriminator widths."""

    method_name = "aae"  # its name in gens.methods.METHODS (gens.config.WEIGHT_AVERAGE)

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999), target_spec=None, lam: float = 0.01, disc_hidden=(1000, 1000)):
        super().__init__(data_shape, latent_dim, arch, hidden, lr, betas)
        self.automatic_optimization = False
        self.target = make_target(target_spec, self.latent_dim)
        self.lam = check_float("lam", lam, minimum=0.0)
        self.discriminator = mlp([self.latent_dim, *[int(h) for h in disc_hidden], 1])

    def configure_optimizers(self):
        ae = [*self.encoder.parameters(), *self.decoder.parameters()]
        return (torch.optim.Adam(ae, lr=self.lr, betas=self.betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas))

    def _disc_loss(self, z: torch.Tensor) -> torch.Tensor:
        zt = self.target.sample(z.shape[0]).to(z)
        real, fake = self.discriminator(zt), self.discriminator(z.detach())
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

    def losses(self, x, training: bool = True):
        z = self.encode(x)
        recon = self.recon_loss(x, self.decode(z))
        logits = self.discriminator(z)
        gen = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return {"loss": recon + self.lam * gen, "recon": recon, "reg": gen, "disc": self._disc_loss(z)}

    def training_step(self, batch, batch_idx):
        opt_ae, opt_d = self.optimizers()
        x = batch_x(batch)
        z = self.encode(x)
        d_loss = self._disc_loss(z)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        recon = self.recon_loss(x, self.decode(z))
        logits = self.discriminator(z)
        gen = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss = recon + self.lam * gen
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        out = {"loss": loss.detach(), "recon": recon.detach(), "reg": gen.detach(), "disc": d_loss.detach()}
        self._log_losses("train", out, on_step=True, on_epoch=False)
        return out["loss"]

    def latent_distribution(self):
        """The target p_t."""
        return self.target

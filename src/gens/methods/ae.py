"""AE: the unregularised autoencoder (the baseline every regulariser is compared against).

Loss: per-pixel mean squared reconstruction error only (``reg`` is logged as 0).

``latent_distribution()`` is a Gaussian N(mean, cov) fitted to the training latents of the most recent
training epoch: the running mean and covariance of E(x) over that epoch's minibatches (summed over DDP
ranks), stored in buffers so checkpoints keep it. Before any training it is N(0, I_l).
"""

from __future__ import annotations

import torch

from gens.methods.base import BaseAutoencoder

__all__ = ["AEModule"]


class AEModule(BaseAutoencoder):
    """Plain autoencoder. See ``BaseAutoencoder`` for the shared arguments."""

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999)):
        super().__init__(data_shape, latent_dim, arch, hidden, lr, betas)
        l = self.latent_dim
        self.register_buffer("latent_mean", torch.zeros(l, dtype=torch.float64))
        self.register_buffer("latent_cov", torch.eye(l, dtype=torch.float64))
        self._moments = None  # (count, sum z, sum z z^T) over the current epoch, float64

    def losses(self, x, training: bool = True):
        z = self.encode(x)
        recon = self.recon_loss(x, self.decode(z))
        if training:
            zd = z.detach().double()
            m = (torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device), zd.sum(0), zd.T @ zd)
            self._moments = m if self._moments is None else tuple(a + b for a, b in zip(self._moments, m))
        return {"loss": recon, "recon": recon.detach(), "reg": torch.zeros((), device=x.device)}

    def on_train_epoch_start(self):
        self._moments = None

    def on_save_checkpoint(self, checkpoint):
        # the current epoch's running moments, so a run resumed mid-epoch fits the same Gaussian
        if self._moments is not None:
            checkpoint["ae_moments"] = [t.detach().cpu() for t in self._moments]

    def on_load_checkpoint(self, checkpoint):
        m = checkpoint.get("ae_moments")
        self._moments = None if m is None else tuple(t.to(self.latent_mean.device) for t in m)

    def on_train_epoch_end(self):
        if self._moments is None:
            return
        n, s, ss = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in self._moments)
        mean = s / n
        cov = ss / n - torch.outer(mean, mean)
        cov = 0.5 * (cov + cov.T) + 1e-6 * torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        self.latent_mean.copy_(mean)
        self.latent_cov.copy_(cov)

    def latent_distribution(self):
        """N(mean, cov) of the last training epoch's latents (N(0, I) before training)."""
        from gens.targets import Gaussian

        return Gaussian(self.latent_mean.cpu(), self.latent_cov.cpu())

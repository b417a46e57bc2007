"""AE: the unregularised autoencoder (the baseline every regulariser is compared against).

Loss: per-pixel mean squared reconstruction error only (``reg`` is logged as 0).

``latent_distribution()`` is a Gaussian N(mean, cov) fitted to the training latents of the most recent
training epoch: the running mean and covariance of E(x) over that epoch's minibatches (summed over DDP
ranks), stored in buffers so checkpoints keep it. Before any training it is N(0, I_l). With weight averaging
(``gens.averaging``) the last epoch's Gaussian is instead fitted to every training sample encoded by the
averaged encoder (the trained model; one pass at that epoch's end, shared across DDP ranks), so the saved
model's Gaussian describes its own latents.
"""

from __future__ import annotations

import torch

from gens.methods.base import BaseAutoencoder, sample_source

__all__ = ["AEModule"]


class AEModule(BaseAutoencoder):
    """Plain autoencoder. See ``BaseAutoencoder`` for the shared arguments."""

    method_name = "ae"  # its name in gens.methods.METHODS (gens.config.WEIGHT_AVERAGE)

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
        moments = self._moments
        if self._averaged_last_epoch():
            from gens.averaging import averaged_weights

            with averaged_weights(self.trainer, self):
                moments = self._training_moments() or moments
        n, s, ss = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in moments)
        mean = s / n
        cov = ss / n - torch.outer(mean, mean)
        cov = 0.5 * (cov + cov.T) + 1e-6 * torch.eye(self.latent_dim, dtype=cov.dtype, device=cov.device)
        self.latent_mean.copy_(mean)
        self.latent_cov.copy_(cov)

    def _averaged_last_epoch(self) -> bool:
        """Whether this epoch ends the training and the trainer averages the weights (``gens.averaging``)."""
        from gens.averaging import weight_average_of
        from gens.training import last_epoch

        return weight_average_of(self.trainer) is not None and last_epoch(self.trainer)

    @torch.no_grad()
    def _training_moments(self):
        """(count, sum z, sum z z^T) float64 of this rank's share of the training samples (every world_size-th)
        encoded by the current weights; None when the samples are not at hand (``sample_source``)."""
        n, get = sample_source(self.trainer)
        if n is None:
            return None
        l, dev = self.latent_dim, self.latent_mean.device
        count, total, outer = 0, torch.zeros(l, dtype=torch.float64, device=dev), torch.zeros(l, l, dtype=torch.float64,
                                                                                              device=dev)
        for idx in torch.arange(self.trainer.global_rank, n, self.trainer.world_size).split(1000):
            z = self.encode(get(idx).to(dev)).double()
            count, total, outer = count + len(z), total + z.sum(0), outer + z.T @ z
        return torch.tensor(float(count), dtype=torch.float64, device=dev), total, outer

    def latent_distribution(self):
        """N(mean, cov) of the last training epoch's latents (N(0, I) before training)."""
        from gens.targets import Gaussian

        return Gaussian(self.latent_mean.cpu(), self.latent_cov.cpu())

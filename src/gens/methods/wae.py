"""WAE-MMD (Tolstikhin et al., 2018): MMD between encoded minibatch latents and target samples.

Loss: recon + lam * MMD^2_k(E(x), z_t), with z_t ~ p_t drawn fresh each step (as many as the batch) and
the unbiased U-statistic estimate of MMD^2 with the inverse multiquadric kernel summed over scales,
k(a, b) = sum_s C_s / (C_s + ||a - b||^2), C_s = s * 2 l sigma^2, s in (0.1, 0.2, 0.5, 1, 2, 5, 10),
sigma^2 the target's mean per-dimension variance (trace of its covariance / l) (1 for N(0, I)), as in the WAE paper's code.
The WAE paper's lambda = 10 on a per-image squared error corresponds to lam = 10 / d here (0.0128 for
MNIST); the default is 0.01.
"""

from __future__ import annotations

import torch

from gens._validation import check_float
from gens.methods.base import BaseAutoencoder, make_target

__all__ = ["WAEModule", "imq_mmd"]

SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def imq_mmd(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Unbiased MMD^2 with the multi-scale inverse multiquadric kernel. x: (n, l), y: (k, l), n, k >= 2; c = 2 l sigma^2."""
    n, k = x.shape[0], y.shape[0]
    if n < 2 or k < 2:
        return x.new_zeros(())
    dxx, dyy, dxy = torch.cdist(x, x).pow(2), torch.cdist(y, y).pow(2), torch.cdist(x, y).pow(2)
    total = x.new_zeros(())
    for s in SCALES:
        cs = s * c
        kxx, kyy, kxy = cs / (cs + dxx), cs / (cs + dyy), cs / (cs + dxy)
        total = total + (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) \
            + (kyy.sum() - kyy.diagonal().sum()) / (k * (k - 1)) - 2.0 * kxy.mean()
    return total


def total_variance(target) -> float:
    """Trace of the covariance of a mixture target: sum_k w_k (tr S_k + |mu_k|^2) - |sum_k w_k mu_k|^2."""
    w, mu, cov = target.weights, target.means, target.covs
    second = (w * (cov.diagonal(dim1=1, dim2=2).sum(1) + (mu * mu).sum(1))).sum()
    mean = (w[:, None] * mu).sum(0)
    return float(second - mean @ mean)


class WAEModule(BaseAutoencoder):
    """Wasserstein autoencoder with the MMD penalty. ``target_spec``: see ``gens.targets.target_from_spec``
    (None: N(0, I_l)); ``lam``: weight of MMD^2 against the per-pixel MSE."""

    method_name = "wae"  # its name in gens.methods.METHODS (gens.config.WEIGHT_AVERAGE)

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999), target_spec=None, lam: float = 0.01):
        super().__init__(data_shape, latent_dim, arch, hidden, lr, betas)
        self.target = make_target(target_spec, self.latent_dim)
        self.lam = check_float("lam", lam, minimum=0.0)
        self.kernel_c = 2.0 * total_variance(self.target)  # 2 l sigma^2 with sigma^2 = trace / l

    def losses(self, x, training: bool = True):
        z = self.encode(x)
        recon = self.recon_loss(x, self.decode(z))
        zt = self.target.sample(max(2, z.shape[0])).to(z)
        mmd = imq_mmd(z, zt, self.kernel_c)
        return {"loss": recon + self.lam * mmd, "recon": recon.detach(), "reg": mmd.detach()}

    def latent_distribution(self):
        """The target p_t."""
        return self.target

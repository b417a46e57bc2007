"""``BaseAutoencoder``: what every method (GEN, AE, VAE, AAE, WAE) shares.

The same encoder/decoder (``gens.networks.build_networks``) and the same optimiser (Adam, lr 2e-4,
betas (0.5, 0.999), the paper's setting) for every method, so comparisons are like for like.

A subclass implements ``losses(x) -> dict`` with at least ``recon`` and ``reg`` (tensors; the training
loss is ``recon + lam * reg``) and ``latent_distribution() -> Target`` (what ``sample`` draws z from).

Public methods (inputs: x (n, *data_shape) in [0, 1]; z (n, l)):

- ``encode(x) -> (n, l)`` (the VAE: posterior mean), ``decode(z) -> (n, *data_shape)``,
  ``reconstruct(x)``, ``sample(n, generator=None) -> (n, *data_shape)``, ``latent_distribution()``,
  ``recon_loss(x, x_hat)`` = mean squared error per pixel (so lambda means the same for any image size).

Logged: ``train/recon``, ``train/reg``, ``train/loss`` every step; ``val/recon``, ``val/reg``,
``val/loss`` per epoch (``prog_bar=True`` for loss and recon). Batches may be ``x``, ``(x,)`` or ``(x, y)``.

Hyperparameters are saved with ``save_hyperparameters()`` as plain JSON types (tuples become lists), so
``Class.load_from_checkpoint(path)`` rebuilds the module.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from gens._validation import check_float, check_int
from gens.networks import build_networks

__all__ = ["BaseAutoencoder", "batch_x", "make_target", "sample_source"]


def batch_x(batch) -> torch.Tensor:
    """The data tensor of a batch given as ``x``, ``(x,)`` or ``(x, y)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def sample_source(trainer):
    """(n_train, getter(index tensor) -> samples) from the datamodule or train dataloader; (None, None) if unavailable."""
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and hasattr(dm, "train_tensor"):
        x = dm.train_tensor()
        return x.shape[0], lambda idx: x[idx]
    loader = trainer.train_dataloader
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None, None
    if hasattr(dataset, "tensors"):  # TensorDataset
        x = dataset.tensors[0]
        return x.shape[0], lambda idx: x[idx]
    try:
        n = len(dataset)
        dataset[0]
    except Exception:  # noqa: BLE001 -- an IterableDataset or a dataset without random access
        return None, None
    return n, lambda idx: torch.stack([torch.as_tensor(batch_x(dataset[int(i)])) for i in idx])


def make_target(target_spec, latent_dim: int):
    """The target p_t from a spec dict (``gens.targets.target_from_spec``), a Target, or None (N(0, I_l))."""
    from gens.targets import StandardNormal, Target, target_from_spec

    if target_spec is None:
        return StandardNormal(latent_dim)
    target = target_spec if isinstance(target_spec, Target) else target_from_spec(target_spec)
    if target.dim != latent_dim:
        raise ValueError(f"target_spec: the target's dimension ({target.dim}) must equal latent_dim ({latent_dim})")
    return target


def _jsonable(v):
    if hasattr(v, "spec") and callable(v.spec):  # a Target: keep its JSON spec
        return v.spec()
    if isinstance(v, (tuple, list)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {k: _jsonable(u) for k, u in v.items()}
    return v


class BaseAutoencoder(L.LightningModule):
    """Encoder/decoder pair trained with Adam on ``recon + lam * reg``; subclasses define ``losses``."""

    out_mult = 1  # the encoder outputs out_mult * latent_dim numbers (VAE: 2)
    method_name: str | None = None  # each method's name in gens.methods.METHODS (gens.training.fit reads it)

    def __init__(self, data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), lr: float = 2e-4,
                 betas=(0.5, 0.999)):
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's arguments too
        for k in list(self.hparams):
            self.hparams[k] = _jsonable(self.hparams[k])
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        self.lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: must be two numbers in [0, 1), got {betas}")
        self.betas = betas
        self.encoder, self.decoder = build_networks(self.data_shape, self.latent_dim, arch, hidden, self.out_mult)

    # ---- the model -------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, *data_shape) -> z: (n, l)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (n, l) -> x': (n, *data_shape) in [0, 1]."""
        return self.decoder(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, *data_shape) -> D(E(x)): (n, *data_shape)."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    @staticmethod
    def recon_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Mean squared error per pixel (and per sample): scalar."""
        return F.mse_loss(x_hat, x.to(x_hat.dtype))

    def latent_distribution(self):
        """The ``gens.targets.Target`` that ``sample`` draws latents from."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate n data points: z ~ latent_distribution(), decoded. Returns (n, *data_shape)."""
        n = check_int("n", n, minimum=0)
        z = self.latent_distribution().sample(n, generator=generator)
        p = next(self.parameters())
        return self.decode(z.to(device=p.device, dtype=p.dtype))

    def losses(self, x: torch.Tensor, training: bool = True) -> dict:
        """Return {"loss", "recon", "reg", ...} (scalars) for a batch x: (n, *data_shape) (subclasses).

        Keys starting with "_" are returned but not logged. ``training=False`` in validation: no state
        (bank, statistics) may change."""
        raise NotImplementedError

    # ---- Lightning -------------------------------------------------------------------------------
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    def training_step(self, batch, batch_idx):
        out = self.losses(batch_x(batch))
        self._log_losses("train", out, on_step=True, on_epoch=False)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self.losses(batch_x(batch), training=False)
        self._log_losses("val", out, on_step=False, on_epoch=True)
        return out["loss"]

    def _log_losses(self, stage: str, out: dict, **kw) -> None:
        """Log every entry of ``out`` whose key does not start with "_" as ``stage/key``."""
        for k, v in out.items():
            if not k.startswith("_"):
                self.log(f"{stage}/{k}", v.detach() if torch.is_tensor(v) else float(v),
                         prog_bar=k in ("loss", "recon"), sync_dist=stage != "train", **kw)

"""Encoders and decoders shared by every method (GEN, AE, VAE, AAE, WAE), so comparisons are like for like.

- ``MLPEncoder`` / ``MLPDecoder``: the paper's fully connected pair ("FC-layers"): the data flattened,
  two hidden layers of 1000 ReLU units by default, a linear latent layer; the decoder mirrors it and
  ends in a sigmoid so outputs lie in [0, 1] like the images.
- ``ConvEncoder`` / ``ConvDecoder``: a DCGAN-style pair for square-ish colour images whose sides are
  divisible by 8 (32x32: three stride-2 4x4 convolutions, 64x64 and larger: four), ReLU, no batch
  normalisation (a GEN's bank is encoded in batches of thousands; batch statistics would make a
  sample's latent depend on its batch), a linear latent layer; the decoder mirrors it with transposed
  convolutions and a sigmoid.
- ``build_networks(data_shape, latent_dim, arch="auto")`` picks one: ``"auto"`` is ``"conv"`` for
  colour images (3, H, W) with H, W >= 32 divisible by 8 (SVHN 32x32, CelebA 64x64), ``"fc"``
  otherwise (MNIST, digits, flat data).

Shapes: encoder (n, *data_shape) -> (n, out_mult * l); decoder (n, l) -> (n, *data_shape).
``out_mult=2`` gives the VAE's (mean, log-variance) head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gens._validation import check_choice, check_int

__all__ = ["MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "build_networks", "choose_arch", "mlp"]

ARCHS = ("auto", "fc", "conv")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Fully connected encoder. x: (n, *data_shape) -> (n, out_mult * latent_dim)."""

    def __init__(self, data_shape, latent_dim: int, hidden=(1000, 1000), out_mult: int = 1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.net = mlp([d, *hidden, out_mult * latent_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """Fully connected decoder with a sigmoid output. z: (n, latent_dim) -> (n, *data_shape) in [0, 1]."""

    def __init__(self, data_shape, latent_dim: int, hidden=(1000, 1000)):
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.net = mlp([latent_dim, *reversed(tuple(hidden)), d])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(z.shape[0], *self.data_shape)


def _conv_depth(data_shape) -> int:
    """Number of stride-2 stages: 3 for sides < 64, 4 otherwise."""
    return 3 if min(data_shape[1:]) < 64 else 4


def _check_conv_shape(data_shape) -> None:
    if len(data_shape) != 3:
        raise ValueError(f"arch: 'conv' needs images of shape (C, H, W), got data shape {tuple(data_shape)}; use arch='fc'")
    k = 2 ** _conv_depth(data_shape)
    if min(data_shape[1:]) < 32 or data_shape[1] % k or data_shape[2] % k:
        raise ValueError(
            f"arch: 'conv' needs image sides >= 32 and divisible by {k}, got data shape {tuple(data_shape)}; "
            "use arch='fc' or resize the images"
        )


class ConvEncoder(nn.Module):
    """DCGAN-style encoder: stride-2 4x4 convolutions (64, 128, 256[, 512] channels), ReLU, linear head.

    x: (n, C, H, W) -> (n, out_mult * latent_dim).
    """

    def __init__(self, data_shape, latent_dim: int, base_channels: int = 64, out_mult: int = 1):
        super().__init__()
        _check_conv_shape(data_shape)
        c, h, w = data_shape
        depth = _conv_depth(data_shape)
        chans = [c] + [base_channels * 2**i for i in range(depth)]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * (h >> depth) * (w >> depth), out_mult * latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder`` with transposed convolutions and a sigmoid.

    z: (n, latent_dim) -> (n, C, H, W) in [0, 1].
    """

    def __init__(self, data_shape, latent_dim: int, base_channels: int = 64):
        super().__init__()
        _check_conv_shape(data_shape)
        c, h, w = data_shape
        depth = _conv_depth(data_shape)
        chans = [base_channels * 2**i for i in reversed(range(depth))]  # e.g. 256, 128, 64
        self.start = (chans[0], h >> depth, w >> depth)
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.ReLU())
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(chans[-1], c, 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.deconv(self.fc(z).view(z.shape[0], *self.start)))


def choose_arch(data_shape, arch: str = "auto") -> str:
    """Resolve ``arch``: ``"auto"`` -> ``"conv"`` for colour images (3, H, W), H, W >= 32 divisible by 8, else ``"fc"``."""
    check_choice("arch", arch, ARCHS)
    if arch != "auto":
        return arch
    shape = tuple(data_shape)
    if len(shape) == 3 and shape[0] == 3 and min(shape[1:]) >= 32 and shape[1] % 8 == 0 and shape[2] % 8 == 0:
        return "conv"
    return "fc"


def build_networks(data_shape, latent_dim: int, arch: str = "auto", hidden=(1000, 1000), out_mult: int = 1):
    """Return ``(encoder, decoder)`` for data of shape ``data_shape`` (no batch axis) and latent dimension ``latent_dim``.

    ``arch``: ``"fc"`` (the paper's FC-layers, ``hidden`` units per layer), ``"conv"`` (``ConvEncoder`` /
    ``ConvDecoder``, ``hidden`` unused), or ``"auto"`` (see ``choose_arch``). ``out_mult``: the encoder
    outputs ``out_mult * latent_dim`` numbers (2 for the VAE's mean and log-variance).
    """
    data_shape = tuple(int(s) for s in data_shape)
    if not data_shape or any(s < 1 for s in data_shape):
        raise ValueError(f"data_shape: must be a non-empty tuple of positive sizes, got {data_shape}")
    d = math.prod(data_shape)
    latent_dim = check_int("latent_dim", latent_dim, minimum=1)
    if latent_dim >= d:
        raise ValueError(
            f"latent_dim: must be smaller than the data dimension {d} (data shape {data_shape}), got {latent_dim}; "
            "an autoencoder needs a bottleneck: choose a smaller latent_dim"
        )
    out_mult = check_int("out_mult", out_mult, minimum=1)
    arch = choose_arch(data_shape, arch)
    if arch == "conv":
        return ConvEncoder(data_shape, latent_dim, out_mult=out_mult), ConvDecoder(data_shape, latent_dim)
    hidden = tuple(check_int("hidden", h, minimum=1) for h in hidden)
    return MLPEncoder(data_shape, latent_dim, hidden, out_mult), MLPDecoder(data_shape, latent_dim, hidden)

"""Encoders and decoders shared by every method (GEN, AE, VAE, AAE, WAE), so comparisons are like for like.

- ``MLPEncoder`` / ``MLPDecoder``: the paper's fully connected pair ("FC-layers"): the data flattened,
  two hidden layers of 1000 ReLU units by default, a linear latent layer; the decoder mirrors it and
  ends in a sigmoid so outputs lie in [0, 1] like the images.
- ``ConvEncoder`` / ``ConvDecoder``: a DCGAN-style pair for images (C, H, W): three stride-2 4x4
  convolutions when the smaller side is < 64 (SVHN 32x32), four from 64 (CelebA 64x64), ReLU, no batch
  normalisation (a GEN's bank is encoded in batches of thousands; batch statistics would make a
  sample's latent depend on its batch), a linear latent layer; the decoder mirrors it with transposed
  convolutions and a sigmoid. The stack works on sides >= 32 divisible by 2^depth (8, or 16 for four
  stages); any other image is zero-padded (centred) to the smallest such size, each side separately, by the
  encoder, and the decoder produces that padded size and crops the centre back to (H, W): MNIST's
  28x28 runs through the 32x32 stack, digits' 8x8 too (see ``conv_padded_shape``). Shapes that need no
  padding build exactly the networks they always did.
- ``build_networks(data_shape, latent_dim, arch="auto")`` picks one: ``"auto"`` is ``"conv"`` for
  colour images (3, H, W) with H, W >= 32 divisible by 8 (SVHN 32x32, CelebA 64x64), ``"fc"``
  otherwise (MNIST, digits, flat data); ``arch="conv"`` takes any (C, H, W).

Shapes: encoder (n, *data_shape) -> (n, out_mult * l); decoder (n, l) -> (n, *data_shape).
``out_mult=2`` gives the VAE's (mean, log-variance) head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gens._validation import check_choice, check_int

__all__ = ["MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder", "build_networks", "choose_arch", "conv_padded_shape",
           "mlp"]

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


MIN_CONV_SIDE = 32  # the smallest side the stride-2 stack takes without padding (a 4x4 map at its head)


def _conv_depth(data_shape) -> int:
    """Number of stride-2 stages: 3 for sides < 64, 4 otherwise (of the padded shape)."""
    return 3 if min(data_shape[1:]) < 64 else 4


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def conv_padded_shape(data_shape) -> tuple[int, int, int]:
    """The (C, H', W') that ``ConvEncoder`` / ``ConvDecoder`` run at for images of shape ``data_shape`` = (C, H, W).

    Each side is rounded up to the smallest size >= 32 divisible by 8 (16 when both padded sides are >= 64, where
    the stack has four stride-2 stages); shapes already like that are returned unchanged (no padding). MNIST's
    28x28 -> 32x32, digits' 8x8 -> 32x32, 3x64x72 -> 3x64x80. Tiny images are padded to 32 rather than given a
    shallower stack so that every image below 32x32 runs through the same network as a 32x32 one; the cost is
    compute on the zero border (16 times the pixels for 8x8). Raises ``ValueError("arch: ...")`` for a shape
    that is not (C, H, W) with positive sizes.
    """
    shape = tuple(data_shape)
    if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"arch: 'conv' needs images of shape (C, H, W), got data shape {shape}; use arch='fc'")
    c, h, w = (int(s) for s in shape)
    h, w = max(MIN_CONV_SIDE, _round_up(h, 8)), max(MIN_CONV_SIDE, _round_up(w, 8))
    k = 2 ** _conv_depth((c, h, w))
    return c, _round_up(h, k), _round_up(w, k)


def _centre_pads(data_shape, padded) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros that centre an (H, W) image in the padded (H', W'), as ``F.pad`` takes them."""
    (_, h, w), (_, ph, pw) = data_shape, padded
    top, left = (ph - h) // 2, (pw - w) // 2
    return left, pw - w - left, top, ph - h - top


def _set_geometry(net: nn.Module, data_shape) -> tuple[int, int, int, int]:
    """Set ``net.padded_shape``, ``data_shape`` and ``pad`` (the conv pair's padding); return (C, H', W', depth)."""
    net.padded_shape = conv_padded_shape(data_shape)
    net.data_shape = tuple(int(s) for s in data_shape)
    net.pad = _centre_pads(net.data_shape, net.padded_shape)
    return (*net.padded_shape, _conv_depth(net.padded_shape))


class ConvEncoder(nn.Module):
    """DCGAN-style encoder: stride-2 4x4 convolutions (64, 128, 256[, 512] channels), ReLU, linear head.

    x: (n, C, H, W) -> (n, out_mult * latent_dim). Images whose sides are not >= 32 and divisible by 8 (16 from 64)
    are zero-padded, centred, to ``conv_padded_shape(data_shape)`` first (28x28 -> 32x32); ``padded_shape`` and
    ``pad`` (left, right, top, bottom) record it. Without padding the network is exactly the unpadded one.
    """

    def __init__(self, data_shape, latent_dim: int, base_channels: int = 64, out_mult: int = 1):
        super().__init__()
        c, h, w, depth = _set_geometry(self, data_shape)
        chans = [c] + [base_channels * 2**i for i in range(depth)]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * (h >> depth) * (w >> depth), out_mult * latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return self.head(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder`` with transposed convolutions and a sigmoid.

    z: (n, latent_dim) -> (n, C, H, W) in [0, 1]. The transposed convolutions produce
    ``conv_padded_shape(data_shape)`` (e.g. 32x32 for 28x28 images) and the centre (H, W) is cropped out, the
    region the encoder's padding put the image in; without padding nothing is cropped.
    """

    def __init__(self, data_shape, latent_dim: int, base_channels: int = 64):
        super().__init__()
        c, h, w, depth = _set_geometry(self, data_shape)
        chans = [base_channels * 2**i for i in reversed(range(depth))]  # e.g. 256, 128, 64
        self.start = (chans[0], h >> depth, w >> depth)
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.ReLU())
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(chans[-1], c, 4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.deconv(self.fc(z).view(z.shape[0], *self.start))
        if any(self.pad):
            left, _, top, _ = self.pad
            y = y[:, :, top:top + self.data_shape[1], left:left + self.data_shape[2]]
        return torch.sigmoid(y)


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
    ``ConvDecoder`` for any (C, H, W), padded to ``conv_padded_shape`` inside them; ``hidden`` unused), or
    ``"auto"`` (see ``choose_arch``). ``out_mult``: the encoder
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

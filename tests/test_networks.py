"""Encoders / decoders: shapes, output range, layer sizes, architecture choice, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from gens.networks import ConvDecoder, ConvEncoder, MLPEncoder, build_networks, choose_arch


@pytest.mark.parametrize("shape, arch", [((1, 28, 28), MLPEncoder), ((1, 8, 8), MLPEncoder), ((20,), MLPEncoder),
                                         ((3, 32, 32), ConvEncoder), ((3, 64, 64), ConvEncoder)])
def test_shapes_and_range(shape, arch):
    torch.manual_seed(0)
    enc, dec = build_networks(shape, 4, hidden=(16, 16))
    assert isinstance(enc, arch)
    x = torch.rand(3, *shape)
    z = enc(x)
    assert z.shape == (3, 4)
    y = dec(torch.randn(3, 4) * 10).detach()
    assert y.shape == (3, *shape)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_fc_layer_sizes_match_the_paper():
    enc, dec = build_networks((1, 28, 28), 8)  # 784-1000-1000-8 and back
    lin = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(784, 1000), (1000, 1000), (1000, 8)]
    lin = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(8, 1000), (1000, 1000), (1000, 784)]
    n_params = sum(p.numel() for p in [*enc.parameters(), *dec.parameters()])
    assert n_params == 2 * (784 * 1000 + 1000 * 1000 + 1000 * 8) + (1000 + 1000 + 8) + (1000 + 1000 + 784)
    assert sum(isinstance(m, torch.nn.ReLU) for m in enc.modules()) == 2


def test_custom_hidden_widths_and_out_mult():
    enc, dec = build_networks((10,), 3, hidden=(7, 5, 4), out_mult=2)
    assert [m.out_features for m in enc.modules() if isinstance(m, torch.nn.Linear)] == [7, 5, 4, 6]
    assert [m.out_features for m in dec.modules() if isinstance(m, torch.nn.Linear)] == [4, 5, 7, 10]
    enc, _ = build_networks((3, 32, 32), 5, out_mult=2)
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_conv_depth_and_overrides():
    enc = ConvEncoder((3, 64, 64), 8)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == 4
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in ConvDecoder((3, 32, 32), 8).modules()) == 3
    assert choose_arch((3, 32, 32)) == "conv" and choose_arch((3, 64, 64)) == "conv"
    assert choose_arch((1, 28, 28)) == "fc" and choose_arch((3, 30, 30)) == "fc" and choose_arch((784,)) == "fc"
    assert isinstance(build_networks((3, 32, 32), 8, arch="fc")[0], MLPEncoder)
    enc, dec = build_networks((1, 32, 32), 8, arch="conv")  # grayscale conv on request
    assert dec(enc(torch.rand(2, 1, 32, 32))).shape == (2, 1, 32, 32)
    # 28x28 was refused before the conv pair padded it (tests/test_conv_padding.py): now the 32x32 stack
    enc, dec = build_networks((1, 28, 28), 8, arch="conv")
    assert isinstance(enc, ConvEncoder) and enc.padded_shape == (1, 32, 32)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == 3
    assert dec(enc(torch.rand(2, 1, 28, 28))).shape == (2, 1, 28, 28)


def test_gradients_reach_every_parameter():
    enc, dec = build_networks((3, 32, 32), 4)
    dec(enc(torch.rand(2, 3, 32, 32))).sum().backward()
    assert all(p.grad is not None and math.isfinite(float(p.grad.abs().sum())) for p in enc.parameters())
    assert all(p.grad is not None for p in dec.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(data_shape=(1, 8, 8), latent_dim=64), "latent_dim: must be smaller than the data dimension 64"),
    (dict(data_shape=(5,), latent_dim=0), "latent_dim: must be an integer >= 1"),
    (dict(data_shape=(28, 28), latent_dim=8, arch="conv"), r"arch: 'conv' needs images of shape \(C, H, W\)"),
    (dict(data_shape=(10,), latent_dim=2, arch="conv"), "arch: 'conv' needs images of shape"),
    (dict(data_shape=(10,), latent_dim=2, arch="cnn"), "arch: must be one of"),
    (dict(data_shape=(10,), latent_dim=2, hidden=(0,)), "hidden: must be an integer >= 1"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_networks(**kwargs)

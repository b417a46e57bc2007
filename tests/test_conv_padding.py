"""The conv pair on images that the stride-2 stack does not take as they are (issue 18 item 1): MNIST's 28x28 and
digits' 8x8 are zero-padded, centred, to 32x32 by ``ConvEncoder`` and cropped back by ``ConvDecoder``; shapes that
were already valid build exactly the networks they did before the padding existed.

Tiny networks and a handful of optimiser steps only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gens
from gens.networks import ConvDecoder, ConvEncoder, build_networks, conv_padded_shape

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameter shapes (in creation order) of ConvEncoder(shape, 5, out_mult=2) and ConvDecoder(shape, 5), recorded
# from the code before padding was added.
BEFORE = {
    (3, 32, 32): (
        [(64, 3, 4, 4), (64,), (128, 64, 4, 4), (128,), (256, 128, 4, 4), (256,), (10, 4096), (10,)],
        [(4096, 5), (4096,), (256, 128, 4, 4), (128,), (128, 64, 4, 4), (64,), (64, 3, 4, 4), (3,)],
    ),
    (3, 64, 64): (
        [(64, 3, 4, 4), (64,), (128, 64, 4, 4), (128,), (256, 128, 4, 4), (256,), (512, 256, 4, 4), (512,),
         (10, 8192), (10,)],
        [(8192, 5), (8192,), (512, 256, 4, 4), (256,), (256, 128, 4, 4), (128,), (128, 64, 4, 4), (64,),
         (64, 3, 4, 4), (3,)],
    ),
    (3, 32, 48): (
        [(64, 3, 4, 4), (64,), (128, 64, 4, 4), (128,), (256, 128, 4, 4), (256,), (10, 6144), (10,)],
        [(6144, 5), (6144,), (256, 128, 4, 4), (128,), (128, 64, 4, 4), (64,), (64, 3, 4, 4), (3,)],
    ),
}


@pytest.mark.parametrize("shape, padded", [
    ((1, 28, 28), (1, 32, 32)), ((1, 8, 8), (1, 32, 32)), ((3, 32, 32), (3, 32, 32)), ((3, 64, 64), (3, 64, 64)),
    ((3, 32, 48), (3, 32, 48)), ((3, 30, 50), (3, 32, 56)), ((1, 64, 72), (1, 64, 80)), ((2, 1, 100), (2, 32, 104)),
])
def test_padded_shape(shape, padded):
    assert conv_padded_shape(shape) == padded
    assert ConvEncoder(shape, 2).padded_shape == padded and ConvDecoder(shape, 2).padded_shape == padded


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 30, 50), (1, 64, 72)])
def test_output_shapes_and_range(shape):
    torch.manual_seed(0)
    enc, dec = build_networks(shape, 4, arch="conv", out_mult=2)
    assert isinstance(enc, ConvEncoder) and isinstance(dec, ConvDecoder)
    assert enc(torch.rand(3, *shape)).shape == (3, 8)
    y = dec(torch.randn(3, 4) * 10).detach()
    assert y.shape == (3, *shape) and y.is_contiguous()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("shape", list(BEFORE))
def test_valid_shapes_build_the_same_networks_as_before(shape):
    enc, dec = ConvEncoder(shape, 5, out_mult=2), ConvDecoder(shape, 5)
    assert [tuple(p.shape) for p in enc.parameters()] == BEFORE[shape][0]
    assert [tuple(p.shape) for p in dec.parameters()] == BEFORE[shape][1]
    assert enc.pad == dec.pad == (0, 0, 0, 0) and enc.padded_shape == shape


def test_28x28_is_the_32x32_network_on_the_centred_image():
    torch.manual_seed(0)
    enc28, dec28 = ConvEncoder((1, 28, 28), 3), ConvDecoder((1, 28, 28), 3)
    enc32, dec32 = ConvEncoder((1, 32, 32), 3), ConvDecoder((1, 32, 32), 3)
    enc32.load_state_dict(enc28.state_dict())  # same parameters, same names: nothing else is stored
    dec32.load_state_dict(dec28.state_dict())
    assert enc28.pad == dec28.pad == (2, 2, 2, 2)
    x, z = torch.rand(4, 1, 28, 28), torch.randn(4, 3)
    torch.testing.assert_close(enc28(x), enc32(F.pad(x, (2, 2, 2, 2))), rtol=0, atol=0)
    # the sigmoid runs on the cropped (strided) tensor: equal up to float rounding of the vectorised kernel
    torch.testing.assert_close(dec28(z), dec32(z)[:, :, 2:30, 2:30], rtol=0, atol=1e-6)
    # uneven padding: one pixel more on the bottom / right (27 -> 32: 2 above, 3 below)
    assert ConvEncoder((1, 27, 29), 3).pad == (1, 2, 2, 3)


def test_autoencoder_on_28x28_learns():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 28, 28)
    enc, dec = build_networks((1, 28, 28), 4, arch="conv")
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.mse_loss(dec(enc(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in [*enc.parameters(), *dec.parameters()])


@pytest.mark.filterwarnings("ignore::gens.fidelity.FidelityWarning")  # 4 steps: under-trained by design
def test_gen_estimator_trains_with_conv_on_28x28():
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 28, 28)).astype(np.float32)
    est = gens.GEN(latent_dim=4, arch="conv", max_steps=4, batch_size=10, bank_size=30, random_state=0).fit(X)
    assert isinstance(est.module_.encoder, ConvEncoder) and isinstance(est.module_.decoder, ConvDecoder)
    assert est.module_.encoder.padded_shape == (1, 32, 32)
    Z = est.transform(X[:5])
    assert Z.shape == (5, 4) and np.isfinite(Z).all()
    X_hat = est.inverse_transform(Z)
    assert X_hat.shape == (5, 1, 28, 28) and np.isfinite(X_hat).all()
    assert len(est.history_) >= 1


@pytest.mark.parametrize("shape", [(28, 28), (784,), (1, 1, 28, 28), (1, 0, 28)])
def test_still_refused(shape):
    with pytest.raises(ValueError, match=r"^arch: 'conv' needs images of shape \(C, H, W\)"):
        ConvEncoder(shape, 2)
    with pytest.raises(ValueError, match=r"^arch: 'conv' needs images of shape \(C, H, W\)"):
        ConvDecoder(shape, 2)

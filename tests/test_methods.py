"""Training methods: losses against closed forms, Algorithm 1's gradient routing, the bank schedule,
generation from the shrunk target, checkpoints, bad input. Tiny data (digits 8x8), a few steps each."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from scipy import stats

from gens.data import GensDataModule, load_dataset
from gens.divergence import gen_jsd_term
from gens.methods import METHODS, AEModule, GENModule, VAEModule, build_module
from gens.methods.wae import imq_mmd
from gens.targets import StandardNormal, mixture_on_simplex
from gens.training import DivergenceGuard, TrainingDiverged, encode_all, train

SHAPE = (1, 8, 8)
SMALL = dict(hidden=[32, 32])
# coverage=0: eq. 3 alone (the coverage term starts large, latents at initialisation being concentrated near 0,
# and falls over hundreds of steps, so the 18-step descent check below would not see the total loss fall)
GEN_SMALL = dict(hidden=[32, 32], bandwidth=0.5, bank_size=200, refresh_every=3, coverage=0.0)


@pytest.fixture(scope="module")
def digits():
    x, _ = load_dataset("digits")
    return x[:400]


def _trainer(**kw):
    base = dict(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kw)
    return L.Trainer(**base)


class _LossRecorder(L.Callback):
    def __init__(self):
        self.losses, self.recons = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.recons.append(float(trainer.callback_metrics["train/recon"]))


@pytest.mark.parametrize("method", ["ae", "aae", "gen", "gen-coverage", "vae", "wae"])
def test_each_method_trains_loss_decreases_and_stays_finite(method, digits):
    L.seed_everything(0, verbose=False)
    kw = {"gen": GEN_SMALL, "gen-coverage": dict(GEN_SMALL, coverage=1.0),
          "aae": dict(SMALL, disc_hidden=[32, 32])}.get(method, SMALL)
    module = build_module(method.split("-")[0], SHAPE, 3, lr=2e-3, **kw)
    rec = _LossRecorder()
    dm = GensDataModule(digits, batch_size=40, val_fraction=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(max_epochs=2, limit_val_batches=1, callbacks=[rec, DivergenceGuard()]).fit(module, datamodule=dm)
    losses, recons = np.array(rec.losses), np.array(rec.recons)
    assert len(losses) == 18 and np.isfinite(losses).all()
    # measured ratios after 18 steps: 0.66-0.86 (an untrained model: 1 +- noise)
    assert recons[-5:].mean() < 0.93 * recons[:3].mean()
    # the adversarial loss is a game, not a descent, and the coverage term falls over hundreds of steps, not
    # 18 (see GEN_SMALL): for these only the reconstruction must fall
    if method not in ("aae", "gen-coverage"):
        assert losses[-5:].mean() < 0.93 * losses[:3].mean()
    x = dm.split_tensors("val")[0]
    assert module.reconstruct(x).shape == x.shape
    assert module.encode(x).shape == (len(x), 3)
    s = module.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *SHAPE) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_recon_loss_is_the_per_pixel_mean_squared_error():
    x, y = torch.rand(4, *SHAPE), torch.rand(4, *SHAPE)
    got = AEModule.recon_loss(x, y)
    assert float(got) == pytest.approx(float(((x - y) ** 2).sum() / x.numel()), rel=1e-6)


def test_vae_kl_matches_torch_distributions():
    torch.manual_seed(0)
    vae = VAEModule(SHAPE, 3, lam=0.1, **SMALL)
    x = torch.rand(16, *SHAPE)
    mu, logvar = vae.posterior(x)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    want = torch.distributions.kl_divergence(q, p).sum(1).mean()
    out = vae.losses(x)
    torch.testing.assert_close(out["reg"], want.detach())
    torch.testing.assert_close(out["loss"], out["recon"] + 0.1 * want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vae.encode(x), mu)  # the posterior mean


def test_imq_mmd_matches_a_direct_double_sum():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 1
    c = 6.0
    k = lambda a, b: sum(s * c / (s * c + float(((a - b) ** 2).sum())) for s in (0.1, 0.2, 0.5, 1, 2, 5, 10))
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert float(imq_mmd(x, y, c)) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_gen_jsd_gradient_reaches_encoder_only():
    """Algorithm 1: the JSD term updates the encoder; the decoder's gradient is that of recon alone."""
    torch.manual_seed(0)
    gen = GENModule(SHAPE, 2, lam=0.5, **GEN_SMALL)
    gen.bank.fill(torch.randn(200, 2))
    x = torch.rand(20, *SHAPE)
    z = gen.encode(x)
    gen.jsd_term(z).backward()
    assert all(p.grad is None for p in gen.decoder.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in gen.encoder.parameters())

    def grads(loss_key):
        gen.zero_grad(set_to_none=True)
        out = gen.losses(x)
        (out["loss"] if loss_key == "loss" else gen.recon_loss(x, gen.reconstruct(x))).backward()
        return {n: p.grad.clone() for n, p in gen.named_parameters()}

    full, recon = grads("loss"), grads("recon")
    for n in full:
        if n.startswith("decoder"):
            torch.testing.assert_close(full[n], recon[n])
    assert any(not torch.allclose(full[n], recon[n]) for n in full if n.startswith("encoder"))
    # and the term is the divergence module's eq. 3 term on the bank
    z = gen.encode(x)
    torch.testing.assert_close(gen.jsd_term(z), gen_jsd_term(z, gen.bank.latents(), StandardNormal(2), 0.5))


def _radial_steps(bank_scale, radii):
    """-d/dr of each form at z = (r, 0): the radial component of a gradient-descent step on the latent."""
    g = torch.Generator().manual_seed(0)
    bank = bank_scale * torch.randn(500, 2, generator=g, dtype=torch.float64)
    out = {}
    for form in ("literal", "nonsaturating"):
        steps = []
        for r in radii:
            z = torch.tensor([[r, 0.0]], dtype=torch.float64, requires_grad=True)
            (grad,) = torch.autograd.grad(gen_jsd_term(z, bank, StandardNormal(2), 0.4, form=form), z)
            steps.append(-float(grad[0, 0]))
        out[form] = np.array(steps)
    return out


def test_literal_form_pushes_far_latents_out_nonsaturating_pulls_them_back():
    """Both forms have gradient sigmoid(+-(log p_e - log p_t)) * grad(log p_e - log p_t); they saturate at opposite ends."""
    # beyond the bank (p_e << p_t: the KDE's tails fall faster than N(0, I)), eq. 3 as written pushes
    # the latent outward harder the further out it is; the non-saturating push vanishes
    far = _radial_steps(1.0, [4.5, 6.0, 8.0])
    assert (far["literal"] > 5).all() and (np.diff(far["literal"]) > 0).all()
    assert (np.abs(far["nonsaturating"]) < 1e-3).all()
    # an encoded distribution too wide (bank ~ N(0, 2^2 I), p_e > p_t at r = 3..4.5): the non-saturating form
    # pulls latents back with an O(1) step, the literal one hardly at all
    wide = _radial_steps(2.0, [3.0, 3.5, 4.5])
    assert (wide["nonsaturating"] < -1).all()
    assert (np.abs(wide["literal"]) < 0.35).all()


def test_refresh_schedule_every_kb_batches(digits):
    L.seed_everything(0, verbose=False)
    gen = GENModule(SHAPE, 2, **{**GEN_SMALL, "refresh_every": 3})
    calls = []
    orig = gen.refresh_bank
    gen.refresh_bank = lambda: (calls.append(gen._batches), orig())[1]
    dm = GensDataModule(digits, batch_size=50, val_fraction=0.0)
    _trainer(limit_train_batches=7).fit(gen, datamodule=dm)
    assert calls == [0, 3, 6]  # at the start (Algorithm 1 line 3), then every kb = 3 batches
    assert len(gen.bank) == 200
    with torch.no_grad():  # the encoder moved after the last refresh (batch 6): the bank lags, by design
        assert not torch.allclose(gen.bank.latents(), gen.encoder(gen._bank_x))


def test_queue_bank_holds_the_latest_minibatch_latents(digits):
    L.seed_everything(0, verbose=False)
    gen = GENModule(SHAPE, 2, **{**GEN_SMALL, "bank_mode": "queue", "bank_size": 120})
    seen = []
    orig = gen.losses

    def spy(x, training=True):
        out = orig(x, training)
        if training:
            seen.append(gen.encode(x).detach())  # the encoder is unchanged until the optimiser step
        return out

    gen.losses = spy
    dm = GensDataModule(digits, batch_size=50, val_fraction=0.0)
    _trainer(limit_train_batches=4).fit(gen, datamodule=dm)
    want = torch.cat(seen)[-120:]
    torch.testing.assert_close(gen.bank.latents(), want)


def test_gen_samples_come_from_the_shrunk_target():
    h = 0.6
    gen = GENModule(SHAPE, 3, bandwidth=h, **SMALL)
    q = gen.latent_distribution()
    torch.testing.assert_close(q.covs[0], (1 - h * h) * torch.eye(3, dtype=torch.float64))
    z = q.sample(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for j in range(3):  # each coordinate ~ N(0, 1 - h^2): Kolmogorov-Smirnov against scipy
        assert stats.kstest(z[:, j].numpy(), stats.norm(0, math.sqrt(1 - h * h)).cdf).pvalue > 1e-3
    want = gen.decode(q.sample(6, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(gen.sample(6, generator=torch.Generator().manual_seed(5)), want)
    # a mixture target: every component's covariance minus h^2 I
    mix = mixture_on_simplex(3, 3)
    gen = GENModule(SHAPE, 3, target_spec=mix.spec(), bandwidth=h, **SMALL)
    q = gen.latent_distribution()
    torch.testing.assert_close(q.covs, mix.covs - h * h * torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(q.means, mix.means)


def test_ae_latent_distribution_is_a_gaussian_fit_to_training_latents(digits):
    L.seed_everything(0, verbose=False)
    ae = AEModule(SHAPE, 2, lr=1e-12, **SMALL)  # the encoder barely moves, so the epoch's latents are fixed
    dm = GensDataModule(digits, batch_size=50, val_fraction=0.0)
    _trainer().fit(ae, datamodule=dm)
    z = encode_all(ae, dm.train_tensor()).double().numpy()
    q = ae.latent_distribution()
    np.testing.assert_allclose(q.means[0].numpy(), z.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(q.covs[0].numpy(), np.cov(z.T, bias=True), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["gen", "vae", "aae"])
def test_checkpoint_round_trip(method, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    L.seed_everything(0, verbose=False)
    kw = dict(GEN_SMALL, bank_mode="queue", bandwidth=None) if method == "gen" else dict(SMALL, disc_hidden=[16], target_spec=mixture_on_simplex(2, 2).spec()) if method == "aae" else SMALL
    module = build_module(method, SHAPE, 2, **kw)
    trainer = _trainer(limit_train_batches=2)
    trainer.fit(module, datamodule=GensDataModule(digits, batch_size=50))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    back = METHODS[method].load_from_checkpoint(path, weights_only=True)
    assert dict(back.hparams) == dict(module.hparams)
    for (n, a), (_, b) in zip(module.state_dict().items(), back.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    x = torch.rand(3, *SHAPE)
    torch.testing.assert_close(back.encode(x), module.encode(x))
    if method == "gen":  # h was computed at the start of training: the checkpoint keeps it
        assert math.isfinite(float(module.bandwidth_h))
        assert float(back.bandwidth_h) == float(module.bandwidth_h)
        torch.testing.assert_close(back._restored["latents"], module.bank.latents())


@pytest.mark.parametrize("correction, scale", [(False, 1.0), (True, 1.0), (False, 0.75)])
def test_bank_capped_at_the_data_and_h_opt_computed_for_the_capped_m(digits, correction, scale, tmp_path, monkeypatch):
    from gens.bandwidth import corrected_bandwidth, optimal_bandwidth

    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    gen = GENModule(SHAPE, 2, **{**GEN_SMALL, "bank_size": 5000, "bandwidth": None,
                                 "bandwidth_correction": correction, "bandwidth_scale": scale})
    assert math.isnan(float(gen.bandwidth_h))
    with pytest.warns(UserWarning, match="bank_size: 5000 is larger than the 360 training samples; using m = 360"):
        _trainer(limit_train_batches=1).fit(gen, datamodule=GensDataModule(digits, batch_size=50))
    assert gen.bank.size == 360 and len(gen.bank) == 360
    h = optimal_bandwidth(StandardNormal(2), 360).h
    assert 0.2 < h < 0.6  # Table 1, l = 2: 0.46 at m = 250, 0.41 at m = 500
    expected = (corrected_bandwidth(h) if correction else h) * scale
    assert float(gen.bandwidth_h) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scale", [0.0, -0.5, 1.5, float("nan")])
def test_bandwidth_scale_outside_0_1_is_refused(scale):
    with pytest.raises(ValueError, match="^bandwidth_scale: "):
        GENModule(SHAPE, 2, bandwidth_scale=scale, **SMALL)


def test_bandwidth_at_least_one_is_refused_with_advice():
    with pytest.raises(ValueError, match=r"^bandwidth: h = 1.05 \(l = 2, m = 2000; the given bandwidth\) must be < 1"
                                         r".*larger bank_size.*smaller latent_dim.*bandwidth_correction=True"
                                         r".*bandwidth_scale"):
        GENModule(SHAPE, 2, bandwidth=1.05, **SMALL)


@pytest.mark.parametrize("method, kwargs, match", [
    ("gen", dict(latent_dim=64), "latent_dim: must be smaller than the data dimension 64"),
    ("vae", dict(latent_dim=100), "latent_dim: must be smaller than the data dimension"),
    ("gen", dict(bank_size=1), "bank_size: must be an integer >= 2"),
    ("gen", dict(lam=-0.1), "lam: must be a finite number >= 0"),
    ("aae", dict(lam=float("nan")), "lam: must be a finite number"),
    ("gen", dict(objective="jsd"), "objective: must be one of 'nonsaturating', 'literal', 'kl'"),
    ("gen", dict(bank_mode="fifo"), "bank_mode: must be one of 'refresh', 'queue'"),
    ("gen", dict(refresh_every=0), "refresh_every: must be an integer >= 1"),
    ("gen", dict(bandwidth=0.0), "bandwidth: must be a finite number > 0"),
    ("gen", dict(target_spec={"type": "standard_normal", "dim": 3}), r"target_spec: the target's dimension \(3\)"),
    ("ae", dict(lam=0.1), "lam: is not an option of method 'ae'"),
    ("gan", dict(), "method: must be one of"),
    ("wae", dict(lr=0), "lr: must be a finite number > 0"),
])
def test_bad_input(method, kwargs, match):
    kwargs = {"latent_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_module(method, SHAPE, **kwargs)


def test_divergence_guard_stops_on_non_finite_loss():
    guard = DivergenceGuard()
    trainer = type("T", (), {"current_epoch": 2, "global_step": 17, "callback_metrics": {}})()
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.3)}, None, 0)  # finite: nothing happens
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 2, step 17.*objective='nonsaturating'"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("nan"))}, None, 0)


def test_train_is_seeded_and_returns_module_and_trainer(digits):
    kw = dict(latent_dim=2, max_epochs=1, batch_size=50, seed=3, datamodule_kwargs={"val_fraction": 0.0},
              trainer_kwargs=dict(enable_progress_bar=False, limit_train_batches=3), **SMALL)
    a, trainer = train("ae", digits, **kw)
    b, _ = train("ae", digits, **kw)
    assert isinstance(trainer, L.Trainer) and trainer.global_step == 3
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)


def test_kl_density_floor_scales_with_the_target_and_nan_latents_give_a_nan_loss():
    gen = GENModule(SHAPE, 8, bandwidth=0.5, objective="kl", **SMALL)
    assert gen.density_floor == pytest.approx(1e-3 * (2 * math.pi) ** -4, rel=1e-12)  # 1e-3 x N(0, I_8) peak
    assert GENModule(SHAPE, 8, bandwidth=0.5, objective="kl", eps=0.5, **SMALL).density_floor == 0.5
    gen.bank.fill(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gen.jsd_term(z), gen_jsd_term(z, gen.bank.latents(), StandardNormal(8), 0.5, "kl",
                                                             eps=1e-3 * (2 * math.pi) ** -4))
    assert math.isnan(float(gen.jsd_term(torch.full((4, 8), math.nan))))


def test_query_noise_evaluates_the_term_at_noisy_latents_in_training_only():
    from gens.divergence import gen_jsd_term

    gen = GENModule(SHAPE, 2, query_noise=True, **GEN_SMALL)
    bank = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    gen.bank.fill(bank)
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    plain = gen_jsd_term(z, bank, gen.target, 0.5)
    gen.eval()
    torch.testing.assert_close(gen.jsd_term(z), plain)  # no noise outside training
    gen.train()
    torch.manual_seed(2)
    noisy = gen.jsd_term(z)
    torch.manual_seed(2)
    expected = gen_jsd_term(z + 0.5 * torch.randn_like(z), bank, gen.target, 0.5)
    torch.testing.assert_close(noisy, expected)
    assert float(noisy) != pytest.approx(float(plain), rel=1e-3)


def test_sample_keys_are_exact_content_keys():
    from gens.bank import sample_keys

    x = torch.as_tensor(load_dataset("digits")[0])
    k = sample_keys(x)
    assert k.dtype == torch.int64 and k.shape == (len(x),)
    torch.testing.assert_close(sample_keys(x[100:150]), k[100:150])  # any batch, any chunking: the same key
    torch.testing.assert_close(sample_keys(x, chunk_size=7), k)
    torch.testing.assert_close(sample_keys(x.double()), k)  # keyed on the float32 values
    u = torch.unique(x.flatten(1), dim=0)  # identical images share a key, distinct ones do not
    assert len(torch.unique(sample_keys(u))) == len(u)
    y = x[:5].clone()
    y[0, 0, 3, 3] += 1e-6
    assert sample_keys(y)[0] != k[0] and (sample_keys(y)[1:] == k[1:5]).all()


@pytest.mark.parametrize("loo", [True, False])
def test_leave_one_out_drops_the_minibatchs_own_rows_from_the_bank(digits, loo):
    """With the whole training set in the bank every query meets its own lagged encoding; leave_one_out
    evaluates eq. 3 against the bank without the minibatch's rows (reference: gen_jsd_term on that bank)."""
    L.seed_everything(0, verbose=False)
    gen = GENModule(SHAPE, 2, **{**GEN_SMALL, "bank_size": 400, "leave_one_out": loo})
    seen = []
    orig = gen.jsd_term

    def spy(z, x=None):
        out = orig(z, x)
        if gen.training:
            seen.append((z.detach(), x, gen.bank.latents().clone(), gen._bank_x, out.detach()))
        return out

    gen.jsd_term = spy
    dm = GensDataModule(digits, batch_size=50, val_fraction=0.0)
    _trainer(limit_train_batches=3).fit(gen, datamodule=dm)
    assert len(seen) == 3
    for z, x, bank, bank_x, term in seen:
        own = (bank_x.flatten(1)[:, None, :] == x.flatten(1)[None]).all(-1).any(1)  # (m,) rows encoding x
        assert int(own.sum()) >= len(x)  # every query's sample is in the bank (duplicates may add more)
        want = gen_jsd_term(z, bank[~own] if loo else bank, gen.target, 0.5)
        torch.testing.assert_close(term, want)
    gen.eval()  # validation and scoring use the whole bank
    z, x, bank, *_ = seen[-1]
    gen.bank.fill(bank)
    torch.testing.assert_close(gen.jsd_term(z, x), gen_jsd_term(z, bank, gen.target, 0.5))

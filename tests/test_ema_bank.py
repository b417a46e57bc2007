"""The queue banks: the EMA-encoder queue (``bank_mode="ema-queue"``) follows its recursion exactly, and both
queues hide a minibatch's own rows once the queue holds more than an epoch (tiny digits, a few steps)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from gens.bank import EMAQueueBank
from gens.data import GensDataModule, load_dataset
from gens.divergence import gen_jsd_term
from gens.methods import GENModule
from gens.runs import resolve_config, train_run

SHAPE = (1, 8, 8)
GEN_SMALL = dict(hidden=[32, 32], bandwidth=0.5, coverage=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    x, _ = load_dataset("digits")
    return x[:200]


def _fit(gen, x, batches, batch_size=50):
    trainer = L.Trainer(max_epochs=1 + batches * batch_size // len(x), limit_train_batches=None, max_steps=batches,
                        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(gen, datamodule=GensDataModule(x, batch_size=batch_size, val_fraction=0.0))


def test_ema_queue_follows_its_recursion(digits):
    """Reference: a hand-kept EMA copy of the encoder, updated before each minibatch is encoded into the queue."""
    L.seed_everything(0, verbose=False)
    gen = GENModule(SHAPE, 2, bank_mode="ema-queue", bank_size=120, **GEN_SMALL)
    assert isinstance(gen.bank_strategy, EMAQueueBank)
    mu = EMAQueueBank.momentum
    ref, pushed = {}, []
    orig = gen.losses

    def spy(x, training=True):
        if training:
            if "ema" not in ref:  # the copy is made at train start, from the initial encoder
                ref["ema"] = copy.deepcopy(gen.encoder)
                torch.testing.assert_close(gen.bank.latents(), ref["ema"](gen._bank_x).detach())
            with torch.no_grad():
                for e, p in zip(ref["ema"].parameters(), gen.encoder.parameters()):
                    e.mul_(mu).add_(p, alpha=1 - mu)
                pushed.append(ref["ema"](x))
        return orig(x, training)

    gen.losses = spy
    _fit(gen, digits, 6)
    assert len(pushed) == 6
    torch.testing.assert_close(gen.bank.latents(), torch.cat(pushed)[-120:])  # 300 pushed, the last 120 kept
    for e, r in zip(gen.bank_strategy.ema.parameters(), ref["ema"].parameters()):
        torch.testing.assert_close(e, r)
    # the copy moved toward the encoder but is not it
    enc = dict(gen.encoder.named_parameters())
    assert any(not torch.allclose(e, enc[k]) for k, e in gen.bank_strategy.ema.named_parameters())


@pytest.mark.parametrize("mode", ["queue", "ema-queue"])
def test_queues_hide_a_minibatchs_own_rows(digits, mode):
    """200 samples, a 200-row queue: the queue holds every sample's row at the start and the last 4 minibatches
    later, so minibatches meet rows of their own samples; with leave_one_out the term is eq. 3 against the
    queue without them. Reference: the rows' samples tracked here by content, gen_jsd_term on the rest."""
    L.seed_everything(0, verbose=False)
    gen = GENModule(SHAPE, 2, bank_mode=mode, bank_size=200, **GEN_SMALL)
    seen, rows = [], []  # rows: the sample each queue row encodes, oldest first
    orig = gen.jsd_term

    def spy(z, x=None):
        if gen.training:
            if not rows:
                rows.append(gen._bank_x.flatten(1))
            content = torch.cat(rows)[-200:]
            own = (content[:, None, :] == x.flatten(1)[None]).all(-1).any(1)
            want = gen_jsd_term(z, gen.bank.latents()[~own], gen.target, 0.5)
        out = orig(z, x)
        if gen.training:
            seen.append((int(own.sum()), want, out.detach()))
            rows.append(x.flatten(1))
        return out

    gen.jsd_term = spy
    _fit(gen, digits, 8)
    assert len(seen) == 8
    for n_own, want, got in seen:
        assert n_own > 0
        torch.testing.assert_close(got, want)
    assert seen[0][0] == 50  # the first minibatch meets all its samples' initial rows
    assert len(gen.bank_strategy.keys) == len(gen.bank) == 200


def test_ema_queue_crash_then_resume_matches_uninterrupted(tmp_path, crash_at):
    cfg = resolve_config(dict(data="digits", limit=300, batch_size=50, epochs=2, latent_dim=2, hidden=[16],
                              checkpoint_every=4, accelerator="cpu", devices=1, seed=3, method="gen",
                              bank_mode="ema-queue", bank_size=100, bandwidth=0.5))
    train_run(cfg, tmp_path / "full", progress=False, figures=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, tmp_path / "crashed", progress=False, figures=False, callbacks=[crash_at(11)])
    train_run(cfg, tmp_path / "crashed", resume=True, progress=False, figures=False)
    from gens.checkpoint import load_checkpoint

    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("full", "crashed"))
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in ("latents", "keys"):
        assert torch.equal(a["gen_bank"][k], b["gen_bank"][k]), k
    for k in a["gen_bank"]["ema"]:
        assert torch.equal(a["gen_bank"]["ema"][k], b["gen_bank"]["ema"][k]), k

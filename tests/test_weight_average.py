"""The exponential moving average of the weights that becomes the trained model (``gens.averaging``).

Tiny data and networks, tens of steps. The live weights are recorded after every optimiser step (at the
batch's end, where ``WeightAverage`` updates: the update changes only the average, so the order of the two
callbacks does not matter) and the average is computed by hand in float64. The default is per method
(``gens.config.WEIGHT_AVERAGE``: 0.999 for the GEN, 0 for the others), so the AE tests of the averaging pass
``weight_average=DECAY`` explicitly. A run killed and resumed with the averaging on (the GEN's default, the
others' explicit 0.999) is covered by tests/test_resume.py, which compares the average, the live weights and
the update count of last.ckpt with an uninterrupted run's.
"""

import math

import lightning as L
import numpy as np
import pytest
import torch

import gens.estimators
from gens import training
from gens.averaging import WeightAverage, averaged_weights, ema_update, weight_average_of
from gens.config import METHOD_CONFIGS, WEIGHT_AVERAGE, weight_average_default
from gens.methods import METHODS

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::gens.fidelity.FidelityWarning")]  # tens of steps: not trained

X = torch.rand(120, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # 108 train (6 batches of 18) + 12 val
GEN_KW = {"bank_size": 50, "bandwidth": 0.5, "refresh_every": 4}
BAD = [math.nan, -0.1, 1.0, 1.5, True, False, "0.5", math.inf, [0.9]]
DECAY = WEIGHT_AVERAGE["gen"]  # 0.999: the GEN's default, given explicitly to the other methods here


class Record(L.Callback):
    """The module's parameters (float64 copies) after every optimiser step."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append({k: v.detach().double().clone() for k, v in module.named_parameters()})


def _ema(steps: list[dict], decay: float = DECAY) -> dict:
    """The warmed-up EMA of recorded weights: the first copied, then d = min(decay, (1 + n) / (10 + n))."""
    avg = dict(steps[0])
    for n, w in enumerate(steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    return avg


def _assert_params(module, want: dict, exact: bool = False) -> None:
    have = dict(module.named_parameters())
    assert have.keys() == want.keys()
    for k, v in have.items():
        if exact:
            assert torch.equal(v.detach().double(), want[k]), k
        else:
            torch.testing.assert_close(v.detach().double(), want[k], rtol=1e-5, atol=1e-7, msg=k)


def _fit(method="ae", steps=15, val_fraction=0.1, seed=0, callbacks=(), **kw):
    dm = training.make_datamodule(X, batch_size=18, val_fraction=val_fraction, seed=seed)
    module = training.build(method, dm, 2, seed=seed, hidden=[8], **(GEN_KW if method == "gen" else {}))
    trainer = training.fit(module, dm, seed=seed, max_steps=steps, callbacks=list(callbacks), accelerator="cpu",
                           enable_progress_bar=False, quiet_logs=True, **kw)
    return module, trainer, dm


def test_ema_update_is_the_warmed_up_formula():
    avg, cur = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    for n, decay in ((1, 0.999), (5, 0.999), (10**6, 0.999), (3, 0.1), (0, 0.5)):
        d = min(decay, (1 + n) / (10 + n))
        out = [avg.clone()]
        ema_update(out, [cur], torch.tensor(n), decay=decay)
        torch.testing.assert_close(out[0], d * avg + (1 - d) * cur)


def test_the_default_is_per_method_and_declared_once():
    assert WEIGHT_AVERAGE == {"gen": 0.999, "ae": 0.0, "vae": 0.0, "aae": 0.0, "wae": 0.0, "semisupervised": 0.0}
    assert list(WEIGHT_AVERAGE) == list(METHOD_CONFIGS) == list(METHODS)
    for name, cls in METHODS.items():  # each module names its own method: none inherits another's default
        assert vars(cls)["method_name"] == name and weight_average_default(name) == WEIGHT_AVERAGE[name]
    with pytest.raises(ValueError, match="^method: "):
        weight_average_default("pca")


@pytest.mark.parametrize("method", ["ae", "gen", "aae"])  # the AAE: two optimisers, one update per batch
def test_final_weights_are_the_warmed_up_ema_of_the_live_weights(method):
    rec = Record()
    kw = {} if method == "gen" else {"weight_average": DECAY}  # the GEN's default; the others' when asked
    module, trainer, _ = _fit(method, steps=30 if method == "aae" else 15, callbacks=[rec], **kw)
    cb = weight_average_of(trainer)
    assert isinstance(cb, WeightAverage) and cb.decay == DECAY and len(rec.steps) == 15
    assert int(cb._average_model.n_averaged) == 15 and cb.state_dict() == {"latest_update_step": trainer.global_step}
    _assert_params(module, _ema(rec.steps))
    assert not torch.equal(next(module.parameters()).detach().double(), next(iter(rec.steps[-1].values())))


@pytest.mark.parametrize("method", ["ae", "gen"])
def test_weight_average_zero_leaves_the_last_step_weights(method):
    """No averaging callback; the weights are the last step's, exactly those the averaged run trained live (the
    average never feeds back into training, validation included)."""
    rec0, rec = Record(), Record()
    module, trainer, _ = _fit(method, callbacks=[rec0], weight_average=0)
    assert weight_average_of(trainer) is None
    _assert_params(module, rec0.steps[-1], exact=True)
    _fit(method, callbacks=[rec], weight_average=DECAY)
    for live0, live in zip(rec0.steps, rec.steps, strict=True):
        assert all(torch.equal(live0[k], live[k]) for k in live)


@pytest.mark.filterwarnings("ignore:y. no labelled training samples")
@pytest.mark.parametrize("method", ["ae", "aae", "semisupervised"])
def test_the_baselines_default_to_the_last_step_weights(method):
    """fit(weight_average=None), the default, for a method other than the GEN: no averaging callback, the last
    step's weights (semisupervised's module subclasses the GEN's but has its own default)."""
    rec = Record()
    kw = {"n_modes": 2, **GEN_KW} if method == "semisupervised" else {}
    dm = training.make_datamodule(X, batch_size=18, val_fraction=0.1, seed=0)
    module = training.build(method, dm, 2, seed=0, hidden=[8], **kw)
    trainer = training.fit(module, dm, seed=0, max_steps=6 if method == "aae" else 3, callbacks=[rec],
                           accelerator="cpu", enable_progress_bar=False, quiet_logs=True)
    assert weight_average_of(trainer) is None and len(rec.steps) == 3
    _assert_params(module, rec.steps[-1], exact=True)


def test_train_defaults_per_method_and_an_explicit_value_overrides():
    kw = dict(latent_dim=2, max_steps=3, batch_size=18, hidden=[8], trainer_kwargs={"accelerator": "cpu",
              "enable_progress_bar": False}, datamodule_kwargs={"val_fraction": 0.1})
    _, trainer = training.train("ae", X, **kw)
    assert weight_average_of(trainer) is None
    _, trainer = training.train("ae", X, weight_average=0.9, **kw)
    assert weight_average_of(trainer).decay == 0.9
    _, trainer = training.train("gen", X, **GEN_KW, **kw)
    assert weight_average_of(trainer).decay == WEIGHT_AVERAGE["gen"]
    _, trainer = training.train("gen", X, weight_average=0.0, **GEN_KW, **kw)
    assert weight_average_of(trainer) is None


def test_none_needs_a_module_of_a_gens_method():
    from gens.averaging import module_method, resolve_weight_average

    class Custom(L.LightningModule):
        pass

    assert module_method(Custom()) is None and module_method(None) is None
    with pytest.raises(ValueError, match="^weight_average: None means the method's default"):
        resolve_weight_average(None, module_method(Custom()))
    with pytest.raises(ValueError, match="^weight_average: "):
        training.fit(Custom(), None, seed=0)
    assert resolve_weight_average(0.5, None) == 0.5 and resolve_weight_average(None, "vae") == 0.0


def test_decay_is_used_and_the_state_dict_round_trips():
    rec = Record()
    module, trainer, _ = _fit(steps=12, callbacks=[rec], weight_average=0.5)
    _assert_params(module, _ema(rec.steps, decay=0.5))
    cb = WeightAverage(0.9)
    cb.load_state_dict(weight_average_of(trainer).state_dict())
    assert cb.state_dict() == {"latest_update_step": 12}


@pytest.mark.parametrize("bad", BAD)
def test_bad_weight_average_is_refused_before_anything_is_built(bad, monkeypatch):
    from gens.runconfig import resolve_config

    monkeypatch.setattr(training, "build", lambda *a, **k: pytest.fail("built before the check"))
    with pytest.raises(ValueError, match="^weight_average: "):
        training.train("ae", X, weight_average=bad)
    with pytest.raises(ValueError, match="^weight_average: "):
        training.fit(None, None, seed=0, weight_average=bad)
    with pytest.raises(ValueError, match="^weight_average: "):
        gens.AE(latent_dim=2, weight_average=bad).fit(X.reshape(120, -1).numpy())
    with pytest.raises(ValueError, match="^weight_average: "):
        resolve_config({"method": "ae", "weight_average": bad})


def test_none_is_the_method_default_everywhere():
    from gens.runconfig import resolve_config

    for method in METHODS:
        assert resolve_config({"method": method, "weight_average": None})["weight_average"] == WEIGHT_AVERAGE[method]
        assert resolve_config({"method": method, "weight_average": 0.5})["weight_average"] == 0.5
    assert gens.AE(weight_average=None)._checked_params()["weight_average"] is None  # fit resolves it
    assert gens.GEN()._checked_params()["weight_average"] is None


def _recording(monkeypatch) -> list:
    """Make every training record its live weights (a Record appended to the standard callbacks)."""
    recs = []
    standard = training.standard_callbacks

    def patched():
        recs.append(Record())
        return [*standard(), recs[-1]]

    monkeypatch.setattr(training, "standard_callbacks", patched)
    return recs


def test_estimator_ends_with_the_average_and_zero_with_the_last_weights(monkeypatch, tmp_path):
    """gens.AE with weight_average=DECAY: module_ is the EMA (and its latent Gaussian the averaged encoder's
    training latents); the default (None: the AE's 0) and weight_average=0.0 give what the estimator gave before
    averaging existed: the last step's weights and the Gaussian of the last epoch's minibatch latents."""
    recs = _recording(monkeypatch)
    Xf = X.reshape(120, -1).numpy()
    est = gens.AE(latent_dim=2, hidden=(8,), max_steps=15, batch_size=20, random_state=0, weight_average=DECAY).fit(Xf)
    assert est.get_params()["weight_average"] == DECAY
    _assert_params(est.module_, _ema(recs[0].steps))
    Z = est.transform(Xf)
    mean, cov = Z.mean(0), np.cov(Z.T, bias=True) + 1e-6 * np.eye(2)
    np.testing.assert_allclose(est.module_.latent_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.module_.latent_cov.numpy(), cov, rtol=1e-4, atol=1e-6)
    last = gens.AE(latent_dim=2, hidden=(8,), max_steps=15, batch_size=20, random_state=0, weight_average=0.0).fit(Xf)
    _assert_params(last.module_, recs[0].steps[-1], exact=True)
    assert not np.allclose(last.module_.latent_mean.numpy(), last.transform(Xf).mean(0), atol=1e-6)
    default = gens.AE(latent_dim=2, hidden=(8,), max_steps=15, batch_size=20, random_state=0).fit(Xf)
    assert default.get_params()["weight_average"] is None
    _assert_params(default.module_, recs[0].steps[-1], exact=True)  # the AE's default: the last step's weights
    assert torch.equal(default.module_.latent_mean, last.module_.latent_mean)
    est.save(tmp_path / "ae.ckpt")
    again = gens.estimators.load(tmp_path / "ae.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(again.module_.state_dict().values(), est.module_.state_dict().values()))


def test_fidelity_monitor_measures_the_averaged_model():
    """The last record is latent_fidelity of the final (averaged) model's validation latents, not the live model's."""
    from gens.fidelity import latent_fidelity

    rec = Record()
    module, trainer, dm = _fit("gen", callbacks=[rec])
    last = training.fidelity_monitor(trainer).history[-1]
    assert last["step"] == 15

    def fidelity(m):
        xv = dm.split_tensors("val")[0]
        bank = training.encode_all(m, m._bank_x).double()
        return latent_fidelity(training.encode_all(m, xv).double(), m.latent_distribution(), bank, m.target,
                               float(m.bandwidth_h), seed=last["epoch"])

    module.eval()
    want = fidelity(module)
    assert {k: last[k] for k in want} == want
    with torch.no_grad():
        for k, p in module.named_parameters():
            p.copy_(rec.steps[-1][k])
    assert fidelity(module)["eig_min"] != last["eig_min"]  # the live model reads otherwise


def test_averaged_weights_swaps_in_and_back_exactly():
    rec = Record()
    seen = {}

    class Peek(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                live = {k: v.detach().clone() for k, v in module.named_parameters()}
                with averaged_weights(trainer, module):
                    seen["inside"] = {k: v.detach().double().clone() for k, v in module.named_parameters()}
                    with averaged_weights(trainer, module):  # nested: already in place, a no-op
                        pass
                seen["back"] = all(torch.equal(v, live[k]) for k, v in module.named_parameters())

    _fit(callbacks=[rec, Peek()], steps=8, weight_average=DECAY)
    assert seen["back"]
    want = _ema(rec.steps[:6])  # epoch 0: 6 batches
    assert all(torch.allclose(seen["inside"][k], want[k], rtol=1e-5, atol=1e-7) for k in want)


def test_run_folder_checkpoint_holds_the_average_and_the_live_weights(tmp_path):
    """last.ckpt: state_dict is the trained model (load_run loads it; the AE's latent moments those of the
    averaged encoder), current_model_state the last step's live weights, averaging_state the update count."""
    from gens.checkpoint import load_checkpoint
    from gens.runs import load_run, resolve_config, run_split, train_run

    rec = Record()
    cfg = resolve_config({"method": "ae", "data": "digits", "limit": 120, "steps": 10, "batch_size": 20,
                          "hidden": [8], "latent_dim": 2, "accelerator": "cpu", "devices": 1,
                          "weight_average": DECAY})
    assert cfg["weight_average"] == DECAY
    train_run(cfg, tmp_path / "run", progress=False, figures=False, callbacks=[rec])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    module, loaded = load_run(tmp_path / "run")
    assert loaded["weight_average"] == DECAY
    _assert_params(module, _ema(rec.steps))
    assert all(torch.equal(ckpt["current_model_state"][k].double(), v) for k, v in rec.steps[-1].items())
    assert int(ckpt["averaging_state"]["n_averaged"]) == 10
    assert torch.equal(ckpt["current_model_state"]["latent_mean"], ckpt["state_dict"]["latent_mean"])
    z = training.encode_all(module, run_split(loaded, "train")[0]).double()
    torch.testing.assert_close(module.latent_mean, z.mean(0), rtol=1e-5, atol=1e-6)
    assert "gaussian" in (ckpt.get("samplers") or {})  # the samplers were fitted with these very weights


def test_resume_across_the_averaging_setting(tmp_path):
    """A checkpoint written without averaging resumes with the average started afresh (a warning); one written
    with it resumed with weight_average=0 continues from its live weights, as an unaveraged run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from gens.checkpoint import AtomicCheckpointIO

    def run(average, steps, ckpt_path=None, save=None, callbacks=()):
        cbs = list(callbacks)
        if save:
            cbs.append(ModelCheckpoint(dirpath=tmp_path, filename=save, save_last=False, every_n_train_steps=6,
                                       save_top_k=-1, enable_version_counter=False))
        return _fit(steps=steps, val_fraction=0.0, weight_average=average, ckpt_path=ckpt_path, callbacks=cbs,
                    plugins=[AtomicCheckpointIO()])

    rec = Record()
    run(0.0, 6, save="plain")
    with pytest.warns(UserWarning, match="written without weight averaging; the average starts afresh"):
        module, _, _ = run(DECAY, 10, ckpt_path=tmp_path / "plain.ckpt", callbacks=[rec])
    assert len(rec.steps) == 4
    _assert_params(module, _ema(rec.steps))

    run(DECAY, 6, save="averaged")
    resumed, _, _ = run(0.0, 10, ckpt_path=tmp_path / "averaged.ckpt")
    straight, _, _ = run(0.0, 10)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_cli_flag_and_old_run_folders():
    import argparse

    from gens.cli import train as train_cli

    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    assert "--weight-average" in p.format_help()
    assert p.parse_args(["--weight-average", "0"]).weight_average == 0.0
    # a config.json written before the option: resumed as it was trained, without averaging
    assert train_cli._saved_options({"method": "ae", "steps": 10})["weight_average"] == 0.0
    assert train_cli._saved_options({"method": "ae", "weight_average": 0.99})["weight_average"] == 0.99
    assert train_cli._saved_options({"method": "gen", "steps": 10})["weight_average"] == 0.0


@pytest.mark.parametrize("method,flag,want", [("ae", [], 0.0), ("gen", [], 0.999), ("ae", ["0.999"], 0.999),
                                              ("gen", ["0"], 0.0)])
def test_run_folder_config_records_the_resolved_number(tmp_path, method, flag, want):
    """gens train --method M: config.json says which decay the run used (the method's default when left out),
    the checkpoint holds an average exactly when it is > 0, and --resume keeps it."""
    import json

    from gens.checkpoint import load_checkpoint
    from gens.cli import main

    run = tmp_path / "run"
    argv = ["train", "--method", method, "--data", "digits", "--limit", "100", "--steps", "3", "--batch-size", "30",
            "--hidden", "8", "--latent-dim", "2", "--accelerator", "cpu", "--devices", "1", "--out", str(run),
            "--no-progress"] + (["--weight-average", *flag] if flag else [])
    if method == "gen":
        argv += ["--bank-size", "50", "--bandwidth", "0.5"]
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["weight_average"] == want and isinstance(saved["weight_average"], float)
    assert ("averaging_state" in load_checkpoint(run / "checkpoints" / "last.ckpt")) == (want > 0)
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["weight_average"] == want


def test_estimator_pickled_before_the_option_unpickles_with_its_default():
    est = gens.estimators.AE(latent_dim=3, lr=1e-3)
    state = est.__getstate__()
    del state["weight_average"]  # a pickle from before the parameter existed
    old = gens.estimators.AE.__new__(gens.estimators.AE)
    old.__setstate__(state)
    assert old.get_params() == {**est.get_params(), "weight_average": None}  # None: the method's default

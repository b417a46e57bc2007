"""One training path (``gens.training.fit``): the same seed and data give bit-identical weights through
``gens train`` (the CLI), ``gens.GEN(...).fit`` (the API) and ``gens.training.train`` (what ``gens reproduce``
runs, ``gens.reproduce.measure.train_and_measure``), on the CPU.

The same data in all three: the first 300 digits of the training split with a 0.1 validation split (the
estimators hold out nothing unless told, so ``val_fraction=0.1`` is passed; digits are already in [0, 1],
so ``scaling="auto"`` leaves them as they are).
"""

import json

import numpy as np
import pytest
import torch

import gens
from gens.checkpoint import load_checkpoint
from gens.cli import main
from gens.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, LIMIT, SEED = 30, 300, 3  # 270 training digits: 3 batches an epoch, so the budget ends mid-epoch 10
ARCH = {"latent_dim": 2, "hidden": [16]}


def _weights(sd: dict) -> dict:
    """The trained tensors: the networks' parameters and the bandwidth (the GEN's bank is rebuilt at train start)."""
    return {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder.")) or k == "bandwidth_h"}


def _assert_same(a: dict, b: dict, what: str) -> None:
    a, b = _weights(a), _weights(b)
    assert a.keys() == b.keys() and len(a) > 2
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), f"{what}: {k} differs"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_path") / "run"
    assert main(["train", "--data", "digits", "--limit", str(LIMIT), "--hidden", "16", "--latent-dim", "2",
                 "--steps", str(STEPS), "--seed", str(SEED), "--accelerator", "cpu", "--devices", "1",
                 "--no-progress", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS  # last.ckpt is written when max_steps ends the run mid-epoch
    return out, ckpt["state_dict"]


def test_cli_and_estimator_train_the_same_weights(cli_run):
    _, cli = cli_run
    X, _ = load_dataset("digits", "train", limit=LIMIT)
    est = gens.GEN(latent_dim=2, hidden=(16,), max_steps=STEPS, val_fraction=0.1, random_state=SEED).fit(X)
    assert est.data_min_ is None  # no scaling: the module saw the same numbers
    _assert_same(cli, est.module_.state_dict(), "gens.GEN.fit")


def test_cli_and_reproduce_train_the_same_weights(cli_run, tmp_path):
    from gens.reproduce.measure import train_and_measure
    from gens.runs import load_run, run_split
    from gens.training import encode_all, train

    run, cli = cli_run
    module, trainer = train("gen", "digits", max_steps=STEPS, seed=SEED, datamodule_kwargs={"limit": LIMIT},
                            trainer_kwargs={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}, **ARCH)
    assert trainer.global_step == STEPS
    _assert_same(cli, module.state_dict(), "gens.training.train")
    # the reproduce unit itself: its test latents are the CLI model's, bit for bit
    row = train_and_measure({"method": "gen", "kwargs": {"hidden": [16]}, "data": "digits", "steps": STEPS,
                             "seed": SEED, "latent_dim": 2, "limit": LIMIT, "ns": [100], "accelerator": "cpu",
                             "latents_out": str(tmp_path / "z.npy")})
    assert row["status"] == "ok" and row["global_step"] == STEPS, row
    cli_module, cfg = load_run(run)
    z = encode_all(cli_module, run_split(cfg, "test")[0]).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), z)


# ----------------------------------------------------------------- the steps budget and resuming


def _copy(run, dest):
    import shutil

    shutil.copytree(run, dest)
    return dest


def test_a_finished_steps_run_says_so_and_continues_with_more_steps(cli_run, tmp_path, capsys):
    run, _ = cli_run
    more = _copy(run, tmp_path / "more")
    assert main(["train", "--resume", str(more), "--steps", str(STEPS), "--no-progress"]) == 2
    assert (f"has already trained {STEPS} steps and is finished; give --steps N with N > {STEPS}"
            in capsys.readouterr().err)
    assert main(["train", "--resume", str(more), "--steps", str(STEPS + 6), "--no-progress"]) == 0
    cfg = json.loads((more / "config.json").read_text())
    assert (cfg["steps"], cfg["epochs"]) == (STEPS + 6, None)
    assert load_checkpoint(more / "checkpoints" / "last.ckpt")["global_step"] == STEPS + 6


def test_an_old_run_folder_resumes_on_epochs_alone(cli_run, tmp_path):
    """config.json with "epochs" and no "steps" (gens before the steps budget): epochs only, exactly."""
    from gens.runs import resolve_config, train_run

    run, _ = cli_run
    old = _copy(run, tmp_path / "old")
    cfg = json.loads((old / "config.json").read_text())
    del cfg["steps"]
    (old / "config.json").write_text(json.dumps({**cfg, "epochs": STEPS // 3}))  # 3 batches an epoch
    assert main(["train", "--resume", str(old), "--epochs", str(STEPS // 3 + 2), "--no-progress"]) == 0
    assert json.loads((old / "config.json").read_text())["steps"] is None
    opts = {k: cfg[k] for k in ("data", "limit", "hidden", "latent_dim", "seed", "accelerator", "devices")}
    train_run(resolve_config({**opts, "epochs": STEPS // 3 + 2}), tmp_path / "full", progress=False, figures=False)
    _assert_same(load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")["state_dict"],
                 load_checkpoint(old / "checkpoints" / "last.ckpt")["state_dict"], "old run folder")


def test_a_steps_run_interrupted_mid_epoch_resumes_exactly(tmp_path, crash_at):
    from gens.runs import resolve_config, train_run

    # 6 batches of 50 an epoch; 16 steps end in epoch 2; checkpoints after batches 4 and 8 (epoch 1, batch 2)
    cfg = resolve_config({"data": "digits", "limit": LIMIT, "batch_size": 50, "steps": 16, "hidden": [16],
                          "latent_dim": 2, "checkpoint_every": 4, "accelerator": "cpu", "devices": 1, "seed": SEED})
    assert cfg["epochs"] is None
    train_run(cfg, tmp_path / "full", progress=False, figures=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, tmp_path / "crashed", progress=False, figures=False, callbacks=[crash_at(11)])
    train_run(cfg, tmp_path / "crashed", resume=True, progress=False, figures=False)
    full, crashed = (load_checkpoint(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("full", "crashed"))
    assert full["global_step"] == crashed["global_step"] == 16
    _assert_same(full["state_dict"], crashed["state_dict"], "resumed steps run")

"""Ex-post samplers in run folders (issue 15 item 2, CLI side): `gens train` fits "gaussian" and "gmm" on the
training latents and stores them in checkpoints/last.ckpt and best.ckpt under "samplers"; the run folder has
samples.png (analytic), samples-gaussian.png and samples-gmm.png; `gens sample RUN --sampler NAME` draws from
the stored density; a run without stored samplers works with "analytic" only (one line, exit 2 otherwise);
resuming from a checkpoint that holds samplers is still exact.

Tiny runs only: digits, 200 samples, 16 hidden units, l = 2.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gens.checkpoint import atomic_save, load_checkpoint, module_from_checkpoint
from gens.cli import main
from gens.runs import run_split
from gens.samplers import SAMPLERS, samplers_from_state
from gens.training import encode_all

TINY = ["--data", "digits", "--limit", "200", "--hidden", "16", "--latent-dim", "2", "--batch-size", "50",
        "--accelerator", "cpu", "--devices", "1", "--no-progress", "--bank-size", "100", "--bandwidth", "0.5",
        "--checkpoint-every", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A GEN trained 2 epochs (best.ckpt written each epoch) and the same GEN trained 1 epoch."""
    root = tmp_path_factory.mktemp("sampler_runs")
    assert main(["train", *TINY, "--epochs", "2", "--out", str(root / "gen2")]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(root / "gen1")]) == 0
    return root


def _ckpt(run, which="last"):
    return load_checkpoint(run / "checkpoints" / f"{which}.ckpt")


def test_the_brief_command_writes_three_sample_pngs(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--limit", "200", "--epochs", "1", "--hidden", "16", "--latent-dim",
                 "2", "--no-progress", "--out", str(run)]) == 0
    for name in ("samples.png", "samples-gaussian.png", "samples-gmm.png"):
        assert (run / name).is_file(), name
    assert set(_ckpt(run)["samplers"]) == set(SAMPLERS)


def test_checkpoints_hold_samplers_fitted_to_their_own_weights(runs):
    run = runs / "gen2"
    x, _ = run_split(json.loads((run / "config.json").read_text()), "train")
    for which in ("last", "best"):
        path = run / "checkpoints" / f"{which}.ckpt"
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # still a weights-only file
        assert set(ckpt["samplers"]) == set(SAMPLERS)
        assert "loops" in ckpt and "optimizer_states" in ckpt  # the training state is kept for --resume
        z = encode_all(module_from_checkpoint(ckpt, method="gen"), x).double()
        gauss = ckpt["samplers"]["gaussian"]
        torch.testing.assert_close(gauss["means"][0], z.mean(0), rtol=0, atol=1e-9)
        cov = torch.cov(z.T, correction=0) + 1e-6 * torch.eye(2, dtype=torch.float64)
        torch.testing.assert_close(gauss["covs"][0], cov, rtol=1e-9, atol=1e-12)
        gmm = ckpt["samplers"]["gmm"]
        assert gmm["means"].shape == (10, 2) and abs(float(gmm["weights"].sum()) - 1) < 1e-12


def test_a_checkpoint_with_other_weights_gets_samplers_of_its_own(runs, tmp_path):
    from gens.runs import _datamodule, store_samplers

    run = shutil.copytree(runs / "gen1", tmp_path / "other")
    cfg = json.loads((run / "config.json").read_text())
    module = module_from_checkpoint(_ckpt(run), method="gen")
    with torch.no_grad():  # a module whose weights are not last.ckpt's
        for p in module.parameters():
            p.add_(0.1)
    dm = _datamodule(cfg)
    x, _ = dm.split_tensors("train")
    fitted = store_samplers(module, dm, run / "checkpoints", cfg["seed"])
    torch.testing.assert_close(fitted["gaussian"].state_dict()["means"][0], encode_all(module, x).double().mean(0))
    own = module_from_checkpoint(_ckpt(run), method="gen")
    torch.testing.assert_close(_ckpt(run)["samplers"]["gaussian"]["means"][0], encode_all(own, x).double().mean(0))


def test_sample_gmm_draws_from_the_stored_mixture(runs, tmp_path, capsys):
    run = runs / "gen2"
    out = tmp_path / "gmm.png"
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "50", "--seed", "3", "--npy", "--out", str(out)]) == 0
    got = np.load(tmp_path / "gmm.npy")
    ckpt = _ckpt(run)
    module = module_from_checkpoint(ckpt, method="gen")
    dist = samplers_from_state(ckpt["samplers"])["gmm"].distribution(module)
    z = dist.sample(50, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = module.decode(z.float()).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert out.is_file()
    # the draws follow the stored mixture: same latents, and another seed gives other samples
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "50", "--seed", "4", "--npy",
                 "--out", str(tmp_path / "other.png")]) == 0
    assert not np.allclose(np.load(tmp_path / "other.npy"), got)


def test_default_paths_and_analytic_unchanged(runs, tmp_path, capsys):
    run = shutil.copytree(runs / "gen1", tmp_path / "gen1")
    assert main(["sample", str(run), "-n", "8", "--npy"]) == 0
    assert main(["sample", str(run), "-n", "8", "--npy", "--sampler", "gaussian"]) == 0
    assert (run / "samples-0.png").is_file() and (run / "samples-gaussian-0.png").is_file()
    module = module_from_checkpoint(_ckpt(run), method="gen")
    want = module.sample(8, generator=torch.Generator().manual_seed(0)).float().numpy()
    np.testing.assert_array_equal(np.load(run / "samples-0.npy"), want)  # the draws of gens sample before samplers
    assert not np.allclose(np.load(run / "samples-gaussian-0.npy"), want)


def test_old_run_without_samplers_is_one_line_for_gmm_and_works_for_analytic(runs, tmp_path, capsys):
    run = shutil.copytree(runs / "gen1", tmp_path / "old")
    for which in ("last", "best"):
        path = run / "checkpoints" / f"{which}.ckpt"
        if path.is_file():
            ckpt = load_checkpoint(path)
            del ckpt["samplers"]
            atomic_save(ckpt, path)
    capsys.readouterr()
    assert main(["sample", str(run), "--sampler", "gmm", "-n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gens sample: error: sampler:"), err
    assert "'gmm'" in err[0] and "analytic" in err[0], err[0]
    assert main(["sample", str(run), "--sampler", "analytic", "-n", "4"]) == 0
    assert (run / "samples-0.png").is_file()


def test_resume_from_a_checkpoint_with_samplers_is_exact(runs, tmp_path):
    run = shutil.copytree(runs / "gen1", tmp_path / "resumed")
    assert "samplers" in _ckpt(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    a, b = _ckpt(run), _ckpt(runs / "gen2")
    assert a["global_step"] == b["global_step"]
    for k in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
    for name in ("gaussian", "gmm"):  # refitted at the end on the same weights: the same samplers
        for key, value in b["samplers"][name].items():
            torch.testing.assert_close(a["samplers"][name][key], value, rtol=0, atol=0)


def test_sampler_choices_need_no_torch():
    code = ("import sys; from gens.cli import build_parser; a = build_parser().parse_args(['sample', 'R', "
            "'--sampler', 'gmm']); print(a.sampler, 'torch' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["gmm", "False", "False"]


def test_unknown_sampler_is_refused(runs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", str(runs / "gen1"), "--sampler", "flow"])
    assert e.value.code == 2
    assert "--sampler" in capsys.readouterr().err

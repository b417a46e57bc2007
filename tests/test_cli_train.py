"""`gens train|sample|reconstruct|interpolate`: the run folder, its figures and numbers, and clear errors.

One tiny run (digits, 200 samples, 2 epochs, 32 hidden units) is trained once and shared.
"""

import csv
import json
import math
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from gens.checkpoint import load_checkpoint
from gens.cli import main
from gens.runs import load_run, run_split

TINY = ["--limit", "200", "--epochs", "2", "--hidden", "32", "--latent-dim", "2", "--batch-size", "50",
        "--bank-size", "100", "--bandwidth", "0.5", "--checkpoint-every", "2", "--accelerator", "cpu",
        "--devices", "1", "--no-progress"]


def _grid_px(n, nrow, side=8, pad=1, scale=4):
    rows = math.ceil(n / nrow)
    return ((rows * (side + pad) + pad) * scale, (nrow * (side + pad) + pad) * scale)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_run_folder_contents(run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["method"] == "gen" and cfg["data"] == "digits" and cfg["latent_dim"] == 2 and cfg["epochs"] == 2
    assert cfg["hidden"] == [32] and cfg["limit"] == 200 and cfg["data_shape"] == [1, 8, 8]
    assert cfg["bandwidth_h"] == 0.5 and cfg["gens_version"] and cfg["torch_version"] == torch.__version__
    assert cfg["n_train"] == 180 and cfg["n_val"] == 20  # 200 samples, val_fraction 0.1
    for name in ("last", "best"):
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"{name}.ckpt")  # weights-only
        assert ckpt["gens"]["method"] == "gen" and "state_dict" in ckpt
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2 * 4  # 180 / 50 -> 4 batches
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train/loss", "train/recon", "val/loss", "val/recon"} <= set(rows[0])
    assert sum(r["val/loss"] != "" for r in rows) == 2  # one validation per epoch
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_figures_have_expected_pixel_sizes(run_dir):
    assert mpimg.imread(run_dir / "reconstructions.png").shape[:2] == _grid_px(64, 8)  # 32 originals + 32 recons
    assert mpimg.imread(run_dir / "samples.png").shape[:2] == _grid_px(64, 8)
    assert mpimg.imread(run_dir / "latents.png").shape[:2] == (500, 550)
    assert mpimg.imread(run_dir / "losses.png").ndim == 3


def test_metrics_json_matches_recomputation(run_dir):
    summary = json.loads((run_dir / "metrics.json").read_text())
    module, cfg = load_run(run_dir)
    x, _ = run_split(cfg, "test")
    assert summary["n_eval"] == len(x) == 200 and summary["eval_split"] == "test"
    with torch.no_grad():
        z = module.encode(x)
        mse = float(((module.decode(z) - x) ** 2).mean())
    assert summary["recon_mse"] == pytest.approx(mse, rel=1e-5)
    np.testing.assert_allclose(summary["latent_std"], z.std(0).numpy(), rtol=1e-5)
    assert summary["bandwidth"] == 0.5 and summary["epochs_trained"] == 2


def test_sample_command(run_dir, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "-n", "10", "--seed", "3", "--out", str(out), "--npy"]) == 0
    assert mpimg.imread(out).shape[:2] == _grid_px(10, 4)
    x = np.load(tmp_path / "s.npy")
    module, _ = load_run(run_dir)
    ref = module.sample(10, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(x, ref)
    assert x.shape == (10, 1, 8, 8) and x.min() >= 0 and x.max() <= 1


def test_reconstruct_command(run_dir, tmp_path, capsys):
    out = tmp_path / "r.png"
    assert main(["reconstruct", str(run_dir), "-n", "8", "--out", str(out), "--npy"]) == 0
    printed = capsys.readouterr().out
    mse = float(printed.split("):")[1].split()[0])
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert mse == pytest.approx(summary["recon_mse"], abs=1e-5)
    assert mpimg.imread(out).shape[:2] == _grid_px(16, 8)
    assert np.load(tmp_path / "r.npy").shape == (200, 1, 8, 8)


def test_interpolate_random_is_a_decoded_straight_line(run_dir, tmp_path):
    out = tmp_path / "i.png"
    assert main(["interpolate", str(run_dir), "--pairs", "3", "--steps", "5", "--seed", "1", "--out", str(out),
                 "--npy"]) == 0
    grid = np.load(tmp_path / "i.npy")
    assert grid.shape == (3, 5, 1, 8, 8)
    assert mpimg.imread(out).shape[:2] == _grid_px(15, 5)
    module, _ = load_run(run_dir)
    z = module.latent_distribution().sample(6, generator=torch.Generator().manual_seed(1)).float()
    t = 0.25  # the second of 5 points
    with torch.no_grad():
        mid = module.decode((1 - t) * z[:3] + t * z[3:]).numpy()
        ends = module.decode(z).numpy()
    np.testing.assert_allclose(grid[:, 1], mid, atol=1e-6)
    np.testing.assert_allclose(grid[:, 0], ends[:3], atol=1e-6)
    np.testing.assert_allclose(grid[:, -1], ends[3:], atol=1e-6)


def test_interpolate_test_mode_shows_originals(run_dir, tmp_path):
    out = tmp_path / "t.png"
    assert main(["interpolate", str(run_dir), "--mode", "test", "--pairs", "2", "--steps", "4", "--out", str(out)]) == 0
    assert mpimg.imread(out).shape[:2] == _grid_px(2 * 6, 6)  # originals at both ends of each row


@pytest.mark.parametrize("argv,start", [
    (["train", "--method", "ae", "--lam", "0.1"], "lam: is not an option of method 'ae'"),
    (["train", "--method", "ae", "--no-leave-one-out"], "leave_one_out: is not an option of method 'ae'"),
    (["train", "--target", "mog:x"], "target: must be"),
    (["train", "--latent-dim", "0"], "latent_dim: must be"),
    (["train", "--resume", "{tmp}/nothing"], "resume:"),
    (["sample", "{tmp}"], "run:"),
])
def test_bad_input_one_line_exit_2(argv, start, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and start in err[0]


def test_existing_run_and_resume_conflicts(run_dir, capsys):
    assert main(["train", *TINY, "--out", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--latent-dim", "3"]) == 2
    assert "latent-dim: cannot change when resuming" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys; from gens.cli import build_parser; p = build_parser(); "
            "p.parse_args(['train', '--epochs', '3']); print('torch' in sys.modules, 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_no_leave_one_out_reaches_the_gen():
    from gens.cli import build_parser
    from gens.cli.train import _options
    from gens.runs import module_kwargs, resolve_config

    for argv, want in ((["train"], True), (["train", "--no-leave-one-out"], False)):
        cfg = resolve_config(_options(build_parser().parse_args(argv)))
        assert cfg["leave_one_out"] is want and module_kwargs(cfg)["leave_one_out"] is want


def test_a_gen_run_saved_before_leave_one_out_resumes_without_it():
    from gens.cli.train import _saved_options

    assert _saved_options({"method": "gen", "lam": 0.03})["leave_one_out"] is False
    assert _saved_options({"method": "gen", "leave_one_out": True})["leave_one_out"] is True
    assert "leave_one_out" not in _saved_options({"method": "ae"})

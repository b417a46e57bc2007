"""Run folders lose nothing (issue 16): resume keeps the whole log, a failed resume changes no file, reused
folders never mix runs, and every failure a user can cause is one line and exit code 2.

Tiny runs only: digits, 200 samples (180 train = 4 batches of 50, 20 val), 16 hidden units, l = 2.
"""

import csv
import hashlib
import json
import shutil
import signal

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from gens import runfolder
from gens.checkpoint import load_checkpoint
from gens.cli import main
from gens.runfolder import RunFolder
from gens.runs import resolve_config, train_run

TINY = ["--limit", "200", "--hidden", "16", "--latent-dim", "2", "--batch-size", "50", "--accelerator", "cpu",
        "--devices", "1", "--no-progress"]
GEN = [*TINY, "--bank-size", "100", "--bandwidth", "0.5", "--checkpoint-every", "2"]
CFG = {"data": "digits", "limit": 200, "hidden": [16], "latent_dim": 2, "batch_size": 50, "accelerator": "cpu",
       "devices": 1, "method": "gen", "bank_size": 100, "bandwidth": 0.5}

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_exit_2(capsys, argv, *fragments):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("gens "), err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


def _snapshot(folder):
    """Every file and folder under ``folder`` with its bytes' hash and modification time."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (p.is_dir(), st.st_mtime_ns,
                                           None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A GEN trained 1 epoch, the same GEN trained 2 epochs without a break, and a 1-epoch AE."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *GEN, "--epochs", "1", "--out", str(root / "gen1")]) == 0
    assert main(["train", *GEN, "--epochs", "2", "--out", str(root / "gen2")]) == 0
    assert main(["train", *TINY, "--method", "ae", "--epochs", "1", "--out", str(root / "ae")]) == 0
    return root


def _copy(runs, name, tmp_path):
    return shutil.copytree(runs / name, tmp_path / name)


# ---------------------------------------------------------------------- 1. resume keeps the whole log


def test_resume_keeps_every_epoch_in_metrics_csv_and_losses_png(runs, tmp_path):
    run = _copy(runs, "gen1", tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert {r["epoch"] for r in _rows(run)} == {"0", "1"}
    # the same log, row for row, as the run trained for 2 epochs in one go; so the same loss figure
    assert (run / "metrics.csv").read_text() == (runs / "gen2" / "metrics.csv").read_text()
    np.testing.assert_array_equal(mpimg.imread(run / "losses.png"), mpimg.imread(runs / "gen2" / "losses.png"))


def test_crash_mid_epoch_then_resume_logs_like_an_uninterrupted_run(tmp_path, crash_at):
    """4 batches an epoch, rows logged at steps 3, 7, 11 (train and validation), checkpoints after batches 3,
    6, 9. The crash comes after batch 8: epoch 0's rows (step 3) must stay, epoch 1's (step 7, logged after
    the last checkpoint) must be dropped and logged again by the resumed run, once."""
    cfg = resolve_config({**CFG, "epochs": 3, "checkpoint_every": 3})
    train_run(cfg, tmp_path / "full", progress=False, figures=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(cfg, tmp_path / "crashed", progress=False, figures=False, callbacks=[crash_at(8)])
    assert load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert {r["step"] for r in _rows(tmp_path / "crashed")} == {"3", "7"}  # 7: logged after the checkpoint
    train_run(cfg, tmp_path / "crashed", resume=True, progress=False, figures=False)
    assert {r["step"] for r in _rows(tmp_path / "crashed")} == {"3", "7", "11"}
    assert (tmp_path / "crashed" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()


def _corrupt(run, ae):  # cut short, as a copy interrupted half-way leaves it
    path = run / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _unsafe(run, ae):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"state_dict": {}, "x": Evil()}, run / "checkpoints" / "last.ckpt")


def _other_method(run, ae):
    shutil.copy(ae / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("name,damage,epochs,fragment", [
    ("gen1", _corrupt, 2, "is not a readable torch checkpoint"),
    ("gen1", _unsafe, 2, "refused to load"),
    ("gen1", _other_method, 2, "holds a 'ae' model"),
    ("gen1", None, 1, "has already trained 1 epochs and is finished; give --epochs N with N > 1"),
    ("gen2", None, 1, "has already trained 2 epochs; give --epochs N with N > 2"),
])
def test_failed_resume_changes_no_file(runs, tmp_path, capsys, name, damage, epochs, fragment):
    run = _copy(runs, name, tmp_path)
    if damage is not None:
        damage(run, runs / "ae")
    before = _snapshot(run)
    _one_line_exit_2(capsys, ["train", "--resume", run, "--epochs", epochs, "--no-progress"], fragment)
    assert _snapshot(run) == before


# ------------------------------------------------------------------ 2. reused folders never mix runs


@pytest.mark.parametrize("method", ["gen", "ae"])
def test_folder_of_a_run_killed_before_last_ckpt_is_refused(runs, tmp_path, capsys, method):
    run = _copy(runs, "gen2", tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()  # killed before its first last.ckpt: best.ckpt, config.json...
    assert (run / "checkpoints" / "best.ckpt").is_file()
    before = _snapshot(run)
    line = _one_line_exit_2(capsys, ["train", *TINY, "--method", method, "--latent-dim", "3", "--epochs", "1",
                                     "--out", run], "already holds another run's files", "checkpoints/best.ckpt")
    assert "config.json" in line and "bandwidth" not in line
    assert _snapshot(run) == before


def test_sample_refuses_a_checkpoint_of_another_run(runs, tmp_path, capsys):
    run = _copy(runs, "gen1", tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "latent_dim": 3}))  # config l = 3, checkpoint l = 2
    _one_line_exit_2(capsys, ["sample", run, "--checkpoint", "last"], "latent_dim 2", "mixes two runs")
    run = _copy(runs, "ae", tmp_path / "x")  # an AE checkpoint in a GEN run: no traceback
    shutil.copy(runs / "gen1" / "config.json", run / "config.json")
    _one_line_exit_2(capsys, ["sample", run], "holds a 'ae' model", "mixes two runs")


def test_two_runs_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runfolder, "_now", lambda: runfolder._dt.datetime(2024, 1, 2, 3, 4, 5))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["train", *TINY, "--method", "ae", "--epochs", "1"]) == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["ae-digits-20240102-030405", "ae-digits-20240102-030405-2"]
    for name in folders:
        assert json.loads((tmp_path / "runs" / name / "metrics.json").read_text())["epochs_trained"] == 1
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run folder:")]
    assert printed == [f"run folder: runs/{name}" for name in folders]


def test_a_folder_in_use_is_refused(tmp_path, capsys):
    held = RunFolder.new(tmp_path / "busy")  # as a running `gens train` holds it
    try:
        _one_line_exit_2(capsys, ["train", *TINY, "--method", "ae", "--epochs", "1", "--out", tmp_path / "busy"],
                         "is in use by another running `gens train`")
    finally:
        held.release()
    assert list((tmp_path / "busy").iterdir()) == []
    with RunFolder.new(tmp_path / "busy"):  # free again
        pass


# ------------------------------------------------------------- 3. h >= 1 refused before any training


@pytest.mark.parametrize("options,fragment", [
    (["--bandwidth", "5"], "bandwidth: h = 5 (l = 2) must be < 1"),
    (["--latent-dim", "40", "--bank-size", "50", "--bandwidth-scale", "1"], "(l = 40, m = 50) must be < 1"),
])
def test_bandwidth_of_one_or_more_is_refused_before_training(tmp_path, capsys, options, fragment):
    _one_line_exit_2(capsys, ["train", *TINY, "--epochs", "1", *options, "--out", tmp_path / "run"], fragment)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing left behind


# ----------------------------------------------------------------- 4. tracebacks become one line


def test_diverged_training_is_one_line(tmp_path, capsys):
    _one_line_exit_2(capsys, ["train", *TINY, "--method", "vae", "--lr", "1e6", "--epochs", "1", "--out",
                              tmp_path / "run"], "training diverged: the loss is nan", "Lower the learning rate")


def test_data_of_another_shape_is_one_line(runs, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((20, 28, 28), dtype=np.float32))
    msg = "data: samples of shape (1, 28, 28) do not fit a model trained on (1, 8, 8)"
    _one_line_exit_2(capsys, ["novelty", runs / "gen1", "--data", tmp_path / "big.npy", "--device", "cpu",
                              "--out", tmp_path / "nov"], msg)
    _one_line_exit_2(capsys, ["interpolate", runs / "gen1", "--mode", "test", "--data", tmp_path / "big.npy",
                              "--out", tmp_path / "i.png"], msg)
    assert not (tmp_path / "nov").exists() and not (tmp_path / "i.png").exists()


def test_hardware_and_output_folder_errors_are_one_line(tmp_path, capsys):
    argv = ["train", *TINY, "--method", "ae", "--epochs", "1", "--out"]
    _one_line_exit_2(capsys, [*argv, tmp_path / "a", "--devices", "0"], "devices: must be")
    if not torch.cuda.is_available():
        _one_line_exit_2(capsys, [*argv, tmp_path / "b", "--accelerator", "gpu"], "accelerator: cannot train with")
        assert not (tmp_path / "b").exists()
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(capsys, [*argv, tmp_path / "file"], "is a file, not a folder")
    _one_line_exit_2(capsys, [*argv, tmp_path / "file" / "run"], "out: cannot make the folder")


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if runfolder.os.access(ro, runfolder.os.W_OK):  # root writes anywhere: make the write fail as it would
            def refuse(*args, dir=None, **kwargs):
                raise PermissionError(13, "Permission denied", str(dir))

            monkeypatch.setattr(runfolder.tempfile, "mkstemp", refuse)
        _one_line_exit_2(capsys, ["train", *TINY, "--method", "ae", "--epochs", "1", "--out", ro],
                         f"out: cannot write in {ro} (Permission denied)")
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


def test_sample_errors_are_one_line(runs, tmp_path, capsys):
    _one_line_exit_2(capsys, ["sample", runs / "gen1", "-n", "100000000"], "n: 100000000 samples need about",
                     "GB of memory")
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(capsys, ["sample", runs / "gen1", "-n", "4", "--out", tmp_path / "file" / "s.png"],
                     f"{tmp_path / 'file'}: File exists")


def test_unexpected_errors_keep_their_traceback():
    from gens.cli import _user_error

    assert _user_error(ValueError("x: bad")) == "x: bad"
    assert _user_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried")).startswith("out of memory")
    assert _user_error(PermissionError(13, "Permission denied", "/x")) == "/x: Permission denied"
    assert _user_error(KeyError("bug")) is None and _user_error(RuntimeError("bug")) is None


# ------------------------------------------------------------------- 5. and 7. output files


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    np.save(root / "flat.npy", np.random.default_rng(0).random((120, 50), dtype=np.float32))
    assert main(["train", *TINY, "--method", "ae", "--data", str(root / "flat.npy"), "--epochs", "1",
                 "--out", str(root / "run")]) == 0
    return root / "run"


def test_flat_data_runs_save_arrays(flat_run, tmp_path, capsys):
    assert main(["sample", str(flat_run), "-n", "5", "--npy", "--out", str(tmp_path / "s.png")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 50) and not (tmp_path / "s.png").exists()
    assert main(["reconstruct", str(flat_run), "--npy", "--out", str(tmp_path / "r.png")]) == 0
    assert np.load(tmp_path / "r.npy").shape[1:] == (50,)
    for mode in ("random", "test"):
        assert main(["interpolate", str(flat_run), "--mode", mode, "--pairs", "2", "--steps", "3", "--out",
                     str(tmp_path / f"i-{mode}.npy")]) == 0
        assert np.load(tmp_path / f"i-{mode}.npy").shape == (2, 3, 50)
    capsys.readouterr()
    _one_line_exit_2(capsys, ["sample", flat_run], "are not images; add --npy")


def test_npy_out_gets_the_array_and_the_png_goes_beside_it(runs, tmp_path, capsys):
    out = tmp_path / "s.npy"
    np.save(out, np.zeros(3))  # an existing array given as --out
    assert main(["sample", str(runs / "gen1"), "-n", "6", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 's.png'}", f"wrote {out}"]
    assert np.load(out).shape == (6, 1, 8, 8) and mpimg.imread(tmp_path / "s.png").ndim == 3
    assert main(["sample", str(runs / "gen1"), "-n", "6", "--npy", "--out", str(out)]) == 0
    assert len(set(capsys.readouterr().out.splitlines())) == 2  # two files, each written once
    assert np.load(out).shape == (6, 1, 8, 8)


# ------------------------------------------------------------- 6. a fixed bandwidth and its modifiers


@pytest.mark.parametrize("extra", [["--bandwidth-scale", "0.5"], ["--bandwidth-correction"]])
def test_fixed_bandwidth_with_scale_or_correction_is_refused(tmp_path, capsys, extra):
    _one_line_exit_2(capsys, ["train", *TINY, "--bandwidth", "0.5", *extra, "--out", tmp_path / "run"],
                     "bandwidth: a fixed --bandwidth is used as given", extra[0])
    assert not (tmp_path / "run").exists()


def test_a_run_saved_with_both_resumes_with_the_bandwidth_alone():
    from gens.cli.train import _saved_options

    opts = _saved_options({"method": "gen", "bandwidth": 0.5, "bandwidth_scale": 0.7, "bandwidth_correction": True})
    cfg = resolve_config(opts)
    assert cfg["bandwidth"] == 0.5 and cfg["bandwidth_scale"] is None and cfg["bandwidth_correction"] is False


# --------------------------------------------------------------------------- 8. clear messages


def test_one_training_sample_names_the_data(tmp_path, capsys):
    np.save(tmp_path / "few.npy", np.random.default_rng(0).random((4, 50), dtype=np.float32))
    _one_line_exit_2(capsys, ["train", *TINY, "--data", tmp_path / "few.npy", "--limit", "2", "--val-fraction",
                              "0.5", "--epochs", "1", "--out", tmp_path / "run"], "data:", "leaves 1 training sample")


def test_unsafe_checkpoint_message_is_whole_and_one_line(tmp_path):
    from gens.checkpoint import UnsafeCheckpointError

    (tmp_path / "checkpoints").mkdir()
    _unsafe(tmp_path, None)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text
    assert "WeightsUnpickler error: Unsupported global: GLOBAL print" in text
    assert "trust the source of the checkpoint" in text  # torch's warning, no longer cut off


def test_non_json_target_file_names_the_file(tmp_path, capsys):
    (tmp_path / "t.json").write_text("{not json")
    _one_line_exit_2(capsys, ["bandwidth", "--target", tmp_path / "t.json", "--dim", "2", "--samples", "100"],
                     f"{tmp_path / 't.json'}: is not valid JSON (Expecting property name")


def test_damaged_config_json_names_the_file(runs, tmp_path, capsys):
    run = _copy(runs, "gen1", tmp_path)
    (run / "config.json").write_text("{not json")
    for argv in (["sample", run], ["train", "--resume", run]):
        _one_line_exit_2(capsys, argv, f"{run / 'config.json'} is not valid JSON")


def test_relative_data_path_is_stored_absolute(tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "flat.npy", np.random.default_rng(0).random((40, 50), dtype=np.float32))
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", *TINY, "--method", "ae", "--data", "flat.npy", "--epochs", "1", "--out", "run"]) == 0
    assert json.loads((tmp_path / "a" / "run" / "config.json").read_text())["data"] == str(tmp_path / "a" / "flat.npy")
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", "a/run", "--npy"]) == 0
    assert main(["train", "--resume", "a/run", "--epochs", "2", "--data", "a/flat.npy", "--no-progress"]) == 0


def test_ctrl_c_is_one_interrupted_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from gens.checkpoint import ResumeCallback

    def interrupt(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the training loop

    monkeypatch.setattr(ResumeCallback, "on_train_batch_start", interrupt)
    before = signal.getsignal(signal.SIGINT)
    code = main(["train", *GEN, "--epochs", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1
    assert err[0] == f"gens train: interrupted; continue from the last checkpoint with `gens train --resume {tmp_path / 'run'}`"
    assert signal.getsignal(signal.SIGINT) is before  # Lightning's SIG_IGN is undone
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2

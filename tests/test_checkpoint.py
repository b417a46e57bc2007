"""gens.checkpoint: atomic writes, weights-only loading that refuses crafted pickles, resumable sampler."""

import builtins
import os
import pickle

import pytest
import torch

from gens import checkpoint as ck


class _Malicious:
    """Unpickling this calls open(marker, "w"): code execution from a checkpoint file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_atomic_save_round_trip(tmp_path):
    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "name": "x", "shape": (1, 8, 8)}
    path = ck.atomic_save(obj, tmp_path / "sub" / "a.ckpt")
    back = ck.load_checkpoint(path)
    assert torch.equal(back["state_dict"]["w"], obj["state_dict"]["w"])
    assert back["epoch"] == 3 and back["shape"] == (1, 8, 8)
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]  # no temp file left behind


def test_atomic_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ck.atomic_save({"v": torch.tensor(1.0)}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")  # a half-written file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"v": torch.tensor(2.0)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert float(ck.load_checkpoint(path)["v"]) == 1.0
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil-{fmt}.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": _Malicious(marker)}
    if fmt == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ck.UnsafeCheckpointError, match="^checkpoint: refused to load"):
        ck.load_checkpoint(path)
    with pytest.raises(ValueError):  # the Lightning plugin goes through the same path
        ck.AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    # control: the file really is malicious — an unsafe load runs its code
    control = tmp_path / "control"
    payload["hyper_parameters"] = _Malicious(control)
    torch.save(payload, tmp_path / "control.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)
    assert control.exists()


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="^checkpoint:"):
        ck.load_checkpoint(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00\x01not a checkpoint")
    with pytest.raises(ValueError, match="^checkpoint:"):
        ck.load_checkpoint(bad)


def test_checkpoint_io_plugin_round_trip(tmp_path):
    io = ck.AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(2)}, tmp_path / "x" / "c.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "x" / "c.ckpt")["a"], torch.ones(2))


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    s1, s2 = ck.EpochSampler(50, seed=3), ck.EpochSampler(50, seed=3)
    s2.set_epoch(4)
    s2.set_epoch(1)
    s1.set_epoch(1)
    a, b = list(s1), list(s2)
    assert a == b and sorted(a) == list(range(50))
    s1.set_epoch(2)
    assert list(s1) != a
    assert list(ck.EpochSampler(50, seed=4)) != list(ck.EpochSampler(50, seed=3))
    assert list(ck.EpochSampler(7, shuffle=False)) == list(range(7))


def test_epoch_sampler_resume_skips_once():
    s = ck.EpochSampler(20, seed=0)
    full = s.order(2).tolist()
    s.resume_at(2, 6)
    assert list(s) == full[6:]
    assert list(s) == full  # the skip applies to one iteration only
    s.resume_at(2, 6)
    s.set_epoch(3)  # the resumed epoch had already ended: nothing is skipped in the next one
    assert list(s) == s.order(3).tolist()


def test_step_seed_spreads_and_is_stable():
    seeds = {ck.step_seed(0, k) for k in range(1000)}
    assert len(seeds) == 1000
    assert ck.step_seed(5, 17) == ck.step_seed(5, 17) != ck.step_seed(6, 17)

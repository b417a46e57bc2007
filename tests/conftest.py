"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module: its tensors and networks are tiny, and on a shared
    2-core CPU a thread pool only adds contention (test_resume also needs the same arithmetic as its
    OMP_NUM_THREADS=1 subprocess)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kernel_block_sizes(monkeypatch):
    """The element count of every kernel block ``gens.kde`` builds during the test, in order."""
    from gens import kde

    sizes = []
    orig = kde._log_kernel_block

    def spy(*args):
        out = orig(*args)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(kde, "_log_kernel_block", spy)
    return sizes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder: an AE trained for one epoch on digits (tests/test_fid*.py)."""
    from gens.runs import resolve_config, train_run

    run = tmp_path_factory.mktemp("run") / "ae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(resolve_config({"method": "ae", "data": "digits", "epochs": 1, "hidden": [16], "latent_dim": 3}),
                  run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture
def crash_at():
    """``crash_at(step)``: a Lightning callback that raises RuntimeError("simulated crash") before the training
    batch at global step ``step`` (an in-process stand-in for a crash)."""
    from lightning.pytorch import Callback

    class CrashAt(Callback):
        def __init__(self, step):
            self.step = step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                raise RuntimeError("simulated crash")

    return CrashAt


@pytest.fixture(scope="module")
def digits():
    """The first 300 scikit-learn digits, flat (300, 64) in [0, 1] (test files may define their own)."""
    from sklearn.datasets import load_digits

    X, _ = load_digits(return_X_y=True)
    return X[:300] / 16.0

"""The GEN's extension points are real: an objective and a bank strategy defined here, outside the package,
registered by name, train through ``gens.GEN(...).fit`` and ``gens train`` without editing gens.
The same toy code is shown in DESIGN.md ("How to add an objective / a bank strategy"); its snippets are
run here too (all but their ``fit`` lines)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import gens
from gens.bank import BANKS, BankStrategy, register_bank
from gens.data import load_dataset
from gens.divergence import OBJECTIVES, gen_jsd_term, register_objective
from gens.targets import StandardNormal

CALLS = {"objective": 0, "bank": 0}


def squared_log_ratio(log_pe, log_pt, eps):
    """A toy objective: (log p_e - log p_t)^2 / 2 per query (zero exactly where p_e = p_t)."""
    CALLS["objective"] += 1
    return 0.5 * (log_pe - log_pt) ** 2


class RandomSubsetBank(BankStrategy):
    """A toy bank strategy: before every training batch, re-encode a random quarter of the bank's samples."""

    needs_samples = True

    def on_batch_start(self, gen):
        CALLS["bank"] += 1
        rows = torch.randperm(len(self.bank))[: len(self.bank) // 4]
        with torch.no_grad():
            z = gen.encoder(self.samples[rows].to(gen.device)).float()
        latents = self.bank.latents().clone()
        latents[rows] = z
        self.bank.fill(latents)


@pytest.fixture
def toys():
    """Register the toys for one test (and remove them after, so other tests see only the built-ins)."""
    register_objective("toy", squared_log_ratio)
    register_bank("toy_subset", RandomSubsetBank)
    CALLS.update(objective=0, bank=0)
    yield
    OBJECTIVES.unregister("toy")
    BANKS.unregister("toy_subset")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")[0][:200]


def test_registered_objective_is_the_mean_of_the_function(toys):
    g = torch.Generator().manual_seed(0)
    bank, z = torch.randn(40, 2, generator=g, dtype=torch.float64), torch.randn(7, 2, generator=g, dtype=torch.float64)
    from gens.kde import kde_log_density

    le, lt = kde_log_density(z, bank, 0.5), StandardNormal(2).log_prob(z)
    torch.testing.assert_close(gen_jsd_term(z, bank, StandardNormal(2), 0.5, form="toy"), (0.5 * (le - lt) ** 2).mean())
    assert "toy" in OBJECTIVES.names() and OBJECTIVES.names()[:3] == ("nonsaturating", "literal", "kl")


def test_registry_refuses_bad_registrations(toys):
    with pytest.raises(ValueError, match="objective 'toy' is already registered"):
        register_objective("toy", squared_log_ratio)
    with pytest.raises(ValueError, match="'kl' is a built-in objective"):
        register_objective("kl", squared_log_ratio, replace=True)
    with pytest.raises(TypeError, match="fn: must be callable"):
        register_objective("other", 3)
    with pytest.raises(TypeError, match="cls: must be a subclass of gens.bank.BankStrategy"):
        register_bank("other", object)
    with pytest.raises(ValueError, match="^objective: must be one of 'nonsaturating', 'literal', 'kl', 'toy'"):
        gens.GEN(2, objective="nope", hidden=(8,)).fit(torch.rand(20, 4).numpy())


@pytest.mark.parametrize("kind", ["objective", "bank"])
def test_toys_train_through_the_estimator(toys, digits, kind):
    kw = {"objective": "toy"} if kind == "objective" else {"bank_mode": "toy_subset"}
    est = gens.GEN(2, hidden=(16,), bank_size=60, bandwidth=0.5, max_epochs=1, batch_size=50, random_state=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(digits)
    assert CALLS[kind] >= 4  # 4 training batches (more calls for the objective: validation, if any)
    module = est.module_
    if kind == "objective":
        assert module.objective == "toy" and CALLS["bank"] == 0
    else:
        assert isinstance(module.bank_strategy, RandomSubsetBank) and len(module.bank) == 60
    assert torch.isfinite(torch.as_tensor(est.transform(digits[:5]))).all()


@pytest.mark.parametrize("kind", ["objective", "bank"])
def test_toys_train_through_gens_train(toys, tmp_path, kind, one_thread):
    from gens.checkpoint import load_checkpoint
    from gens.cli import main

    run = tmp_path / "run"
    flag = ["--objective", "toy"] if kind == "objective" else ["--bank-mode", "toy_subset"]
    argv = ["train", "--data", "digits", "--limit", "200", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
            "--bank-size", "60", "--bandwidth", "0.5", "--batch-size", "50", "--accelerator", "cpu", "--devices", "1",
            "--out", str(run), "--no-progress", *flag]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    assert CALLS[kind] >= 3
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["objective" if kind == "objective" else "bank_mode"] == flag[1]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["gen_bank"]["latents"].shape == (60, 2) and ckpt["gen_bank"]["batches"] >= 3


def test_design_md_snippets_register_what_they_say():
    text = (Path(__file__).resolve().parents[1] / "DESIGN.md").read_text()
    for section, registry, name in [("objective", OBJECTIVES, "toy"), ("bank strategy", BANKS, "toy_subset")]:
        body = text.split(f"## How to add {'an' if section == 'objective' else 'a'} {section}\n", 1)[1]
        code = re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)
        code = "\n".join(line for line in code.splitlines() if ".fit(" not in line)
        try:
            exec(compile(code, f"DESIGN.md ({section})", "exec"), {})  # noqa: S102 -- the documented snippet
            assert name in registry.names()
        finally:
            registry.unregister(name)
    assert "toy" not in OBJECTIVES.names() and "toy_subset" not in BANKS.names()

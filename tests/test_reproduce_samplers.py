"""`gens reproduce table2`: the FID of each ex-post sampler (issue 15 item 4), its unit keys and reuse, --samplers.

Tiny settings (digits, 2 epochs of 13 steps, 32 hidden units, a 1-epoch in-domain FID classifier, 200 FID
samples); the FIDs are computed by the real code (samplers fitted on the training latents, in-domain
features, the Fréchet distance), nothing mocked but the retraining guard of the reruns.
"""

import json
import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from gens.cli import main
from gens.reproduce import Options, reproduce
from gens.reproduce.store import Units
from gens.samplers import SAMPLERS

METHODS = ("gen", "ae", "vae", "aae", "wae")
TINY = {m: {"hidden": [32]} for m in METHODS}
TINY["gen"].update(bank_size=200, bandwidth=0.6)  # no h_opt search
TINY["aae"].update(disc_hidden=[32])
NAMES = {"gen": "GEN", "ae": "AE (no regulariser)", "vae": "VAE", "aae": "AAE", "wae": "WAE"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gens-cache"))
    monkeypatch.delenv("GENS_MNIST", raising=False)


def _units(out) -> dict:
    """{(name, samplers in the key): (settings, value)} of the table2 units in ``out``."""
    found = {}
    for p in (out / "units" / "table2").glob("*.json"):
        rec = json.loads(p.read_text())
        fid = rec["settings"].get("fid") or {}
        found[rec["name"], tuple(fid.get("samplers") or ())] = (rec["settings"], rec["value"], p)
    return found


def _no_training(monkeypatch):
    monkeypatch.setattr("gens.training.train", lambda *a, **k: pytest.fail("retrained"))


def test_table2_fid_per_sampler_report_and_reuse(tmp_path, monkeypatch):
    from gens.reproduce.report import fmt_pm

    out = tmp_path / "r"
    opts = {"out": out, "data": "digits", "epochs": 2, "seeds": [0, 1], "ns": [100], "methods": METHODS,
            "module_kwargs": TINY, "classifier_epochs": 1, "fid_n": 200, "verbose": False}
    md, page = reproduce("table2", **opts)  # default samplers: all registered
    units = _units(out)
    rows = {}
    for method in METHODS:
        for seed in (0, 1):
            _, row, _ = units[f"{method}-seed{seed}", tuple(SAMPLERS)]
            assert row["status"] == "ok", row["message"]
            assert row["fid_n"] == 200 and row["fid_analytic"] == row["fid"]
            for name in SAMPLERS:
                assert math.isfinite(row[f"fid_{name}"]) and row[f"fid_{name}"] > 0
            assert row["fid_gaussian"] != row["fid_gmm"] and 0 <= row["sampler_fit_s"] < 60
            rows[method, seed] = row
    text = md.read_text()
    assert "| model | FID, analytic | FID, gaussian | FID, gmm | seeds |" in text
    for method in METHODS:
        cells = [fmt_pm([rows[method, sd][f"fid_{name}"] for sd in (0, 1)], 2) for name in SAMPLERS]
        assert f"| {NAMES[method]} | {' | '.join(cells)} | 2 |" in text
    assert "Best sampler per model: " in text and "GEN analytic against AE gmm: " in text
    assert "<th>FID, gmm</th>" in page.read_text()
    # the same command again: every unit reused, nothing trained, the same table
    _no_training(monkeypatch)
    md, _ = reproduce("table2", **opts)
    again = md.read_text()
    assert f"(0 units computed, {len(METHODS) * 2 + 2} reused" in again
    assert f"| GEN | {' | '.join(fmt_pm([rows['gen', sd][f'fid_{n}'] for sd in (0, 1)], 2) for n in SAMPLERS)} |" in again
    # fewer samplers: served by the units that measured more (analytic is always measured)
    md, _ = reproduce("table2", **opts, samplers=("gmm",))
    text = md.read_text()
    assert "| model | FID, analytic | FID, gmm | seeds |" in text and "FID, gaussian" not in text
    assert "(0 units computed," in text


def test_unit_keys_old_units_and_missing_columns(tmp_path, monkeypatch):
    from gens.reproduce.table2 import fid_key, fid_value

    fid = {"features": "domain", "n": 200, "source": "digits", "cache_dir": "/x", "classifier_epochs": 1,
           "classifier_limit": None, "samplers": ["analytic", "gmm"]}
    old = {k: v for k, v in fid.items() if k not in ("cache_dir", "samplers")}  # the key before samplers existed
    assert fid_key(fid, ["analytic"]) == old  # measuring only analytic is what old units measured
    assert fid_key(fid, ["analytic", "gmm"]) == {**old, "samplers": ["analytic", "gmm"]}
    assert fid_key(None, ["analytic", "gmm"]) is None
    assert fid_value({"fid": 3.0}, "analytic") == 3.0 and fid_value({"fid": 3.0}, "gmm") is None

    out = tmp_path / "r"
    opts = {"out": out, "data": "digits", "epochs": 2, "seeds": [0], "ns": [100], "methods": ("gen", "ae"),
            "module_kwargs": TINY, "classifier_epochs": 1, "fid_n": 200, "verbose": False}
    reproduce("table2", **opts)
    units = _units(out)
    # an old unit (saved before samplers: its key without "samplers", its row without fid_<sampler>)
    settings, row, _ = units["gen-seed0", tuple(SAMPLERS)]
    old_settings = {**settings, "fid": {k: v for k, v in settings["fid"].items() if k != "samplers"}}
    old_row = {k: v for k, v in row.items() if not k.startswith("fid_") and k != "sampler_fit_s"}
    old_row["fid"] = 123.456
    Units(out / "units").save("table2", "gen-seed0", old_settings, old_row)
    _no_training(monkeypatch)
    md, _ = reproduce("table2", **opts, samplers=("analytic",))  # GEN: the old unit; AE: its newer, larger unit
    text = md.read_text()
    assert "| model | FID, analytic | seeds |" in text and "| GEN | 123.46 | 1 |" in text
    # a unit under the current key that lacks a column (a sampler that failed, a tampered file): '-', named
    _, row, path = units["gen-seed0", tuple(SAMPLERS)]
    rec = json.loads(path.read_text())
    del rec["value"]["fid_gmm"]
    path.write_text(json.dumps(rec))
    md, page = reproduce("table2", **opts)
    text = md.read_text()
    assert f"| GEN | {row['fid']:.2f} | {row['fid_gaussian']:.2f} | - | 1 |" in text
    assert "Missing FIDs: GEN gmm seed 0 (not measured)." in text and "Missing FIDs" in page.read_text()


def test_measure_fid_of_the_gmm_sampler_is_that_of_its_draws(tmp_path, monkeypatch):
    """``train_and_measure``'s fid_gmm: the GMM fitted on the training split's latents (seeded by the job's seed),
    n draws decoded and featurised, against the first n test images: recomputed here from the trained model."""
    import gens.training
    from gens.evaluation.fid import domain_features, fid_from_features
    from gens.reproduce.measure import sample_images, train_and_measure
    from gens.samplers import fit_samplers

    trained = {}
    real_train = gens.training.train

    def keep(*a, **k):
        trained["module"], trained["trainer"] = real_train(*a, **k)
        return trained["module"], trained["trainer"]

    monkeypatch.setattr("gens.training.train", keep)
    fid = {"features": "domain", "n": 150, "source": "digits", "cache_dir": None, "classifier_epochs": 1,
           "classifier_limit": None, "samplers": ["analytic", "gmm"]}
    row = train_and_measure({"method": "ae", "kwargs": {"hidden": [32]}, "data": "digits", "epochs": 2, "seed": 3,
                             "ns": [100], "accelerator": "cpu", "fid": fid})
    assert row["status"] == "ok", row["message"]
    assert row["fid_n"] == 150 and "fid_gaussian" not in row and row["fid_analytic"] == row["fid"]
    module, trainer = trained["module"], trained["trainer"]
    z = gens.training.encode_all(module, trainer.datamodule.split_tensors("train")[0]).double().numpy()
    samplers = fit_samplers(z, ["gmm"], random_state=3)
    x = trainer.datamodule.split_tensors("test")[0]
    draws = sample_images(module, 150, 3, samplers, "gmm").reshape(-1, *x.shape[1:])
    kw = {"epochs": 1, "limit": None}
    expected = fid_from_features(domain_features(x[:150], "digits", **kw), domain_features(draws, "digits", **kw))
    assert row["fid_gmm"] == pytest.approx(expected, rel=1e-6)
    analytic = sample_images(module, 150, 3).reshape(-1, *x.shape[1:])
    assert row["fid"] == pytest.approx(fid_from_features(domain_features(x[:150], "digits", **kw),
                                                         domain_features(analytic, "digits", **kw)), rel=1e-6)
    assert torch.equal(analytic, sample_images(module, 150, 3, samplers, "analytic"))  # "analytic" = module.sample


def test_samplers_and_methods_options(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr("gens.reproduce.reproduce", lambda what, opts: seen.update(what=what, opts=opts) or ("a", "b"))
    assert main(["reproduce", "table2", "--data", "digits", "--methods", "gen", "wae", "--samplers", "gmm",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    opts = seen["opts"]
    assert seen["what"] == "table2" and opts.methods == ["gen", "wae"] and opts.samplers == ["gmm"]
    assert "--methods gen wae --samplers gmm" in opts.command
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "table2", "--samplers", "vamp"])
    assert e.value.code == 2 and "invalid choice: 'vamp'" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(ValueError, match="^samplers: must be one of 'analytic', 'gaussian', 'gmm'; got 'vamp'"):
        reproduce("table2", Options(out=tmp_path / "x", data="digits", samplers=("vamp",), verbose=False))
    with pytest.raises(ValueError, match="^methods: must be one of"):
        reproduce("table2", Options(out=tmp_path / "x", data="digits", methods=("semisupervised",), verbose=False))
    from gens.reproduce.table2 import settings

    assert settings(Options(data="digits"))["samplers"] == list(SAMPLERS)  # default: every registered sampler
    assert settings(Options(data="digits", samplers=("gmm",)))["samplers"] == ["analytic", "gmm"]
    assert settings(Options(data="digits"))["methods"] == ["aae", "vae", "gen", "ae"]

"""`gens reproduce`: report files, resumable units, tiny end-to-end runs of every part, CLI errors.

Tiny settings only (digits, 1 epoch, 32 hidden units, small grids); the h_opt / FID caches go to a
temporary folder so nothing outside the test's own folders is read or written.
"""

import base64
import json
import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from gens.cli import main
from gens.reproduce import Options, reproduce, resolve_data
from gens.reproduce.report import Section, cell, fmt_pm, load_sections, save_section, write_report
from gens.reproduce.store import Units
from gens.training import DEFAULT_STEPS

TINY_NETS = {m: {"hidden": [32]} for m in ("gen", "ae", "vae", "aae")}
TINY_NETS["gen"].update(bank_size=200, bandwidth=0.6)  # no h_opt search in the tests


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gens-cache"))
    monkeypatch.delenv("GENS_MNIST", raising=False)


def _png(path, value=0.5):
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.full((4, 5), value), cmap="gray")
    return path


# ---------------------------------------------------------------------------------------- report

def test_report_markdown_and_html_hold_tables_verdicts_and_embedded_figures(tmp_path):
    png = _png(tmp_path / "figures" / "a.png")
    s1 = Section("table1", "Table 1: demo")
    s1.text("Intro with `code` and **bold**.\n\n- one\n- two")
    s1.table(["l \\ m", "250"], [["2", cell("0.46 / 0.46 ± 0.08", True)], ["5", cell("0.80 / 0.65 ± 0.03", False)]],
             caption="Each cell: measured / paper.")
    s1.miss("l = 5, m = 250: measured 0.80, paper 0.65 ± 0.03")
    s1.figure("figures/a.png", "A figure.")
    s2 = Section("table3", "Table 3: demo", skipped=True).text("**Skipped**: pass `--svhn DIR`.")
    env = {"command": "gens reproduce all --out X", "date": "today", "gens": "0", "python": "3", "torch": "2",
           "lightning": "2", "numpy": "2", "platform": "linux", "processor": "x", "cpus": 2, "gpu": "none"}
    md, page = write_report(tmp_path, [s1, s2], env)
    text = md.read_text()
    assert "| 2 | 0.46 / 0.46 ± 0.08 ✓ |" in text and "| 5 | 0.80 / 0.65 ± 0.03 ✗ |" in text
    assert "**Does not reproduce:**" in text and "- l = 5, m = 250: measured 0.80" in text
    assert "![a](figures/a.png)" in text and "gens reproduce all --out X" in text
    assert "**Skipped**" in text and "| skipped |" in text
    h = page.read_text()
    assert "<td class='ok'>0.46 / 0.46 ± 0.08 ✓</td>" in h and "<td class='miss'>0.80 / 0.65 ± 0.03 ✗</td>" in h
    assert "<code>code</code>" in h and "<b>bold</b>" in h and "<li>one</li>" in h
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", h)
    assert len(uris) == 1 and base64.b64decode(uris[0]) == png.read_bytes()
    assert "src='figures" not in h  # self-contained: nothing linked
    # sections persist, so parts run one at a time end up in one report, in the parts' order
    save_section(tmp_path, s2)
    save_section(tmp_path, s1)
    loaded = load_sections(tmp_path, ("table1", "table2", "table3"))
    assert [s.part for s in loaded] == ["table1", "table3"] and loaded[0].blocks == s1.blocks


def test_fmt_pm_matches_statistics():
    assert fmt_pm([1.0, 2.0, 4.0]) == f"{7 / 3:.3f} ± {np.std([1, 2, 4], ddof=1):.3f}"
    assert fmt_pm([0.5]) == "0.500" and fmt_pm([None]) == "-"


# ----------------------------------------------------------------------------------------- units

def test_units_are_saved_atomically_and_reused(tmp_path):
    units = Units(tmp_path)
    calls = []
    v = units.get_or_compute("p", "cell", {"a": 1}, lambda: calls.append(1) or {"x": 1.5})
    assert v == {"x": 1.5} and calls == [1] and units.computed == 1
    assert units.get_or_compute("p", "cell", {"a": 1}, lambda: pytest.fail("recomputed")) == {"x": 1.5}
    assert units.reused == 1
    units.get_or_compute("p", "cell", {"a": 2}, lambda: calls.append(2) or {"x": 0})  # other settings: new unit
    assert calls == [1, 2]
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert len(files) == 2 and all(f.startswith("cell-") and f.endswith(".json") for f in files)
    (tmp_path / "p" / files[0]).write_text("{truncated")  # a torn file counts as not done
    assert units.load("p", "cell", json.loads((tmp_path / "p" / files[1]).read_text())["settings"]) is not None


# ---------------------------------------------------------------------------------------- table 1

def test_table1_cell_rule_and_resume(tmp_path, monkeypatch):
    from gens.bandwidth import optimal_bandwidth_normal
    from gens.reproduce import table1

    assert table1.within({"h": 0.57, "exceeds_one": False}, (0.46, 0.08))  # 0.11 <= 0.08 + 0.03
    assert not table1.within({"h": 0.58, "exceeds_one": False}, (0.46, 0.08))
    assert table1.within({"h": 1.02, "exceeds_one": True}, None) and not table1.within({"h": 0.9, "exceeds_one": False}, None)
    out = tmp_path / "r"
    opts = dict(out=out, table1={"dims": (2,), "sizes": (250,), "trials": 2}, verbose=False)
    reproduce("table1", **opts)
    expected = optimal_bandwidth_normal(2, 250, trials=2, seed=0, cache=False)
    (unit,) = (out / "units" / "table1").glob("l2-m250-*.json")
    saved = json.loads(unit.read_text())
    assert saved["value"]["h"] == pytest.approx(expected.h, rel=1e-12)
    assert f"| 2 | {expected.h:.2f} ± {expected.std:.2f} / 0.46 ± 0.08" in (out / "report.md").read_text()
    # a rerun reads the unit instead of computing: tamper with it and see the report follow
    saved["value"]["h"] = 0.987
    unit.write_text(json.dumps(saved))
    monkeypatch.setattr("gens.bandwidth.optimal_bandwidth_normal", lambda *a, **k: pytest.fail("recomputed"))
    reproduce("table1", **opts)
    text = (out / "report.md").read_text()
    assert "0.99 ± " in text and "✗" in text and "**0/1 cells reproduce.**" in text
    assert "1 units reused" not in text and "(0 units computed, 1 reused" in text


# ---------------------------------------------------------------------------------------- table 2

def test_measure_weight_average_is_the_methods_default_unless_given():
    from gens.reproduce.measure import weight_average

    assert weight_average("gen") == 0.999 and weight_average("semisupervised") == 0.0
    assert all(weight_average(m) == 0.0 for m in ("ae", "vae", "aae", "wae"))
    assert weight_average("aae", 0.999) == 0.999 and weight_average("gen", 0) == 0.0
    with pytest.raises(ValueError, match="^weight_average: "):
        weight_average("gen", 1.0)


def test_table2_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    from gens.evaluation.entropy import latent_entropy
    from gens.reproduce import table2

    out = tmp_path / "r"
    opts = dict(out=out, data="digits", epochs=1, seeds=[0], ns=[100, 1000], methods=("gen", "ae"),
                module_kwargs=TINY_NETS, classifier_epochs=1, verbose=False)
    md, page = reproduce("table2", **opts)
    rows = {p.name.split("-")[0] + "-" + p.name.split("-")[1]: json.loads(p.read_text())["value"]
            for p in (out / "units" / "table2").glob("*.json")}
    assert set(rows) == {"gen-seed0", "ae-seed0", "normal-seed0"}
    # the unit keys hold the method's resolved weight_average: the GEN's 0.999 (as before it became per method,
    # so its units still match), the AE's 0 (gens.config.WEIGHT_AVERAGE)
    keys = {p.name.split("-")[0]: json.loads(p.read_text())["settings"] for p in (out / "units" / "table2").glob("*.json")}
    assert (keys["gen"]["weight_average"], keys["ae"]["weight_average"]) == (0.999, 0.0)
    gen = rows["gen-seed0"]
    assert gen["status"] == "ok" and gen["n_test"] == 360 and 0 < gen["recon"] < 0.5 and gen["h"] == 0.6
    assert set(k for k in gen if k.startswith("H")) == {"H100", "H360"}  # 1000 capped at the 360 test images
    assert math.isfinite(gen["fid"]) and gen["fid_n"] == 360
    # the N(0, I_8) row is the estimator on seeded normal samples, recomputed here independently of the report
    z = torch.randn(360, 8, generator=torch.Generator().manual_seed(10_000))
    assert rows["normal-seed0"]["H100"] == pytest.approx(latent_entropy(z[:100]), rel=1e-9)
    text = md.read_text()
    assert f"| GEN (measured) | 1 | {gen['recon']:.4f} | {gen['H100']:.3f} | {gen['H360']:.3f} | {gen['fid']:.2f} |" in text
    assert "| True entropy of N(0, I_8) | - | - | 11.352 | 11.352 | - |" in text
    assert "GEN - N(0, I_8) samples" in text and "(capped at the test size)" in text
    h = page.read_text()
    assert h.count("data:image/png;base64,") == 3  # entropy plot + two sample grids
    # resume: a second run trains nothing and gives the same table
    monkeypatch.setattr("gens.training.train", lambda *a, **k: pytest.fail("retrained"))
    md2, _ = reproduce("table2", **opts)
    assert f"| GEN (measured) | 1 | {gen['recon']:.4f} |" in md2.read_text()
    assert "(0 units computed, 3 reused" in md2.read_text()
    # the rule behind ✓ / ✗
    assert table2.agrees([11.70], (11.681, 0.0231)) and not table2.agrees([11.60], (11.681, 0.0231))
    assert table2.agrees([11.60, 11.70], (11.681, 0.0231))  # our sd (0.071) widens the band
    assert table2.agrees([None], (1.0, 0.1)) is None
    assert table2.TRUE_ENTROPY == pytest.approx(4 * math.log(2 * math.pi * math.e))


def test_table2_quick_settings_and_data_resolution(monkeypatch):
    from gens.reproduce import table2

    s = table2.settings(Options(quick=True, data="digits"))
    assert s["epochs"] == 2 and s["limit"] == 10000 and s["seeds"] == [0] and s["ns"] == [360]
    assert s["classifier_epochs"] == math.ceil(500 / math.ceil((1437 - 143) / 128))  # >= 500 steps of 128
    assert s["methods"] == ["aae", "vae", "gen", "ae"]
    full = table2.settings(Options(data="digits"))
    assert full["seeds"] == [0, 1, 2] and full["limit"] is None
    assert full["epochs"] is None and full["steps"] == DEFAULT_STEPS  # the budget rule of gens.training.budget
    monkeypatch.setenv("GENS_MNIST", "digits")
    assert resolve_data(None) == "digits"


# ---------------------------------------------------------------------------------------- fig. 1

def test_fig1_tiny_grid_and_line(tmp_path):
    from scipy.stats import pearsonr

    out = tmp_path / "r"
    grid = dict(dims=(2,), sizes=(60,), separations=(0, 6), trials=2, line=(2, 60, 2), max_epochs=5)
    md, page = reproduce("fig1", out=out, fig1=grid, verbose=False)
    units = {p.name.split("-")[0]: json.loads(p.read_text())["value"] for p in (out / "units" / "fig1").glob("*.json")}
    assert set(units) == {"l2", "line"}
    c = units["l2"]
    r = pearsonr(np.repeat([0.0, 6.0], 2), np.ravel(c["kde"])).statistic
    assert c["r"]["kde"] == pytest.approx(r, rel=1e-9)
    text = md.read_text()
    assert f"{c['r']['kde']:.2f}" in text and "line plot (l = 2, m = 60)" in text
    assert page.read_text().count("data:image/png;base64,") == 3


# ---------------------------------------------------------------------------------------- table 3

def _write_svhn(folder, n, rng):
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    for name, k in (("train_32x32.mat", n), ("test_32x32.mat", n // 3)):
        savemat(folder / name, {"X": rng.integers(0, 256, (32, 32, 3, k), dtype=np.uint8),
                                "y": rng.integers(1, 11, (k, 1))})


def test_table3_skip_note_and_tiny_svhn(tmp_path):
    out = tmp_path / "r"
    md, page = reproduce("table3", out=out, verbose=False)
    text = md.read_text()
    assert "**Skipped**: no data given" in text and "`--svhn DIR`" in text and "`--celeba DIR`" in text
    assert "| [Table 3: FID on SVHN and CelebA](#table-3-fid-on-svhn-and-celeba) | " in text and "| skipped |" in text
    _write_svhn(tmp_path / "svhn", 90, np.random.default_rng(0))
    md, _ = reproduce("table3", out=out, svhn=str(tmp_path / "svhn"), epochs=1, seeds=[0], table3_methods=("gen",),
                      classifier_epochs=1, module_kwargs={"gen": {"bank_size": 50, "bandwidth": 0.8}}, verbose=False)
    (unit,) = (out / "units" / "table3").glob("svhn-gen-seed0-*.json")
    row = json.loads(unit.read_text())["value"]
    assert row["status"] == "ok" and row["n_test"] == 30 and math.isfinite(row["fid"])
    text = md.read_text()
    assert f"| SVHN (l = 25) GEN | {row['fid']:.2f} | 45.52 ± 0.33 |" in text  # no ✓/✗ without Inception features
    assert "| CelebA | skipped: pass `--celeba DIR`" in text and "not with published Inception FIDs" in text
    assert "| not checked |" in text


# ------------------------------------------------------------------------------------------- CLI

def test_cli_errors(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["reproduce", "table2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gens reproduce: error: data: table2 trains on MNIST") and "--data mnist:DIR" in err
    assert main(["reproduce", "all", "--out", str(out)]) == 2  # fails before Table 1 runs
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "table9", "--out", str(out)])
    assert e.value.code == 2 and "invalid choice: 'table9'" in capsys.readouterr().err
    assert main(["reproduce", "table2", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["reproduce", "table3", "--svhn", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("gens reproduce: error: svhn: no such file or folder")
    assert main(["reproduce", "table2", "--data", "digits", "--jobs", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("gens reproduce: error: jobs: ")


def test_cli_table3_skip_writes_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", "table3", "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "Command: `gens reproduce table3 --out " in text and "--quiet" not in text


def test_measure_train_entropy_and_saved_latents(tmp_path):
    """``train_entropy`` measures the same estimator on training latents; ``latents_out`` saves the test latents
    that the H columns were computed from (recomputed here from the saved array)."""
    from gens.evaluation.entropy import latent_entropy
    from gens.reproduce.measure import train_and_measure

    path = tmp_path / "z.npy"
    row = train_and_measure({"method": "ae", "kwargs": {"hidden": [32]}, "data": "digits", "epochs": 1, "seed": 0,
                             "ns": [200], "accelerator": "cpu", "train_entropy": True, "latents_out": str(path)})
    assert row["status"] == "ok", row["message"]
    z = torch.from_numpy(np.load(path))
    assert z.shape == (row["n_test"], 8)
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))
    assert row["H200"] == pytest.approx(latent_entropy(z[perm][:200]), rel=1e-6)
    assert math.isfinite(row["Htrain"]) and row["Htrain"] != row["H200"]

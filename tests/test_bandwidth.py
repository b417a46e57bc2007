import json
import math
import warnings

import pytest
import torch

import gens.bandwidth as bw
from gens.bandwidth import (
    PAPER_TABLE1,
    BandwidthWarning,
    corrected_bandwidth,
    jsd_curve,
    optimal_bandwidth,
    optimal_bandwidth_normal,
)
from gens.divergence import jsd_estimate
from gens.targets import StandardNormal, mixture_on_simplex


def _old_h_opt(target, m, trials=10, seed=0, h_min=bw.H_MIN, h_max=bw.H_MAX):
    """The h_opt algorithm before issue 17, as a self-contained float64 reference: per trial a bank and
    one shared z'/z'' set (drawn in that order from one generator), dJ/dh of supplement eq. 2 from the
    full distance matrix, a walk from the last root by growing factors to a sign change, then brentq
    (xtol 1e-5, rtol 1e-6). The fast version must find the same roots."""
    from scipy.optimize import brentq

    g, dim, values = torch.Generator().manual_seed(seed), target.dim, []
    h0, step = min(0.9, 1.15 * m ** (-1.0 / (dim + 4))), 1.1
    for _ in range(trials):
        bank = target.sample(m, g, dtype=torch.float64)
        z = target.sample(m, g, dtype=torch.float64)
        d, log_pt = torch.cdist(z, bank).pow(2), target.log_prob(z)

        def djdh(h, d=d, log_pt=log_pt):
            logk = -d / (2 * h * h)
            log_pe = torch.logsumexp(logk, 1) - math.log(m) - dim * math.log(h) - 0.5 * dim * math.log(2 * math.pi)
            a = (torch.softmax(logk, 1) * d).sum(1)
            r, gh = torch.sigmoid(log_pe - log_pt), a / h**3 - dim / h
            return float(((1 - r) * gh).mean() - (r * gh).mean())

        a, fa = h0, djdh(h0)
        while True:
            b = min(a * step, h_max) if fa > 0 else max(a / step, h_min)
            if b == a:
                h = math.inf if fa > 0 else h_min
                break
            fb = djdh(b)
            if (fa > 0) != (fb > 0):
                h = float(brentq(djdh, *sorted((a, b)), xtol=1e-5, rtol=1e-6))
                break
            a, fa, step = b, fb, 1.0 + 2.0 * (step - 1.0)
        values.append(h)
        if math.isfinite(h):
            h0, step = h, 1.02
    return values


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("dim,m", [(2, 250), (5, 250), (5, 500), (10, 250)])
def test_small_cells_of_table1(dim, m):
    mean, sd = PAPER_TABLE1[dim][m]
    r = optimal_bandwidth_normal(dim, m, trials=5, cache=False)
    assert len(r.values) == 5 and not r.exceeds_one
    assert abs(r.h - mean) <= sd + 0.03, (r.h, mean, sd)


@pytest.mark.parametrize("independent", [False, True])
def test_trial_jsd_matches_the_kde_estimate(independent):
    # the fast per-trial J(h) equals eq. 2 computed by gens.divergence on the same samples
    target, m, seed, h = StandardNormal(3), 120, 7, 0.55
    g = torch.Generator().manual_seed(seed)
    bank = target.sample(m, g, dtype=torch.float64)
    z_e = target.sample(m, g, dtype=torch.float64)
    z_t = target.sample(m, g, dtype=torch.float64) if independent else z_e
    want = jsd_estimate(bank, z_e, z_t, target, h).item()
    (_, got, _), = jsd_curve(target, m, [h], seed=seed, independent=independent)
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("target", [StandardNormal(4), mixture_on_simplex(3, 2, scale=4.0)])
def test_derivative_matches_finite_differences(target):
    h, eps = 0.5, 1e-4
    (_, j_lo, _), (_, _, dj), (_, j_hi, _) = jsd_curve(target, 150, [h - eps, h, h + eps], seed=1)
    assert dj == pytest.approx((j_hi - j_lo) / (2 * eps), rel=1e-3, abs=1e-5)


def test_root_is_the_maximiser_of_J():
    r = optimal_bandwidth_normal(5, 300, trials=1, seed=3, cache=False)
    h = r.values[0]
    (_, j_lo, _), (_, j, dj), (_, j_hi, _) = jsd_curve(StandardNormal(5), 300, [h - 0.05, h, h + 0.05], seed=3)
    assert j > j_lo and j > j_hi and abs(dj) < 1e-3


@pytest.mark.parametrize("dim,m,independent", [(2, 250, False), (10, 300, True)])
def test_fixed_point_agrees_with_root(dim, m, independent):
    # l = 2: the plain eq. 3 iteration diverges there (|T'| > 1); the safeguarded one must not
    kw = dict(trials=3, seed=2, cache=False, independent=independent)
    root = optimal_bandwidth_normal(dim, m, method="root", **kw)
    fixed = optimal_bandwidth_normal(dim, m, method="fixed-point", **kw)
    assert fixed.method == "fixed_point"
    for a, b in zip(root.values, fixed.values):
        assert a == pytest.approx(b, abs=1e-4)


def test_mixture_target_and_its_fixed_point():
    t = mixture_on_simplex(3, 2, scale=5.0)
    root = optimal_bandwidth(t, 200, trials=2, cache=False)
    fixed = optimal_bandwidth(t, 200, trials=2, method="fixed_point", cache=False)
    assert 0.1 < root.h < 1.0 and root.target == t.spec()
    assert root.h == pytest.approx(fixed.h, abs=1e-4)


@pytest.mark.parametrize("target,m,trials", [(mixture_on_simplex(3, 2), 200, 5), (mixture_on_simplex(10, 8), 300, 3),
                                             (StandardNormal(5), 250, 3)])
def test_fast_root_search_equals_the_old_algorithm(target, m, trials):
    # issue 17: Newton on the analytic d^2J/dh^2 and floored exponents, same estimand and same samples
    old = _old_h_opt(target, m, trials=trials, seed=4)
    new = optimal_bandwidth(target, m, trials=trials, seed=4, cache=False)
    assert new.values == pytest.approx(old, abs=5e-5)  # brentq's own tolerance is 1e-5
    assert abs(new.h - sum(old) / trials) < 0.005


def test_fast_root_search_keeps_the_ends_of_the_range(monkeypatch):
    # dJ/dh > 0 up to H_MAX: no finite maximiser (inf); dJ/dh < 0 down to H_MIN: H_MIN
    t = mixture_on_simplex(3, 2)
    monkeypatch.setattr(bw, "H_MAX", 0.3)  # h_opt is about 0.57 here
    got = optimal_bandwidth(t, 200, trials=2, seed=4, cache=False, warn=False).values
    assert got == _old_h_opt(t, 200, trials=2, seed=4, h_max=0.3) == [math.inf, math.inf]
    monkeypatch.setattr(bw, "H_MAX", 4.0)
    monkeypatch.setattr(bw, "H_MIN", 0.28)  # the first trial's root is 0.23, the second's 0.30
    got = optimal_bandwidth(StandardNormal(1), 1000, trials=2, seed=4, cache=False).values
    want = _old_h_opt(StandardNormal(1), 1000, trials=2, seed=4, h_min=0.28)
    assert got[0] == want[0] == 0.28 and got[1] == pytest.approx(want[1], abs=5e-5) and got[1] > 0.29


def test_reused_distance_buffers_give_the_same_trials():
    # trials after the first write their distances into the previous trial's buffer
    t, g1, g2 = mixture_on_simplex(3, 2), torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = bw._Trial(t, 150, 150, g1)
    buf = first.e.delta
    again = bw._Trial(t, 150, 150, g1, reuse=first)
    fresh = (bw._Trial(t, 150, 150, g2), bw._Trial(t, 150, 150, g2))[1]
    assert again.e.delta.data_ptr() == buf.data_ptr()
    assert again.slope(0.5) == fresh.slope(0.5) and again.jsd(0.5) == fresh.jsd(0.5)


def test_second_derivative_matches_finite_differences():
    trial = bw._Trial(mixture_on_simplex(10, 8), 300, 300, torch.Generator().manual_seed(1))
    h, eps = 0.6, 1e-4
    d1, d2 = trial.slope(h)
    assert d1 == pytest.approx(trial.jsd(h)[1], rel=1e-12)
    assert d2 == pytest.approx((trial.jsd(h + eps)[1] - trial.jsd(h - eps)[1]) / (2 * eps), rel=1e-4)


def test_bandwidth_grows_with_dim_and_shrinks_with_m():
    kw = dict(trials=2, cache=False)
    assert optimal_bandwidth_normal(2, 250, **kw).h < optimal_bandwidth_normal(10, 250, **kw).h
    assert optimal_bandwidth_normal(5, 1000, **kw).h < optimal_bandwidth_normal(5, 250, **kw).h


def test_exceeding_one_warns_and_explains():
    with pytest.warns(BandwidthWarning, match=r"breaks down.*larger bank m.*smaller latent dimension.*corrected"):
        r = optimal_bandwidth_normal(40, 250, trials=1, cache=False)
    assert r.exceeds_one and r.h >= 1.0 and r.corrected < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimal_bandwidth_normal(40, 250, trials=1, cache=False, warn=False)


def test_corrected_bandwidth_closed_form():
    assert corrected_bandwidth(0.98) == pytest.approx(0.98 / math.sqrt(1 + 0.98**2))
    assert corrected_bandwidth(0.98) == pytest.approx(0.70, abs=0.005)  # the REFERENCE's example
    for h in (0.1, 0.5, 1.0, 3.0):
        a2 = (corrected_bandwidth(h) / h) ** 2
        assert a2 == pytest.approx(1 / (1 + h * h))
    assert corrected_bandwidth(math.inf) == 1.0
    r = optimal_bandwidth_normal(3, 100, trials=2, cache=False)
    assert r.corrected == pytest.approx(corrected_bandwidth(r.h))


def test_cache_roundtrip(tmp_path, monkeypatch):
    first = optimal_bandwidth_normal(3, 100, trials=2, cache_dir=tmp_path)
    files = list(tmp_path.glob("bandwidth-*.json"))
    assert len(files) == 1 and "standard_normal-l3" in files[0].name and not list(tmp_path.glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(bw, "_Trial", boom)
    again = optimal_bandwidth_normal(3, 100, trials=2, cache_dir=tmp_path)
    assert again.values == first.values and again.h == first.h
    with pytest.raises(AssertionError, match="recomputed"):
        optimal_bandwidth_normal(3, 101, trials=2, cache_dir=tmp_path)  # another key
    files[0].write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    fixed = optimal_bandwidth_normal(3, 100, trials=2)  # corrupt entry is recomputed via $GENS_CACHE_DIR
    assert fixed.values == first.values
    assert json.loads(files[0].read_text())["values"] == first.values


def test_distances_recomputed_over_budget_give_the_same_result(monkeypatch):
    stored = optimal_bandwidth_normal(4, 200, trials=2, cache=False)
    import gens._bandwidth_trial as trial

    monkeypatch.setattr(trial, "_STORE_BUDGET", 100)
    recomputed = optimal_bandwidth_normal(4, 200, trials=2, cache=False)
    assert recomputed.values == pytest.approx(stored.values, abs=1e-9)


def test_threads_are_restored():
    before = torch.get_num_threads()
    optimal_bandwidth_normal(2, 50, trials=1, cache=False, num_threads=1)
    assert torch.get_num_threads() == before


def test_validation_errors():
    t = StandardNormal(2)
    with pytest.raises(ValueError, match="^m:"):
        optimal_bandwidth(t, 1)
    with pytest.raises(ValueError, match="^trials:"):
        optimal_bandwidth(t, 10, trials=0)
    with pytest.raises(ValueError, match="^method:"):
        optimal_bandwidth(t, 10, method="newton")
    with pytest.raises(ValueError, match="^target:"):
        optimal_bandwidth("normal", 10)
    with pytest.raises(ValueError, match="^queries:"):
        optimal_bandwidth(t, 10, queries=0)
    with pytest.raises(ValueError, match="^num_threads:"):
        optimal_bandwidth(t, 10, num_threads=0)
    with pytest.raises(ValueError, match="^dim:"):
        optimal_bandwidth_normal(0, 10)
    for h in (0.0, -0.5, math.nan):
        with pytest.raises(ValueError, match="^h:"):
            corrected_bandwidth(h)
    with pytest.raises(ValueError, match="^hs:"):
        jsd_curve(t, 10, [0.0])


def test_cli_single_estimate(capsys):
    from gens.cli import main

    assert main(["bandwidth", "--dim", "2", "--samples", "120", "--trials", "2", "--no-cache", "--corrected"]) == 0
    out = capsys.readouterr().out
    want = optimal_bandwidth_normal(2, 120, trials=2, cache=False)
    assert f"h_opt = {want.h:.3f} +- {want.std:.3f}" in out and f"h_corr = {want.corrected:.3f}" in out
    assert main(["bandwidth", "--dim", "2", "--samples", "120", "--trials", "2", "--target", "mog:3:4"]) == 0
    assert main(["bandwidth", "--dim", "2", "--samples", "1"]) == 2
    assert "samples:" in capsys.readouterr().err
    assert main(["bandwidth", "--dim", "2", "--samples", "50", "--target", "mog:x"]) == 2
    assert "target:" in capsys.readouterr().err


def test_cli_table_format(capsys, monkeypatch):
    from gens.cli import main
    from gens.reproduce import table1

    monkeypatch.setattr(table1, "DIMS", (2, 40))
    monkeypatch.setattr(table1, "SIZES", (250,))
    code = main(["bandwidth", "--table", "--trials", "2"])
    out = capsys.readouterr().out
    assert "| l \\ m | 250 |" in out
    row2 = next(line for line in out.splitlines() if line.startswith("| 2 |"))
    row40 = next(line for line in out.splitlines() if line.startswith("| 40 |"))
    assert "/ 0.46±0.08" in row2 and ">1.0" in row40
    r = optimal_bandwidth_normal(2, 250, trials=2)  # now cached by the table run
    assert f"{r.h:.2f}±{r.std:.2f}" in row2
    ok = abs(r.h - 0.46) <= 0.08 + 0.03
    assert ("✓" in row2) == ok and code == (0 if ok and "✓" in row40 else 1)


def test_cli_table_grid_beyond_the_paper_with_corrected(capsys):
    from gens.cli import main

    args = ["bandwidth", "--table", "--dims", "2", "64", "--samples-list", "250", "300", "--trials", "2", "--no-cache",
            "--corrected"]
    code = main(args)
    out = capsys.readouterr().out
    assert "| l \\ m | 250 | 300 |" in out
    row2 = next(line for line in out.splitlines() if line.startswith("| 2 |")).strip("| ").split(" | ")
    row64 = next(line for line in out.splitlines() if line.startswith("| 64 |")).strip("| ").split(" | ")
    r = optimal_bandwidth_normal(2, 250, trials=2, cache=False)
    assert row2[1].startswith(f"{r.h:.2f}±{r.std:.2f} → {corrected_bandwidth(r.h):.2f} / 0.46±0.08 ")
    assert row2[2].endswith("/ -") and row64[1].startswith(">1.0") and row64[2].endswith("/ -")
    ok = abs(r.h - 0.46) <= 0.08 + 0.03
    assert f"{int(ok)}/1 of the paper's cells within tolerance (3 not in the paper)" in out
    assert code == (0 if ok else 1)  # only the paper's cell is judged
    assert main(["bandwidth", "--dim", "2", "--samples", "50", "--dims", "64"]) == 2
    assert capsys.readouterr().err.startswith("gens bandwidth: error: dims: ")


def test_gen_with_h_opt_at_least_one_is_refused_at_train_start_before_any_step(tmp_path, monkeypatch):
    import lightning as L

    from gens.data import GensDataModule, load_dataset
    from gens.methods import GENModule

    monkeypatch.setenv("GENS_CACHE_DIR", str(tmp_path))
    batches = []

    class Count(L.Callback):
        def on_train_batch_start(self, *args):
            batches.append(1)

    def fit(gen, **kw):
        L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Count()], **kw).fit(
            gen, datamodule=GensDataModule(load_dataset("digits")[0][:400], batch_size=50))

    options = dict(hidden=[32, 32], bank_size=50, bandwidth_scale=1.0)
    gen = GENModule((1, 8, 8), 40, **options)  # h_opt(l = 40, m = 50) > 1 (Table 1: > 1.0 at m = 250)
    with pytest.raises(ValueError, match=r"^bandwidth: h = \S+ \(l = 40, m = 50; h_opt = \S+, times bandwidth_scale 1\) "
                                         r"must be < 1.*larger bank_size.*bandwidth_correction=True"):
        fit(gen)
    assert batches == [] and math.isnan(float(gen.bandwidth_h))
    gen = GENModule((1, 8, 8), 40, bandwidth_correction=True, **options)  # h / sqrt(1 + h^2) < 1: trains
    fit(gen, limit_train_batches=1)
    assert batches == [1] and 0.7 < float(gen.bandwidth_h) < 1

"""Does the GEN train well on every data size and budget with the library defaults? (issue 14)

The grid: rows of data (digits; MNIST first 1K and first 10K, measured on 5000 MNIST test images; full
MNIST, measured on its 10000 test images) x methods (GEN, AAE, WAE by default) x seeds, each trained with
the library's budget rule (``gens.training.DEFAULT_STEPS`` optimiser steps; ``--budget-scale 3`` trains 3x
longer, the inflation check) through ``gens.reproduce.measure.train_and_measure``, the code behind
``gens reproduce``. Per training it reports, on the test latents:

- gap: the whitened LOO-KDE entropy of as many N(0, I_l) samples minus that of the first n test latents
  (n = 5000, 10000 for full MNIST, all 360 test images for digits);
- MSE: the per-pixel test reconstruction error;
- eig: the smallest / largest covariance eigenvalue over the predicted variance (the GEN: 1 - h^2, Sec. 4;
  the others: their prior's 1), and std: the same for the per-dimension standard deviation;
- ok: every std within [0.7, 1.3] x predicted and the smallest eigenvalue >= 0.5 x predicted.

    python benchmarks/robustness.py --rows digits mnist1k mnist10k --seeds 0 1 2 --jobs 2 --threads 1 \\
        --mnist /work/shared/data/mnist --out robustness.csv
    python benchmarks/robustness.py --rows mnist10k --methods gen --options gen:coverage=0 --budget-scale 3

``--options method:key=value,...`` changes a method's settings (as in ``benchmarks/train_sweep.py``), the training
option ``weight_average`` too (``gen:weight_average=0``: the last step's weights, ``aae:weight_average=0.999``:
the average; left out: the method's default, ``gens.config.WEIGHT_AVERAGE``, 0.999 for the GEN and 0 for the
others, through ``gens.reproduce.measure``); rows are
appended to --out as they finish, and a summary table (mean over seeds) is printed at the end.
``benchmarks/latent_dims.py`` (issue 18) runs its grid through ``make_job``, ``summarise``, ``run_grid`` and
``print_means``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_sweep import parse_config  # noqa: E402

ROWS = {  # name -> (data source template, training limit, test limit, entropy n)
    "digits": ("digits", None, None, 360),  # scikit-learn's digits: 360 test images
    "mnist1k": ("mnist:{mnist}", 1000, 5000, 5000),
    "mnist10k": ("mnist:{mnist}", 10000, 5000, 5000),
    "mnist": ("mnist:{mnist}", None, None, 10000),
}
FIELDS = ["row", "method", "options", "seed", "steps", "status", "gap", "recon", "eig_min", "eig_max", "std_min",
          "std_max", "ok", "h", "H", "H_ref", "n", "global_step", "seconds", "message"]


def budget_steps(args) -> int:
    """The optimiser steps of every training: ``gens.training.DEFAULT_STEPS`` x ``args.budget_scale``."""
    from gens.training import DEFAULT_STEPS

    return int(round(DEFAULT_STEPS * args.budget_scale))


def method_options(args) -> dict:
    """{method: {key: value}} from ``args.options`` ("method:key=value,...")."""
    options = {}
    for text in args.options:
        method, kw = parse_config(text)
        options.setdefault(method, {}).update(kw)
    return options


def make_job(args, row: str, method: str, seed: int, steps: int, kwargs: dict, latent_dim: int,
             name: str | None = None, **extra) -> dict:
    """One ``gens.reproduce.measure.train_and_measure`` job of grid row ``row`` (``ROWS``): ``args`` gives mnist,
    accelerator, threads and history (DIR or None; the fidelity history goes to DIR/``name``.json, by default
    "row-method-stSTEPS-sSEED"); ``extra`` keys travel with the job (e.g. for ``summarise`` wrappers)."""
    data, limit, test_limit, n = ROWS[row]
    name = name or f"{row}-{method}-st{steps}-s{seed}"
    return dict(method=method, kwargs=kwargs, data=data.format(mnist=args.mnist), steps=steps, epochs=None,
                seed=seed, latent_dim=latent_dim, batch_size=100, limit=limit, test_limit=test_limit, ns=[n],
                accelerator=args.accelerator, threads=args.threads, row=row, n=n,
                history_out=args.history and os.path.join(args.history, f"{name}.json"), **extra)


def jobs_for(args) -> list[dict]:
    options, steps = method_options(args), budget_steps(args)
    return [make_job(args, row, method, seed, steps, options.get(method, {}), args.latent_dim)
            for row in args.rows for method in args.methods for seed in args.seeds]


def summarise(job: dict, result: dict, refs: dict) -> dict:
    """One table row from a train_and_measure result: gap against the reference (``refs[n, seed, latent_dim]``, the
    entropy of as many N(0, I_l) samples), spreads over the prediction."""
    n = job["n"]
    H = result.get(f"H{n}")
    h = result.get("h")
    pred = 1.0 - h * h if (job["method"] == "gen" and h is not None and h < 1) else 1.0
    out = {"row": job["row"], "method": job["method"], "seed": job["seed"], "steps": job["steps"],
           "options": ",".join(f"{k}={v}" for k, v in job["kwargs"].items()), "status": result.get("status"),
           "recon": result.get("recon"), "h": h, "H": H, "n": n, "global_step": result.get("global_step"),
           "seconds": result.get("seconds"), "message": result.get("message", "")}
    ref = refs.get((n, job["seed"], job["latent_dim"]))
    if H is not None and ref is not None:
        out.update(gap=ref - H, H_ref=ref)
    for k in ("eig_min", "eig_max"):
        if result.get(k) is not None:
            out[k] = result[k] / pred
    for k, src in (("std_min", "min_std"), ("std_max", "max_std")):
        if result.get(src) is not None:
            out[k] = result[src] / math.sqrt(pred)
    if all(out.get(k) is not None for k in ("eig_min", "std_min", "std_max")):
        out["ok"] = bool(0.7 <= out["std_min"] and out["std_max"] <= 1.3 and out["eig_min"] >= 0.5)
    return out


def reference(n: int, seed: int, dim: int) -> float:
    from gens.reproduce.measure import reference_row

    return reference_row(seed, dim, [n])[f"H{n}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--methods", nargs="+", default=["gen", "aae", "wae"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--options", nargs="*", default=[], help="method:key=value,... (e.g. gen:coverage=0)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="train this many times DEFAULT_STEPS steps")
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--mnist", default="/work/shared/data/mnist", help="folder of the MNIST IDX files")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="CSV the rows are appended to")
    p.add_argument("--history", default=None, metavar="DIR",
                   help="save each training's validation fidelity (gens.fidelity, every ~100 steps) as DIR/*.json")
    args = p.parse_args(argv)

    if args.history:
        os.makedirs(args.history, exist_ok=True)
    jobs = jobs_for(args)
    print(f"# {len(jobs)} trainings; {' '.join(sys.argv)}", flush=True)
    rows = run_grid(jobs, args.jobs, args.out, FIELDS)
    print_means(rows)
    return 0


KEYS = (("row", 9), ("method", 4), ("options", 24))  # the columns (and widths) a printed row starts with


def run_grid(jobs: list[dict], n_jobs: int, out: str | None, fields: list[str], summarise=summarise,
             keys=KEYS) -> list[dict]:
    """Train and measure ``jobs`` (``n_jobs`` at once); each result becomes a ``summarise(job, result, refs)`` row,
    printed (``fmt``) and appended to the CSV ``out`` (header ``fields``) as it finishes. Returns the rows."""
    from gens.reproduce.measure import run_jobs

    fh = writer = None
    if out:
        new = not os.path.exists(out)
        fh = open(out, "a", newline="")
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        if new:
            writer.writeheader()
    refs, rows = {}, []

    def done(job, result):
        key = (job["n"], job["seed"], job["latent_dim"])
        if key not in refs:
            refs[key] = reference(*key)
        row = summarise(job, result, refs)
        rows.append(row)
        print(fmt(row, keys), flush=True)
        if writer:
            writer.writerow(row)
            fh.flush()

    try:
        run_jobs(jobs, n_jobs, on_done=done)
    finally:
        if fh:
            fh.close()
    return rows


def print_means(rows: list[dict], keys=KEYS) -> None:
    """The mean over seeds of each group of ``rows`` with the same ``keys`` values."""
    print(f"\n# mean over seeds: {' '.join(k for k, _ in keys)} | gap | MSE | eig min / max | std min / max | ok seeds")
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k, _ in keys), []).append(r)
    for group, rs in groups.items():
        def mean(k):
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            return f"{sum(vals) / len(vals):.3f}" if vals else "-"
        oks = sum(bool(r.get("ok")) for r in rs)
        print(f"{_label(group, keys)} | {mean('gap')} | {mean('recon')} | {mean('eig_min')} / "
              f"{mean('eig_max')} | {mean('std_min')} / {mean('std_max')} | {oks}/{len(rs)}")


def _label(values, keys) -> str:
    return " ".join(f"{str(v) if v not in (None, '') else '-':<{w}}" for v, (_, w) in zip(values, keys))


def fmt(r: dict, keys=KEYS) -> str:
    def f(k, spec=".3f"):
        v = r.get(k)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"

    return (f"{_label([r.get(k) for k, _ in keys], keys)} seed={r['seed']} steps={r.get('global_step')} "
            f"{r['status']:<8} gap={f('gap')} mse={f('recon', '.4f')} eig=[{f('eig_min', '.2f')},{f('eig_max', '.2f')}] "
            f"std=[{f('std_min', '.2f')},{f('std_max', '.2f')}] ok={r.get('ok')} h={f('h')} {f('seconds', '.0f')}s "
            f"{r.get('message', '')}")


if __name__ == "__main__":
    sys.exit(main())

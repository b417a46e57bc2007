"""Large latent dimensions: does the GEN train at l = 16 ... 128, and with which bandwidth rule? (issue 18)

The grid: rows of data (``benchmarks/robustness.py``'s ROWS; MNIST first 10K and full MNIST by default) x latent
dimensions l x methods (GEN, AAE, WAE) x, for the GEN, bandwidth rules x architectures x seeds, each trained at
the same budget (``gens.training.DEFAULT_STEPS`` optimiser steps, or ``--steps``) and measured by
``benchmarks/robustness.py``'s machinery (``make_job``, ``summarise``, ``run_grid``: ``gens.reproduce.measure``).
Per training, on the test latents: gap (the whitened LOO-KDE entropy of as many N(0, I_l) samples minus that of
the test latents), recon (per-pixel test MSE), eig_min / eig_max (covariance eigenvalues over the predicted
variance: 1 - h^2 for the GEN, 1 for the others), std_min / std_max (per-dimension std over the predicted), ok
(every std in [0.7, 1.3] x predicted and eig_min >= 0.5), h (the GEN's bandwidth).

Bandwidth rules (GEN only; the AAE and WAE get rule "-"):

- ``h_opt``: the library default, h = h_opt(l, m) x bandwidth_scale (default 0.75);
- ``corrected``: ``bandwidth_correction=True``, h = h_opt / sqrt(1 + h_opt^2) x bandwidth_scale.

A rule whose h would be >= 1 is refused by the GEN before its first step; the row then has status "error" and
the message says why. Seeds: ``--seeds`` for every row, else 3 (0 1 2) on full MNIST and 1 (0) on the smaller rows.

Architectures: ``fc`` (the MLP pair, ``gens.networks.MLPEncoder`` / ``MLPDecoder``) and ``conv``
(``gens.networks.ConvEncoder`` / ``ConvDecoder``) for every row: the conv pair zero-pads MNIST's 28x28 (and
digits' 8x8) to 32x32 inside the encoder and crops the decoder's 32x32 back (``gens.networks.conv_padded_shape``).
An arch that ``gens.networks.build_networks`` refuses for a row's images is refused before anything trains (no
other network is built here).

    python benchmarks/latent_dims.py --dims 16 32 64 128 --rows mnist10k mnist --methods gen aae wae \\
        --bandwidth-rules h_opt corrected --jobs 2 --threads 1 --mnist /work/shared/data/mnist \\
        --out latent_dims.csv --plot latent_dims.png
    python benchmarks/latent_dims.py --plot-only --out latent_dims.csv --plot latent_dims.png   # redraw
    python benchmarks/latent_dims.py --rows digits --dims 16 --methods gen --seeds 0 --steps 20 --out /tmp/s.csv

Rows are appended to --out as they finish (robustness.py's columns plus latent_dim, rule and arch); a table of
means over seeds is printed at the end; ``--plot`` draws gap and test MSE against l for each method and rule
from the CSV.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import robustness  # noqa: E402

RULES = {"h_opt": {}, "corrected": {"bandwidth_correction": True}}  # GEN keyword arguments of each rule
SHAPES = {"digits": (1, 8, 8), "mnist1k": (1, 28, 28), "mnist10k": (1, 28, 28), "mnist": (1, 28, 28)}
FIELDS = [*robustness.FIELDS[:2], "latent_dim", "rule", "arch", *robustness.FIELDS[2:]]
KEYS = (("row", 9), ("latent_dim", 4), ("method", 4), ("rule", 9), ("arch", 4), ("options", 16))


def arch_problem(row: str, arch: str) -> str | None:
    """Why ``gens.networks.build_networks`` refuses ``arch`` for ``row``'s images (None: it builds them; a latent_dim
    too large for the row is reported by that row's training instead)."""
    from gens.networks import build_networks

    try:
        build_networks(SHAPES[row], 2, arch=arch, hidden=(8,))
    except ValueError as err:
        return str(err)
    return None


def seeds_for(args, row: str) -> list[int]:
    return list(args.seeds) if args.seeds is not None else ([0, 1, 2] if row == "mnist" else [0])


def jobs_for(args) -> list[dict]:
    """The grid's jobs (``robustness.make_job``), smallest data first; raises ValueError for an unbuildable arch."""
    options = robustness.method_options(args)
    steps = args.steps if args.steps is not None else robustness.budget_steps(args)
    for row in args.rows:
        for arch in args.arch:
            problem = arch_problem(row, arch)
            if problem:
                raise ValueError(f"arch: {arch!r} cannot train row {row!r} (images {SHAPES[row]}): {problem}")
    jobs = []
    for row in args.rows:
        for dim in args.dims:
            for method in args.methods:
                rules = args.bandwidth_rules if method == "gen" else ["-"]
                for rule in rules:
                    for arch in args.arch:
                        for seed in seeds_for(args, row):
                            kwargs = {**options.get(method, {}), **RULES.get(rule, {}), "arch": arch}
                            name = f"{row}-l{dim}-{method}-{rule}-{arch}-st{steps}-s{seed}"
                            jobs.append(robustness.make_job(
                                args, row, method, seed, steps, kwargs, dim, name=name, rule=rule, arch=arch,
                                user_options=",".join(f"{k}={v}" for k, v in options.get(method, {}).items())))
    return jobs


def summarise(job: dict, result: dict, refs: dict) -> dict:
    """``robustness.summarise`` plus latent_dim, rule and arch; options: the user's ``--options`` only."""
    row = robustness.summarise(job, result, refs)
    row.update(latent_dim=job["latent_dim"], rule=job["rule"], arch=job["arch"], options=job["user_options"])
    return row


def read_rows(path) -> list[dict]:
    """The CSV's rows with the numeric columns as floats (empty: None)."""
    out = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            for k, v in r.items():
                if k in ("row", "method", "rule", "arch", "options", "status", "message", "ok"):
                    continue
                try:
                    r[k] = float(v) if v not in ("", None) else None
                except ValueError:
                    r[k] = None
            out.append(r)
    return out


def plot(rows: list[dict], path) -> str:
    """gap and test MSE (mean over seeds) against l: one line per (data row, method, rule, arch); filled markers
    where every seed is ok (no collapsed or inflated dimension), open where one is not. Returns the path."""
    from gens.plots import pyplot, save_figure

    plt = pyplot()
    groups = {}
    for r in rows:
        if r.get("latent_dim") is None:
            continue
        key = (r["row"], r["method"], r.get("rule") or "-", r.get("arch") or "fc")
        groups.setdefault(key, {}).setdefault(int(r["latent_dim"]), []).append(r)
    data_rows = list(dict.fromkeys(k[0] for k in groups))
    lines = list(dict.fromkeys(k[1:] for k in groups))
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    dims = sorted({d for g in groups.values() for d in g})
    for key, by_dim in groups.items():
        color = f"C{lines.index(key[1:]) % 10}"
        ls = styles[data_rows.index(key[0]) % len(styles)]
        label = f"{key[0]} {key[1]}" + (f" {key[2]}" if key[2] != "-" else "") + (f" {key[3]}" if key[3] != "fc" else "")
        for ax, col in zip(axes, ("gap", "recon")):
            xs, ys, oks = [], [], []
            for d in sorted(by_dim):
                vals = [r[col] for r in by_dim[d] if isinstance(r.get(col), float) and math.isfinite(r[col])]
                if vals:
                    xs.append(d)
                    ys.append(sum(vals) / len(vals))
                    oks.append(all(str(r.get("ok")) == "True" for r in by_dim[d]))
            if not xs:
                continue
            ax.plot(xs, ys, ls=ls, color=color, label=label)
            for x, y, ok in zip(xs, ys, oks):
                ax.plot([x], [y], "o", color=color, mfc=color if ok else "none")
    for ax, title in zip(axes, ("entropy gap to N(0, I_l) (nats)", "test MSE (per pixel)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims or [16])
        ax.set_xticklabels([str(d) for d in dims] or ["16"])
        ax.set_xlabel("latent dimension l")
        ax.set_title(title)
    axes[0].axhline(0.0, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=7)
    fig.suptitle("issue 18: large latent dimensions (filled: every seed ok; open: a collapsed / inflated dimension)",
                 fontsize=9)
    save_figure(fig, path, dpi=110)
    return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", nargs="+", type=int, default=[16, 32, 64, 128], help="latent dimensions l")
    p.add_argument("--rows", nargs="+", default=["mnist10k", "mnist"], choices=list(robustness.ROWS))
    p.add_argument("--methods", nargs="+", default=["gen", "aae", "wae"])
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds of every row (default: 0 1 2 on full MNIST, 0 on the smaller rows)")
    p.add_argument("--bandwidth-rules", nargs="+", default=list(RULES), choices=list(RULES),
                   help="GEN bandwidth rules: h_opt (the default GEN) and corrected (bandwidth_correction=True)")
    p.add_argument("--arch", nargs="+", default=["fc"], choices=["fc", "conv"],
                   help="network pairs (conv: 28x28 and 8x8 images padded to 32x32, see the docstring)")
    p.add_argument("--options", nargs="*", default=[], help="method:key=value,... for every training of a method")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: DEFAULT_STEPS x --budget-scale)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="train this many times DEFAULT_STEPS steps")
    p.add_argument("--mnist", default="/work/shared/data/mnist", help="folder of the MNIST IDX files")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="CSV the rows are appended to")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw gap and test MSE against l from --out")
    p.add_argument("--plot-only", action="store_true", help="train nothing: only draw --plot from --out")
    p.add_argument("--history", default=None, metavar="DIR", help="save each training's validation fidelity as DIR/*.json")
    args = p.parse_args(argv)
    if args.plot and not args.out:
        p.error("--plot draws from the CSV of --out: give --out")
    if args.plot_only:
        if not args.plot:
            p.error("--plot-only needs --plot PNG")
        print(plot(read_rows(args.out), args.plot))
        return 0
    if min(args.dims) < 1 or (args.steps is not None and args.steps < 1):
        p.error("--dims and --steps must be >= 1")
    try:
        jobs = jobs_for(args)
    except ValueError as err:
        p.error(str(err))
    if args.history:
        os.makedirs(args.history, exist_ok=True)
    print(f"# {len(jobs)} trainings; {' '.join(sys.argv)}", flush=True)
    rows = robustness.run_grid(jobs, args.jobs, args.out, FIELDS, summarise=summarise, keys=KEYS)
    robustness.print_means(rows, keys=KEYS)
    if args.plot:
        print(plot(read_rows(args.out), args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sweep training configurations and measure what the defaults are chosen by.

For every (config, epochs, seed): train on the data's train split and measure on the test split with
``gens.reproduce.measure.train_and_measure`` (the code behind ``gens reproduce table2``): report the
per-pixel reconstruction MSE, the whitened leave-one-out KDE entropy of the first n test latents for
each n in --ns (``gens.evaluation.entropy.latent_entropy``; paper Table 2), the mean |z| and the
smallest / largest per-dimension std of the test latents, the Frechet distance between 10000 generated
samples and the test images in pixel space (a crude sample-quality check), and the mean epoch time; with
``--fid N`` the in-domain FID of N samples from each ex-post sampler of --samplers (``gens.samplers``, fitted
once per model on its training latents; columns fid_analytic, fid_gaussian, fid_gmm).
The same entropy of N(0, I_l) samples is printed once per seed as the reference.

    python benchmarks/train_sweep.py --data mnist:/work/shared/data/mnist \\
        --configs gen:lam=0.01,bank_mode=refresh gen:lam=0.01,bank_mode=queue aae:lam=0.01 \\
        --epochs 12 --seeds 0 1 2 --accelerator auto --out sweep.csv --jobs 4

A config is ``method[:key=value,key=value]``; values are parsed as Python literals where possible
(``lam=0.01``, ``bank_reshuffle=True``, ``hidden=[500,500]``), else kept as strings. ``--jobs N`` runs
N trainings at once in spawned processes (a small FC model leaves a GPU mostly idle); rows are appended
to --out as they finish.
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import os
import sys


def fields(ns, samplers=()) -> list[str]:
    return ["config", "epochs", "steps", "global_step", "seed", "status", "recon", *[f"H{n}" for n in ns], "Htrain", "mean_abs_z", "min_std",
            "max_std", "eig_min", "eig_max", "sample_fd", *[f"fid_{s}" for s in samplers], "epoch_s", "h", "message"]


def parse_config(text: str) -> tuple[str, dict]:
    """'gen:lam=0.01,bank_mode=queue' -> ('gen', {'lam': 0.01, 'bank_mode': 'queue'})."""
    method, _, rest = text.partition(":")
    kwargs = {}
    for item in filter(None, _split(rest)):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"configs: expected key=value in {text!r}, got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return method.strip(), kwargs


def _split(text: str):
    """Split on commas outside brackets."""
    depth, cur = 0, ""
    for ch in text:
        depth += 1 if ch in "[(" else -1 if ch in "])" else 0
        if ch == "," and depth == 0:
            yield cur
            cur = ""
        else:
            cur += ch
    yield cur


def _budget(epochs, steps) -> str:
    return f"ep{epochs}" if epochs else f"st{steps}" if steps else "default"


def _slug(config: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._=-" else "_" for ch in config)


def run_one(job: dict) -> dict:
    """Train one configuration and measure it (``gens.reproduce.measure.train_and_measure``); never raises."""
    from gens.reproduce.measure import train_and_measure

    try:
        method, kwargs = parse_config(job["config"])
    except ValueError as err:
        return {"config": job["config"], "epochs": job["epochs"], "seed": job["seed"], "status": "error",
                "message": str(err)}
    row = train_and_measure({**job, "method": method, "kwargs": kwargs})
    return {**row, "config": job["config"]}


def reference_rows(seeds, dim, ns, device) -> list[dict]:
    """Entropy of N(0, I_dim) samples: the target's row of Table 2."""
    from gens.reproduce.measure import reference_row

    return [{**reference_row(seed, dim, ns, device), "config": f"N(0,I_{dim}) samples", "epochs": 0, "steps": 0}
            for seed in seeds]


def fmt(row: dict, ns, samplers=()) -> str:
    def f(k, spec):
        v = row.get(k)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"

    hs = " ".join(f(f"H{n}", "6.2f") for n in ns)
    return (f"{row['config']:<48} {_budget(row.get('epochs'), row.get('steps')):<7} step={row.get('global_step', '-')} seed={row['seed']:<2} {row['status']:<8} recon={f('recon', '.4f')} "
            f"H({'/'.join(map(str, ns))})={hs} |z|={f('mean_abs_z', '.2f')} std=[{f('min_std', '.2f')},{f('max_std', '.2f')}] "
            f"eig=[{f('eig_min', '.2f')},{f('eig_max', '.2f')}] "
            f"Htrain={f('Htrain', '.2f')} fd={f('sample_fd', '.1f')} "
            + "".join(f"fid_{s}={f(f'fid_{s}', '.2f')} " for s in samplers) + f"epoch={f('epoch_s', '.1f')}s h={f('h', '.3f')} {row.get('message', '')}")


def fid_samplers(names) -> list[str]:
    """The registry's order, "analytic" always (``gens.reproduce.measure`` reports it as ``fid`` too)."""
    from gens.samplers import SAMPLERS

    unknown = sorted(set(names) - set(SAMPLERS))
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    return [s for s in SAMPLERS if s in set(names) | {"analytic"}]


def fid_config(args, samplers) -> dict | None:
    """``train_and_measure``'s FID settings: in-domain features of --data's classifier (trained here once, before
    the jobs read it from the cache), N samples from each sampler."""
    if not args.fid:
        return None
    from gens.evaluation.fid import domain_classifier

    domain_classifier(args.data, limit=args.limit)
    return {"features": "domain", "n": args.fid, "source": args.data, "cache_dir": None, "classifier_epochs": None,
            "classifier_limit": args.limit, "samplers": samplers}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist:/work/shared/data/mnist", help="gens data source")
    p.add_argument("--configs", nargs="+", default=["gen", "gen:bank_mode=queue", "aae"],
                   help="method[:key=value,...] (see the module docstring)")
    p.add_argument("--epochs", nargs="+", type=int, default=None, help="budgets in epochs (default: --steps)")
    p.add_argument("--steps", nargs="+", type=int, default=None,
                   help="budgets in optimiser steps (default: gens.training.DEFAULT_STEPS when --epochs is not given)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT samples of each split")
    p.add_argument("--ns", nargs="+", type=int, default=[1000, 2000, 5000, 10000], help="entropy sample sizes")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (spawned processes)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per training (CPU)")
    p.add_argument("--out", default=None, help="CSV file the rows are appended to")
    p.add_argument("--train-entropy", action="store_true",
                   help="also measure the entropy of max(--ns) training latents (column Htrain)")
    p.add_argument("--save-latents", default=None, metavar="DIR",
                   help="save each training's test latents to DIR/<config>-ep<E>-s<seed>.npy and its per-epoch "
                        "validation fidelity (gens.fidelity) to .json beside it")
    p.add_argument("--fid", type=int, default=None, metavar="N",
                   help="in-domain FID of N samples per ex-post sampler against N test images (columns fid_<sampler>)")
    p.add_argument("--samplers", nargs="+", default=["analytic", "gaussian", "gmm"],
                   help="ex-post samplers measured with --fid (gens.samplers.SAMPLERS)")
    args = p.parse_args(argv)
    samplers = fid_samplers(args.samplers) if args.fid else []
    if args.save_latents:
        os.makedirs(args.save_latents, exist_ok=True)
    for c in args.configs:
        parse_config(c)  # fail early on a malformed config
    fid = fid_config(args, samplers)
    budgets = [(e, None) for e in args.epochs or []] + [(None, st) for st in args.steps or []] or [(None, None)]
    jobs = [dict(config=c, epochs=e, steps=st, seed=s, data=args.data, latent_dim=args.latent_dim, batch_size=args.batch_size,
                 limit=args.limit, ns=sorted(args.ns), accelerator=args.accelerator, threads=args.threads,
                 train_entropy=args.train_entropy,
                 latents_out=args.save_latents and os.path.join(args.save_latents, f"{_slug(c)}-{_budget(e, st)}-s{s}.npy"),
                 history_out=args.save_latents and os.path.join(args.save_latents, f"{_slug(c)}-{_budget(e, st)}-s{s}.json"),
                 fid=fid)
            for e, st in budgets for c in args.configs for s in args.seeds]

    import torch

    device = "cuda" if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    print(f"# {len(jobs)} trainings on {args.data} (l={args.latent_dim}, batch {args.batch_size}, limit {args.limit}); "
          f"torch {torch.__version__}, device {device}; {' '.join(sys.argv)}", flush=True)
    writer = None
    if args.out:
        new = not os.path.exists(args.out)
        fh = open(args.out, "a", newline="")
        writer = csv.DictWriter(fh, fields(sorted(args.ns), samplers), extrasaction="ignore")
        if new:
            writer.writeheader()

    def emit(row):
        print(fmt(row, sorted(args.ns), samplers), flush=True)
        if writer:
            writer.writerow(row)
            fh.flush()

    for row in reference_rows(args.seeds, args.latent_dim, args.ns, device):
        emit(row)
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(run_one, j) for j in jobs]):
                emit(fut.result())
    else:
        for job in jobs:
            emit(run_one(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())

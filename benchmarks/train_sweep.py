"""Sweep training configurations and measure what the defaults are chosen by.

For every (config, epochs, seed): train on the data's train split (``gens.training.train``), then on the
test split report the per-pixel reconstruction MSE, the whitened leave-one-out KDE entropy of the first
n test latents for each n in --ns (``gens.evaluation.entropy.latent_entropy``; paper Table 2), the mean
|z| and the smallest / largest per-dimension std of the test latents, the Frechet distance between
10000 generated samples and the test images in pixel space (a crude sample-quality check), and the
mean epoch time. The same entropy of N(0, I_l) samples is printed once per seed as the reference.

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
import time
import traceback

import lightning as L

def fields(ns) -> list[str]:
    return ["config", "epochs", "seed", "status", "recon", *[f"H{n}" for n in ns], "mean_abs_z", "min_std",
            "max_std", "sample_fd", "epoch_s", "h", "message"]


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


def pixel_frechet(a, b) -> float:
    """Frechet distance between Gaussians fitted to the rows of a: (n, d) and b: (k, d) (float64)."""
    import numpy as np
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2.0 * covmean))


def entropies(z, ns, device):
    """{n: whitened LOO-KDE entropy of z[:n]} for n <= len(z)."""
    from gens.evaluation.entropy import latent_entropy

    return {n: latent_entropy(z[:n].to(device)) for n in ns if n <= len(z)}


class EpochTimer(L.Callback):
    """Collects the wall time of every training epoch (validation included)."""

    def __init__(self):
        self.times, self._t = [], None

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter() - self._t)


def run_one(job: dict) -> dict:
    """Train one configuration and measure it; never raises (errors become status='error')."""
    import torch

    from gens.training import TrainingDiverged, encode_all, train

    row = {"config": job["config"], "epochs": job["epochs"], "seed": job["seed"], "status": "ok", "message": ""}
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    try:
        method, kwargs = parse_config(job["config"])
        timer = EpochTimer()
        tk = dict(accelerator=job["accelerator"], devices=1, enable_progress_bar=False, callbacks=[timer])
        dk = {"limit": job["limit"]} if job["limit"] else {}
        try:
            module, trainer = train(method, job["data"], latent_dim=job["latent_dim"], max_epochs=job["epochs"],
                                    batch_size=job["batch_size"], seed=job["seed"], trainer_kwargs=tk,
                                    datamodule_kwargs=dk, **kwargs)
        except TrainingDiverged as err:
            row.update(status="diverged", message=str(err)[:200])
            return row
        module.eval()
        device = next(module.parameters()).device
        x = trainer.datamodule.split_tensors("test")[0]
        z = encode_all(module, x)
        with torch.no_grad():
            recon = sum(float(module.recon_loss(c.to(device), module.reconstruct(c.to(device)))) * len(c)
                        for c in x.split(1000)) / len(x)
        row.update(recon=recon, mean_abs_z=float(z.abs().mean()), min_std=float(z.std(0).min()),
                   max_std=float(z.std(0).max()), epoch_s=sum(timer.times) / max(1, len(timer.times)))
        if hasattr(module, "bandwidth_h"):
            row["h"] = float(module.bandwidth_h)
        if not torch.isfinite(z).all():
            row.update(status="nonfinite")
            return row
        perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(job["seed"]))
        for n, H in entropies(z[perm], job["ns"], device).items():
            row[f"H{n}"] = H
        try:
            s = module.sample(min(10000, len(x)), generator=torch.Generator().manual_seed(job["seed"]))
            row["sample_fd"] = pixel_frechet(s.flatten(1).cpu().numpy(), x.flatten(1).numpy())
        except ValueError as err:  # e.g. h >= 1: no shrunk target
            row["message"] = f"no samples: {err}"[:200]
    except Exception as err:  # keep the sweep going; report the failure in the table
        row.update(status="error", message=f"{type(err).__name__}: {err}"[:200])
        traceback.print_exc()
    return row


def reference_rows(seeds, dim, ns, device) -> list[dict]:
    """Entropy of N(0, I_dim) samples: the target's row of Table 2."""
    import torch

    rows = []
    for seed in seeds:
        z = torch.randn(max(ns), dim, generator=torch.Generator().manual_seed(10_000 + seed))
        row = {"config": f"N(0,I_{dim}) samples", "epochs": 0, "seed": seed, "status": "ok", "message": "",
               "mean_abs_z": float(z.abs().mean()), "min_std": float(z.std(0).min()), "max_std": float(z.std(0).max())}
        for n, H in entropies(z, ns, device).items():
            row[f"H{n}"] = H
        rows.append(row)
    return rows


def fmt(row: dict, ns) -> str:
    def f(k, spec):
        v = row.get(k)
        return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"

    hs = " ".join(f(f"H{n}", "6.2f") for n in ns)
    return (f"{row['config']:<48} ep={row['epochs']:<3} seed={row['seed']:<2} {row['status']:<8} recon={f('recon', '.4f')} "
            f"H({'/'.join(map(str, ns))})={hs} |z|={f('mean_abs_z', '.2f')} std=[{f('min_std', '.2f')},{f('max_std', '.2f')}] "
            f"fd={f('sample_fd', '.1f')} epoch={f('epoch_s', '.1f')}s h={f('h', '.3f')} {row.get('message', '')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist:/work/shared/data/mnist", help="gens data source")
    p.add_argument("--configs", nargs="+", default=["gen", "gen:bank_mode=queue", "aae"],
                   help="method[:key=value,...] (see the module docstring)")
    p.add_argument("--epochs", nargs="+", type=int, default=[12])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT samples of each split")
    p.add_argument("--ns", nargs="+", type=int, default=[1000, 2000, 5000, 10000], help="entropy sample sizes")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (spawned processes)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per training (CPU)")
    p.add_argument("--out", default=None, help="CSV file the rows are appended to")
    args = p.parse_args(argv)
    for c in args.configs:
        parse_config(c)  # fail early on a malformed config
    jobs = [dict(config=c, epochs=e, seed=s, data=args.data, latent_dim=args.latent_dim, batch_size=args.batch_size,
                 limit=args.limit, ns=sorted(args.ns), accelerator=args.accelerator, threads=args.threads)
            for e in args.epochs for c in args.configs for s in args.seeds]

    import torch

    device = "cuda" if args.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    print(f"# {len(jobs)} trainings on {args.data} (l={args.latent_dim}, batch {args.batch_size}, limit {args.limit}); "
          f"torch {torch.__version__}, device {device}; {' '.join(sys.argv)}", flush=True)
    writer = None
    if args.out:
        new = not os.path.exists(args.out)
        fh = open(args.out, "a", newline="")
        writer = csv.DictWriter(fh, fields(sorted(args.ns)), extrasaction="ignore")
        if new:
            writer.writeheader()

    def emit(row):
        print(fmt(row, sorted(args.ns)), flush=True)
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

"""h_opt for a mixture target (issue 17): the current ``optimal_bandwidth`` against the code before it.

    python benchmarks/bench_hopt.py                                   # mog:10, l = 8, m = 10000, 10 trials
    python benchmarks/bench_hopt.py --old-samples 3000                # old code on a smaller m (ratio there)
    python benchmarks/bench_hopt.py --target mog:3 --dim 2 --samples 200 --old-samples 200 --rounds 3

The old code is ``src/gens/bandwidth.py`` at ``--old-rev`` (default 9761c41, the last version before
issue 17), read with ``git show`` and loaded as a module, so it is the old algorithm exactly (bracket
walk, brentq, float32 exponentials without the floor). On the cell m = --old-samples both run
side by side (alternating, ``--rounds`` times each, same seed, nothing cached) and the script prints
both h_opt, their largest per-trial difference and the old / new ratio of the median CPU seconds
(process time: on a shared machine other processes stretch the wall time, which is printed too).
If --samples differs from --old-samples, the new code then runs alone on m = --samples.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_old(rev: str):
    """``gens/bandwidth.py`` at git revision ``rev`` as a module (its imports resolve to today's gens)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/gens/bandwidth.py"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"gens_bandwidth_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:src/gens/bandwidth.py", "exec"), module.__dict__)  # noqa: S102 (our own history)
    return module


def timed(fn, target, m, args):
    start, cpu = time.perf_counter(), time.process_time()
    r = fn(target, m, trials=args.trials, seed=args.seed, cache=False, warn=False, num_threads=args.threads)
    return r, time.process_time() - cpu, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="mog:10", help="as for gens bandwidth: normal, mog:K, mog:K:SCALE")
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--samples", type=int, default=10000, help="m for the new code")
    p.add_argument("--old-samples", type=int, default=None, help="m of the side-by-side cell (default --samples)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1, help="old/new runs each on the side-by-side cell")
    p.add_argument("--old-rev", default="9761c41", help="git revision of the old src/gens/bandwidth.py")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    for name in ("dim", "samples", "trials", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"{name}: must be >= 1, got {getattr(args, name)}")
    old_m = args.samples if args.old_samples is None else args.old_samples

    import scipy.optimize  # noqa: F401 (the old code imports it on first use: not part of its time)
    import torch

    from gens.bandwidth import optimal_bandwidth
    from gens.targets import target_from_text

    torch.set_num_threads(args.threads)
    old = load_old(args.old_rev)
    target = target_from_text(args.target, args.dim)
    print(f"target={args.target} l={args.dim} trials={args.trials} seed={args.seed} threads={args.threads} "
          f"cpus={os.cpu_count()} load average at start={os.getloadavg()[0]:.1f}", flush=True)

    cpu = {"old": [], "new": []}
    res = {}
    for _ in range(args.rounds):
        for name, fn in (("new", optimal_bandwidth), ("old", old.optimal_bandwidth)):
            r, c, w = timed(fn, target, old_m, args)
            cpu[name].append(c)
            res[name] = r
            print(f"m={old_m:<6d} {name} ({args.old_rev if name == 'old' else 'current'}): h_opt = {r.h:.6f} "
                  f"+- {r.std:.6f}  CPU {c:.2f} s, wall {w:.2f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    diff = max(abs(a - b) for a, b in zip(res["old"].values, res["new"].values))
    ratio = statistics.median(cpu["old"]) / statistics.median(cpu["new"])
    print(f"m={old_m}: |h_new - h_old| = {abs(res['new'].h - res['old'].h):.2e} (largest per trial {diff:.2e}); "
          f"CPU old / new = {ratio:.1f}x (medians of {args.rounds})", flush=True)
    if args.samples != old_m:
        r, c, w = timed(optimal_bandwidth, target, args.samples, args)
        print(f"m={args.samples:<6d} new (current): h_opt = {r.h:.6f} +- {r.std:.6f}  CPU {c:.2f} s, wall {w:.2f} s, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

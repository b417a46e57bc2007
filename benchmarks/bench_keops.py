"""The GEN's KDE term, forward and backward, in gens.kde against a naive full-matrix torch KDE, the
pre-issue-7 gens.kde (optional) and a KeOps LazyTensor log-sum-exp (issue 7 item 4), in one process.

    git show 3e4ea1c:src/gens/kde.py > /tmp/kde_old.py
    python benchmarks/bench_keops.py --baseline-kde /tmp/kde_old.py
    python benchmarks/bench_keops.py --no-keops --shapes 100x10000x8

Each shape n x m x l is n query latents (requires_grad) against a bank of m (no gradient), as in a
GEN step: time of log p_e(z) and its gradient w.r.t. z, summed. Implementations run interleaved
(rounds of reps each), torch with --threads threads; medians, and ratios to gens.kde. Values and
gradients of every implementation are checked against gens.kde in float64 before timing (values to
--check-tol relative, default 1e-5; gradients to it in float64, to 1e-3 of the largest in float32). ``pykeops`` is optional (``pip install pykeops``; it compiles its kernels with the
system C++ compiler on first use, which is not timed). --dtype float64 --no-grad times the
evaluation-side forward pass instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import time


def _const(m, l, h):
    return -math.log(m) - l * math.log(h) - 0.5 * l * math.log(2 * math.pi)


def naive(q, b, h):
    """Full (n, m) matrix: cdist, logsumexp; plain autograd."""
    import torch

    s = torch.cdist(q, b).square().mul(-0.5 / (h * h))
    return torch.logsumexp(s, 1) + _const(*b.shape, h)


def keops(q, b, h):
    """KeOps LazyTensor: the (n, m) matrix is never stored; autograd through KeOps' own gradient formula."""
    from pykeops.torch import LazyTensor

    s = -((LazyTensor(q[:, None, :]) - LazyTensor(b[None, :, :])) ** 2).sum(-1) * (0.5 / (h * h))
    return s.logsumexp(dim=1).view(-1) + _const(*b.shape, h)


def load_kde(path):
    spec = importlib.util.spec_from_file_location("baseline_kde", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.kde_log_density


def run_once(fn, q, b, h, grad: bool):
    import torch

    if grad:
        z = q.detach().clone().requires_grad_(True)
        out = fn(z, b, h)
        out.sum().backward()
        return out.detach(), z.grad
    with torch.no_grad():
        return fn(q, b, h), None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["100x10000x8", "100x10000x32", "100x10000x128", "100x100000x8",
                                                    "500x10000x8"], help="n x m x l")
    p.add_argument("--h", type=float, default=0.534)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-grad", action="store_true", help="forward only")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--naive-limit", type=float, default=2e7, help="largest n*m for the naive full matrix")
    p.add_argument("--baseline-kde", help="a gens/kde.py file to time too (e.g. the pre-issue-7 version)")
    p.add_argument("--no-keops", action="store_true")
    p.add_argument("--check-tol", type=float, default=1e-5)
    args = p.parse_args(argv)

    import torch

    from gens.kde import kde_log_density

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    grad = not args.no_grad
    impls = {"gens": kde_log_density, "naive": naive}
    if args.baseline_kde:
        impls["gens_baseline"] = load_kde(args.baseline_kde)
    if not args.no_keops:
        try:
            import pykeops  # noqa: F401

            impls["keops"] = keops
        except ImportError as err:
            print(f"pykeops not importable ({err}); skipping KeOps")
    print(f"{'fwd+bwd' if grad else 'forward'} {args.dtype}, h={args.h}, threads={torch.get_num_threads()}, "
          f"cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    if "keops" in impls:  # compile outside the measurements (first call per formula / dtype / dimension)
        for shape in args.shapes:
            n, m, l = (int(v) for v in shape.split("x"))
            t0 = time.perf_counter()
            run_once(keops, torch.randn(4, l, dtype=dtype), torch.randn(16, l, dtype=dtype), args.h, grad)
            print(f"keops warm-up / compile l={l}: {time.perf_counter() - t0:.1f} s", flush=True)
    names = list(impls)
    print("| n x m x l | " + " | ".join(f"{k} ms" for k in names) + " | " +
          " | ".join(f"{k}/gens" for k in names[1:]) + " | max rel diff vs f64 gens (value, grad) |")
    print("|---" * (1 + 2 * len(names)) + "|---|")
    rows = []
    for shape in args.shapes:
        n, m, l = (int(v) for v in shape.split("x"))
        g = torch.Generator().manual_seed(0)
        q = torch.randn(n, l, generator=g, dtype=dtype) * 0.8
        b = torch.randn(m, l, generator=g, dtype=dtype)
        active = [k for k in names if k != "naive" or n * m <= args.naive_limit]
        ref_v, ref_g = run_once(kde_log_density, q.double(), b.double(), args.h, grad)
        diffs = {}
        for k in active:
            v, gr = run_once(impls[k], q, b, args.h, grad)
            dv = float(((v.double() - ref_v).abs() / ref_v.abs().clamp_min(1)).max())
            dg = float((gr.double() - ref_g).abs().max() / ref_g.abs().max()) if grad else 0.0
            diffs[k] = (dv, dg)
            gtol = args.check_tol if dtype == torch.float64 else max(args.check_tol, 1e-3)  # float32 gradients
            if not (dv < args.check_tol and dg < gtol):
                raise SystemExit(f"{k} disagrees with gens.kde (float64) at {shape}: value {dv:.1e}, grad {dg:.1e}")
        times = {k: [] for k in active}
        for r in range(args.rounds):
            for k in active[r % len(active):] + active[: r % len(active)]:
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    run_once(impls[k], q, b, args.h, grad)
                times[k].append((time.perf_counter() - t0) / args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median([a / c for a, c in zip(times[k], times["gens"])]) for k in active}
        rows.append({"shape": shape, "ms": {k: 1e3 * v for k, v in med.items()}, "ratio": ratio, "diffs": diffs})
        cells = [f"{1e3 * med[k]:.2f}" if k in med else "-" for k in names]
        rcells = [f"{ratio[k]:.2f}" if k in ratio else "-" for k in names[1:]]
        dcells = ", ".join(f"{k} {d[0]:.0e}/{d[1]:.0e}" for k, d in diffs.items())
        print(f"| {shape} | " + " | ".join(cells) + " | " + " | ".join(rcells) + f" | {dcells} |", flush=True)
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()

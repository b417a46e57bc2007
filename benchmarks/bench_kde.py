"""Throughput and peak memory of gens.kde.kde_log_density against a naive full-matrix torch KDE and
scikit-learn's KernelDensity, side by side in one run (float64).

    python benchmarks/bench_kde.py                       # default grid (a few minutes)
    python benchmarks/bench_kde.py --banks 1000000 --dims 8 --queries 10000 --skip-sklearn

Each measurement runs in a fresh subprocess; peak memory is the largest rise of the process's
resident set size during the call (sampled every 2 ms), or with --device cuda the most GPU memory
allocated beyond the inputs. The naive version builds the full (n, m)
matrix and is run only where that fits in --naive-limit elements; sklearn only where n * m is at
most --sklearn-limit (its exact tree search is slow in high dimensions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(fn):
    """(seconds, peak RSS rise in bytes, result) of fn()."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss() - base)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    return seconds, max(peak[0], _rss() - base), out


def one(impl: str, n: int, m: int, dim: int, h: float, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    device = os.environ.get("BENCH_DEVICE", "cpu") if impl != "sklearn" else "cpu"
    g = torch.Generator().manual_seed(0)
    query = torch.randn(n, dim, generator=g, dtype=torch.float64).to(device)
    bank = torch.randn(m, dim, generator=g, dtype=torch.float64).to(device)
    if impl == "gens":
        from gens.kde import kde_log_density

        fn = lambda q, b: kde_log_density(q, b, h).cpu().numpy()  # noqa: E731
    elif impl == "naive":
        def fn(q, b):
            d2 = torch.cdist(q, b).square_()
            lse = torch.logsumexp(-d2 / (2 * h * h), dim=1)
            return (lse - math.log(b.shape[0]) - dim * math.log(h) - 0.5 * dim * math.log(2 * math.pi)).cpu().numpy()
    else:
        from sklearn.neighbors import KernelDensity

        algorithm = os.environ.get("BENCH_SKLEARN_ALGORITHM", "auto")
        fn = lambda q, b: KernelDensity(kernel="gaussian", bandwidth=h, algorithm=algorithm).fit(  # noqa: E731
            b.numpy()).score_samples(q.numpy())
    fn(query[:16], bank[:256])  # warm-up (lazy initialisation) outside the measurement
    if device != "cpu":  # peak = the most GPU memory allocated beyond the inputs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn(query, bank)  # ends with a copy to the CPU, so the GPU work is done
        seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    else:
        seconds, peak, out = _measure(lambda: fn(query, bank))
    return {"seconds": seconds, "peak": peak, "values": np.asarray(out)[:200].tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--banks", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dims", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--h", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each measurement")
    p.add_argument("--naive-limit", type=float, default=2e8, help="largest n*m for the full-matrix version")
    p.add_argument("--sklearn-limit", type=float, default=2e7, help="largest n*m for sklearn")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--sklearn-algorithm", default="auto", choices=("auto", "kd_tree", "ball_tree"))
    p.add_argument("--device", default="cpu", help="torch device of gens and naive (sklearn runs on the CPU)")
    p.add_argument("--one", nargs=5, metavar=("IMPL", "N", "M", "DIM", "H"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        impl, n, m, dim, h = args.one
        print(json.dumps(one(impl, int(n), int(m), int(dim), float(h), args.threads)))
        return
    os.environ["BENCH_SKLEARN_ALGORITHM"] = args.sklearn_algorithm
    os.environ["BENCH_DEVICE"] = args.device

    print(f"kde_log_density vs naive full-matrix torch vs sklearn KernelDensity; float64, h={args.h}, "
          f"n={args.queries} queries, torch threads={args.threads}, cpu count={os.cpu_count()}, "
          f"sklearn algorithm={args.sklearn_algorithm}, device={args.device}, load average {os.getloadavg()[0]:.1f}")
    print("| bank m | l | gens s | gens Mpairs/s | gens peak MiB | naive s | naive peak MiB | sklearn s | "
          "naive/gens time | sklearn/gens time | max diff naive | max diff sklearn |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m in args.banks:
        for dim in args.dims:
            n = args.queries
            res = {}
            impls = ["gens"]
            if n * m <= args.naive_limit:
                impls.append("naive")
            if not args.skip_sklearn and n * m <= args.sklearn_limit:
                impls.append("sklearn")
            for impl in impls:
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", impl, str(n), str(m),
                       str(dim), str(args.h)]
                res[impl] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            gens = res["gens"]

            def col(impl, value):
                return value(res[impl]) if impl in res else "-"

            def diff(r):  # largest |difference| from gens over the first 200 queries
                return f"{max(abs(a - b) for a, b in zip(r['values'], gens['values'])):.1e}"
            cells = [
                f"{m:,}", str(dim), f"{gens['seconds']:.2f}", f"{n * m / gens['seconds'] / 1e6:.0f}",
                f"{gens['peak'] / 2**20:.0f}",
                col("naive", lambda r: f"{r['seconds']:.2f}"),
                col("naive", lambda r: f"{r['peak'] / 2**20:.0f}"),
                col("sklearn", lambda r: f"{r['seconds']:.2f}"),
                col("naive", lambda r: f"{r['seconds'] / gens['seconds']:.2f}"),
                col("sklearn", lambda r: f"{r['seconds'] / gens['seconds']:.1f}"),
                col("naive", diff),
                col("sklearn", diff),
            ]
            print("| " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    main()

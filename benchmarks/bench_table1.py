"""Wall time of the optimal-bandwidth estimate for the largest Table 1 cell (l = 40, m = 8000).

    python benchmarks/bench_table1.py                     # root and fixed point, 10 trials each
    python benchmarks/bench_table1.py --independent       # separate z' and z'' sets (twice the work)

Prints h_opt +- sd, the paper's value, and the wall and CPU seconds each estimate took (nothing is
cached), with the machine's load average: on a shared machine other processes stretch the wall time.
The whole of Table 1 is ``gens bandwidth --table --no-cache``.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=40)
    p.add_argument("--samples", type=int, default=8000)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["root", "fixed_point"])
    p.add_argument("--independent", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    from gens.bandwidth import PAPER_TABLE1, optimal_bandwidth_normal

    paper = PAPER_TABLE1.get(args.dim, {}).get(args.samples)
    print(f"l={args.dim} m={args.samples} trials={args.trials} independent={args.independent} "
          f"threads={args.threads} cpus={os.cpu_count()} load average at start={os.getloadavg()[0]:.1f}")
    for method in args.methods:
        start, cpu = time.perf_counter(), time.process_time()
        r = optimal_bandwidth_normal(args.dim, args.samples, trials=args.trials, method=method, cache=False,
                                     warn=False, independent=args.independent, num_threads=args.threads)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"{method:12s} h_opt = {r.h:.4f} +- {r.std:.4f}  (paper {paper})  wall {wall:.1f} s, "
              f"CPU {cpu:.1f} s, load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Whitened-latent entropy of N(0, I_l) samples (the paper's Table 2 "Standard normal" row) and its cost.

For each sample size m, ``--trials`` independent N(0, I_l) samples are whitened and scored with
``gens.evaluation.latent_entropy`` (supplement eq. 5 bandwidth, eq. 4 leave-one-out entropy). Prints a
markdown table of mean +- sd of H and h, the paper's row, the true entropy l/2 log(2 pi e), and the
wall time of one call (whitening + bandwidth + entropy).

    python benchmarks/bench_entropy.py                                  # m = 1000..10000, 5 trials
    python benchmarks/bench_entropy.py --sizes 10000 --trials 1         # time 10K latents
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from gens.evaluation.entropy import latent_entropy

PAPER = {1000: (11.668, 0.055), 2000: (11.621, 0.060), 5000: (11.575, 0.020), 10000: (11.538, 0.016)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    true_h = 0.5 * args.dim * math.log(2 * math.pi * math.e)
    print(f"N(0, I_{args.dim}); true entropy {true_h:.3f}; torch threads {torch.get_num_threads()}\n")
    print("| m | H (mean +- sd) | paper | h_opt | seconds per call |")
    print("|---|---|---|---|---|")
    for m in args.sizes:
        hs, bws, secs = [], [], []
        for t in range(args.trials):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + m * 101 + t)
            z = torch.randn(m, args.dim, generator=g, dtype=torch.float64)
            t0 = time.perf_counter()
            H, h = latent_entropy(z, return_bandwidth=True)
            secs.append(time.perf_counter() - t0)
            hs.append(H)
            bws.append(h)
        sd = statistics.stdev(hs) if len(hs) > 1 else float("nan")
        paper = PAPER.get(m) if args.dim == 8 else None
        paper_txt = f"{paper[0]:.3f} +- {paper[1]:.3f}" if paper else "-"
        print(f"| {m} | {statistics.mean(hs):.3f} +- {sd:.3f} | {paper_txt} | {statistics.mean(bws):.3f} | "
              f"{statistics.mean(secs):.1f} |", flush=True)


if __name__ == "__main__":
    main()

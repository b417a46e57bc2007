"""``gens bandwidth``: the optimal KDE bandwidth h_opt(l, m), or the whole of the paper's Table 1."""

from __future__ import annotations

import math

HELP = "optimal KDE bandwidth h_opt for a latent dimension and bank size (or the paper's Table 1)"
DESCRIPTION = (
    "Estimate h_opt, the bandwidth that maximises the KDE estimate of the JSD (paper eq. 2) between "
    "sample sets drawn from the target (Sec. 3, supplement eqs. 1-3). Prints the mean and sd over trials. "
    "--table computes Table 1 (standard normal; l in 2..40, m in 250..8000) beside the paper's values."
)

TABLE_DIMS = (2, 5, 10, 20, 40)
TABLE_SAMPLES = (250, 500, 1000, 2000, 4000, 8000)
TOLERANCE = 0.03  # a cell reproduces the paper when |measured - paper| <= paper sd + TOLERANCE


def add_arguments(parser) -> None:
    parser.add_argument("--dim", "-l", type=int, help="latent dimension l")
    parser.add_argument("--samples", "-m", type=int, help="bank size m (KDE samples)")
    parser.add_argument("--trials", type=int, default=10, help="independent trials (mean and sd over them)")
    parser.add_argument("--target", default="normal",
                        help="'normal' (standard normal), 'mog:K' or 'mog:K:SCALE' (K unit modes at least SCALE "
                             "apart, gens.targets.mixture_on_simplex), or a JSON file holding a target spec")
    parser.add_argument("--method", choices=("root", "fixed-point"), default="root",
                        help="root trapping on dJ/dh (the paper's) or the fixed point of supplement eq. 3")
    parser.add_argument("--corrected", action="store_true", help="also print h_corr = h_opt / sqrt(1 + h_opt^2)")
    parser.add_argument("--independent", action="store_true",
                        help="draw z' and z'' as separate sets (three sets per trial, twice the work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="recompute instead of reading ~/.cache/gens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--table", action="store_true", help="compute the paper's Table 1 (takes minutes)")


def parse_target(text: str, dim: int):
    """'normal' | 'mog:K[:SCALE]' | path to a JSON spec -> a gens target of dimension ``dim``."""
    import json
    from pathlib import Path

    from gens.targets import StandardNormal, mixture_on_simplex, target_from_spec

    if text in ("normal", "standard_normal", "n"):
        return StandardNormal(dim)
    if text.startswith("mog:"):
        parts = text.split(":")[1:]
        try:
            k = int(parts[0])
            scale = float(parts[1]) if len(parts) > 1 else 6.0
        except (ValueError, IndexError):
            raise ValueError(f"target: 'mog:K' or 'mog:K:SCALE' needs an integer K and a number SCALE, got {text!r}") \
                from None
        return mixture_on_simplex(k, dim, scale=scale)
    if Path(text).is_file():
        target = target_from_spec(json.loads(Path(text).read_text()))
        if target.dim != dim:
            raise ValueError(f"target: the spec in {text} has dim {target.dim}, but --dim is {dim}")
        return target
    raise ValueError(f"target: must be 'normal', 'mog:K', 'mog:K:SCALE' or a JSON spec file, got {text!r}")


def _cell(result, paper) -> tuple[str, bool]:
    """Markdown cell 'measured / paper mark' and whether it is within tolerance."""
    if result.exceeds_one:
        measured = ">1.0" + (f" ({result.h:.2f}±{result.std:.2f})" if math.isfinite(result.h) else "")
    else:
        measured = f"{result.h:.2f}±{result.std:.2f}"
    if paper is None:
        ok = result.exceeds_one
        return f"{measured} / >1.0 {'✓' if ok else '✗'}", ok
    mean, sd = paper
    ok = abs(result.h - mean) <= sd + TOLERANCE + 1e-9
    return f"{measured} / {mean:.2f}±{sd:.2f} {'✓' if ok else '✗'}", ok


def run_table(args) -> int:
    import time

    from gens._validation import check_int

    check_int("trials", args.trials, minimum=1)
    from tqdm.auto import tqdm

    from gens.bandwidth import PAPER_TABLE1, optimal_bandwidth_normal

    cells = [(dim, m) for dim in TABLE_DIMS for m in TABLE_SAMPLES]
    cost = {c: c[1] ** 2 * (c[0] + 8) for c in cells}  # work grows as m^2 (l + const)
    results, start = {}, time.perf_counter()
    with tqdm(total=sum(cost.values()), desc="Table 1", unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
        for dim, m in cells:
            bar.set_postfix_str(f"l={dim} m={m}")
            results[dim, m] = optimal_bandwidth_normal(
                dim, m, trials=args.trials, method=args.method, seed=args.seed, cache=not args.no_cache,
                warn=False, independent=args.independent, num_threads=args.threads or None)
            bar.update(cost[dim, m])
    wall = time.perf_counter() - start
    within = 0
    print(f"Table 1: h_opt maximising the JSD between standard-normal sample sets ({args.trials} trials, "
          f"method={args.method}, {'independent' if args.independent else 'shared'} z'/z'', seed={args.seed}).")
    print("Each cell: measured mean±sd / paper; ✓ when |measured - paper| <= paper sd + 0.03 "
          "(>1.0 cells: ✓ when the measured h_opt is >= 1 too).\n")
    print("| l \\ m | " + " | ".join(map(str, TABLE_SAMPLES)) + " |")
    print("|---" * (len(TABLE_SAMPLES) + 1) + "|")
    for dim in TABLE_DIMS:
        row = []
        for m in TABLE_SAMPLES:
            text, ok = _cell(results[dim, m], PAPER_TABLE1[dim][m])
            within += ok
            row.append(text)
        print(f"| {dim} | " + " | ".join(row) + " |")
    print(f"\n{within}/{len(cells)} cells within tolerance; wall time {wall:.1f} s "
          f"(cells read from the cache take no time; --no-cache recomputes).")
    return 0 if within == len(cells) else 1


def run(args) -> int:
    if args.table:
        return run_table(args)
    if args.dim is None or args.samples is None:
        raise ValueError("dim: --dim and --samples are both required, unless --table is given")
    from gens._validation import check_int
    from gens.bandwidth import optimal_bandwidth

    dim = check_int("dim", args.dim, minimum=1)
    samples = check_int("samples", args.samples, minimum=2)
    trials = check_int("trials", args.trials, minimum=1)
    target = parse_target(args.target, dim)
    result = optimal_bandwidth(target, samples, trials=trials, method=args.method, seed=args.seed,
                               cache=not args.no_cache, progress=True, independent=args.independent,
                               num_threads=args.threads or None)
    print(result)
    if args.corrected:
        print(f"h_corr = {result.corrected:.3f} (= h_opt / sqrt(1 + h_opt^2))")
    print(f"({result.seconds:.1f} s to compute)")
    return 0


"""``gens bandwidth``: the optimal KDE bandwidth h_opt(l, m), or the whole of the paper's Table 1."""

from __future__ import annotations

import math

HELP = "optimal KDE bandwidth h_opt for a latent dimension and bank size (or the paper's Table 1)"
DESCRIPTION = (
    "Estimate h_opt, the bandwidth that maximises the KDE estimate of the JSD (paper eq. 2) between "
    "sample sets drawn from the target (Sec. 3, supplement eqs. 1-3). Prints the mean and sd over trials. "
    "--table computes Table 1 (standard normal; l in 2..40, m in 250..8000) beside the paper's values; "
    "--dims and --samples-list extend or narrow its grid (e.g. --dims 64 128 --samples-list 10000 60000: cells the "
    "paper does not have show '-' for it), --corrected adds h_corr = h_opt / sqrt(1 + h_opt^2) to each cell."
)

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
    parser.add_argument("--dims", type=int, nargs="+", metavar="L",
                        help="--table: latent dimensions l of the rows (default: the paper's 2 5 10 20 40)")
    parser.add_argument("--samples-list", type=int, nargs="+", metavar="M",
                        help="--table: bank sizes m of the columns (default: the paper's 250 ... 8000)")


def _cell(value: dict, paper, corrected: bool = False) -> tuple[str, bool | None]:
    """Markdown cell 'measured [h_corr] / paper mark' of a ``gens.reproduce.table1.measure`` cell and whether it
    reproduces the paper (``gens.reproduce.table1.within``). ``paper``: (mean, sd), None (the paper's ">1.0") or
    ``table1.MISSING`` (a cell the paper does not have: '/ -', no mark, None returned)."""
    from gens.bandwidth import corrected_bandwidth
    from gens.reproduce.table1 import MISSING, within

    h, std = value["h"], value["std"]
    if value["exceeds_one"]:
        measured = ">1.0" + (f" ({h:.2f}±{std:.2f})" if math.isfinite(h) else "")
    else:
        measured = f"{h:.2f}±{std:.2f}"
    if corrected:
        measured += f" → {corrected_bandwidth(h):.2f}"
    if paper is MISSING:
        return f"{measured} / -", None
    ok = within(value, paper)
    paper_text = ">1.0" if paper is None else f"{paper[0]:.2f}±{paper[1]:.2f}"
    return f"{measured} / {paper_text} {'✓' if ok else '✗'}", ok


def _grid(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(dims, sizes) of ``--table``: ``--dims`` / ``--samples-list``, else the paper's (``table1.DIMS``, ``SIZES``)."""
    from gens._validation import check_int
    from gens.reproduce import table1

    dims = table1.DIMS if args.dims is None else tuple(check_int("dims", d, minimum=1) for d in args.dims)
    sizes = table1.SIZES if args.samples_list is None else tuple(
        check_int("samples_list", m, minimum=2) for m in args.samples_list)
    return tuple(dict.fromkeys(dims)), tuple(dict.fromkeys(sizes))  # in the given order, repeats dropped


def run_table(args) -> int:
    """Table 1 on the terminal: the cells of ``gens.reproduce.table1`` (``_grid``: the paper's DIMS x SIZES unless
    --dims / --samples-list are given) beside the paper's values, its rule. Exit code 0 when every cell the paper
    has reproduces (cells it does not have are not judged)."""
    import time

    from gens._validation import check_int

    check_int("trials", args.trials, minimum=1)
    from tqdm.auto import tqdm

    from gens.reproduce import table1

    dims, sizes = _grid(args)
    cells = [(dim, m) for dim in dims for m in sizes]
    cost = {c: c[1] ** 2 * (c[0] + 8) for c in cells}  # work grows as m^2 (l + const)
    results, start = {}, time.perf_counter()
    with tqdm(total=sum(cost.values()), desc="Table 1", unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
        for dim, m in cells:
            bar.set_postfix_str(f"l={dim} m={m}")
            results[dim, m] = table1.measure(dim, m, trials=args.trials, method=args.method, seed=args.seed,
                                             cache=not args.no_cache, independent=args.independent,
                                             num_threads=args.threads or None)
            bar.update(cost[dim, m])
    wall = time.perf_counter() - start
    within = checked = 0
    print(f"Table 1: h_opt maximising the JSD between standard-normal sample sets ({args.trials} trials, "
          f"method={args.method}, {'independent' if args.independent else 'shared'} z'/z'', seed={args.seed}).")
    print(f"Each cell: measured mean±sd{' → h_corr = h_opt / sqrt(1 + h_opt^2)' if args.corrected else ''} / paper; "
          f"✓ when |measured - paper| <= paper sd + {table1.TOLERANCE} (>1.0 cells: ✓ when the measured h_opt is "
          ">= 1 too); '-': not in the paper.\n")
    print("| l \\ m | " + " | ".join(map(str, sizes)) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for dim in dims:
        row = []
        for m in sizes:
            text, ok = _cell(results[dim, m], table1.paper_value(dim, m), corrected=args.corrected)
            if ok is not None:
                within += ok
                checked += 1
            row.append(text)
        print(f"| {dim} | " + " | ".join(row) + " |")
    new = len(cells) - checked
    print(f"\n{within}/{checked} of the paper's cells within tolerance" + (f" ({new} not in the paper)" if new else "")
          + f"; wall time {wall:.1f} s (cells read from the cache take no time; --no-cache recomputes).")
    return 0 if within == checked else 1


def run(args) -> int:
    if args.table:
        return run_table(args)
    if args.dims is not None or args.samples_list is not None:
        raise ValueError("dims: --dims and --samples-list set the grid of --table; for one cell give --dim and "
                         "--samples")
    if args.dim is None or args.samples is None:
        raise ValueError("dim: --dim and --samples are both required, unless --table is given")
    from gens._validation import check_int
    from gens.bandwidth import optimal_bandwidth
    from gens.targets import target_from_text

    dim = check_int("dim", args.dim, minimum=1)
    samples = check_int("samples", args.samples, minimum=2)
    trials = check_int("trials", args.trials, minimum=1)
    target = target_from_text(args.target, dim)
    result = optimal_bandwidth(target, samples, trials=trials, method=args.method, seed=args.seed,
                               cache=not args.no_cache, progress=True, independent=args.independent,
                               num_threads=args.threads or None)
    print(result)
    if args.corrected:
        print(f"h_corr = {result.corrected:.3f} (= h_opt / sqrt(1 + h_opt^2))")
    print(f"({result.seconds:.1f} s to compute)")
    return 0


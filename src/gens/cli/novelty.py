"""``gens novelty``: eq.-10 novelty scores of a trained run, or the one-class MNIST protocol."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HELP = "novelty scores -log p(x) (eq. 10) of a run's data, or the one-class AUROC protocol (--one-class)"
DESCRIPTION = (
    "Score data with the data-space density of eq. 10, log p(x) = log p(z') - 1/2 log det(J^T J) + "
    "log N(x; x', sigma^2 I), sigma^2 fitted to the run's training residuals. "
    "`gens novelty RUN [--data SRC]` writes scores.csv (score = -log p(x), higher = more novel, and every "
    "term) and novelty.png (left: the 100 least novel images, right: the 100 most novel; the paper's Fig. 4) "
    "into --out (default RUN/novelty). "
    "`gens novelty --one-class --data mnist:DIR --digits 0-9 [--steps S | --epochs E]` trains one model per digit "
    "(the budget rule of `gens train`: default gens.config.DEFAULT_STEPS steps) on that "
    "digit's training images, scores the whole test split and prints the AUROC of the eq.-10 score, the "
    "reconstruction error, the latent density alone and the in-manifold density alone (log p(z') - 1/2 log "
    "det J^T J) as a markdown table. With --through-api it trains `gens.<METHOD>(...).fit(X[y == k])` instead "
    "and ranks by `score_parts` (higher = more typical): the AUROC (inliers positive) of log p(x), of its "
    "in-manifold part alone and of its reconstruction part alone, per class and their mean."
)

# columns of the one-class table: name -> header (eq10_pixel only with --per-pixel: experimental)
SCORES = {"eq10": "eq. 10", "eq10_pixel": "eq. 10, per-pixel sigma", "recon": "reconstruction",
          "latent": "latent only", "manifold": "in-manifold only"}
_PARTS = ("score", "log_px", "log_pz", "log_det", "log_noise", "recon_error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gens.samplers import SAMPLERS  # torch-free

    a = p.add_argument
    a("run", nargs="?", metavar="RUN", help="run folder written by `gens train` (not with --one-class)")
    a("--data", default=None, help="data source to score (default: the run's); with --one-class: a labelled "
      "source such as mnist:DIR")
    a("--split", default="test", choices=["train", "val", "test"], help="split of --data to score")
    a("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint of RUN")
    a("--out", default=None, help="output folder (default: RUN/novelty; --one-class: print only)")
    a("--limit", type=int, default=None, help="score only the first N images (--one-class: of each split)")
    a("--inlier", type=int, default=None, help="label of the inlier class: also print AUROCs (novel = other)")
    a("--per-pixel", action="store_true", help="experimental: per-pixel noise variances instead of eq. 10's "
      "sigma^2 I (measured worse on MNIST, BENCHMARKS.md 'Novelty'); with --one-class: an extra column")
    a("--chunk-size", type=int, default=512, help="images per Jacobian chunk (bounds memory)")
    a("--device", default=None, help="cpu | cuda (default: cuda when available)")
    g = p.add_argument_group("one-class protocol")
    g.add_argument("--one-class", action="store_true", help="run the one-class protocol instead of scoring RUN")
    g.add_argument("--digits", default="0-9", help="classes, e.g. 0-9 or 1,3,7")
    g.add_argument("--method", default="gen", choices=["gen", "ae", "vae", "aae", "wae"], help="method to train")
    from gens.config import DEFAULT_STEPS  # torch-free

    g.add_argument("--steps", type=int, default=None, help="optimiser steps per class (default with neither: "
                   f"{DEFAULT_STEPS}, gens.config.DEFAULT_STEPS; with --epochs: whichever ends first)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs per class (alone: epochs only)")
    g.add_argument("--latent-dim", type=int, default=8, help="latent dimension l")
    g.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default: 1000 1000)")
    g.add_argument("--lam", type=float, default=None, help="regulariser weight (default: the method's)")
    g.add_argument("--bandwidth", type=float, default=None, help="GEN: kernel bandwidth (default: h_opt)")
    g.add_argument("--bank-size", type=int, default=None, help="GEN: bank size m (default: the module's, capped "
                   "at the class's training images; one m for every class lets h_opt be computed once)")
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--through-api", action="store_true", help="train each class's model with the scikit-learn "
                   "estimator (gens.GEN, ...) and score with its score_parts: AUROC of log p(x), in-manifold "
                   "and reconstruction parts (gens.evaluation.one_class.one_class_estimator)")
    g.add_argument("--sampler", default=None, choices=list(SAMPLERS), help="with --through-api: the latent "
                   "density p(z') of eq. 10 (default: analytic, the method's own; gaussian, gmm: ex-post fits)")


def parse_classes(text: str) -> list[int]:
    """'0-9' -> [0..9]; '1,3,7' -> [1, 3, 7]; '0-2,7' -> [0, 1, 2, 7]."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            lo, sep, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"digits: must be classes like 0-9 or 1,3,7; got {text!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"digits: must name classes >= 0, like 0-9 or 1,3,7; got {text!r}")
    return sorted(set(out))


def run(args) -> int:
    if getattr(args, "through_api", False) and not args.one_class:
        raise ValueError("through_api: only with --one-class")
    if getattr(args, "sampler", None) is not None and not getattr(args, "through_api", False):
        raise ValueError("sampler: only with --one-class --through-api")
    if args.one_class:
        if args.run:
            raise ValueError("run: --one-class trains its own models; leave RUN out")
        return _one_class_api(args) if getattr(args, "through_api", False) else _one_class(args)
    if not args.run:
        raise ValueError("run: give a run folder (RUN), or --one-class --data SRC")
    return _score_run(args)


def _score_run(args) -> int:
    import time

    import torch

    from gens.evaluation.novelty import DataSpaceDensity
    from gens.runs import load_run, run_split

    module, cfg = load_run(args.run, args.checkpoint)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = module.to(device).eval()
    start = time.perf_counter()
    scorer = DataSpaceDensity(module.encode, module.decode, module.latent_distribution().log_prob,
                              per_pixel=args.per_pixel, chunk_size=args.chunk_size)
    x_fit, _ = run_split(cfg, "train")  # sigma^2 from the data the run was trained on
    scorer.fit(x_fit.to(device))
    x, y = run_split(cfg, args.split, data=args.data, limit=args.limit)
    parts = scorer.score_parts(x.to(device))
    seconds = time.perf_counter() - start
    out = Path(args.out) if args.out else Path(args.run) / "novelty"
    out.mkdir(parents=True, exist_ok=True)
    labels = None if y is None else y.numpy()
    _write_scores(out / "scores.csv", parts, labels)
    _write_figure(out / "novelty.png", x.cpu().numpy(), parts["score"], tuple(module.data_shape))
    print(f"scored {len(x)} images of {args.data or cfg['data']} ({args.split}) in {seconds:.1f} s; "
          f"sigma^2 = {_sigma2_text(scorer.sigma2_)}")
    print(f"wrote {out / 'scores.csv'} and {out / 'novelty.png'} (left: 100 least novel, right: 100 most)")
    if args.inlier is not None:
        if labels is None:
            raise ValueError("inlier: the data have no labels")
        print(_auroc_text(parts, labels, args.inlier))
    return 0


def _budget_text(args) -> str:
    """The per-class budget as the tables' title says it (gens.training.budget's rule)."""
    from gens.config import DEFAULT_STEPS

    parts = [f"{args.epochs} epochs"] if args.epochs is not None else []
    if args.steps is not None or args.epochs is None:
        parts.insert(0, f"{args.steps or DEFAULT_STEPS} steps")
    return " or ".join(parts)


def _one_class_options(args, through_api: bool) -> dict:
    """The method options of a one-class run (those given); checks --data and --digits before any training."""
    if not args.data:
        raise ValueError("data: --one-class needs a labelled source, e.g. --data mnist:/path/to/mnist")
    parse_classes(args.digits)
    hidden = args.hidden if args.hidden is None or not through_api else tuple(args.hidden)
    options = {"hidden": hidden, "lam": args.lam, "bandwidth": args.bandwidth, "bank_size": args.bank_size}
    return {k: v for k, v in options.items() if v is not None}


def _one_class_table(args, columns: dict, run_class, title: str, name: str, write, files: str) -> int:
    """Train and score every class (``run_class(k)`` -> a protocol result), print the markdown AUROC table
    (``columns``: result key -> header) with its mean row, and with --out write NAME.json and, per class,
    ``write(out, k, result)`` (``files``: what it writes, for the last line)."""
    import numpy as np

    out = Path(args.out) if args.out else None
    rows = []
    print(title + "\n")
    print("| class | train images | " + " | ".join(columns.values()) + " | train s | score s |")
    print("|---" * (len(columns) + 4) + "|")
    for k in parse_classes(args.digits):
        r = run_class(k)
        a = r["auroc"]
        extra = {key: r[key] for key in ("sigma2", "noise_variance") if key in r}
        rows.append({"digit": k, "n_train": r["n_train"], **a, **extra,
                     "train_seconds": r["train_seconds"], "score_seconds": r["score_seconds"]})
        cells = " | ".join(f"{a[s]:.4f}" for s in columns)
        print(f"| {k} | {r['n_train']} | {cells} | {r['train_seconds']:.0f} | {r['score_seconds']:.1f} |", flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            write(out, k, r)
    mean = {s: float(np.mean([row[s] for row in rows])) for s in columns}
    print(f"| mean | | {' | '.join(f'{mean[s]:.4f}' for s in columns)} | | |")
    if out is not None:
        (out / f"{name}.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                               if not k.startswith("_")},
                                                      "rows": rows, "mean": mean}, indent=2))
        print(f"\nwrote {out}/{name}.json, {files}")
    return 0


def _one_class(args) -> int:
    from gens.evaluation.one_class import one_class_protocol

    kw = _one_class_options(args, through_api=False)
    columns = {k: v for k, v in SCORES.items() if args.per_pixel or k != "eq10_pixel"}

    def run_class(k):
        return one_class_protocol(args.data, k, args.method, args.epochs, steps=args.steps,
                                  latent_dim=args.latent_dim, train_limit=args.limit, test_limit=args.limit,
                                  seed=args.seed, chunk_size=args.chunk_size, device=args.device,
                                  pixel_noise=args.per_pixel, **kw)

    def write(out, k, r):
        x_test = _test_images(args.data, args.limit)
        _write_scores(out / f"scores_{k}.csv", r["parts"], r["labels"])
        _write_figure(out / f"novelty_{k}.png", x_test, r["parts"]["score"], x_test.shape[1:])

    title = (f"One-class novelty, {args.method.upper()}, l = {args.latent_dim}, {_budget_text(args)}, {args.data}; "
             "AUROC (novel = every other class)")
    return _one_class_table(args, columns, run_class, title, "one_class", write, "scores_K.csv and novelty_K.png")


API_SCORES = {"log_px": "log p(x), eq. 10", "in_manifold": "in-manifold only",
              "reconstruction": "reconstruction only"}  # columns of the --through-api table


def _one_class_api(args) -> int:
    from gens.evaluation.one_class import one_class_estimator

    if args.per_pixel:
        raise ValueError("per_pixel: not with --through-api (the estimators' eq. 10 uses sigma^2 I)")
    kw = _one_class_options(args, through_api=True)
    accelerator = {None: "auto", "cpu": "cpu", "cuda": "gpu"}.get(args.device, args.device)
    sampler = args.sampler or "analytic"

    def run_class(k):
        return one_class_estimator(args.data, k, args.method, args.epochs, steps=args.steps,
                                   latent_dim=args.latent_dim, train_limit=args.limit, test_limit=args.limit,
                                   seed=args.seed, sampler=sampler, chunk_size=args.chunk_size,
                                   accelerator=accelerator, **kw)

    def write(out, k, r):
        _write_api_scores(out / f"api_scores_{k}.csv", r["scores"], r["labels"])
        x_test = _test_images(args.data, args.limit)
        _write_figure(out / f"api_novelty_{k}.png", x_test, -r["scores"]["log_px"], x_test.shape[1:])

    title = (f"One-class novelty through the estimator API, {args.method.upper()}, l = {args.latent_dim}, "
             f"{_budget_text(args)}, {args.data}, p(z') {sampler}; AUROC of score_parts (inliers = the class, "
             "positive; higher = more typical)")
    return _one_class_table(args, API_SCORES, run_class, title, "one_class_api", write,
                            "api_scores_K.csv and api_novelty_K.png")


def _write_api_scores(path: Path, scores: dict, labels) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", *API_SCORES])
        for i in range(len(labels)):
            w.writerow([i, int(labels[i]), *(repr(float(scores[k][i])) for k in API_SCORES)])


def _test_images(source, limit):
    from gens.data import load_dataset

    return load_dataset(source, "test", limit=limit)[0]


def _sigma2_text(s2) -> str:
    return f"{s2:.5f}" if isinstance(s2, float) else f"per pixel, mean {float(s2.mean()):.5f}"


def _auroc_text(parts, labels, inlier: int) -> str:
    from sklearn.metrics import roc_auc_score

    novel = (labels != inlier).astype(int)
    if novel.min() == novel.max():
        raise ValueError(f"inlier: class {inlier} must be present alongside other classes in the scored data")
    auc = {name: roc_auc_score(novel, s) for name, s in
           (("eq. 10", parts["score"]), ("reconstruction", parts["recon_error"]), ("latent only", -parts["log_pz"]),
            ("in-manifold only", parts["log_det"] - parts["log_pz"]))}
    return f"AUROC (inlier class {inlier}): " + ", ".join(f"{k} {v:.4f}" for k, v in auc.items())


def _write_scores(path: Path, parts: dict, labels) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", *_PARTS])
        for i in range(len(parts["score"])):
            w.writerow([i, "" if labels is None else int(labels[i]), *(f"{parts[k][i]:.6g}" for k in _PARTS)])


def _write_figure(path: Path, x, score, data_shape, n: int = 100) -> None:
    """Side by side: the n least novel (left) and n most novel (right) images, each sorted by score."""
    import matplotlib.image as mpimg
    import numpy as np

    from gens.plots import as_images, image_scale, make_grid

    order = np.argsort(score, kind="stable")
    n = min(n, len(order))
    least, most = as_images(x[order[:n]], data_shape), as_images(x[order[::-1][:n]], data_shape)
    if least is None:
        return  # not images
    nrow = int(np.ceil(np.sqrt(n)))
    left, right = make_grid(least, nrow=nrow), make_grid(most, nrow=nrow)
    gap = np.full((left.shape[0], max(4, left.shape[1] // 20), left.shape[2]), 1.0)
    grid = np.concatenate([left, gap, right], axis=1)
    s = image_scale(tuple(data_shape))
    grid = grid.repeat(s, axis=0).repeat(s, axis=1)
    if grid.shape[2] == 1:
        grid = np.repeat(grid, 3, axis=2)
    mpimg.imsave(path, np.round(grid * 255).astype(np.uint8), format="png")

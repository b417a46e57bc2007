"""``gens evaluate {entropy,fid,correlation}``: the paper's Sec. 5.1-5.3 evaluations from the command line."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HELP = "evaluate a run: whitened latent entropy (Table 2), FID (Table 3), or the Fig. 1 correlation study"
DESCRIPTION = (
    "`gens evaluate entropy RUN --samples 1000 5000` encodes test images with the run's encoder and prints the "
    "whitened-latent entropy (supplement eqs. 4-5) beside the estimate for N(0, I_l) samples of the same size "
    "(the paper's Table 2); `--latents FILE.npy` scores saved latents instead of a run. "
    "`gens evaluate fid RUN` compares n generated samples with n test images under in-domain CNN features "
    "(trained once per data source and cached) or the standard FID Inception-v3 of pytorch-fid "
    "(`pip install 'gens[fid]'`; --inception-weights FILE, else the torch hub cache; never downloaded). "
    "`gens evaluate correlation` runs the Sec. 5.1 study (KDE vs NN JSD against the separation of a "
    "whitened two-normal mixture) and writes the Fig. 1 PNGs and JSON."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    e = sub.add_parser("entropy", help="whitened latent entropy of a run's test encodings vs N(0, I) samples",
                       formatter_class=fmt)
    e.add_argument("run", nargs="?", metavar="RUN", help="run folder written by `gens train`")
    e.add_argument("--latents", default=None, help="a (n, l) .npy of latents to score instead of RUN")
    e.add_argument("--samples", type=int, nargs="+", default=[1000],
                   help="sample sizes m (Table 2: 1000 2000 5000 10000)")
    e.add_argument("--trials", type=int, default=1, help="random subsets (and normal samples) per size: mean +- sd")
    e.add_argument("--data", default=None, help="data source to encode (default: the run's)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to encode")
    e.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint of RUN")
    e.add_argument("--seed", type=int, default=0, help="seed of the subsets and normal samples")
    e.add_argument("--json", default=None, help="also write the results to this JSON file")

    f = sub.add_parser("fid", help="FID of a run's samples against test images", formatter_class=fmt)
    f.add_argument("run", metavar="RUN", help="run folder written by `gens train`")
    f.add_argument("--features", default="domain", choices=["domain", "inception"],
                   help="domain: a CNN classifier trained on the run's labelled data (cached); "
                   "inception: the FID Inception-v3 of pytorch-fid (optional extra gens[fid])")
    f.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth or its folder, for --features inception (default: "
                   "the torch hub cache $TORCH_HOME/hub/checkpoints; never downloaded; needs pip install 'gens[fid]')")
    f.add_argument("--n", type=int, default=10000, help="samples and test images (capped at the test split)")
    f.add_argument("--data", default=None,
                   help="data source of the real images and the classifier (default: the run's)")
    f.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint of RUN")
    f.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    f.add_argument("--cache-dir", default=None, help="classifier cache (default: $GENS_CACHE_DIR or ~/.cache/gens)")
    f.add_argument("--classifier-epochs", type=int, default=None,
                   help="domain classifier epochs (default: >= 5 epochs and >= 2000 steps)")
    f.add_argument("--no-baseline", action="store_true", help="skip the real-vs-real FID (training vs test images)")
    f.add_argument("--batch-size", type=int, default=50, help="images per feature batch (Inception)")
    f.add_argument("--json", default=None, help="also write the results to this JSON file")

    c = sub.add_parser("correlation", help="Sec. 5.1 / Fig. 1: KDE vs NN JSD estimates against separation",
                       formatter_class=fmt)
    c.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10, 20], help="latent dimensions l")
    c.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000], help="sample sizes m")
    c.add_argument("--separations", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6], help="separations s")
    c.add_argument("--trials", type=int, default=5, help="trials per separation in the grid")
    c.add_argument("--line", type=int, nargs=3, default=[5, 1000, 20], metavar=("L", "M", "TRIALS"),
                   help="the line plot's cell and trials (the paper: 5 1000 20)")
    c.add_argument("--no-line", action="store_true", help="skip the line plot's study")
    c.add_argument("--quick", action="store_true", help="tiny settings (l=2, m=200, 3 separations, 2 trials)")
    c.add_argument("--max-epochs", type=int, default=200, help="NN discriminator epoch cap (early stopping decides)")
    c.add_argument("--seed", type=int, default=0, help="seed")
    c.add_argument("--out", default="fig1", help="output folder for correlation.json and the PNGs")


def run(args) -> int:
    return {"entropy": _entropy, "fid": _fid, "correlation": _correlation}[args.evaluation](args)


# ----------------------------------------------------------------------------------------- entropy

def _latents(args):
    import numpy as np
    import torch

    if args.latents is not None:
        if args.run is not None:
            raise ValueError("latents: give either RUN or --latents FILE.npy, not both")
        from gens.data import read_npy

        z = np.asarray(read_npy(args.latents), dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"latents: {args.latents} must hold a (n, l) array, got shape {z.shape}")
        return torch.as_tensor(z), f"{args.latents}"
    if args.run is None:
        raise ValueError("run: give a run folder (RUN) or --latents FILE.npy")
    from gens.runs import load_run, run_split
    from gens.training import encode_all

    module, cfg = load_run(args.run, args.checkpoint)
    x, _ = run_split(cfg, args.split, data=args.data)
    if len(x) == 0:
        raise ValueError(f"split: the {args.split} split of {args.data or cfg['data']} is empty")
    module.eval()
    return encode_all(module, x).double(), f"{cfg['method'].upper()} {args.run} ({args.split}, {len(x)} images)"


def _entropy(args) -> int:
    import statistics

    import torch

    from gens._validation import check_int
    from gens.evaluation.entropy import latent_entropy

    sizes = [check_int("samples", m, minimum=3) for m in args.samples]
    trials = check_int("trials", args.trials, minimum=1)
    z, what = _latents(args)
    n, l = z.shape
    if max(sizes) > n:
        raise ValueError(f"samples: at most {n} (the latents available), got {max(sizes)}")
    g = torch.Generator().manual_seed(check_int("seed", args.seed, minimum=0))
    true = 0.5 * l * math.log(2 * math.pi * math.e)
    print(f"whitened latent entropy (nats), l = {l}: {what}; N(0, I_{l}) true entropy {true:.3f}")
    print("| m | encoded H | h | N(0, I) samples H | h |")
    print("|---|---|---|---|---|")
    rows = []
    for m in sizes:
        enc, ref = [], []
        for _ in range(trials):
            idx = torch.randperm(n, generator=g)[:m] if m < n else torch.arange(n)
            enc.append(latent_entropy(z[idx], return_bandwidth=True))
            ref.append(latent_entropy(torch.randn(m, l, generator=g, dtype=torch.float64), return_bandwidth=True))
        row = {"m": m, "encoded": [e[0] for e in enc], "encoded_h": [e[1] for e in enc],
               "normal": [r[0] for r in ref], "normal_h": [r[1] for r in ref]}
        rows.append(row)

        def fmt(v):
            return f"{statistics.mean(v):.3f}" + (f" +- {statistics.stdev(v):.3f}" if len(v) > 1 else "")

        print(f"| {m} | {fmt(row['encoded'])} | {statistics.mean(row['encoded_h']):.3f} | {fmt(row['normal'])} | "
              f"{statistics.mean(row['normal_h']):.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"source": what, "latent_dim": l, "true_normal_entropy": true,
                                               "trials": trials, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------------------------- FID

def _fid(args) -> int:
    import torch

    from gens._validation import check_int
    from gens.evaluation import fid as F
    from gens.runs import load_run, run_split

    n = check_int("n", args.n, minimum=2)
    model = None
    if args.features == "inception":  # before the run loads: a missing extra or file fails at once
        model = F.load_inception(args.inception_weights,  # pytorch-fid's network, the user's file
                                 device="cuda" if torch.cuda.is_available() else None)
    module, cfg = load_run(args.run, args.checkpoint)
    source = args.data or cfg["data"]
    real, _ = run_split(cfg, "test", data=args.data)
    if len(real) < 2:
        raise ValueError(f"data: the test split of {source} has {len(real)} images; FID needs at least 2")
    n = min(n, len(real))
    real = real[:n]
    module.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(check_int("seed", args.seed, minimum=0))
        fake = torch.cat([module.sample(len(c), generator=g).float().cpu() for c in torch.arange(n).split(1000)])
    fake = fake.reshape(n, *real.shape[1:]).clamp(0, 1)
    if model is not None:
        feats = lambda x: F.inception_features(x, model, batch_size=args.batch_size)
    else:
        kw = {"cache_dir": args.cache_dir, "epochs": args.classifier_epochs}
        _, info = F.domain_classifier(source, progress=print, **kw)
        acc = info.get("test_accuracy")
        print(f"domain classifier: {info['cache']} ({'cached' if info['cached'] else 'trained'}; test accuracy "
              f"{'n/a' if acc is None else f'{acc:.4f}'})")
        feats = lambda x: F.domain_features(x, source, **kw)
    f_real = feats(real)
    out = {"run": str(args.run), "features": args.features, "n": n, "fid": F.fid_from_features(f_real, feats(fake))}
    print(f"FID ({args.features} features, n = {n}): generated vs test = {out['fid']:.3f}")
    if not args.no_baseline:
        train, _ = run_split(cfg, "train", data=args.data)
        k = min(n, len(train))
        out["fid_train_vs_test"] = F.fid_from_features(feats(train[:k]), f_real)
        print(f"baseline: {k} training images vs test = {out['fid_train_vs_test']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


# ------------------------------------------------------------------------------------- correlation

def _correlation(args) -> int:
    from gens._validation import check_int
    from gens.evaluation import correlation as C

    out = Path(args.out)
    nn = {"max_epochs": check_int("max_epochs", args.max_epochs, minimum=1)}
    grid = dict(C.QUICK) if args.quick else dict(dims=args.dims, sizes=args.sizes, separations=args.separations,
                                                  trials=args.trials)
    print(f"grid: l in {list(grid['dims'])}, m in {list(grid['sizes'])}, s in {list(grid['separations'])}, "
          f"{grid['trials']} trials", flush=True)
    results = C.correlation_study(**grid, seed=args.seed, nn=nn, progress=lambda s: print(s, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    payload = {"grid": results.to_dict()}
    print(results.table())
    print(f"wrote {C.plot_grid(results, out / 'fig1_grid.png')}")
    print(f"wrote {C.plot_examples(out / 'fig1_examples.png', seed=args.seed)}")
    if not args.no_line:
        l, m, trials = (grid["dims"][0], grid["sizes"][0], grid["trials"]) if args.quick else args.line
        line = C.correlation_study(dims=(l,), sizes=(m,), separations=grid["separations"], trials=trials,
                                   seed=args.seed + 1, nn=nn, progress=lambda s: print("line:", s, flush=True))
        payload["line"] = line.to_dict()
        print(f"wrote {C.plot_line(line, out / 'fig1_line.png', l=l, m=m)}")
    (out / "correlation.json").write_text(json.dumps(payload, indent=1))
    print(f"wrote {out / 'correlation.json'}")
    return 0

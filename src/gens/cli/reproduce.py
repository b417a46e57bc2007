"""``gens reproduce table1|table2|fig1|table3|all``: the paper's tables and figures into a report folder."""

from __future__ import annotations

import os

HELP = "reproduce the paper's Table 1, Table 2, Fig. 1, Table 3 (or all) into a report folder (markdown + HTML)"
DESCRIPTION = (
    "Runs a part of the paper's evaluation and writes DIR/report.md and a self-contained DIR/report.html with "
    "each table beside the paper's values (✗ where a value does not reproduce) and every figure. Each finished "
    "unit (a Table 1 cell, a trained model's measured row, a Fig. 1 cell) is saved under DIR/units at once, so "
    "running the same command again continues where an interrupted one stopped. Faithful settings by default "
    "(Table 2: full MNIST, the training default epochs, seeds 0 1 2); --quick runs a small version. "
    "table2 needs --data mnist:DIR (or GENS_MNIST=DIR); table3 uses --svhn DIR and/or --celeba DIR and is "
    "skipped with a note without them. Nothing is downloaded."
)
WHAT = ("table1", "table2", "fig1", "table3", "all")


def add_arguments(p) -> None:
    import argparse

    from gens.reproduce.table2 import CHOICES as METHOD_CHOICES  # torch-free
    from gens.samplers import SAMPLERS

    S = argparse.SUPPRESS  # no "(default: None)" in --help; read with getattr
    p.add_argument("what", choices=WHAT, metavar="WHAT", help=f"what to reproduce: {', '.join(WHAT)}")
    p.add_argument("--out", default="reproduction", help="report folder (reused units are read from it)")
    p.add_argument("--quick", action="store_true", default=S,
                   help="small version (Table 1: 9 cells; Table 2: first 10000 images, 2 epochs, seed 0; "
                        "Fig. 1: 2x2 grid, 3 trials; Table 3: GEN only, first 10000 images, 2 epochs)")
    p.add_argument("--data", default=S, help="Table 2's data: mnist:DIR (default: $GENS_MNIST)")
    p.add_argument("--seeds", type=int, nargs="+", default=S, help="training seeds (default: 0 1 2; --quick: 0)")
    p.add_argument("--epochs", type=int, default=S, help="training epochs (default: gens train's, 12 for MNIST)")
    p.add_argument("--limit", type=int, default=S, help="use only the first LIMIT images of each split")
    p.add_argument("--ns", type=int, nargs="+", default=S,
                   help="Table 2 entropy sample sizes (default: 1000 2000 5000 10000, capped at the test size)")
    p.add_argument("--methods", nargs="+", choices=METHOD_CHOICES, default=S, metavar="METHOD",
                   help=f"Table 2's methods, of {', '.join(METHOD_CHOICES)} (default: aae vae gen ae)")
    p.add_argument("--samplers", nargs="+", choices=tuple(SAMPLERS), default=S, metavar="SAMPLER",
                   help=f"Table 2: the FID of each ex-post sampler, of {', '.join(SAMPLERS)} (gens.samplers; fitted "
                        "once per model on its training latents; default: all; analytic, the FID column, always)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator of the trainings (cpu, gpu, auto)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run at once (spawned processes)")
    p.add_argument("--threads", type=int, default=S, help="torch threads per training (default: cores / jobs)")
    p.add_argument("--svhn", default=S, help="Table 3: folder with train_32x32.mat and test_32x32.mat")
    p.add_argument("--celeba", default=S, help="Table 3: folder of CelebA images")
    p.add_argument("--inception-weights", default=S,
                   help="pt_inception-2015-12-05-6726825d.pth for standard FIDs (default: in-domain features)")
    p.add_argument("--classifier-epochs", type=int, default=S,
                   help="epochs of the in-domain FID classifier (default: >= 5 epochs and 2000 steps; --quick: >= 2 "
                        "epochs and 500 steps)")
    p.add_argument("--cache-dir", default=S,
                   help="cache of the FID classifier and h_opt (default: $GENS_CACHE_DIR or ~/.cache/gens)")
    p.add_argument("--quiet", action="store_true", default=S, help="no progress output")


def run(args) -> int:
    # sleeping OpenMP waits: spinning threads made training many times slower on a shared CPU (see gens train)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from gens.reproduce import Options, reproduce

    a = vars(args)
    if a.get("cache_dir"):  # h_opt (gens.bandwidth) reads the cache folder from the environment
        os.environ["GENS_CACHE_DIR"] = a["cache_dir"]
    opts = Options(out=args.out, quick=a.get("quick", False), data=a.get("data"), seeds=a.get("seeds"),
                   epochs=a.get("epochs"), limit=a.get("limit"), ns=a.get("ns"), accelerator=args.accelerator,
                   jobs=args.jobs, threads=a.get("threads"), svhn=a.get("svhn"), celeba=a.get("celeba"),
                   inception_weights=a.get("inception_weights"), classifier_epochs=a.get("classifier_epochs"),
                   cache_dir=a.get("cache_dir"), methods=a.get("methods"), samplers=a.get("samplers"),
                   verbose=not a.get("quiet", False), command=_command(args))
    md, page = reproduce(args.what, opts)
    print(f"wrote {md} and {page}")
    return 0


def _command(args) -> str:
    """The command line that reproduces this run (options left at their defaults are omitted)."""
    words = ["gens", "reproduce", args.what]
    for name, value in vars(args).items():
        if name in ("what", "command", "_module", "quiet") or value is None or (name, value) in (
                ("out", "reproduction"), ("accelerator", "auto"), ("jobs", 1)):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        else:
            words += [flag, *(map(str, value) if isinstance(value, list) else [str(value)])]
    return " ".join(words)

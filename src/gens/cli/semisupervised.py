"""``gens semisupervised``: the semi-supervised protocol of Sec. 5.4 (test accuracy as a markdown table)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "semi-supervised GEN (paper Sec. 5.4): train with N labels, print the test accuracy as a markdown table"
DESCRIPTION = (
    "Train a semi-supervised GEN (a K-mode mixture target, one mode per class) on a labelled source with "
    "--labels N kept labels (balanced per class) and the rest unlabelled, and print one markdown row per "
    "(labels, latent dimension): test accuracy of the most probable component, unlabelled accuracy, "
    "reconstruction MSE, h (gens.evaluation.semisupervised.semisupervised_protocol). --figure writes the "
    "paper's Fig. 3 per row. Options left out take the defaults of gens.config (SemiSupervisedConfig, "
    "TrainConfig); the budget is gens train's: --steps (default gens.config.DEFAULT_STEPS when --epochs is "
    "not given either), --epochs alone: epochs only, both: whichever ends first."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gens import config as C  # torch-free

    s, t = C.options(C.SemiSupervisedConfig), C.options(C.TrainConfig)
    a = p.add_argument

    def module_option(flag: str, name: str, **kw) -> None:
        """A module option: left out, the module's default from gens.config (shown in the help)."""
        m = s[name]
        shown = 10 if name == "n_modes" else m["default"]
        if isinstance(shown, (list, tuple)):
            shown = " ".join(map(str, shown))
        kw.setdefault("type", type(m["default"]) if isinstance(m["default"], (int, float)) else None)
        a(flag, default=argparse.SUPPRESS, help=f"{m['help']} (default: {shown})", **{k: v for k, v in kw.items() if v})

    a("--data", default=C.RunConfig.data, help="labelled source with a test split (mnist:DIR, digits, ...)")
    a("--labels", type=int, nargs="+", default=[10000], help="labelled training samples (one run each)")
    a("--unlabelled", type=int, default=None,
      help="unlabelled training samples (default: 50000 - labels, capped at the data)")
    module_option("--modes", "n_modes", type=int)
    a("--latent-dim", type=int, nargs="+", default=[t["latent_dim"]["default"]], help="latent dimension(s) l")
    a("--steps", type=int, default=None, help=t["max_steps"]["help"])
    a("--epochs", type=int, default=None, help=t["max_epochs"]["help"])
    a("--seed", type=int, default=C.RunConfig.seed, help="seed of the split, the kept labels and the training")
    a("--batch-size", type=int, default=t["batch_size"]["default"], help=t["batch_size"]["help"])
    module_option("--lam", "lam")
    module_option("--sup-weight", "sup_weight")
    module_option("--supervision", "supervision", choices=s["supervision"]["choices"])
    module_option("--labelled-batch", "labelled_batch")
    module_option("--bank-size", "bank_size")
    module_option("--mode-scale", "mode_scale")
    module_option("--bandwidth", "bandwidth", type=float)
    module_option("--hidden", "hidden", type=int, nargs="+")
    module_option("--arch", "arch", choices=s["arch"]["choices"])
    p.add_argument("--no-leave-one-out", dest="leave_one_out", action="store_const", const=False,
                   default=argparse.SUPPRESS,
                   help="keep a minibatch's own samples in the bank (how the session-2 results were measured)")
    a("--limit-test", type=int, default=None, help="use only the first N test samples")
    a("--max-minutes", type=float, default=None, help="stop each run's training after this wall time")
    a("--accelerator", default="auto", help="Lightning accelerator: cpu | gpu | auto")
    a("--figure", default=None, help="Fig. 3 PNG path (suffixed per run when there are several)")
    a("--json", default=None, help="also append each result as one JSON line to this file")
    a("--progress", action="store_true", help="progress bar and model summary")


_MODULE_OPTIONS = ("lam", "sup_weight", "supervision", "labelled_batch", "bank_size", "mode_scale", "bandwidth",
                   "hidden", "arch", "leave_one_out")


def _suffixed(path, n_labels: int, latent_dim: int, many: bool) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    return path.with_name(f"{path.stem}_labels{n_labels}_l{latent_dim}{path.suffix}") if many else path


def run(args) -> int:
    import json

    from gens.data import load_dataset
    from gens.evaluation.semisupervised import HEADER, markdown_row, semisupervised_protocol

    extra = {k: getattr(args, k) for k in _MODULE_OPTIONS if hasattr(args, k)}  # given: the rest are the module's
    modes = getattr(args, "modes", 10)
    n_avail = len(load_dataset(args.data, "train")[0])
    runs = [(n, l) for n in args.labels for l in args.latent_dim]
    print(HEADER, flush=True)
    for n_labels, l in runs:
        n_unl = args.unlabelled if args.unlabelled is not None else max(0, min(50000, n_avail) - n_labels)
        res = semisupervised_protocol(args.data, n_labels, n_unl, modes, l, args.epochs, args.seed, steps=args.steps,
                                      batch_size=args.batch_size, accelerator=args.accelerator,
                                      progress=args.progress, limit_test=args.limit_test,
                                      max_minutes=args.max_minutes,
                                      figure=_suffixed(args.figure, n_labels, l, len(runs) > 1), **extra)
        print(markdown_row(res), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    return 0

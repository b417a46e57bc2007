"""``gens train``: train a GEN (or a baseline) into a run folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "train a GEN or a baseline (ae, vae, aae, wae) into a run folder (checkpoints, logs, figures)"
DESCRIPTION = (
    "Train a method on a data source and write a run folder: config.json, checkpoints/last.ckpt (+ best.ckpt), "
    "metrics.csv, TensorBoard events, metrics.json and PNGs of reconstructions, samples, latents and losses. "
    "With no options it trains a GEN on scikit-learn's bundled 8x8 digits (nothing is downloaded). "
    "--resume RUN continues a run from RUN/checkpoints/last.ckpt with its saved configuration (only "
    "--epochs, --checkpoint-every and the hardware options may change) and ends where an uninterrupted run "
    "with the same seed would."
)


def _d(name):
    from gens.runs import DEFAULTS

    v = DEFAULTS[name]
    return "auto" if v is None else (" ".join(map(str, v)) if isinstance(v, list) else v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # options left out keep their default (and, on --resume, the saved value)
    a = p.add_argument
    a("--method", default=S, choices=["gen", "ae", "vae", "aae", "wae", "semisupervised"],
      help=f"method (default: {_d('method')}; --labels N: semisupervised)")
    a("--data", default=S, help="digits | mnist:DIR | fashion-mnist:DIR | svhn:DIR | images:DIR | FILE.npy "
      f"(default: {_d('data')})")
    a("--out", default=None, help="run folder (default: runs/<method>-<data>-<timestamp>)")
    a("--resume", metavar="RUN", default=None, help="continue the run in folder RUN from its last.ckpt")
    a("--latent-dim", type=int, default=S, help=f"latent dimension l (default: {_d('latent_dim')})")
    a("--epochs", type=int, default=S, help="epochs (default: 40 for digits, 12 otherwise)")
    a("--batch-size", type=int, default=S, help=f"minibatch size (default: {_d('batch_size')})")
    a("--lr", type=float, default=S, help=f"Adam learning rate (default: {_d('lr')})")
    a("--seed", type=int, default=S, help=f"seed of everything random (default: {_d('seed')})")
    a("--lam", type=float, default=S, help="regulariser weight lambda (default: the method's)")
    # torch-free; the registries themselves, so names registered with register_objective / register_bank count
    from gens.registry import BANKS, OBJECTIVES

    a("--objective", default=S, choices=OBJECTIVES,
      help=f"GEN: form of the eq. 3 JSD term (default: {_d('objective')})")
    a("--bank-mode", default=S, choices=BANKS, help=f"GEN: latent bank (default: {_d('bank_mode')})")
    a("--bank-size", type=int, default=S, help=f"GEN: bank size m, capped at the data (default: {_d('bank_size')})")
    a("--refresh-every", type=int, default=S, help=f"GEN: re-encode the bank every kb batches (default: "
      f"{_d('refresh_every')})")
    a("--bandwidth", type=float, default=S, help="GEN: kernel bandwidth h (default: h_opt for the target and m)")
    a("--bandwidth-correction", action="store_true", default=S, help="GEN: use h / sqrt(1 + h^2)")
    a("--bandwidth-scale", type=float, default=S,
      help="GEN: multiply h_opt by this factor in (0, 1] (default: the GEN's, see BENCHMARKS.md)")
    a("--no-leave-one-out", dest="leave_one_out", action="store_false", default=S,
      help="GEN: keep a minibatch's own samples in the bank when eq. 3 is evaluated (biased; default: left out)")
    a("--coverage", type=float, default=S, help="GEN: weight of the target-sample half of eq. 2, which draws "
      "latents into regions the target fills (0: eq. 3 alone, the paper; default: the GEN's)")
    a("--target", default=S, help=f"GEN/AAE/WAE target: normal | mog:K | mog:K:SCALE | mog with --modes K "
      f"(default: {_d('target')}; semisupervised: mog:10)")
    a("--modes", type=int, default=None, help="number K of mixture modes for --target mog")
    a("--labels", type=int, default=S, help="semi-supervised: keep N training labels (balanced per class), the "
      "rest unlabelled; the labelled samples are pulled to their class's mode (implies --method semisupervised)")
    a("--hidden", type=int, nargs="+", default=S, help=f"hidden widths of the FC networks (default: {_d('hidden')})")
    a("--arch", default=S, choices=["auto", "fc", "conv"], help=f"network architecture (default: {_d('arch')})")
    a("--limit", type=int, default=S, help="use only the first N samples of each split (default: all)")
    a("--val-fraction", type=float, default=S, help=f"held-out share of the training split (default: "
      f"{_d('val_fraction')})")
    a("--checkpoint-every", type=int, default=S, help="save last.ckpt every N batches and at the end, 0: after every epoch "
      f"(default: {_d('checkpoint_every')})")
    a("--accelerator", default=S, help=f"Lightning accelerator: cpu | gpu | auto (default: {_d('accelerator')})")
    a("--devices", default=S, help=f"Lightning devices: N or auto (default: {_d('devices')})")
    a("--num-nodes", type=int, default=S, help=f"Lightning num_nodes (default: {_d('num_nodes')})")
    a("--strategy", default=S, help=f"Lightning strategy: auto | ddp | ... (default: {_d('strategy')})")
    a("--no-progress", action="store_true", help="no progress bar or model summary")


def _options(args) -> dict:
    from gens.runs import RUN_OPTIONS

    opts = {k: v for k, v in vars(args).items() if k in RUN_OPTIONS}
    if isinstance(opts.get("devices"), str) and opts["devices"].isdigit():
        opts["devices"] = int(opts["devices"])
    _mixture_options(opts, getattr(args, "modes", None))
    return opts


def _mixture_options(opts: dict, modes) -> None:
    """--target mog --modes K -> target "mog:K"; --labels N -> method "semisupervised" (target mog:10 unless given)."""
    from gens._validation import check_int

    target = opts.get("target")
    if modes is not None:
        if target not in (None, "mog"):
            raise ValueError(f"modes: goes with --target mog (or no --target), got --target {target}")
        opts["target"] = f"mog:{check_int('modes', modes, minimum=1)}"
    elif target == "mog":
        raise ValueError("target: 'mog' needs --modes K (or write mog:K)")
    if opts.get("labels") is not None and opts.setdefault("method", "semisupervised") != "semisupervised":
        raise ValueError(f"labels: only --method semisupervised uses labels, got --method {opts['method']}")
    if opts.get("method") == "semisupervised" and "target" not in opts:
        opts["target"] = "mog:10"


def run(args) -> int:
    # OpenMP threads that spin while waiting make a shared CPU many times slower (measured: 1.2-1.8 s
    # instead of 0.15 s per digits step with two threads on a busy 2-core machine); sleeping waits cost
    # nothing when the cores are free and change no numbers. Takes effect if torch is not yet loaded.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from gens.runfolder import RunFolder, is_worker, read_json
    from gens.runs import RESUME_OPTIONS, default_out, resolve_config, train_run

    opts = _options(args)
    if args.resume:
        out = Path(args.resume)
        if args.out is not None and Path(args.out).resolve() != out.resolve():
            raise ValueError("out: --resume continues the run in its own folder; leave --out out")
        cfg_path = out / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"resume: {out} is not a run folder (no config.json)")
        saved = read_json(cfg_path, "resume")
        for k, v in opts.items():
            if k not in RESUME_OPTIONS and saved.get(k) != resolve_config({**_saved_options(saved), k: v})[k]:
                raise ValueError(f"{k.replace('_', '-')}: cannot change when resuming (saved: {saved.get(k)!r}); "
                                 f"only {', '.join('--' + o.replace('_', '-') for o in RESUME_OPTIONS)} may")
        cfg = resolve_config({**_saved_options(saved), **{k: v for k, v in opts.items() if k in RESUME_OPTIONS}})
        cfg["created"] = saved.get("created")
        folder = RunFolder.resume(out)
    else:
        cfg = resolve_config(opts)
        out = Path(args.out) if args.out else None
        if not args.out and is_worker() and os.environ.get("GENS_TRAIN_OUT"):
            out = Path(os.environ["GENS_TRAIN_OUT"])  # a DDP worker process: the folder rank 0 claimed
        folder = RunFolder.new(out, base=default_out(cfg))  # refuses a folder holding another run's files
        os.environ["GENS_TRAIN_OUT"] = str(folder.path)  # inherited by the worker processes Lightning launches
    summary = train_run(cfg, folder, resume=bool(args.resume), progress=not args.no_progress)
    if summary:
        print(f"run folder: {folder.path}")
        h = summary.get("bandwidth")
        print(f"{summary['eval_split']} reconstruction MSE per pixel: {summary['recon_mse']:.5f}"
              + (f"; bandwidth h = {h:.4f}" if h else ""))
        if "accuracy" in summary:
            print(f"{summary['eval_split']} accuracy (most probable component vs label): {summary['accuracy']:.4f}")
    return 0


def _saved_options(saved: dict) -> dict:
    from gens.runs import RUN_OPTIONS

    out = {k: saved[k] for k in RUN_OPTIONS if k in saved}
    if "leave_one_out" not in saved and saved.get("method") in ("gen", "semisupervised"):
        out["leave_one_out"] = False  # a run made before the option existed continues as it was trained
    if out.get("bandwidth") is not None:  # a fixed h ignored these (a run saved before they were refused)
        out.pop("bandwidth_scale", None)
        out.pop("bandwidth_correction", None)
    return out

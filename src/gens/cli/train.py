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
    "The budget: --steps optimiser steps (default gens.training.DEFAULT_STEPS when --epochs is not given either), "
    "--epochs alone: epochs only, both: whichever ends first. "
    "--resume RUN continues a run from RUN/checkpoints/last.ckpt with its saved configuration (only "
    "--epochs, --steps, --checkpoint-every and the hardware options may change; --epochs or --steps given there "
    "replace the saved budget) and ends where an uninterrupted run with the same seed would."
)


def _shown(opt: str, m: dict) -> str:
    """The default of run option ``opt`` as --help shows it (per method where the methods differ)."""
    from gens.runconfig import DEFAULTS, METHOD_DEFAULTS

    def text(v):
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    if DEFAULTS[opt] is None and opt in METHOD_DEFAULTS:
        return ", ".join(f"{meth} {text(v)}" for meth, v in METHOD_DEFAULTS[opt].items())
    return text(DEFAULTS[opt])


def _flag(p: argparse.ArgumentParser, opt: str, m: dict) -> None:
    """The flag of run option ``opt`` from its ``gens.config`` metadata."""
    from gens.runconfig import DEFAULTS, METHOD_DEFAULTS

    kw = {"default": argparse.SUPPRESS, "help": m["help"]}  # left out: the default (on --resume, the saved value)
    given = DEFAULTS[opt] is not None or any(v is not None for v in METHOD_DEFAULTS.get(opt, {}).values())
    if "default" not in m["help"] and given and not m["action"]:
        kw["help"] += f" (default: {_shown(opt, m)})"
    if m["action"]:
        kw.update(action=m["action"], dest=opt)
    else:
        values = [m["default"], *m.get("methods", {}).values()]
        example = next((v for v in values if v is not None), None)
        typ = m["type"] or (type(example) if isinstance(example, (int, float)) else None)
        if typ is not None:
            kw["type"] = typ
        if m["nargs"]:
            kw["nargs"] = m["nargs"]
        if m["choices"] is not None:
            kw["choices"] = m["choices"]  # a tuple, or a registry (names registered later count too)
    p.add_argument(m["flag"] or "--" + opt.replace("_", "-"), **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # torch-free: gens.config and the registries' names
    from gens.runconfig import RUN_FIELDS

    a = p.add_argument
    for opt in ("method", "data"):
        _flag(p, opt, RUN_FIELDS[opt])
    a("--out", default=None, help="run folder (default: runs/<method>-<data>-<timestamp>)")
    a("--resume", metavar="RUN", default=None, help="continue the run in folder RUN from its last.ckpt")
    for opt, m in RUN_FIELDS.items():
        if opt not in ("method", "data"):
            _flag(p, opt, m)
            if opt == "target":
                a("--modes", type=int, default=None, help="number K of mixture modes for --target mog")
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
        base = _saved_options(saved)
        if "epochs" in opts or "steps" in opts:  # a budget given on resume replaces the saved one
            base.pop("epochs", None)
            base.pop("steps", None)
        cfg = resolve_config({**base, **{k: v for k, v in opts.items() if k in RESUME_OPTIONS}})
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
    if "weight_average" not in saved:
        out["weight_average"] = 0.0  # likewise: its last.ckpt holds the last step's weights, no average
    if out.get("bandwidth") is not None:  # a fixed h ignored these (a run saved before they were refused)
        out.pop("bandwidth_scale", None)
        out.pop("bandwidth_correction", None)
    return out

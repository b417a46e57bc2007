"""Run folders: train a method into a folder, resume it, reload it, and draw its figures.

A run folder (``gens train`` writes it; ``gens sample|reconstruct|interpolate RUN`` read it)::

    RUN/config.json            the full resolved configuration (+ gens/torch/lightning versions, bandwidth)
    RUN/checkpoints/last.ckpt  every ``checkpoint_every`` batches and at the end (``--resume``)
    RUN/checkpoints/best.ckpt  lowest validation loss (checked about every ``checkpoint_every`` batches)
    RUN/metrics.csv            Lightning CSVLogger (train/* per step, val/* per epoch)
    RUN/tensorboard/           TensorBoard events
    RUN/metrics.json           summary: test reconstruction MSE, bandwidth, latent statistics, time
    RUN/reconstructions.png  RUN/latents.png  RUN/losses.png
    RUN/samples.png            64 draws from the analytic latent distribution (GEN: the shrunk target, Sec. 4)
    RUN/samples-gaussian.png  RUN/samples-gmm.png   64 draws from the ex-post samplers (gens.samplers)
    RUN/fidelity.png           validation latents against the predicted distribution, per epoch (gens.fidelity)

At the end of training the ex-post samplers ("gaussian", "gmm"; ``gens.samplers``) are fitted to the training
split's latents of each checkpoint's weights and stored in last.ckpt and best.ckpt under "samplers" (tensors
only, as the estimators save them; :func:`store_samplers`); ``gens sample RUN --sampler gmm`` reads them. A
run trained before this (or killed before its end) has none there: only "analytic" works for it.

Checkpoints are written atomically and read weights-only (``gens.checkpoint``); a run killed at any
point and resumed with ``train_run(config, RUN, resume=True)`` ends with the same weights and the same
metrics.csv as an uninterrupted one (same seed, CPU). ``gens.runfolder`` owns the folder's life (claiming,
locking, checking a resume before anything changes, continuing the log); ``gens.runconfig`` the options.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
import warnings
from pathlib import Path

from gens._validation import check_choice
from gens.runconfig import (
    DEFAULTS,
    RESUME_OPTIONS,
    RUN_OPTIONS,
    module_kwargs,
    resolve_config,
    target_spec,
    too_wide,
)
from gens.runfolder import RunFolder, default_out, read_json, write_json

__all__ = [
    "DEFAULTS",
    "RESUME_OPTIONS",
    "RUN_OPTIONS",
    "default_out",
    "load_run",
    "module_kwargs",
    "resolve_config",
    "run_split",
    "target_spec",
    "train_run",
    "write_figures",
    "write_json",
]

# ------------------------------------------------------------------------------------------ training


def _datamodule(cfg: dict):
    """The run's data: ``gens.training.make_datamodule`` (a single-process train loader resumable to the batch)."""
    from gens.training import make_datamodule

    return make_datamodule(cfg["data"], batch_size=cfg["batch_size"], val_fraction=cfg["val_fraction"],
                           seed=cfg["seed"], limit=cfg["limit"])


def train_run(cfg: dict, out=None, *, resume: bool = False, progress: bool = True, callbacks=(),
              figures: bool = True) -> dict:
    """Train (or, with ``resume``, continue) the run ``cfg`` (from :func:`resolve_config`) in folder ``out``.

    ``out``: a folder, a claimed ``gens.runfolder.RunFolder``, or None (a fresh ``default_out`` folder). A new
    run refuses a folder holding another run's files; a resume checks last.ckpt before touching anything
    (``gens.runfolder``). Everything that can be checked before training is (data size, the GEN's bandwidth,
    the accelerator); then config.json is written, training runs with checkpoints, CSV and TensorBoard logs
    (metrics.csv continued across resumes), then the figures (unless ``figures=False``) and metrics.json.
    Returns the metrics.json summary (with ``run_folder``). ``callbacks`` are added to the Trainer. Ctrl-C
    raises KeyboardInterrupt (Lightning would exit the process).
    """
    if isinstance(out, RunFolder):
        folder = out
    elif resume:
        folder = RunFolder.resume(out)
    else:
        folder = RunFolder.new(out, base=default_out(cfg))
    with folder:
        return _train(cfg, folder, resume, progress, callbacks, figures)


def _train(cfg: dict, folder: RunFolder, resume: bool, progress: bool, callbacks, figures: bool) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    import gens
    from gens import training
    from gens.checkpoint import AtomicCheckpointIO, LastCheckpoint

    out = folder.path
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    dm = _datamodule(cfg)
    if dm.n_train < 2:
        raise ValueError(f"data: {cfg['data']} leaves {dm.n_train} training sample(s) (limit {cfg['limit']}, "
                         f"val_fraction {cfg['val_fraction']}); training needs at least 2")
    module = training.build(cfg["method"], dm, cfg["latent_dim"], seed=cfg["seed"], **module_kwargs(cfg))
    _check_bandwidth(module, dm.n_train)
    point = folder.check_resume(cfg, module) if resume else None  # reads only
    info = {"gens_version": gens.__version__, "torch_version": torch.__version__,
            "lightning_version": L.__version__, "data_shape": list(dm.data_shape), "n_train": dm.n_train,
            "n_val": dm.n_val, "created": cfg.get("created") or _dt.datetime.now().isoformat(timespec="seconds")}
    cfg = {**cfg, **info}

    procs = max(1, cfg["devices"]) * cfg["num_nodes"] if isinstance(cfg["devices"], int) else 1
    batches = math.ceil(dm.n_train / (cfg["batch_size"] * procs))  # per process and epoch
    cbs = [LastCheckpoint(last, cfg["checkpoint_every"]), *callbacks]
    if dm.n_val > 0:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False,
                                   every_n_epochs=max(1, cfg["checkpoint_every"] // batches)))
    loggers = [folder.csv_logger(point), TensorBoardLogger(out, name="tensorboard", version="")]
    hardware = {k: cfg[k] for k in ("accelerator", "devices", "num_nodes", "strategy")}
    t0 = []
    # the Trainer is built (hardware checked) before config.json, the first write into the folder
    with warnings.catch_warnings():
        if resume:  # a resume from an epoch's end runs that end again, with no validation result yet (LastCheckpoint)
            warnings.filterwarnings("ignore", message=r".*ModelCheckpoint\(monitor='val/loss'\)` could not find")
        trainer = training.fit(module, dm, seed=cfg["seed"], max_epochs=cfg["epochs"], max_steps=cfg.get("steps"),
                               weight_average=cfg["weight_average"], callbacks=cbs, logger=loggers,
                               ckpt_path=last if resume else None,
                               resume_hint=f"gens train --resume {out}",
                               before_fit=lambda _: (folder.write_config(cfg), t0.append(time.perf_counter())),
                               plugins=[AtomicCheckpointIO()], log_every_n_steps=max(1, min(50, batches)),
                               enable_progress_bar=progress, enable_model_summary=progress, **hardware)
    seconds = time.perf_counter() - t0[0]
    if not trainer.is_global_zero:
        return {}
    module = module.cpu().eval()
    h = getattr(module, "bandwidth_h", None)
    cfg["bandwidth_h"] = None if h is None or not math.isfinite(float(h)) else float(h)
    write_json(out / "config.json", cfg)
    samplers = store_samplers(module, dm, ckpt_dir, cfg["seed"])  # ex-post samplers, into the checkpoints
    summary = write_figures(module, dm, out, cfg, trainer=trainer, figures=figures, samplers=samplers)
    monitor = training.fidelity_monitor(trainer)
    if monitor is not None and monitor.history:  # validation-latent fidelity at the end (gens.fidelity)
        summary["fidelity"] = monitor.history[-1]
    summary.update({"train_seconds_this_call": round(seconds, 2), "epochs_trained": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step), "resumed": bool(resume)})
    write_json(out / "metrics.json", summary)
    return {**summary, "run_folder": str(out)}


def _check_bandwidth(module, n_train: int) -> None:
    """Resolve a GEN's bandwidth now, as its training start would (h_opt for m capped at the training set),
    and refuse h >= 1 before the first step: the shrunk target of Sec. 4 would not exist, so the trained
    run could be neither sampled nor drawn."""
    if not hasattr(module, "bandwidth_h"):
        return
    m = min(int(module.bank_size), int(n_train))
    if not math.isfinite(float(module.bandwidth_h)):
        module._resolve_bandwidth(m, check=False)  # refused below with the command's flag names
    h = float(module.bandwidth_h)
    try:
        if h < 1:
            module.target.shrink(h)
            return
    except ValueError:
        pass
    raise ValueError(too_wide(h, module.latent_dim, m))


def store_samplers(module, dm, ckpt_dir, seed: int) -> dict:
    """Fit the ex-post samplers (``gens.samplers.fit_samplers``) on the latents of the training split and
    store ``samplers_state`` in ``ckpt_dir``/last.ckpt and best.ckpt under "samplers" (rewritten atomically,
    still weights-only). Each checkpoint gets samplers fitted with its own weights: ``module``'s latents when
    its weights are the checkpoint's, else those of the checkpoint's network. Non-finite latents: a warning
    and "analytic" only. Returns ``module``'s fitted samplers. Training state in the files is untouched, so a
    later ``--resume`` continues exactly as before (Lightning ignores the extra key)."""
    from gens.checkpoint import (
        atomic_save,
        load_checkpoint,
        method_name,
        module_from_checkpoint,
    )
    from gens.samplers import samplers_state

    x, _ = dm.split_tensors("train")
    own = module.state_dict()
    fitted = _fit_run_samplers(module, x, seed)
    for name in ("last", "best"):
        path = Path(ckpt_dir) / f"{name}.ckpt"
        if not path.is_file():
            continue
        ckpt = load_checkpoint(path)
        if _same_weights(own, ckpt.get("state_dict") or {}):
            samplers = fitted
        else:
            samplers = _fit_run_samplers(module_from_checkpoint(ckpt, method=method_name(module)), x, seed)
        atomic_save({**ckpt, "samplers": samplers_state(samplers)}, path)
    return fitted


def _fit_run_samplers(module, x, seed: int) -> dict:
    import numpy as np

    from gens.samplers import fit_samplers
    from gens.training import encode_all

    Z = encode_all(module.cpu().eval(), x).double().numpy()
    if not np.isfinite(Z).all():
        warnings.warn("train: the trained model's training latents are not finite; only the 'analytic' sampler "
                      "is stored", RuntimeWarning, stacklevel=3)
        return fit_samplers(Z, names=("analytic",))
    return fit_samplers(Z, random_state=int(seed) % 2**32)


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ------------------------------------------------------------------------------------- loading runs


def load_run(run, which: str = "last"):
    """``(module, config)`` of a run folder; weights from checkpoints/{last,best}.ckpt, loaded weights-only.

    A checkpoint of another method, or one whose network does not fit config.json, is a ValueError."""
    from gens.checkpoint import load_checkpoint, module_from_checkpoint

    run = Path(run)
    which = check_choice("checkpoint", which, ("last", "best"))
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"run: {run} is not a run folder (no config.json); give the folder `gens train` wrote")
    cfg = read_json(cfg_path, "run")
    ckpt_path = run / "checkpoints" / f"{which}.ckpt"
    if not ckpt_path.is_file():
        raise ValueError(f"checkpoint: {ckpt_path} does not exist (choose 'last' or 'best')")
    ckpt = load_checkpoint(ckpt_path)
    tagged = (ckpt.get("gens") or {}).get("method") if isinstance(ckpt, dict) else None
    if tagged is not None and tagged != cfg.get("method"):
        raise ValueError(f"checkpoint: {ckpt_path} holds a {tagged!r} model, but {cfg_path} is a "
                         f"{cfg.get('method')!r} run; the folder mixes two runs")
    try:
        module = module_from_checkpoint(ckpt, method=cfg["method"])
    except ValueError as err:
        raise ValueError(f"checkpoint: {ckpt_path}: {err}") from None
    for key, have in (("data_shape", list(module.data_shape)), ("latent_dim", int(module.latent_dim))):
        if key in cfg and have != cfg[key]:
            raise ValueError(f"checkpoint: {ckpt_path} holds a model with {key} {have}, but {cfg_path} says "
                             f"{cfg[key]}; the folder mixes two runs")
    return module, cfg


def run_split(cfg: dict, split: str = "test", data: str | None = None, limit: int | None = None):
    """``(X tensor, y tensor or None)`` of a run's data (or ``data``), split "train" | "val" | "test".

    Data of another sample shape than the run was trained on is a ValueError."""
    check_choice("split", split, ("train", "val", "test"))
    dm = _datamodule({**cfg, "data": data or cfg["data"], "limit": limit if limit is not None else cfg.get("limit")})
    x, y = dm.split_tensors(split)
    shape = cfg.get("data_shape")
    if shape is not None and list(x.shape[1:]) != list(shape):
        raise ValueError(f"data: samples of shape {tuple(x.shape[1:])} do not fit a model trained on {tuple(shape)}")
    return x, y


def write_figures(module, dm, out, cfg: dict, trainer=None, figures: bool = True, samplers=None) -> dict:
    """Write reconstructions / samples / latents / losses PNGs into ``out``; return summary metrics
    (test reconstruction MSE, latent statistics; with ``figures=False`` only these). ``samplers``: fitted
    ex-post samplers ({name: ``gens.samplers`` sampler}); each one but "analytic" gets samples-NAME.png
    (64 draws, the run's seed), beside samples.png (the analytic distribution)."""
    import numpy as np
    import torch

    from gens import plots
    from gens.plots import as_images, image_scale
    from gens.samplers import decode_draws
    from gens.training import encode_all

    out = Path(out)
    split = "test" if dm.has_test_split else "val"
    x, y = dm.split_tensors(split)
    if len(x) == 0:
        split, (x, y) = "train", dm.split_tensors("train")
    shape = tuple(dm.data_shape)
    with torch.no_grad():
        z = encode_all(module, x)
        recon = torch.cat([module.decode(c).float() for c in z.split(1000)])
        mse = float(((recon - x.float()) ** 2).mean())
        gen = torch.Generator().manual_seed(cfg["seed"])
        samples = module.sample(64, generator=gen)
    summary = {"method": cfg["method"], "data": cfg["data"], "eval_split": split, "n_eval": len(x),
               "recon_mse": mse, "bandwidth": cfg.get("bandwidth_h"), "latent_mean_abs": float(z.abs().mean()),
               "latent_std": [float(s) for s in z.std(0)], "latent_mean": [float(m) for m in z.mean(0)]}
    if samplers is not None:
        summary["samplers"] = sorted(samplers)
    if y is not None and hasattr(module, "predict"):  # semisupervised: most probable component vs label
        summary["accuracy"] = float((module.predict(x) == y).double().mean())
    if trainer is not None:
        for k, v in trainer.callback_metrics.items():
            if k.startswith("val/"):
                summary[f"last_{k}"] = float(v)
    if not figures:
        return summary
    scale = image_scale(shape)
    ximg, rimg = as_images(x[:32], shape), as_images(recon[:32], shape)
    if ximg is not None:
        n = len(ximg)
        rows = [np.concatenate([ximg[i : i + 8], rimg[i : i + 8]]) for i in range(0, n, 8)]
        plots.image_grid(np.concatenate(rows), out / "reconstructions.png", nrow=min(8, n), scale=scale)
        plots.image_grid(as_images(samples, shape), out / "samples.png", nrow=8, scale=scale)
        for name in sorted(set(samplers or ()) - {"analytic"}):
            with torch.no_grad():
                drawn = decode_draws(module, samplers, name, 64, generator=torch.Generator().manual_seed(cfg["seed"]))
            plots.image_grid(as_images(drawn.float(), shape), out / f"samples-{name}.png", nrow=8, scale=scale)
    try:  # where the latents should lie: for a GEN p_t shrunk by the kernel (Sec. 4), else the target
        target, name = module.latent_distribution(), "q"
    except ValueError:  # e.g. h >= 1: no shrunk target
        target, name = module.target, "p_t"
    plots.latent_scatter(z.numpy(), out / "latents.png", labels=None if y is None else y.numpy(),
                         weights=target.weights.numpy(), means=target.means.numpy(), covs=target.covs.numpy(),
                         title=f"{cfg['method'].upper()} {split} latents (l={z.shape[1]}) over {name}")
    if (out / "metrics.csv").is_file():
        try:
            plots.loss_curves(out / "metrics.csv", out / "losses.png", title=f"{cfg['method'].upper()} {cfg['data']}")
        except ValueError:  # nothing logged yet (e.g. zero training steps)
            pass
        try:
            plots.fidelity_curves(out / "metrics.csv", out / "fidelity.png",
                                  title=f"{cfg['method'].upper()} {cfg['data']}: validation latents vs predicted")
        except ValueError:  # no fidelity measured (no validation split)
            pass
    return summary

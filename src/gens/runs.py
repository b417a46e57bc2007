"""Run folders: train a method into a folder, resume it, reload it, and draw its figures.

A run folder (``gens train`` writes it; ``gens sample|reconstruct|interpolate RUN`` read it)::

    RUN/config.json            the full resolved configuration (+ gens/torch/lightning versions, bandwidth)
    RUN/checkpoints/last.ckpt  every ``checkpoint_every`` batches and at the end (``--resume``)
    RUN/checkpoints/best.ckpt  lowest validation loss (checked about every ``checkpoint_every`` batches)
    RUN/metrics.csv            Lightning CSVLogger (train/* per step, val/* per epoch)
    RUN/tensorboard/           TensorBoard events
    RUN/metrics.json           summary: test reconstruction MSE, bandwidth, latent statistics, time
    RUN/reconstructions.png  RUN/samples.png  RUN/latents.png  RUN/losses.png

Checkpoints are written atomically and read weights-only (``gens.checkpoint``); a run killed at any
point and resumed with ``train_run(config, RUN, resume=True)`` ends with the same weights as an
uninterrupted one (same seed, CPU).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from gens._validation import check_choice, check_float, check_int

__all__ = [
    "DEFAULTS",
    "DEFAULT_EPOCHS",
    "RUN_OPTIONS",
    "RESUME_OPTIONS",
    "resolve_config",
    "default_out",
    "target_spec",
    "module_kwargs",
    "train_run",
    "load_run",
    "run_split",
    "as_images",
    "write_json",
    "write_figures",
]

# Every option of a run, with its default (None: decided from the data or the method).
DEFAULTS = {
    "method": "gen",
    "data": "digits",
    "latent_dim": 8,
    "epochs": None,  # DEFAULT_EPOCHS by data
    "batch_size": 100,
    "lr": 2e-4,
    "seed": 0,
    "lam": None,  # the method's own default
    "objective": "nonsaturating",
    "bank_mode": "refresh",
    "bank_size": 10000,
    "refresh_every": 10,
    "bandwidth": None,
    "bandwidth_correction": False,
    "bandwidth_scale": None,  # GEN: the method's own default
    "leave_one_out": True,  # GEN (refresh): leave the minibatch's own samples out of the bank
    "target": "normal",
    "labels": None,  # semisupervised: training labels kept, balanced per class (None: all)
    "hidden": [1000, 1000],
    "arch": "auto",
    "limit": None,
    "val_fraction": 0.1,
    "checkpoint_every": 100,
    "accelerator": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",
}
# Options that may change when a run is resumed (the rest must match the saved config).
RESUME_OPTIONS = ("epochs", "accelerator", "devices", "num_nodes", "strategy", "checkpoint_every")
RUN_OPTIONS = tuple(DEFAULTS)

# Default epochs per data source: digits (1,293 training images of 8x8, 13 batches an epoch) gives
# recognisable samples after about 40 (val recon 0.014); MNIST-sized data about a dozen (the training core).
DEFAULT_EPOCHS = {"digits": 40, None: 12}

# run option -> module keyword (for the methods whose constructor takes it)
_MODULE_KEYS = {
    "lr": "lr", "lam": "lam", "objective": "objective", "bank_mode": "bank_mode", "bank_size": "bank_size",
    "refresh_every": "refresh_every", "bandwidth": "bandwidth", "bandwidth_correction": "bandwidth_correction",
    "bandwidth_scale": "bandwidth_scale", "leave_one_out": "leave_one_out",
    "hidden": "hidden", "arch": "arch", "labels": "n_labels",
}


def resolve_config(options: dict) -> dict:
    """Fill defaults into ``options`` (run option -> value; None or missing = default) and validate.

    Options the chosen method does not take (``lam`` for the AE, ``bank_size`` for the VAE, ...) raise a
    ValueError when given explicitly and are dropped when left at their default.
    """
    from gens.methods import METHODS

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown[0]}: is not a run option; options: {', '.join(DEFAULTS)}")
    given = {k: v for k, v in options.items() if v is not None}
    cfg = {**DEFAULTS, **given}
    cfg["method"] = check_choice("method", cfg["method"], METHODS)
    cfg["data"] = str(cfg["data"])
    cfg["latent_dim"] = check_int("latent_dim", cfg["latent_dim"], minimum=1)
    if cfg["epochs"] is None:
        cfg["epochs"] = DEFAULT_EPOCHS.get(cfg["data"], DEFAULT_EPOCHS[None])
    cfg["epochs"] = check_int("epochs", cfg["epochs"], minimum=1)
    cfg["batch_size"] = check_int("batch_size", cfg["batch_size"], minimum=1)
    cfg["seed"] = check_int("seed", cfg["seed"], minimum=0, maximum=2**32 - 1)
    cfg["lr"] = check_float("lr", cfg["lr"], minimum=0.0, min_inclusive=False)
    cfg["val_fraction"] = check_float("val_fraction", cfg["val_fraction"], 0.0, 1.0, max_inclusive=False)
    cfg["checkpoint_every"] = check_int("checkpoint_every", cfg["checkpoint_every"], minimum=0)
    if cfg["limit"] is not None:
        cfg["limit"] = check_int("limit", cfg["limit"], minimum=2)
    cfg["num_nodes"] = check_int("num_nodes", cfg["num_nodes"], minimum=1)
    cfg["hidden"] = [check_int("hidden", h, minimum=1) for h in _as_list(cfg["hidden"])]
    target_spec(cfg["target"], cfg["latent_dim"])  # validates the target string
    accepted = set(inspect.signature(METHODS[cfg["method"]].__init__).parameters)
    for opt, key in _MODULE_KEYS.items():
        if key not in accepted:
            if opt in given and given[opt] != DEFAULTS[opt]:
                raise ValueError(f"{opt}: is not an option of method {cfg['method']!r}")
            cfg[opt] = None
    if "target_spec" not in accepted:
        if "target" in given and given["target"] != DEFAULTS["target"]:
            raise ValueError(f"target: method {cfg['method']!r} has no target (its prior is N(0, I))")
        cfg["target"] = None
    return cfg


def _as_list(v):
    if isinstance(v, str):
        return [int(s) for s in v.replace(",", " ").split()]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def target_spec(target: str | None, latent_dim: int) -> dict | None:
    """``"normal"`` -> N(0, I_l); ``"mog:K"`` or ``"mog:K:SCALE"`` -> K unit-covariance modes whose means
    are at least SCALE (default 6) apart (``gens.targets.mixture_on_simplex``). None -> None."""
    if target is None:
        return None
    text = str(target).strip().lower()
    if text in ("normal", "standard_normal", "n01"):
        return {"type": "standard_normal", "dim": int(latent_dim)}
    parts = text.split(":")
    if parts[0] == "mog" and len(parts) in (2, 3):
        try:
            k = int(parts[1])
            scale = float(parts[2]) if len(parts) == 3 else 6.0
        except ValueError:
            k, scale = 0, 0.0
        if k >= 1 and scale > 0 and math.isfinite(scale):
            return {"type": "mixture_on_simplex", "n_components": k, "dim": int(latent_dim), "scale": scale}
    raise ValueError(f"target: must be 'normal', 'mog:K' or 'mog:K:SCALE' (K >= 1 modes, SCALE > 0), got {target!r}")


def module_kwargs(cfg: dict) -> dict:
    """The keyword arguments of ``gens.methods.build_module`` for a resolved config."""
    kw = {_MODULE_KEYS[o]: cfg[o] for o in _MODULE_KEYS if cfg.get(o) is not None}
    if cfg.get("target") is not None:
        kw["target_spec"] = target_spec(cfg["target"], cfg["latent_dim"])
    return kw


def default_out(cfg: dict, root="runs") -> Path:
    """``runs/<method>-<data name>-<YYYYmmdd-HHMMSS>``."""
    name = cfg["data"].split(":")[0] if ":" in cfg["data"] else Path(cfg["data"]).stem or cfg["data"]
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg['method']}-{''.join(c if c.isalnum() else '_' for c in name)}-{stamp}"


def write_json(path, obj) -> Path:
    """Write JSON atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------------------ training


def _datamodule(cfg: dict):
    """A ``GensDataModule`` whose single-process train loader is resumable (``gens.checkpoint.EpochSampler``)."""
    from torch.utils.data import DataLoader, TensorDataset

    from gens.checkpoint import EpochSampler
    from gens.data import GensDataModule

    class ResumableDataModule(GensDataModule):
        _sampler = None

        @property
        def train_sampler(self) -> EpochSampler:
            if self._sampler is None:
                self._sampler = EpochSampler(self.n_train, seed=self.seed)
            return self._sampler

        def train_dataloader(self):
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.world_size > 1:  # DDP: Lightning's distributed sampler
                return super().train_dataloader()
            x, y = self.split_tensors("train")
            ds = TensorDataset(x) if y is None else TensorDataset(x, y)
            return DataLoader(ds, batch_size=self.batch_size, sampler=self.train_sampler,
                              num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    return ResumableDataModule(cfg["data"], batch_size=cfg["batch_size"], val_fraction=cfg["val_fraction"],
                               seed=cfg["seed"], limit=cfg["limit"])


def _last_checkpoint_callback(path: Path, every: int):
    from lightning.pytorch.callbacks import Checkpoint

    class LastCheckpoint(Checkpoint):
        """Save ``path`` after every ``every``-th training batch (counted over the whole run) and when the
        last epoch ends; ``every = 0``: after every epoch. A ``Checkpoint`` subclass, so Lightning runs it
        after the other callbacks' hooks (their state is up to date when it saves)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            done = trainer.fit_loop.epoch_loop.total_batch_idx + 1  # batches trained so far, restored on resume
            if every and done % every == 0:
                trainer.save_checkpoint(path, weights_only=False)

        def on_train_epoch_end(self, trainer, pl_module):
            if not every or trainer.current_epoch + 1 >= trainer.max_epochs:
                trainer.save_checkpoint(path, weights_only=False)

    return LastCheckpoint()


def train_run(cfg: dict, out, *, resume: bool = False, progress: bool = True, callbacks=(),
              figures: bool = True) -> dict:
    """Train (or, with ``resume``, continue) the run ``cfg`` (from :func:`resolve_config`) in folder ``out``.

    Writes config.json first, then trains with checkpoints, CSV and TensorBoard logs, then the figures
    (unless ``figures=False``) and metrics.json. Returns the metrics.json summary. ``callbacks`` are added
    to the Trainer.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    import gens
    from gens.checkpoint import AtomicCheckpointIO, ResumeCallback
    from gens.methods import build_module
    from gens.training import DivergenceGuard

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise ValueError(f"resume: {last} does not exist; nothing to resume")
    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    dm = _datamodule(cfg)
    module = build_module(cfg["method"], list(dm.data_shape), cfg["latent_dim"], **module_kwargs(cfg))
    info = {"gens_version": gens.__version__, "torch_version": torch.__version__,
            "lightning_version": L.__version__, "data_shape": list(dm.data_shape), "n_train": dm.n_train,
            "n_val": dm.n_val, "created": cfg.get("created") or _dt.datetime.now().isoformat(timespec="seconds")}
    cfg = {**cfg, **info}
    write_json(out / "config.json", cfg)

    procs = cfg["devices"] * cfg["num_nodes"] if isinstance(cfg["devices"], int) else 1
    batches = math.ceil(dm.n_train / (cfg["batch_size"] * procs))  # per process and epoch
    cbs = [ResumeCallback(cfg["seed"], sampler=dm.train_sampler, batch_size=cfg["batch_size"]), DivergenceGuard(),
           _last_checkpoint_callback(last, cfg["checkpoint_every"]), *callbacks]
    if dm.n_val > 0:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False,
                                   every_n_epochs=max(1, cfg["checkpoint_every"] // batches)))
    loggers = [CSVLogger(out, name="", version=""), TensorBoardLogger(out, name="tensorboard", version="")]
    trainer = L.Trainer(
        max_epochs=cfg["epochs"], accelerator=cfg["accelerator"], devices=cfg["devices"],
        num_nodes=cfg["num_nodes"], strategy=cfg["strategy"], logger=loggers, callbacks=cbs,
        plugins=[AtomicCheckpointIO()], log_every_n_steps=max(1, min(50, batches)),
        enable_progress_bar=progress, enable_model_summary=progress,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    module = module.cpu().eval()
    h = getattr(module, "bandwidth_h", None)
    cfg["bandwidth_h"] = None if h is None or not math.isfinite(float(h)) else float(h)
    write_json(out / "config.json", cfg)
    summary = write_figures(module, dm, out, cfg, trainer=trainer, figures=figures)
    summary.update({"train_seconds_this_call": round(seconds, 2), "epochs_trained": int(trainer.current_epoch),
                    "global_step": int(trainer.global_step), "resumed": bool(resume)})
    write_json(out / "metrics.json", summary)
    return summary


# ------------------------------------------------------------------------------------- loading runs


def load_run(run, which: str = "last"):
    """``(module, config)`` of a run folder; weights from checkpoints/{last,best}.ckpt, loaded weights-only."""
    from gens.checkpoint import load_checkpoint, module_from_checkpoint

    run = Path(run)
    which = check_choice("checkpoint", which, ("last", "best"))
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"run: {run} is not a run folder (no config.json); give the folder `gens train` wrote")
    cfg = json.loads(cfg_path.read_text())
    ckpt_path = run / "checkpoints" / f"{which}.ckpt"
    if not ckpt_path.is_file():
        raise ValueError(f"checkpoint: {ckpt_path} does not exist (choose 'last' or 'best')")
    module = module_from_checkpoint(load_checkpoint(ckpt_path), method=cfg["method"])
    return module, cfg


def run_split(cfg: dict, split: str = "test", data: str | None = None, limit: int | None = None):
    """``(X tensor, y tensor or None)`` of a run's data (or ``data``), split "train" | "val" | "test"."""
    check_choice("split", split, ("train", "val", "test"))
    dm = _datamodule({**cfg, "data": data or cfg["data"], "limit": limit if limit is not None else cfg.get("limit")})
    return dm.split_tensors(split)


def as_images(x, data_shape):
    """x: (n, *data_shape) tensor/array -> numpy (n, C, H, W) for plotting, or None when the data are not
    images (flat data whose size is not a square)."""
    import numpy as np

    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
    if len(data_shape) == 3:
        return x.reshape(len(x), *data_shape)
    if len(data_shape) == 2:
        return x.reshape(len(x), 1, *data_shape)
    d = int(np.prod(data_shape))
    s = int(round(math.sqrt(d)))
    return x.reshape(len(x), 1, s, s) if s * s == d else None


def image_scale(data_shape) -> int:
    """Pixel magnification for figures: 8x8 digits x4, MNIST x2, 64x64 x1."""
    side = data_shape[-1] if len(data_shape) >= 2 else int(round(math.sqrt(data_shape[0])))
    return int(min(4, max(1, 64 // max(1, side))))


def write_figures(module, dm, out, cfg: dict, trainer=None, figures: bool = True) -> dict:
    """Write reconstructions / samples / latents / losses PNGs into ``out``; return summary metrics
    (test reconstruction MSE, latent statistics; with ``figures=False`` only these)."""
    import numpy as np
    import torch

    from gens import plots
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
    summary = {"method": cfg["method"], "data": cfg["data"], "eval_split": split, "n_eval": int(len(x)),
               "recon_mse": mse, "bandwidth": cfg.get("bandwidth_h"), "latent_mean_abs": float(z.abs().mean()),
               "latent_std": [float(s) for s in z.std(0)], "latent_mean": [float(m) for m in z.mean(0)]}
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
    return summary

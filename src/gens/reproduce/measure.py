"""Train one model and measure it: the unit of Table 2 and Table 3 (and of ``benchmarks/train_sweep.py``).

``train_and_measure(job)`` trains ``job["method"]`` with ``gens.training.train`` on the data's train split,
then on the test split measures: the per-pixel reconstruction MSE; the whitened leave-one-out KDE entropy
(``gens.evaluation.entropy.latent_entropy``, paper Table 2) of the first n of the test latents in a
seeded random order, for each n in ``job["ns"]`` not above the test size; the mean |z| and the smallest /
largest per-dimension std of the test latents; the Fréchet distance between generated samples and the test
images in pixel space (a crude check; only for images of at most ``PIXEL_FD_MAX_DIM`` values); optionally
the FID of ``fid["n"]`` samples against as many test images under in-domain CNN features or the FID
Inception-v3 (``gens.evaluation.fid``), for each ex-post sampler in ``fid["samplers"]`` (``gens.samplers``:
fitted once on the training split's latents, seeded by the job's seed; the test images' features computed
once) as ``fid_<sampler>``, ``fid`` itself being the analytic sampler's; the mean epoch time. It never raises: a failure becomes
``status`` "diverged", "nonfinite" or "error" with a message.

A job is a plain dict (so it can go to a spawned process)::

    {"method": "gen", "kwargs": {}, "data": "mnist:DIR", "epochs": 12, "steps": None, "seed": 0, "latent_dim": 8,
     "batch_size": 100, "limit": None, "ns": [1000, 2000, 5000, 10000], "accelerator": "auto",
     "threads": None, "fid": None | {"features": "domain" | "inception", "n": 10000, "source": "mnist:DIR",
     "cache_dir": None, "classifier_epochs": None, "classifier_limit": None, "inception_weights": None,
     "samplers": None | ["analytic", "gaussian", "gmm"]},
     "samples_png": None | "path/to/grid.png", "label": "gen seed 0", "progress": True,
     "train_entropy": False, "latents_out": None | "path/to/latents.npy"}

``train_entropy`` adds ``Htrain``: the entropy of max(ns) training latents (does the regulariser's effect on
the training latents carry over to the test latents?); ``latents_out`` saves the test latents (n_test, l);
``history_out`` the per-epoch validation fidelity (``gens.fidelity``) as JSON. The budget: ``epochs`` and/or
``steps`` (both None: ``gens.training.DEFAULT_STEPS``); ``test_limit``: measure on the first test_limit test
samples (``limit`` limits the training split and, without test_limit, the test split too). ``weight_average``
(in the job or in its ``kwargs``, which win; default the method's, ``gens.config.WEIGHT_AVERAGE``: 0.999 for the
GEN, 0 for the others): the decay of the weights' moving average that becomes the measured model
(``gens.training.fit``; 0: the last step's weights). Unit keys hold the resolved number
(:func:`weight_average`), so a GEN unit measured with 0.999 before the default became per method still matches.

Settings the job leaves out come from the method's own defaults (``gens.methods``) and ``gens.training``.
"""

from __future__ import annotations

import time
import traceback

__all__ = ["train_and_measure", "run_jobs", "reference_row", "entropies", "pixel_frechet", "sample_images",
           "fit_job_samplers", "method_defaults", "budget", "budget_text", "NS"]

NS = (1000, 2000, 5000, 10000)  # Table 2's sample sizes
PIXEL_FD_MAX_DIM = 1024  # pixel-space Frechet distance only for images this small (MNIST: 784)


def pixel_frechet(a, b) -> float:
    """Frechet distance between Gaussians fitted to the rows of a: (n, d) and b: (k, d) (float64)."""
    import numpy as np

    from gens.evaluation.fid import fid_from_features

    return fid_from_features(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def entropies(z, ns, device="cpu") -> dict:
    """{n: whitened LOO-KDE entropy of z[:n]} for each n <= len(z); a failure (e.g. a collapsed, singular
    latent dimension) gives None for that n instead of raising. z: (N, l)."""
    from gens.evaluation.entropy import latent_entropy

    out = {}
    for n in ns:
        if n <= len(z):
            try:
                out[int(n)] = latent_entropy(z[:n].to(device))
            except ValueError:
                out[int(n)] = None
    return out


def sample_images(module, n: int, seed: int, samplers=None, sampler: str = "analytic"):
    """n decoded samples (n, *data_shape) in [0, 1] on the CPU, drawn in chunks with a seeded generator from
    the latent density ``sampler`` (``gens.samplers.decode_draws``; "analytic" is ``module.sample``)."""
    import torch

    from gens.samplers import decode_draws

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([decode_draws(module, samplers or {}, sampler, len(c), generator=g).float().cpu()
                          for c in torch.arange(n).split(1000)]).clamp(0, 1)


def _callbacks(job):
    import lightning as L

    class EpochTimer(L.Callback):
        """Collects the wall time of every training epoch (validation included) and prints progress."""

        def __init__(self):
            self.times, self._t = [], None

        def on_train_epoch_start(self, trainer, module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self._t)
            if job.get("progress"):
                recon = trainer.callback_metrics.get("val/recon")
                print(f"  {job.get('label', job['method'])}: epoch {trainer.current_epoch + 1}/{job.get('epochs') or '-'} "
                      f"{self.times[-1]:.1f} s" + (f", val recon {float(recon):.4f}" if recon is not None else ""),
                      flush=True)

    return EpochTimer()


def fit_job_samplers(job, module, trainer) -> tuple[dict, dict]:
    """The ex-post samplers of ``job["fid"]["samplers"]`` other than "analytic", fitted once on the latents of
    the training split (``gens.samplers.fit_samplers``, random_state = the job's seed). Returns (samplers,
    row fields: ``sampler_fit_s``, and ``sampler_message`` when the latents are not finite)."""
    import numpy as np

    from gens.samplers import fit_samplers
    from gens.training import encode_all

    names = [s for s in ((job.get("fid") or {}).get("samplers") or ()) if s != "analytic"]
    if not names:
        return {}, {}
    start = time.perf_counter()
    Z = encode_all(module, trainer.datamodule.split_tensors("train")[0]).double().numpy()
    if not np.isfinite(Z).all():
        return {}, {"sampler_message": "non-finite training latents: no ex-post samplers"}
    samplers = fit_samplers(Z, names, random_state=int(job["seed"]) % 2**32)
    return samplers, {"sampler_fit_s": time.perf_counter() - start}


def _fid(job, fake, real, module=None, samplers=None) -> dict:
    """FID of ``fake`` (the analytic sampler's draws; None: none) and, for every other sampler of
    ``job["fid"]["samplers"]``, of as many draws from it, against the same real images (featurised once)."""
    from gens.evaluation import fid as F

    cfg = job["fid"]
    n = min(int(cfg.get("n") or 10000), len(real), *([len(fake)] if fake is not None else []))
    if cfg.get("features") == "inception":
        model = F.load_inception(cfg["inception_weights"])
        feats = lambda x: F.inception_features(x, model)  # noqa: E731
    else:
        kw = {"cache_dir": cfg.get("cache_dir"), "epochs": cfg.get("classifier_epochs"),
              "limit": cfg.get("classifier_limit")}
        feats = lambda x: F.domain_features(x, cfg["source"], **kw)  # noqa: E731
    f_real = feats(real[:n])
    out = {"fid_n": n}
    if fake is not None:
        out["fid"] = F.fid_from_features(f_real, feats(fake[:n]))
    for name in cfg.get("samplers") or ():
        if name == "analytic":
            out["fid_analytic"] = out.get("fid")
        elif samplers and name in samplers:
            try:
                draws = sample_images(module, n, job["seed"], samplers, name).reshape(-1, *real.shape[1:])
                out[f"fid_{name}"] = F.fid_from_features(f_real, feats(draws))
            except ValueError as err:
                out[f"fid_{name}"] = None
                out["sampler_message"] = f"{name}: {err}"[:300]
    return out


def train_and_measure(job: dict) -> dict:
    """Train one configuration and measure it (see the module docstring); never raises."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # lightning's own
        _quiet_lightning()
        return _train_and_measure(job)


def _quiet_lightning() -> None:
    """Lightning's per-trainer info lines (GPU available, tips, fit stopped) would bury the progress lines."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _train_and_measure(job: dict) -> dict:
    import torch

    from gens.training import TrainingDiverged, encode_all, fidelity_monitor, train

    start = time.perf_counter()
    row = {"method": job["method"], "epochs": job.get("epochs"), "steps": job.get("steps"), "seed": job["seed"],
           "status": "ok", "message": ""}
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    try:
        timer = _callbacks(job)
        tk = dict(accelerator=job.get("accelerator", "auto"), devices=1, enable_progress_bar=False,
                  callbacks=[timer])
        dk = {"limit": job["limit"]} if job.get("limit") else {}
        kw = dict(job.get("kwargs") or {})
        average = weight_average(job["method"], kw.pop("weight_average", job.get("weight_average")))
        try:
            module, trainer = train(job["method"], job["data"], latent_dim=job.get("latent_dim", 8),
                                    max_epochs=job.get("epochs"), max_steps=job.get("steps"),
                                    batch_size=job.get("batch_size", 100), seed=job["seed"],
                                    weight_average=average, trainer_kwargs=tk, datamodule_kwargs=dk, **kw)
        except TrainingDiverged as err:
            row.update(status="diverged", message=str(err)[:300])
            return row
        row["train_s"] = time.perf_counter() - start
        row["global_step"] = int(trainer.global_step)
        monitor = fidelity_monitor(trainer)
        if job.get("history_out") and monitor is not None:  # the per-epoch fidelity of the validation latents
            import json

            with open(job["history_out"], "w") as fh:
                json.dump(monitor.history, fh)
        module.eval()
        device = next(module.parameters()).device
        x = trainer.datamodule.split_tensors("test")[0]
        if job.get("test_limit"):  # measure on the first test_limit test samples, whatever limit trained on
            from gens.data import load_dataset

            x = torch.as_tensor(load_dataset(job["data"], "test", limit=int(job["test_limit"]))[0])
        z = encode_all(module, x)
        with torch.no_grad():
            recon = sum(float(module.recon_loss(c.to(device), module.reconstruct(c.to(device)))) * len(c)
                        for c in x.split(1000)) / len(x)
        row.update(recon=recon, n_test=len(x), mean_abs_z=float(z.abs().mean()), min_std=float(z.std(0).min()),
                   max_std=float(z.std(0).max()), epoch_s=sum(timer.times) / max(1, len(timer.times)))
        if len(z) > 1 and bool(torch.isfinite(z).all()):  # covariance eigenvalues, against 1 - h^2 for the GEN
            eig = torch.linalg.eigvalsh(torch.cov(z.double().T).reshape(z.shape[1], z.shape[1]))
            row.update(eig_min=float(eig[0]), eig_max=float(eig[-1]))
        if hasattr(module, "bandwidth_h"):
            row["h"] = float(module.bandwidth_h)
        if not torch.isfinite(z).all():
            row.update(status="nonfinite", message="non-finite test latents")
            return row
        perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(job["seed"]))
        for n, H in entropies(z[perm], job["ns"], device).items():
            row[f"H{n}"] = H
        if job.get("train_entropy"):  # the same entropy on as many training latents: a generalisation check
            xt = trainer.datamodule.train_tensor()
            zt = encode_all(module, xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(job["seed"]))
                                       [: max(job["ns"])]])
            row["Htrain"] = entropies(zt, [len(zt)], device).get(len(zt))
        if job.get("latents_out"):
            import numpy as np

            np.save(job["latents_out"], z.float().cpu().numpy())
        samplers, fitted = fit_job_samplers(job, module, trainer)  # ex-post samplers: once, on training latents
        row.update(fitted)
        try:
            fake = sample_images(module, min(10000, len(x)), job["seed"]).reshape(-1, *x.shape[1:])
        except ValueError as err:  # e.g. a GEN with h >= 1 has no shrunk target to sample from
            row["message"] = f"no samples: {err}"[:300]
            if not samplers:
                return row
            fake = None  # the fitted samplers can still be measured
        if fake is not None and x[0].numel() <= PIXEL_FD_MAX_DIM:  # sqrtm of d x d: minutes at SVHN's d = 3072
            row["sample_fd"] = pixel_frechet(fake.flatten(1).numpy(), x.flatten(1).numpy())
        if job.get("fid"):
            row.update(_fid(job, fake, x, module, samplers))
        if job.get("samples_png") and fake is not None:
            from gens.plots import image_grid

            image_grid(fake[:64].numpy(), job["samples_png"], scale=2)
    except Exception as err:  # keep the sweep going; the failure is reported in the table
        row.update(status="error", message=f"{type(err).__name__}: {err}"[:300])
        traceback.print_exc()
    finally:
        row["seconds"] = time.perf_counter() - start
    return row


def reference_row(seed: int, dim: int, ns, device="cpu") -> dict:
    """Whitened entropy of max(ns) N(0, I_dim) samples at each n: the target's row of Table 2 (seeded)."""
    import torch

    z = torch.randn(max(ns), dim, generator=torch.Generator().manual_seed(10_000 + seed))
    row = {"seed": seed, "status": "ok", "message": "", "mean_abs_z": float(z.abs().mean()),
           "min_std": float(z.std(0).min()), "max_std": float(z.std(0).max())}
    for n, H in entropies(z, ns, device).items():
        row[f"H{n}"] = H
    return row


def run_jobs(jobs: list[dict], n_jobs: int = 1, on_done=None) -> list[dict]:
    """``train_and_measure`` every job, ``n_jobs`` at once in spawned processes (1: in this process).

    ``on_done(job, row)`` is called as each finishes (in this process), e.g. to save it at once.
    Returns the rows in the order of ``jobs``.
    """
    rows = [None] * len(jobs)
    if n_jobs > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(n_jobs, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(train_and_measure, j): i for i, j in enumerate(jobs)}
            for fut in as_completed(futures):
                i = futures[fut]
                rows[i] = fut.result()
                if on_done:
                    on_done(jobs[i], rows[i])
    else:
        for i, job in enumerate(jobs):
            rows[i] = train_and_measure(job)
            if on_done:
                on_done(job, rows[i])
    return rows


def method_defaults(method: str) -> dict:
    """The constructor defaults of ``gens.methods.METHODS[method]`` as JSON-able values (the settings a
    reproduction uses unless told otherwise; part of each unit's key, so a changed default recomputes).
    Declared in ``gens.config`` (``tests/test_defaults.py`` checks them against the constructors)."""
    from gens.config import method_defaults as defaults

    return defaults(method)


def weight_average(method: str, value=None) -> float:
    """The decay of ``method``'s weights' moving average: ``value`` checked, or for None the method's default
    (``gens.config.WEIGHT_AVERAGE``: 0.999 for the GEN, 0 for the others), as ``gens.training.fit`` resolves it;
    part of each unit's key, so a changed default recomputes."""
    from gens.config import resolve_weight_average

    return resolve_weight_average(value, method)


def budget(epochs: int | None) -> dict:
    """A table's training budget: ``{"epochs": E}`` when given, else ``{"epochs": None, "steps": DEFAULT_STEPS}``
    (``gens.training.budget``'s rule; the steps enter the unit keys, so a changed DEFAULT_STEPS recomputes)."""
    from gens.config import DEFAULT_STEPS

    return {"epochs": epochs} if epochs else {"epochs": None, "steps": DEFAULT_STEPS}


def budget_text(b: dict) -> str:
    """"12 epoch(s)" or "6000 steps"."""
    return f"{b['epochs']} epoch(s)" if b.get("epochs") else f"{b['steps']} steps"

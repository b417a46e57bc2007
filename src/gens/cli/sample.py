"""``gens sample RUN``: decode draws from a trained run's latent distribution."""

from __future__ import annotations

from pathlib import Path

HELP = "generate samples from a trained run (PNG grid, optionally .npy)"
DESCRIPTION = (
    "Draw n latents from the run's latent distribution (--sampler analytic, the default: the method's own, a "
    "GEN's the target shrunk by the kernel, Sec. 4; gaussian / gmm: the ex-post samplers `gens train` fitted to "
    "the training latents and stored in the checkpoint), decode them, and write a PNG grid (and the raw samples "
    "as .npy with --npy)."
)


def add_arguments(p) -> None:
    import argparse

    from gens.samplers import SAMPLERS  # torch-free: the registry gives the choices

    S = argparse.SUPPRESS  # no "(default: None)" in --help; read with getattr
    p.add_argument("run", metavar="RUN", help="run folder written by `gens train`")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default=S, help="PNG path (default: RUN/samples-<seed>.png, with a sampler other "
                   "than analytic RUN/samples-<sampler>-<seed>.png); FILE.npy: the "
                   "array goes there, the PNG beside it")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    p.add_argument("--sampler", default="analytic", choices=list(SAMPLERS),
                   help="latent density to draw from: analytic (the method's own), gaussian or gmm (fitted to "
                   "the training latents at the end of `gens train`; a run trained before that has only analytic)")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint")
    p.add_argument("--nrow", type=int, default=S, help="images per row (default: about sqrt(n))")
    p.add_argument("--npy", action="store_true", default=S,
                   help="also save the samples (n, *data_shape) as .npy beside the PNG (data that are not images: "
                   "only the .npy)")


def run(args) -> int:
    import torch

    from gens import plots
    from gens._validation import check_int
    from gens.cli._output import check_memory, sample_bytes, write_outputs
    from gens.plots import as_images, image_scale
    from gens.runs import load_run
    from gens.samplers import decode_draws

    n = check_int("n", args.n, minimum=1)
    seed = check_int("seed", args.seed, minimum=0, maximum=2**63 - 1)
    name = getattr(args, "sampler", "analytic")
    module, cfg = load_run(args.run, args.checkpoint)
    samplers = run_samplers(args.run, args.checkpoint, name)
    check_memory("n", n, sample_bytes(cfg), "samples")
    with torch.no_grad():
        x = decode_draws(module, samplers, name, n, generator=torch.Generator().manual_seed(seed)).float()
    shape = tuple(cfg["data_shape"])
    images = as_images(x, shape)
    draw = None if images is None else (
        lambda path: plots.image_grid(images, path, nrow=getattr(args, "nrow", None), scale=image_scale(shape)))
    stem = f"samples-{seed}" if name == "analytic" else f"samples-{name}-{seed}"
    write_outputs(args, Path(args.run) / f"{stem}.png", x.numpy(), draw, "samples", shape)
    return 0


def run_samplers(run, which: str, name: str) -> dict:
    """The ex-post samplers stored in RUN/checkpoints/{which}.ckpt ("samplers", written at the end of `gens
    train`), rebuilt without refitting; "analytic" is always there. ``name`` missing: one-line ValueError."""
    from gens.checkpoint import load_checkpoint
    from gens.samplers import SAMPLERS, samplers_from_state

    if name == "analytic":
        return samplers_from_state(None)
    path = Path(run) / "checkpoints" / f"{which}.ckpt"
    state = load_checkpoint(path).get("samplers")
    if name not in (state or {}):
        why = ("was trained before gens train stored ex-post samplers, or did not finish" if state is None
               else f"holds only {', '.join(sorted(state))}")
        others = " or ".join(s for s in SAMPLERS if s != name and (s == "analytic" or s in (state or {})))
        raise ValueError(f"sampler: {path} has no fitted {name!r} sampler (the run {why}); use --sampler {others}, "
                         f"or train the run again")
    return samplers_from_state(state)

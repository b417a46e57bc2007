"""``gens sample RUN``: decode draws from a trained run's latent distribution."""

from __future__ import annotations

from pathlib import Path

HELP = "generate samples from a trained run (PNG grid, optionally .npy)"
DESCRIPTION = (
    "Draw n latents from the run's latent distribution (a GEN: the target shrunk by the kernel, Sec. 4), "
    "decode them, and write a PNG grid (and the raw samples as .npy with --npy)."
)


def add_arguments(p) -> None:
    import argparse

    S = argparse.SUPPRESS  # no "(default: None)" in --help; read with getattr
    p.add_argument("run", metavar="RUN", help="run folder written by `gens train`")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default=S, help="PNG path (default: RUN/samples-<seed>.png); FILE.npy: the "
                   "array goes there, the PNG beside it")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
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
    from gens.runs import as_images, image_scale, load_run

    n = check_int("n", args.n, minimum=1)
    seed = check_int("seed", args.seed, minimum=0, maximum=2**63 - 1)
    module, cfg = load_run(args.run, args.checkpoint)
    check_memory("n", n, sample_bytes(cfg), "samples")
    with torch.no_grad():
        x = module.sample(n, generator=torch.Generator().manual_seed(seed)).float()
    shape = tuple(cfg["data_shape"])
    images = as_images(x, shape)
    draw = None if images is None else (
        lambda path: plots.image_grid(images, path, nrow=getattr(args, "nrow", None), scale=image_scale(shape)))
    write_outputs(args, Path(args.run) / f"samples-{seed}.png", x.numpy(), draw, "samples", shape)
    return 0

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
    p.add_argument("--out", default=S, help="PNG path (default: RUN/samples-<seed>.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which checkpoint")
    p.add_argument("--nrow", type=int, default=S, help="images per row (default: about sqrt(n))")
    p.add_argument("--npy", action="store_true", default=S, help="also save the samples (n, *data_shape) as .npy")


def run(args) -> int:
    import numpy as np
    import torch

    from gens import plots
    from gens._validation import check_int
    from gens.runs import as_images, image_scale, load_run

    n = check_int("n", args.n, minimum=1)
    seed = check_int("seed", args.seed, minimum=0, maximum=2**63 - 1)
    module, cfg = load_run(args.run, args.checkpoint)
    out = Path(getattr(args, "out", None)) if getattr(args, "out", None) else Path(args.run) / f"samples-{seed}.png"
    with torch.no_grad():
        x = module.sample(n, generator=torch.Generator().manual_seed(seed)).float()
    shape = tuple(cfg["data_shape"])
    images = as_images(x, shape)
    if images is None:
        raise ValueError(f"run: data of shape {shape} are not images; use --npy to save the samples")
    plots.image_grid(images, out, nrow=getattr(args, "nrow", None), scale=image_scale(shape))
    print(f"wrote {out}")
    if getattr(args, "npy", False):
        np.save(out.with_suffix(".npy"), x.numpy())
        print(f"wrote {out.with_suffix('.npy')}")
    return 0
